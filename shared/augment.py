"""Data augmentation for 28×28 digits: small random affine moves. NumPy only.

Every function takes uint8 images as rows (n, 784) and an explicit `np.random.Generator`, so a
training run is a pure function of its seed.
"""

from __future__ import annotations

import numpy as np

SIDE = 28


def random_shifts(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Return x (n, 784) with each image moved by up to `max_shift` pixels in x and y (zeros fill)."""
    if max_shift <= 0:
        return x
    n = len(x)
    k = max_shift
    padded = np.zeros((n, SIDE + 2 * k, SIDE + 2 * k), dtype=x.dtype)
    padded[:, k : k + SIDE, k : k + SIDE] = x.reshape(n, SIDE, SIDE)
    shifts = rng.integers(0, 2 * k + 1, size=(n, 2))
    out = np.empty((n, SIDE, SIDE), dtype=x.dtype)
    # One slice per distinct shift (at most (2k+1)² of them), not one per image.
    code = shifts[:, 0] * (2 * k + 1) + shifts[:, 1]
    for c in np.unique(code):
        rows = np.flatnonzero(code == c)
        dy, dx = divmod(int(c), 2 * k + 1)
        out[rows] = padded[rows, dy : dy + SIDE, dx : dx + SIDE]
    return out.reshape(n, SIDE * SIDE)


def random_affine(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    max_shift: float = 2.0,
    max_rotation: float = 10.0,
    max_scale: float = 0.1,
    max_shear: float = 0.0,
) -> np.ndarray:
    """Return x (n, 784) uint8 with each image rotated (degrees), scaled, sheared and shifted at random.

    Bilinear sampling around the image centre; pixels that fall outside read as background (0).
    """
    n = len(x)
    if n == 0:
        return x
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation, n))
    scale = 1.0 + rng.uniform(-max_scale, max_scale, n)
    shear = rng.uniform(-max_shear, max_shear, n)
    shift = rng.uniform(-max_shift, max_shift, (n, 2))
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # Inverse map: output pixel (r, c) samples the input at A·(r − ctr, c − ctr) + ctr − shift.
    a00, a01 = cos, -sin + shear * cos
    a10, a11 = sin, cos + shear * sin
    centre = (SIDE - 1) / 2.0
    grid = np.arange(SIDE, dtype=np.float64) - centre
    r = grid[None, :, None]
    c = grid[None, None, :]
    src_r = a00[:, None, None] * r + a01[:, None, None] * c + centre - shift[:, 0, None, None]
    src_c = a10[:, None, None] * r + a11[:, None, None] * c + centre - shift[:, 1, None, None]
    r0 = np.floor(src_r)
    c0 = np.floor(src_c)
    fr = (src_r - r0).astype(np.float32)
    fc = (src_c - c0).astype(np.float32)
    r0 = r0.astype(np.intp)
    c0 = c0.astype(np.intp)
    # Pad by one pixel of background so that every neighbour index is valid after clipping.
    padded = np.zeros((n, SIDE + 2, SIDE + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = x.reshape(n, SIDE, SIDE)
    flat = padded.reshape(n, -1)
    width = SIDE + 2
    rr0 = np.clip(r0 + 1, 0, SIDE + 1)
    rr1 = np.clip(r0 + 2, 0, SIDE + 1)
    cc0 = np.clip(c0 + 1, 0, SIDE + 1)
    cc1 = np.clip(c0 + 2, 0, SIDE + 1)
    rows = np.arange(n)[:, None, None]
    top = flat[rows, rr0 * width + cc0] * (1 - fc) + flat[rows, rr0 * width + cc1] * fc
    bottom = flat[rows, rr1 * width + cc0] * (1 - fc) + flat[rows, rr1 * width + cc1] * fc
    out = top * (1 - fr) + bottom * fr
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(n, SIDE * SIDE)
