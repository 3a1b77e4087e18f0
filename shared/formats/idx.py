"""IDX headers, MNIST's file format: the one check that `mnist predict` and the dataset loaders share.

An IDX file starts with a magic number (0x0803: unsigned bytes in 3 dimensions, images; 0x0801:
in 1 dimension, labels), then each dimension as a big-endian uint32, then the bytes. What comes
in is a function reading n bytes of the file; what comes out is the count its header declares,
or `IdxError` naming what is wrong. Standard library only: `mnist predict` imports it at start-up.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

#: Magic number of an IDX images file: unsigned bytes in 3 dimensions (count, 28, 28).
IMAGES_MAGIC = 0x00000803
#: Magic number of an IDX labels file: unsigned bytes in 1 dimension (count).
LABELS_MAGIC = 0x00000801
_WHAT = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}


class IdxError(ValueError):
    """A header that is not the IDX file expected; the message names the problem."""


def read_header(read: Callable[[int], bytes], magic: int, limit: int) -> int:
    """Read a header through `read(n)` (n bytes, or it raises); return the count it declares.

    IdxError for a wrong magic number (naming the other IDX kind when it is one), images that
    are not 28×28, or a count of 0 or above `limit`.
    """
    got = int.from_bytes(read(4), "big")
    if got != magic:
        kind = f" (an IDX {_WHAT[got]} file)" if got in _WHAT else ""
        raise IdxError(f"bad magic number 0x{got:08x}{kind}; expected 0x{magic:08x} (IDX {_WHAT[magic]})")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", read(4 * ndim))
    if dims[1:] not in ((), (28, 28)):
        raise IdxError(f"images are {dims[1]}×{dims[2]}; expected 28×28")
    if not 0 < dims[0] <= limit:
        raise IdxError(f"the header declares {dims[0]:,} {_WHAT[magic]}; expected 1 to {limit:,}")
    return dims[0]
