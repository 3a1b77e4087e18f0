"""Which format a file is, from its name and its first bytes.

What comes in is a file name (any case, any folder) and the file's first bytes (`HEAD_BYTES` are
enough; all of them will do); what comes out is one of the kinds below, or None when neither says.
The name is asked first, then the bytes: PNG and JPEG signatures, a zip, a tar (gzipped or not),
an IDX magic number (gzipped or not). A zip is an NPZ or an IDX archive: its members tell
(`of_zip`). Each dispatcher (`mnist predict`'s inputs, a dataset path, an upload) keeps its own set
of accepted kinds and its own message for the others.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable

from shared.formats import idx

#: A picture of one digit: PNG or JPEG.
IMAGE = "image"
#: An IDX images file (…-images-idx3-ubyte), gzipped or not.
IDX = "idx"
#: An IDX labels file (…-labels-idx1-ubyte), gzipped or not.
IDX_LABELS = "idx-labels"
#: A digits CSV, gzipped or not.
CSV = "csv"
#: A NumPy .npz: a zip of .npy members.
NPZ = "npz"
#: A zip or a tar (gzipped or not) of IDX files.
IDX_ARCHIVE = "idx-archive"
#: A zip not yet looked into: an NPZ or an IDX archive (see `of_zip`).
ZIP = "zip"
#: Every kind.
KINDS = (IMAGE, IDX, IDX_LABELS, CSV, NPZ, IDX_ARCHIVE, ZIP)

#: First bytes of a gzip stream.
GZIP_MAGIC = b"\x1f\x8b"
#: First bytes of a zip archive.
ZIP_MAGIC = b"PK"
#: First bytes of the pictures read: PNG, JPEG.
IMAGE_MAGICS = (b"\x89PNG", b"\xff\xd8\xff")
#: File endings by kind, matched in any case.
SUFFIXES = {
    IMAGE: (".png", ".jpg", ".jpeg"),
    CSV: (".csv", ".csv.gz"),
    NPZ: (".npz",),
    IDX_ARCHIVE: (".tar", ".tar.gz", ".tgz"),
    ZIP: (".zip",),
}
#: Bytes of a file's start that `of` needs (bytes): a tar header ends at 512, inflated.
HEAD_BYTES = 4096
#: Bytes inflated from a gzipped start to look inside it (bytes): one tar header.
_INFLATED_BYTES = 512


def of(name: str = "", head: bytes = b"", accept: Collection[str] = KINDS) -> str | None:
    """Return the kind `name` says if it is one of `accept`, else the kind `head` shows, else None."""
    by_name = _by_name(name.lower().rpartition("/")[2])  # the file's name, not its folders
    if by_name in accept:
        return by_name
    return _by_head(head[:HEAD_BYTES])


def of_zip(members: Iterable[str]) -> str:
    """Return NPZ for a zip whose members (names) are all .npy files, else IDX_ARCHIVE."""
    files = [m for m in members if not m.endswith("/")]
    return NPZ if files and all(m.endswith(".npy") for m in files) else IDX_ARCHIVE


def _by_name(name: str) -> str | None:
    for kind, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    if "idx1" in name:
        return IDX_LABELS
    if "idx3" in name or "ubyte" in name:
        return IDX
    return None


def _by_head(head: bytes) -> str | None:
    if head.startswith(IMAGE_MAGICS):
        return IMAGE
    if head.startswith(ZIP_MAGIC):
        return ZIP
    if head.startswith(GZIP_MAGIC):
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, _INFLATED_BYTES)
        except zlib.error:
            return None
    if head[257:262] == b"ustar":  # a tar header's magic, POSIX and GNU alike
        return IDX_ARCHIVE
    if len(head) < 4:
        return None
    return {idx.IMAGES_MAGIC: IDX, idx.LABELS_MAGIC: IDX_LABELS}.get(int.from_bytes(head[:4], "big"))
