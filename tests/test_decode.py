"""The predictor's pure parts in-process: the fast JSON paths and the forward pass split across threads.

Everything here is also exercised through gunicorn in test_predict_v1.py / test_predict_v2.py
(every body format gives the same answer; every bad body its 4xx); these tests pin down the two
fast paths themselves: when they apply, and that they compute exactly what the plain path does.
"""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from services.predictor import decode
from services.serving.cache import MIN_CHUNK_ROWS, LoadedModel
from services.web.bodies import check_json_size
from shared import mlp
from shared.errors import InvalidInput, PayloadTooLarge

IMAGES = np.random.default_rng(0).integers(0, 256, (3, mlp.INPUT_SIZE), dtype=np.uint8)


def body(**fields: object) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SERIALIZE_NUMPY)


#: The batch limit of these tests (MNIST_MAX_BATCH).
MAX_BATCH = 10


def test_fast_path_reads_well_formed_bodies_exactly() -> None:
    fields = decode.fast_instances(body(instances=IMAGES, top_k=3, pixel_range=None), MAX_BATCH)
    assert fields is not None and fields["top_k"] == 3 and fields["pixel_range"] is None
    np.testing.assert_array_equal(fields["instances"], IMAGES)
    unit = IMAGES / 255
    fields = decode.fast_instances(body(instances=unit, pixel_range="unit"), MAX_BATCH)
    assert fields is not None
    np.testing.assert_array_equal(fields["instances"], unit)  # float64 in, float64 out: exact


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[[1, 2, 3]]",
        b'{"instances": []}',
        b'{"instances": [1, 2, 3]}',
        b'{"images": [[0]]}',
        body(instances=IMAGES.reshape(3, 28, 28)),  # 28×28 grids: the general path reshapes them
        body(instances=IMAGES[:, :783].copy()),
        orjson.dumps({"instances": [[True] + [0] * 783]}),
        orjson.dumps({"instances": [[None] + [0] * 783]}),
        orjson.dumps({"instances": [["7"] + [0] * 783]}),
        orjson.dumps({"instances": [[0] * 784], "top_k": [1]}),
        orjson.dumps({"instances": [[0] * 784], "options": {"a": 1}}),
        b'{"instances": [[0]]} trailing',
        b'{"instances": [[1e400]]}',
    ],
)
def test_fast_path_leaves_everything_else_to_the_general_path(raw: bytes) -> None:
    assert decode.fast_instances(raw, MAX_BATCH) is None


@pytest.mark.parametrize(
    ("raw", "error", "fragment"),
    [
        (orjson.dumps({"instances": [[0]] * 11}), PayloadTooLarge, "10 images (MNIST_MAX_BATCH)"),
        (orjson.dumps({"instances": [[0] * 785]}), InvalidInput, "image 0 holds 785 values"),
        (orjson.dumps({"instances": [[0] * 784, [0] * 5_000]}), InvalidInput, "image 1 holds 5,000 values"),
        # A list nested in an image would flatten into the buffer.
        (orjson.dumps({"instances": [[[1, 2]] + [0] * 783]}), InvalidInput, "nested too deep"),
        # More values than MAX_BATCH images hold: refused on the bytes, before any parse.
        (b'{"instances": [[' + b"0," * (MAX_BATCH * 784 + 300) + b"0]]}", PayloadTooLarge, "MNIST_MAX_BATCH"),
    ],
    ids=["batch", "785-pixels", "5000-pixels", "nested", "values"],
)
def test_fast_path_refuses_what_no_path_could_accept_before_any_array(
    raw: bytes, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=re.escape(fragment)):
        decode.fast_instances(raw, MAX_BATCH)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[" + b"0," * (MAX_BATCH * 784 + 300) + b"0]", "values"),
        (b"[" + b"[]," * (MAX_BATCH * 29 + 300) + b"[]]", "arrays"),
        (b"[" + b'"a",' * 4100 + b'"a"]', "values"),  # a string counts as two values
        (b"[" + b"{}," * 300 + b"{}]", "objects"),
        (b'{"a":' * 300 + b"0" + b"}" * 300, "objects"),  # no comma at all
        (b'{"k": {' + b",".join(b'"k%d": 0' % i for i in range(300)) + b"}}", "object members"),
    ],
)
def test_the_general_path_refuses_more_than_a_valid_body_holds_before_parsing(raw: bytes, kind: str) -> None:
    with pytest.raises(PayloadTooLarge, match=f"JSON {kind}.*10 images \\(MNIST_MAX_BATCH\\)"):
        decode.load_json(raw, limits=decode.json_limits(MAX_BATCH))
    decode.load_json(b'{"instances": [[0]]}', limits=decode.json_limits(MAX_BATCH))  # a small body passes


