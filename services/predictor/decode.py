"""Request bodies → pixel rows: JSON numbers, raw uint8 bytes, .npy files and V2 tensors.

Every decoder returns pixel rows (N, 784), checked: float32 scaled to 0–1, or uint8 (0–255) as
sent, which `LoadedModel.predict_proba` scales chunk by chunk in its forward-pass threads. Or
it raises `InvalidInput` (400) / `PayloadTooLarge` (413) naming the problem. Nothing here runs
a Python loop per pixel: bodies of 10,000 images must decode in milliseconds.

Memory is bounded before it is spent: a JSON body is counted on its bytes (`json_limits`, checked
by `services.web.bodies.check_json_size`) before a parser builds anything per value, and the fast
path checks the number of images and the numbers of each on simdjson's document before it builds
an array. Whatever a JSON body holds, parsing it costs no more than the largest valid body does.
"""

from __future__ import annotations

import functools
import io
import math
import reprlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import simdjson

from services.web.bodies import JsonLimits, check_json_size
from shared import mlp
from shared.errors import InvalidInput, PayloadTooLarge
from shared.formats import npy

#: Pixel value conventions: "uint8" means 0–255 (the default), "unit" means already divided by 255.
PIXEL_RANGES = ("uint8", "unit")
#: Image shapes accepted after the batch axis: flat rows or 28×28 grids.
IMAGE_SHAPES = ((mlp.INPUT_SIZE,), (28, 28))
#: Element types a .npy body may hold (np.dtype.kind): unsigned, signed integers, floats.
NUMERIC_KINDS = "uif"
#: Rows of a 28×28 image sent as nested lists.
IMAGE_ROWS = 28
#: JSON values, and separately arrays, objects and object members, that a prediction body may
#: hold besides its images: its other fields and, in V2, the request's structure (about 30 each).
JSON_ALLOWANCE = 256
#: The end of the message for ragged or too deeply nested images.
RAGGED = f": every image needs {mlp.INPUT_SIZE} numbers"
#: Most fields the fast path reads from a body (a prediction body has three); more: general path.
FAST_FIELDS = 8


@functools.cache  # one per setting: built once, not on every request
def json_limits(max_batch: int) -> JsonLimits:
    """Return what a JSON prediction body of at most `max_batch` images may hold, counted on its bytes."""
    return JsonLimits(
        values=max_batch * mlp.INPUT_SIZE + JSON_ALLOWANCE,
        arrays=max_batch * (1 + IMAGE_ROWS) + JSON_ALLOWANCE,  # an image: one list, or 28 in a list
        objects=JSON_ALLOWANCE,
        members=JSON_ALLOWANCE,
        reason=f"{max_batch:,} images (MNIST_MAX_BATCH) of {mlp.INPUT_SIZE} pixels",
    )


def load_json(body: bytes, what: str = "body", limits: JsonLimits | None = None) -> dict[str, Any]:
    """Return the JSON object in `body`; InvalidInput if it is not JSON or not an object.

    With `limits`, a body that holds more (values, arrays, objects or members) is refused with
    PayloadTooLarge before orjson builds a Python object for each of its values.
    """
    if limits is not None:
        check_json_size(body, limits, what)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the {what} must be a JSON object, got {type(data).__name__}")
    return data


