"""Data augmentation for 28×28 digits: small random affine moves. NumPy only.

Every function takes uint8 images as rows (n, 784) and an explicit `np.random.Generator`, so a
training run is a pure function of its seed.
"""

from __future__ import annotations

import numpy as np

SIDE = 28
#: Images warped at once by `random_affine` (bounds its temporary memory to ~30 MB).
CHUNK = 1024


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


def gaussian_matrix(sigma: float) -> np.ndarray:
    """Return the (28, 28) matrix G such that G·v blurs a column v with a Gaussian of `sigma` pixels."""
    idx = np.arange(SIDE)
    g = np.exp(-((idx[:, None] - idx[None, :]) ** 2) / (2.0 * sigma**2))
    # Unit peak response to a constant field, as Simard's convolution with a normalised kernel.
    return g / g.sum(axis=1, keepdims=True)


def random_affine(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    max_shift: float = 2.0,
    max_rotation: float = 10.0,
    max_scale: float = 0.1,
    max_shear: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> np.ndarray:
    """Return x (n, 784) uint8 with each image rotated (degrees), scaled, sheared and shifted at random.

    With `elastic_alpha` > 0, each pixel also moves along a random smooth field (Simard et al.
    2003): uniform noise in [−1, 1] smoothed by a Gaussian of `elastic_sigma` pixels, times alpha.
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
    matrices = np.stack([cos, -sin + shear * cos, sin, cos + shear * sin], axis=1)
    smooth = gaussian_matrix(elastic_sigma) if elastic_alpha > 0 else None
    out = np.empty((n, SIDE * SIDE), dtype=np.uint8)
    # In blocks: the sampling temporaries are ~40 bytes a pixel, 3 GB for 60,000 images at once.
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        out[lo:hi] = _warp(x[lo:hi], matrices[lo:hi], shift[lo:hi], rng, smooth, elastic_alpha)
    return out


def _warp(
    x: np.ndarray,
    matrices: np.ndarray,
    shift: np.ndarray,
    rng: np.random.Generator,
    smooth: np.ndarray | None,
    alpha: float,
) -> np.ndarray:
    """Return x (n, 784) resampled bilinearly through per-image inverse maps (and elastic fields)."""
    n = len(x)
    centre = (SIDE - 1) / 2.0
    grid = (np.arange(SIDE) - centre).astype(np.float32)
    r = grid[None, :, None]
    c = grid[None, None, :]
    m = matrices.astype(np.float32)[:, :, None, None]
    off = (centre - shift).astype(np.float32)
    src_r = m[:, 0] * r + m[:, 1] * c + off[:, 0, None, None]
    src_c = m[:, 2] * r + m[:, 3] * c + off[:, 1, None, None]
    if smooth is not None:
        for src in (src_r, src_c):
            field = rng.uniform(-1.0, 1.0, (n, SIDE, SIDE))
            # A separable Gaussian blur is two matrix products: G·F·Gᵀ.
            src += (alpha * (smooth @ field @ smooth.T)).astype(np.float32)
    r0 = np.floor(src_r)
    c0 = np.floor(src_c)
    fr = (src_r - r0).astype(np.float32)
    fc = (src_c - c0).astype(np.float32)
    # Pad by one pixel of background so that every neighbour index is valid after clipping.
    width = SIDE + 2
    padded = np.zeros((n, width, width), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = x.reshape(n, SIDE, SIDE)
    rr0 = np.clip(r0.astype(np.intp) + 1, 0, SIDE + 1)
    rr1 = np.clip(rr0 + 1, 0, SIDE + 1)
    cc0 = np.clip(c0.astype(np.intp) + 1, 0, SIDE + 1)
    cc1 = np.clip(cc0 + 1, 0, SIDE + 1)
    # Gather from the flat array with one offset per image: much faster than 2-D fancy indexing.
    base = (np.arange(n) * (width * width))[:, None, None]
    flat = padded.ravel()
    top_row, bottom_row = base + rr0 * width, base + rr1 * width
    left, right = 1 - fc, fc
    top = flat.take(top_row + cc0) * left + flat.take(top_row + cc1) * right
    bottom = flat.take(bottom_row + cc0) * left + flat.take(bottom_row + cc1) * right
    out = top * (1 - fr) + bottom * fr
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(n, SIDE * SIDE)
