"""The .npy format without NumPy: headers, and integer or float arrays read into `array.array`.

A header is read by np.lib.format's rules: the magic string, version 1.0, 2.0 or 3.0, then a
Python dict literal (descr, fortran_order, shape) read with ast.literal_eval, which evaluates
literals only. What comes in is a binary file positioned at the start of the .npy; what comes
out is (shape, fortran_order, descr), the file left at the first data byte, or ValueError naming
the problem. This is the one .npy header reader: `mnist predict` reads the common types itself
(uint8 pixels, integer labels, float32 answers), because importing NumPy takes longer than the
command needs to read 10,000 images; NumPy-side readers turn the descr into a dtype with
`np.lib.format.descr_to_dtype`.
"""

from __future__ import annotations

import ast
import sys
from array import array
from typing import IO, Any

#: First bytes of a .npy file, before its version.
MAGIC = b"\x93NUMPY"
#: Longest header read (characters): NumPy's own limit for a file it does not trust.
MAX_HEADER = 10_000
#: array typecodes by .npy kind ("i", "u", "f") and size in bytes.
TYPECODES = {
    (kind, array(code).itemsize): code
    for kind, codes in (("i", "bhilq"), ("u", "BHILQ"), ("f", "fd"))
    for code in codes
}
#: How a descr marks this machine's byte order.
NATIVE = "<" if sys.byteorder == "little" else ">"


def read_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, Any]:
    """Read a .npy header from `f`; return (shape, fortran_order, descr). ValueError if it is not one."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != MAGIC:
        raise ValueError(f"the magic string is not correct; expected {MAGIC!r}, got {magic[:6]!r}")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unsupported .npy version {version}")
    size = 2 if version == (1, 0) else 4
    declared = f.read(size)
    length = int.from_bytes(declared, "little")
    if len(declared) < size:
        raise ValueError("the header is truncated")
    if length > 4 * MAX_HEADER:  # a UTF-8 character is at most 4 bytes
        raise ValueError(f"a header of {length:,} bytes; at most {MAX_HEADER:,} characters are read")
    raw = f.read(length)
    if len(raw) < length:
        raise ValueError("the header is truncated")
    text = raw.decode("utf8" if version == (3, 0) else "latin1")  # UnicodeDecodeError is a ValueError
    if len(text) > MAX_HEADER:
        raise ValueError(f"a header of {len(text):,} characters; at most {MAX_HEADER:,} are read")
    try:
        header = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:  # TypeError: {[]: 0}
        raise ValueError(f"cannot parse the header {text.strip()[:80]!r}") from exc
    if not isinstance(header, dict) or header.keys() != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"the header is not a dict of descr, fortran_order and shape: {text.strip()[:80]!r}")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"shape is not valid: {shape!r}")
    if not isinstance(fortran, bool):
        raise ValueError(f"fortran_order is not a valid bool: {fortran!r}")
    return shape, fortran, header["descr"]


def has_objects(descr: Any) -> bool:
    """Return True if a descr ('|O', a record's fields, a subarray) holds Python objects."""
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, tuple) and descr:
        return has_objects(descr[0])
    if isinstance(descr, list):
        return any(isinstance(field, tuple) and len(field) > 1 and has_objects(field[1]) for field in descr)
    return False


def kind_of(descr: Any) -> tuple[str, int] | None:
    """Return (kind, size in bytes) of a plain numeric descr such as '|u1', '<i8' or '<f4', else None."""
    if not isinstance(descr, str) or len(descr) < 3 or descr[0] not in "<>|=" or not descr[2:].isdigit():
        return None
    kind, size = descr[1], int(descr[2:])
    return (kind, size) if (kind, size) in TYPECODES else None


def read_array(f: IO[bytes], descr: str, count: int) -> array:
    """Read `count` values of a descr that `kind_of` knows, in this machine's byte order."""
    kind = kind_of(descr)
    if kind is None:
        raise ValueError(f"descr {descr!r} is not read without NumPy")
    values = array(TYPECODES[kind])
    data = f.read(count * values.itemsize)
    if len(data) < count * values.itemsize:
        raise ValueError(f"truncated: {len(data):,} bytes where {count * values.itemsize:,} were expected")
    values.frombytes(data)
    if kind[1] > 1 and descr[0] in "<>" and descr[0] != NATIVE:
        values.byteswap()
    return values
