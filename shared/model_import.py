"""Importing a model file trained elsewhere: checked on its bytes before it is parsed, then as a network.

The file is the documented model file (shared/serialization.py): a zip of ``W1.npy, b1.npy, …,
Wk.npy, bk.npy, meta.npy``. Before NumPy reads an array: the archive's members are counted and
named, what they inflate to (their declared sizes: zipfile never inflates a member past it) is
held to the caller's limit, and each .npy header is read to refuse Python objects (pickles,
never loaded), non-float weights and sizes that disagree with the header. Then
`serialization.model_from_bytes` checks the network (shapes chaining 784 → … → 10, float dtypes,
finite values) and a forward pass checks that it answers probabilities. What is published is
the same network written again by `serialization.model_to_bytes`, its metadata marked imported.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from typing import Any

import numpy as np

from shared import mlp, serialization
from shared.errors import InvalidInput, PayloadTooLarge
from shared.formats import npy

#: Member names of a model file: the layers' arrays and meta, each an .npy.
_MEMBER = re.compile(r"^(?:[Wb][1-9][0-9]?|meta)\.npy$")
#: Most members: every layer's W and b, and meta.
MAX_MEMBERS = 2 * serialization.MAX_LAYERS + 1
#: Metadata keys of the file not carried over: they describe another deployment's job or data.
FOREIGN_KEYS = ("job_id", "profile", "format", "architecture", "lineage", "source")
#: Most bytes of the meta array (a JSON text of a few kB; 4 bytes per character in .npy).
MAX_META_BYTES = 4 * 2**20
#: Images of the check that the imported network answers probabilities.
CHECK_IMAGES = 8


def read_model_file(
    data: bytes, limit: int, name: str = "the model file"
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Return (params, meta) of an uploaded model file; InvalidInput (400) or PayloadTooLarge (413).

    `limit` bounds the bytes its arrays inflate to, checked before any is read.
    """
    if not data.startswith(b"PK\x03\x04"):
        raise InvalidInput(f"{name} is not a .npz file (not a zip archive)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _check_members(infos, name, limit)
            for info in infos:
                _check_header(zf, info, name)
    except zipfile.BadZipFile as exc:
        raise InvalidInput(f"{name} is not a valid .npz file ({exc})") from None
    params, meta = serialization.model_from_bytes(data, name)
    rng = np.random.default_rng(0)
    probs = mlp.predict_proba(params, mlp.scale_pixels(rng.integers(0, 256, (CHECK_IMAGES, mlp.INPUT_SIZE))))
    if not np.isfinite(probs).all():
        raise InvalidInput(f"{name}: its forward pass gives no finite probabilities")
    return params, meta


def _check_members(infos: list[zipfile.ZipInfo], name: str, limit: int) -> None:
    if len(infos) > MAX_MEMBERS:
        raise InvalidInput(f"{name} holds {len(infos)} files; a model file holds at most {MAX_MEMBERS}")
    strangers = sorted(i.filename for i in infos if not _MEMBER.match(i.filename))
    if strangers:
        raise InvalidInput(
            f"{name} holds {strangers[:5]}: a model file holds only W1.npy, b1.npy, … and meta.npy"
        )
    meta = next((i for i in infos if i.filename == "meta.npy"), None)
    if meta is not None and meta.file_size > MAX_META_BYTES:
        raise PayloadTooLarge(f"{name}: its meta is {meta.file_size:,} bytes; at most {MAX_META_BYTES:,}")
    inflated = sum(i.file_size for i in infos)
    if inflated > limit:
        raise PayloadTooLarge(
            f"{name} inflates to {inflated:,} bytes; the limit is {limit:,} (MNIST_MAX_BODY_BYTES)"
        )


def _check_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    """Refuse an array holding objects, weights that are not floats, or a size its header does not declare."""
    key = info.filename.removesuffix(".npy")
    with zf.open(info) as f:
        try:
            shape, _, descr = npy.read_header(f)
        except ValueError as exc:
            raise InvalidInput(f"{name}: array {key!r} has a bad .npy header ({exc})") from None
        offset = f.tell()
    if npy.has_objects(descr):
        raise InvalidInput(
            f"{name}: array {key!r} holds Python objects (pickled data): refused, never unpickled"
        )
    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidInput(f"{name}: array {key!r} has an unreadable dtype ({exc})") from None
    wanted = "U" if key == "meta" else "f"
    if dtype.kind != wanted:
        what = "a JSON string" if key == "meta" else "float32 or float64"
        raise InvalidInput(f"{name}: array {key!r} has dtype {dtype}; expected {what}")
    size = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != size:
        raise InvalidInput(f"{name}: array {key!r} is {info.file_size:,} bytes; its header declares {size:,}")


def imported(params: list[np.ndarray], meta: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Return the model file to publish and its registry metadata: the file's meta, marked imported.

    The lineage names the uploaded file's sha256 and size; what described another deployment
    (its job id, its data profile) is left out.
    """
    kept = {k: v for k, v in meta.items() if k not in FOREIGN_KEYS}
    kept["lineage"] = {"source": "import", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    try:
        blob = serialization.model_to_bytes(params, kept)
    except ValueError as exc:  # meta holding NaN: JSON has no spelling for it
        raise InvalidInput(f"the model file's meta cannot be stored ({exc})") from None
    _, stored = serialization.model_from_bytes(blob, "the imported model")
    return blob, stored