def fast_instances(body: bytes, max_batch: int) -> dict[str, Any] | None:
    """Return the fields of a well-formed JSON prediction body, "instances" as one array, or None.

    The common body, an object whose "instances" are rows of exactly 784 numbers and whose other
    fields are scalars, is read by simdjson straight into one float64 buffer: about three times
    faster than orjson, which builds a Python number per pixel. Sizes are checked on the way:
    the body's values against `max_batch` images before it is parsed (413), then on the document
    the number of images (413) and the numbers of each (400 for an image of more than 784, or
    with a list nested in it), before any array is built. Anything else (not JSON, another shape,
    a boolean, a null or a string among the pixels) returns None, and the caller takes the
    general path (`load_json` with `json_limits`, then `from_numbers`), whose errors name the
    problem exactly.
    """
    check_json_size(body, json_limits(max_batch), structure=False)
    try:
        doc = simdjson.Parser().parse(body)
        if not isinstance(doc, simdjson.Object) or len(doc) > FAST_FIELDS:
            return None
        fields: dict[str, Any] = {key: doc[key] for key in doc.keys()}  # noqa: SIM118
        rows = fields.pop("instances", None)
        if not isinstance(rows, simdjson.Array) or len(rows) == 0:
            return None
        if any(isinstance(value, simdjson.Object | simdjson.Array) for value in fields.values()):
            return None
        if not isinstance(rows[0], simdjson.Array):  # not a list of images: the general path says so
            return None
        check_batch(len(rows), max_batch)
        for i, row in enumerate(rows):
            if not isinstance(row, simdjson.Array):
                return None
            if len(row) != mlp.INPUT_SIZE:
                if len(row) > mlp.INPUT_SIZE:  # never an image: refused before Python holds it
                    raise InvalidInput(
                        f"instances: image {i} holds {len(row):,} values; every image needs"
                        f" {mlp.INPUT_SIZE} numbers (or {IMAGE_ROWS} rows of {IMAGE_ROWS})"
                    )
                return None  # fewer: 28 rows of 28, or an error the general path names
        values = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, KeyError, RuntimeError):  # simdjson's parse and type errors
        return None
    if values.size != len(rows) * mlp.INPUT_SIZE:  # a list nested in an image, flattened
        raise InvalidInput(f"instances are ragged or nested too deep{RAGGED}")
    fields["instances"] = values.reshape(len(rows), mlp.INPUT_SIZE)
    return fields


def fast_inference_request(body: bytes, max_batch: int) -> dict[str, Any] | None:
    """Return a V2 inference request whose one input's "data" is still simdjson's array, or None.

    The common request, an object with one input tensor whose "data" is a list of numbers (flat,
    or one list per image), is parsed by simdjson: its other fields come back as the Python
    objects orjson would build (they are few and small), and the numbers stay in the document
    until `from_list` reads them straight into one array, without a Python number per value
    (about 30 µs less for one image). The body is counted first with the general path's limits
    (`json_limits`). Anything else (not JSON, another structure, keys given twice, nesting other
    than one list per image) returns None, and the caller takes the general path (`load_json`),
    whose errors name the problem.
    """
    check_json_size(body, json_limits(max_batch), "inference request")
    try:
        doc = simdjson.Parser().parse(body)
        if not isinstance(doc, simdjson.Object) or len(doc) > FAST_FIELDS:
            return None
        inputs = doc.get("inputs")
        if not isinstance(inputs, simdjson.Array) or len(inputs) != 1:
            return None
        tensor = inputs[0]
        if not isinstance(tensor, simdjson.Object) or len(tensor) > FAST_FIELDS:
            return None
        data = tensor.get("data")
        keys, fields = list(doc.keys()), list(tensor.keys())  # noqa: SIM118
        if not isinstance(data, simdjson.Array) or _repeated(keys) or _repeated(fields):
            return None  # a key given twice: orjson keeps the last one, simdjson the first
        request = {key: _plain(doc[key]) for key in keys if key != "inputs"}
        plain = {key: _plain(tensor[key]) for key in fields if key != "data"}
        rows = len(data) if len(data) and isinstance(data[0], simdjson.Array) else 0
        if rows:  # one list per image, all of one length (ragged ones: the general path says so)
            width = len(data[0])
            if not all(isinstance(row, simdjson.Array) and len(row) == width for row in data):
                return None
    except (ValueError, TypeError, KeyError, RuntimeError):  # simdjson's parse and type errors
        return None
    # Every list of the body, counted by its brackets: those of the other fields, "inputs", the
    # data's own, and one per image when the data holds one list per image. Any other nesting (28 rows of 28,
    # a list inside an image or among the numbers, a bracket inside a string) is left to the
    # general path, so that what the fast path accepts is exactly what the general path accepts.
    if body.count(b"[") != _lists(request) + _lists(plain) + 2 + rows:
        return None
    plain["data"] = data
    request["inputs"] = [plain]
    return request


def _repeated(keys: list[str]) -> bool:
    """Return True if a key appears twice."""
    return len(set(keys)) < len(keys)


