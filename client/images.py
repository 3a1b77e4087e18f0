"""Image files → 28×28 uint8 digits in MNIST's convention, the way MNIST itself was made.

MNIST digits are light strokes on a black background, size-normalised (antialiased) to fit a
20×20 box with their aspect ratio kept, then placed in a 28×28 field so that their centre of mass
(intensity-weighted, in pixel indices) sits at (14, 14). `to_mnist` does the same to any picture:

1. grayscale (transparency composited over white, EXIF rotation applied);
2. the background is the median of the border; the ink is what departs from it: if the ink is
   darker than the background in total (dark on light, like a scan), the image is inverted;
3. the background level and the border's noise are subtracted, and the ink stretched to 0–255;
4. cropped to the bounding box of the ink (above a fifth of its strongest value), resized to fit
   20×20 (Lanczos, antialiased);
5. pasted into 28×28, shifted by whole pixels so that its centre of mass is at (14, 14) ± 0.5.

An MNIST digit goes through unchanged but for rounding: its border is black, its box 20×20.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

#: Side of the output image (pixels).
SIDE = 28
#: Side of the box the digit is fitted into (pixels).
BOX = 20
#: Where the centre of mass goes, in pixel indices (row, column).
CENTRE = 14.0
#: Width of the border that tells the background, as a share of the image's shorter side.
BORDER_SHARE = 0.05
#: Ink fainter than this share of the strongest ink does not widen the digit's box (JPEG ringing).
BOX_THRESHOLD = 0.2
#: Share of border pixels allowed above the noise floor (digits may touch the border).
NOISE_QUANTILE = 0.9
#: The noise floor never removes more than this share of the ink's full scale.
MAX_NOISE_SHARE = 0.25


class ImageError(ValueError):
    """An image file that cannot be read."""


def load(path: str | Path | IO[bytes]) -> np.ndarray:
    """Read an image file (a path or a binary stream) and return it in MNIST's convention: (28, 28) uint8."""
    try:
        with Image.open(path) as image:
            gray = grayscale(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow raises SyntaxError for some broken PNG chunks, OSError for truncated data.
        raise ImageError(f"{path}: not a readable image ({_one_line(exc)})") from None
    return to_mnist(gray)


def grayscale(image: Image.Image) -> np.ndarray:
    """Return the image's brightness as float32 (h, w) in 0–255; transparency counts as white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = float(values.max()) if values.size else 0.0
        return values * (255.0 / 65535.0) if top > 255 else values
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Return a grayscale picture (h, w) of one digit as MNIST's (28, 28) uint8."""
    ink = ink_image(np.asarray(gray, dtype=np.float32))
    box = bounding_box(ink)
    if box is None:
        return np.zeros((SIDE, SIDE), np.uint8)  # a blank picture stays blank
    top, bottom, left, right = box
    return centre(fit_box(ink[top:bottom, left:right]))


def border(gray: np.ndarray) -> np.ndarray:
    """Return the pixels of the image's outer frame (BORDER_SHARE of the shorter side, ≥ 1 pixel)."""
    h, w = gray.shape
    k = max(1, int(round(min(h, w) * BORDER_SHARE)))
    if 2 * k >= min(h, w):
        return gray.ravel()
    return np.concatenate(
        [gray[:k].ravel(), gray[-k:].ravel(), gray[k:-k, :k].ravel(), gray[k:-k, -k:].ravel()]
    )


def is_dark_on_light(gray: np.ndarray) -> bool:
    """Return True when the ink is darker than the background (the median of the border)."""
    background = float(np.median(border(gray)))
    darker = np.clip(background - gray, 0, None).sum()
    lighter = np.clip(gray - background, 0, None).sum()
    return bool(darker > lighter)


def ink_image(gray: np.ndarray) -> np.ndarray:
    """Return light-on-dark ink (h, w) float32: background and border noise at 0, the strongest ink at 255."""
    if is_dark_on_light(gray):
        gray = 255.0 - gray
    edge = border(gray)
    ink = np.clip(gray - float(np.median(edge)), 0, None)
    top = float(ink.max())
    if top <= 0:
        return ink
    # What the border still holds above the background is noise (JPEG ringing, paper grain).
    noise = float(np.quantile(np.clip(edge - float(np.median(edge)), 0, None), NOISE_QUANTILE))
    ink = np.clip(ink - min(noise, MAX_NOISE_SHARE * top), 0, None)
    top = float(ink.max())
    return ink * (255.0 / top) if top > 0 else ink


def bounding_box(ink: np.ndarray, threshold: float = BOX_THRESHOLD) -> tuple[int, int, int, int] | None:
    """Return (top, bottom, left, right), bottom/right exclusive, of the ink above `threshold` × its max."""
    top = float(ink.max()) if ink.size else 0.0
    if top <= 0:
        return None
    strong = ink > threshold * top
    rows = np.flatnonzero(strong.any(axis=1))
    cols = np.flatnonzero(strong.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit_box(patch: np.ndarray) -> np.ndarray:
    """Return the patch resized to fit BOX×BOX with its aspect ratio kept, strongest ink at 255."""
    h, w = patch.shape
    scale = BOX / max(h, w)
    size = (max(1, min(BOX, round(w * scale))), max(1, min(BOX, round(h * scale))))
    if size != (w, h):
        patch = np.asarray(
            Image.fromarray(np.ascontiguousarray(patch, dtype=np.float32)).resize(
                size, Image.Resampling.LANCZOS
            )
        )
        patch = np.clip(patch, 0, None)  # Lanczos overshoots below zero next to strokes
        top = float(patch.max())
        if top > 0:
            patch = patch * (255.0 / top)
    return patch


def centre(patch: np.ndarray) -> np.ndarray:
    """Return a SIDE×SIDE uint8 image with the patch placed so its centre of mass is at (14, 14)."""
    h, w = patch.shape
    cy, cx = centre_of_mass(patch)
    top, left = int(round(CENTRE - cy)), int(round(CENTRE - cx))
    out = np.zeros((SIDE, SIDE), np.float32)
    # Clip the placement to the field: a very lopsided digit may lose an edge, as in MNIST.
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, SIDE), min(left + w, SIDE)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """Return the intensity-weighted (row, column) centre of an image, in pixel indices."""
    weights = np.asarray(image, dtype=np.float64)
    mass = weights.sum()
    return (
        float(weights.sum(axis=1) @ np.arange(weights.shape[0]) / mass),
        float(weights.sum(axis=0) @ np.arange(weights.shape[1]) / mass),
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