def test_a_valid_body_of_the_largest_batch_is_within_the_json_limits() -> None:
    for images in (IMAGES, IMAGES.reshape(3, 28, 28)):
        raw = body(instances=np.repeat(images, 4, axis=0)[:MAX_BATCH], top_k=3, pixel_range="uint8")
        check_json_size(raw, decode.json_limits(MAX_BATCH))
    tensor = {"name": "input", "shape": [MAX_BATCH, 28, 28], "datatype": "UINT8",
              "data": np.repeat(IMAGES, 4, axis=0)[:MAX_BATCH].reshape(-1, 28, 28),
              "parameters": {"pixel_range": "uint8"}}  # fmt: skip
    outputs = [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}]
    raw = body(id="request-1", parameters={"binary_data_output": False}, inputs=[tensor], outputs=outputs)
    check_json_size(raw, decode.json_limits(MAX_BATCH))


def v2_request(
    data: object, datatype: str = "UINT8", shape: list[int] | None = None, **fields: object
) -> bytes:
    tensor = {"name": "input", "datatype": datatype, "shape": shape or [1, mlp.INPUT_SIZE], "data": data}
    return body(inputs=[tensor], **fields)


def v2_pixels(request: dict, raw: bytes) -> np.ndarray:
    """Read a parsed V2 request's pixels as v2._read_input does."""
    tensor = request["inputs"][0]
    integers = tensor["datatype"] == "UINT8"
    prange = decode.pixel_range(tensor.get("parameters", {}).get("pixel_range"))
    return decode.from_list(tensor["data"], raw, tuple(tensor["shape"]), integers, prange)


@pytest.mark.parametrize(
    "raw",
    [
        v2_request(IMAGES[:1].ravel()),
        v2_request(IMAGES[:1]),  # one list per image
        v2_request(IMAGES, shape=[3, mlp.INPUT_SIZE], id="r-1", outputs=[{"name": "label"}]),
        v2_request(IMAGES[:2].reshape(4, 392), shape=[2, mlp.INPUT_SIZE]),  # rows of another width
        v2_request(IMAGES[:1] / 255, "FP32", parameters={"pixel_range": "unit", "binary_data_output": True}),
        v2_request(IMAGES[:1].astype(np.float64), "FP64"),
    ],
    ids=["flat", "rows", "three-and-fields", "half-rows", "fp32-unit", "fp64"],
)
def test_v2_fast_path_reads_what_the_general_path_reads_exactly(raw: bytes) -> None:
    fast = decode.fast_inference_request(raw, MAX_BATCH)
    general = decode.load_json(raw, limits=decode.json_limits(MAX_BATCH))
    assert fast is not None
    assert {**fast, "inputs": None} == {**general, "inputs": None}
    data = fast["inputs"][0].pop("data")
    assert fast["inputs"][0] == {k: v for k, v in general["inputs"][0].items() if k != "data"}
    fast["inputs"][0]["data"] = data
    pixels = v2_pixels(fast, raw)
    np.testing.assert_array_equal(pixels, v2_pixels(general, raw))
    # UINT8 pixels stay uint8, as a raw body's (the forward pass scales them); others are 0–1.
    wanted = np.uint8 if b'"UINT8"' in raw else np.float32
    assert pixels.dtype == wanted and pixels.shape[1] == mlp.INPUT_SIZE
    assert v2_pixels(general, raw).dtype == wanted


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        orjson.dumps({"inputs": [{"name": "input", "data": [0] * 784}] * 2}),
        b'{"inputs": [{"data": [0]}], "inputs": [{"data": [1]}]}',  # a key twice
        b'{"inputs": [{"data": [0], "data": [1]}]}',
        v2_request(IMAGES[:1].reshape(1, 28, 28), shape=[1, 28, 28]),  # 28 rows of 28: general path
        v2_request([[0]] + [0] * 783),  # a list among the numbers
        v2_request([[0] * 392, [[0]] * 392]),  # a list inside a row
        v2_request([[0] * 392, [0] * 391, [0]]),  # ragged rows
        v2_request([0] * 784, id="a[b"),  # a bracket in a string: counted, so not fast
        orjson.dumps({"inputs": [{"name": "input", "parameters": {"binary_data_size": 784}}]}),
    ],
)
def test_v2_fast_path_leaves_everything_else_to_the_general_path(raw: bytes) -> None:
    assert decode.fast_inference_request(raw, MAX_BATCH) is None