def _plain(value: Any) -> Any:
    """Return a simdjson value as the Python object orjson would have built."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _lists(value: Any) -> int:
    """Return how many lists `value` (parsed JSON) holds, itself included."""
    if isinstance(value, list):
        return 1 + sum(_lists(item) for item in value)
    if isinstance(value, dict):
        return sum(_lists(item) for item in value.values())
    return 0


def pixel_range(value: object) -> str:
    """Return `value` if it names a pixel range (None means "uint8"), else raise InvalidInput."""
    if value is None:
        return "uint8"
    if value not in PIXEL_RANGES:
        raise InvalidInput(f"pixel_range must be one of {list(PIXEL_RANGES)}, got {shown(value)}")
    return value  # type: ignore[return-value]


def check_batch(n: int, max_batch: int) -> None:
    """Refuse an empty batch (400) or one above `max_batch` images (413)."""
    if n < 1:
        raise InvalidInput(f"the batch holds {n} images: send at least one")
    if n > max_batch:
        raise PayloadTooLarge(f"{n} images in one request: the limit is {max_batch} images (MNIST_MAX_BATCH)")


def shown(value: object) -> str:
    """Return a short repr of a value from a request, for an error message (never the whole of a long one)."""
    return reprlib.repr(value)


def from_numbers(
    values: list, hint: bytes, prange: str, max_batch: int, what: str = "instances"
) -> np.ndarray:
    """Return scaled rows from nested JSON lists of pixel values (N, 784) or (N, 28, 28).

    `hint` is the raw JSON text the lists came from (see `_numbers`).
    """
    if not isinstance(values, list) or (values and not isinstance(values[0], list)):
        raise InvalidInput(f"{what} must be a list of images, each a list of 784 numbers")
    check_batch(len(values), max_batch)
    array = _numbers(values, hint, what, ragged=RAGGED)
    return scale(array, prange, what)


def _numbers(values: list, hint: bytes, what: str, ragged: str = "") -> np.ndarray:
    """Return nested JSON lists as one array; InvalidInput for a boolean, ragged or too deep lists.

    `hint` is the raw JSON text the lists came from: booleans are looked for in it first, so the
    common case (no `true`/`false` anywhere) never walks the lists in Python.
    """
    if (b"true" in hint or b"false" in hint) and _has_bool(values):
        # np.array would read True as 1: a boolean is a client bug, not a pixel.
        raise InvalidInput(f"{what} hold a boolean: pixels are numbers")
    try:
        return np.array(values)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{what} are ragged or nested too deep{ragged}") from None


def from_raw(body: bytes | memoryview, max_batch: int, what: str = "body") -> np.ndarray:
    """Return uint8 rows (a view of `body`) from raw bytes: N×784 pixels, row-major, no header."""
    size = len(body)
    if size == 0:
        raise InvalidInput(f"the {what} is empty: send N×784 uint8 pixels")
    if size % mlp.INPUT_SIZE:
        raise InvalidInput(f"the {what} holds {size} bytes, not a multiple of 784 (one uint8 per pixel)")
    check_batch(size // mlp.INPUT_SIZE, max_batch)
    return np.frombuffer(body, dtype=np.uint8).reshape(-1, mlp.INPUT_SIZE)


def from_npy(body: bytes, prange: str, max_batch: int) -> np.ndarray:
    """Return scaled rows from a .npy file (uint8, int or float; (N, 784) or (N, 28, 28)); never unpickle."""
    stream = io.BytesIO(body)
    try:
        shape, fortran, descr = npy.read_header(stream)
        dtype = np.lib.format.descr_to_dtype(descr)
    except (ValueError, TypeError, IndexError) as exc:  # descr_to_dtype(()) raises IndexError
        # np.load would read anything without the magic as a pickle: it is refused here first.
        raise InvalidInput(f"the body is not a valid .npy file ({exc}); pickles are refused") from None
    if dtype.hasobject or dtype.names is not None or dtype.kind not in NUMERIC_KINDS:
        raise InvalidInput(f"the .npy array has dtype {dtype}: send uint8 or float32/float64 pixels")
    check_shape(tuple(shape), "the .npy array")
    check_batch(shape[0], max_batch)
    count = math.prod(shape)
    offset = stream.tell()
    if len(body) - offset != count * dtype.itemsize:
        raise InvalidInput(
            f"the .npy file is truncated or padded: {len(body) - offset} data bytes for shape {tuple(shape)}"
        )
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    array = array.reshape(shape, order="F" if fortran else "C")
    return scale(array, prange, "the .npy array")


def from_list(values: object, hint: bytes, shape: tuple[int, ...], integers: bool, prange: str) -> np.ndarray:
    """Return scaled rows from a V2 tensor's JSON `data` (flat or nested) of the declared `shape`.

    `values` is a list parsed by orjson, or simdjson's array from `fast_inference_request`.
    """
    what = "the input tensor's data"
    if isinstance(values, simdjson.Array):  # from fast_inference_request
        array = _document_numbers(values, math.prod(shape), integers)
        if array is not None:  # whole numbers for UINT8, and finite (simdjson refuses 1e400)
            return scale(array.reshape(shape), prange, what, finite=True)
        values = values.as_list()  # booleans, nulls, fractions for UINT8…: the checks below name them
    if not isinstance(values, list):
        raise InvalidInput(f"{what} must be a list of numbers")
    if values and not isinstance(values[0], list) and len(values) != math.prod(shape):
        # Flat data of another size than declared: refused before NumPy copies it.
        raise InvalidInput(f"{what} hold {len(values)} values; shape {list(shape)} needs {math.prod(shape)}")
    array = _numbers(values, hint, what)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise InvalidInput(f"{what} hold values that are not numbers (strings, null or objects)")
    if array.size != math.prod(shape):
        raise InvalidInput(f"{what} hold {array.size} values; shape {list(shape)} needs {math.prod(shape)}")
    if integers and array.dtype.kind == "f":
        raise InvalidInput(f"{what} hold fractions: UINT8 pixels are whole numbers 0–255")
    return scale(array.reshape(shape), prange, what)


def _document_numbers(values: simdjson.Array, size: int, integers: bool) -> np.ndarray | None:
    """Return the `size` numbers of a simdjson array as one array (int64 if `integers`), or None."""
    try:
        buffer = values.as_buffer(of_type="i" if integers else "d")  # a fraction is not an "i"
    except (TypeError, ValueError):
        return None
    array = np.frombuffer(buffer, dtype=np.int64 if integers else np.float64)
    return array if array.size == size else None


def from_buffer(
    buffer: memoryview | bytes, dtype: np.dtype, shape: tuple[int, ...], prange: str
) -> np.ndarray:
    """Return scaled rows from little-endian tensor bytes of `dtype` and `shape` (V2 binary data)."""
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return scale(array, prange, "the input tensor")


def scale(array: np.ndarray, prange: str, what: str, finite: bool = False) -> np.ndarray:
    """Return `array` checked (numeric, finite, in range, 784 pixels each) as rows (N, 784).

    uint8 pixels come back as they are (every value is in range), and whole numbers 0–255 of any
    integer type (JSON's) as uint8 too; anything else as float32 in 0–1. `finite=True` skips the
    NaN/Inf scan for values known finite (JSON numbers read by simdjson, which refuses 1e400 and
    has no NaN).
    """
    if array.dtype.kind not in NUMERIC_KINDS:
        raise InvalidInput(f"{what} hold values that are not numbers (strings, null or objects)")
    check_shape(array.shape, what)
    rows = array.reshape(array.shape[0], mlp.INPUT_SIZE)
    if rows.dtype == np.uint8 and prange == "uint8":
        return rows
    if rows.dtype.kind in "iu" and prange == "uint8" and not (rows.view(f"u{rows.itemsize}") > 255).any():
        # One pass instead of a minimum and a maximum (a negative value is huge unsigned).
        return rows.astype(np.uint8)
    if rows.dtype.kind == "f" and not finite and not np.isfinite(rows).all():
        raise InvalidInput(f"{what} hold NaN or Inf")
    low, high = (0, 255) if prange == "uint8" else (0, 1)
    lowest, highest = rows.min(), rows.max()
    if lowest < low or highest > high:
        raise InvalidInput(
            f"{what} hold values in [{lowest}, {highest}],"
            f" outside the pixel_range {prange!r} ({low} to {high})"
        )
    if prange == "uint8":
        return mlp.scale_pixels(rows)
    return rows.astype(np.float32, order="C", copy=False)


def check_shape(shape: tuple[int, ...], what: str) -> None:
    """Raise InvalidInput unless `shape` is (N, 784) or (N, 28, 28)."""
    if len(shape) < 2 or shape[1:] not in IMAGE_SHAPES:
        raise InvalidInput(f"{what}: shape {shown(list(shape))}, expected [N, 784] or [N, 28, 28] pixels")


def _has_bool(values: Iterable[Any], depth: int = 0) -> bool:
    """Return True if nested lists hold a boolean (walked only when the JSON text mentions one)."""
    for value in values:
        if value is True or value is False:
            return True
        if isinstance(value, list) and depth < 3 and _has_bool(value, depth + 1):
            return True
    return False