@pytest.mark.parametrize(
    ("data", "datatype", "fragment"),
    [
        ([0.5] * 784, "UINT8", "whole numbers"),
        ([1.0] * 784, "UINT8", "whole numbers"),
        ([False] * 784, "UINT8", "boolean"),
        ([None] * 784, "FP32", "not numbers"),
        ([256] * 784, "UINT8", "outside"),
        ([-1.0] * 784, "FP64", "outside"),
        ([0] * 783, "UINT8", "783 values"),
    ],
)
def test_v2_fast_path_data_fails_as_the_general_path_does(data: list, datatype: str, fragment: str) -> None:
    raw = v2_request(data, datatype)
    fast = decode.fast_inference_request(raw, MAX_BATCH)
    assert fast is not None
    for request in (fast, decode.load_json(raw)):
        with pytest.raises(InvalidInput, match=re.escape(fragment)):
            v2_pixels(request, raw)


def test_v2_fast_path_counts_the_body_before_parsing_it() -> None:
    with pytest.raises(PayloadTooLarge, match=re.escape("10 images (MNIST_MAX_BATCH)")):
        decode.fast_inference_request(v2_request([0] * (MAX_BATCH * 784 + 300)), MAX_BATCH)


def test_raw_bytes_stay_uint8_and_are_scaled_in_the_forward_pass() -> None:
    rows = decode.from_raw(IMAGES.tobytes(), max_batch=10)
    assert rows.dtype == np.uint8 and rows.shape == (3, mlp.INPUT_SIZE)
    model = make_model()
    expected = mlp.predict_proba(model.params, mlp.scale_pixels(IMAGES))
    np.testing.assert_array_equal(model.predict_proba(rows), expected)


def test_a_large_batch_split_across_threads_gives_the_same_probabilities() -> None:
    model = make_model()
    rows = 2 * MIN_CHUNK_ROWS + 7
    images = np.random.default_rng(1).integers(0, 256, (rows, mlp.INPUT_SIZE), dtype=np.uint8)
    whole = mlp.predict_proba(model.params, mlp.scale_pixels(images))
    for threads in (2, 3):
        split = model.predict_proba(images, threads=threads)
        assert split.shape == whole.shape and split.dtype == np.float32
        np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-7)
        assert (split.argmax(axis=1) == whole.argmax(axis=1)).all()
    scaled = model.predict_proba(mlp.scale_pixels(images), threads=2)
    np.testing.assert_allclose(scaled, whole, rtol=1e-5, atol=1e-7)


def make_model() -> LoadedModel:
    params = mlp.init_params((mlp.INPUT_SIZE, 32, mlp.CLASSES), np.random.default_rng(2), "he", np.float32)
    return LoadedModel("m", 1, "0" * 64, [np.ascontiguousarray(p) for p in params], {})
