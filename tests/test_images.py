"""Image preprocessing into MNIST's convention: inversion, the 20×20 box, the centre of mass, round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from client import images
from tests.client_fixtures import dark_on_light, png_bytes, predict_locally, sample_digits


def bar_digit(dark_on_light: bool = False, shape: tuple[int, int] = (120, 80)) -> np.ndarray:
    """Return a picture (float32) of a thick upright stroke, 60 high and 15 wide, off-centre."""
    picture = np.zeros(shape, np.float32)
    picture[20:80, 10:25] = 255.0
    return 255.0 - picture if dark_on_light else picture


def test_dark_ink_on_light_paper_is_inverted() -> None:
    assert images.is_dark_on_light(bar_digit(dark_on_light=True))
    assert not images.is_dark_on_light(bar_digit())
    out = images.to_mnist(bar_digit(dark_on_light=True))
    assert out[0, 0] == 0 and out.max() == 255  # background black, ink white


def test_grey_paper_with_darker_ink_is_inverted() -> None:
    picture = np.full((60, 60), 150.0, np.float32)  # mid-grey paper: brightness alone cannot tell
    picture[10:50, 25:32] = 60.0
    assert images.is_dark_on_light(picture)
    out = images.to_mnist(picture)
    assert out[0, 0] == 0 and out.max() == 255


def test_mnist_digits_are_not_inverted() -> None:
    x, _ = sample_digits()
    assert not any(images.is_dark_on_light(d.reshape(28, 28).astype(np.float32)) for d in x[:200])


@pytest.mark.parametrize("dark", [False, True])
def test_output_is_28x28_uint8_with_the_box_in_20x20_and_the_mass_at_14(dark: bool) -> None:
    out = images.to_mnist(bar_digit(dark_on_light=dark))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    top, bottom, left, right = images.bounding_box(out, threshold=0)
    assert bottom - top == 20  # the long side fills the box
    assert right - left == 5  # 60×15 keeps its aspect ratio: 20×5
    cy, cx = images.centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_wide_digit_fits_its_width_into_20() -> None:
    picture = np.zeros((100, 200), np.float32)
    picture[40:60, 20:180] = 200.0  # 160 wide, 20 high
    out = images.to_mnist(picture)
    top, bottom, left, right = images.bounding_box(out, threshold=0)
    assert right - left == 20 and bottom - top in (2, 3)


def test_blank_picture_stays_blank() -> None:
    assert not images.to_mnist(np.full((50, 50), 255.0, np.float32)).any()
    assert not images.to_mnist(np.zeros((28, 28), np.float32)).any()


def test_mnist_digits_round_trip_nearly_unchanged() -> None:
    x, _ = sample_digits()
    digits = x[:300]
    out = np.stack([images.to_mnist(d.reshape(28, 28).astype(np.float32)) for d in digits]).reshape(-1, 784)
    assert np.abs(out.astype(int) - digits).mean() < 1.0  # pixels, out of 255
    assert (predict_locally(out) == predict_locally(digits)).mean() >= 0.95
    for o in out[:50]:
        cy, cx = images.centre_of_mass(o.reshape(28, 28))
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_scanned_digits_read_like_their_mnist_originals() -> None:
    x, y = sample_digits()
    rng = np.random.default_rng(1)
    digits = x[:100]
    scans = [
        png_bytes(dark_on_light(d, rng), fmt) for d, fmt in zip(digits, ["PNG", "JPEG"] * 50, strict=True)
    ]
    out = np.stack([images.load(io.BytesIO(s)) for s in scans]).reshape(-1, 784)
    original = predict_locally(digits)
    assert (predict_locally(out) == original).mean() >= 0.95
    assert (predict_locally(out) == y[:100]).mean() >= 0.8


def test_transparent_background_counts_as_white() -> None:
    rgba = np.zeros((60, 60, 4), np.uint8)  # transparent everywhere…
    rgba[10:50, 25:33] = (0, 0, 0, 255)  # …but an opaque black stroke
    out = images.load(io.BytesIO(png_bytes(Image.fromarray(rgba, "RGBA"))))
    assert out[0, 0] == 0 and out.max() == 255
    assert images.bounding_box(out, threshold=0)[1] - images.bounding_box(out, threshold=0)[0] == 20


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    picture = np.zeros((40, 40), np.uint16)
    picture[5:35, 15:22] = 60000
    image = Image.fromarray(picture)
    assert image.mode.startswith("I")
    out = images.load(io.BytesIO(png_bytes(image)))
    assert out.max() == 255 and out[0, 0] == 0


def test_unreadable_file_raises_image_error_naming_it(tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(images.ImageError, match="broken.png"):
        images.load(bad)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(png_bytes(Image.fromarray(np.full((50, 50), 9, np.uint8)))[:60])
    with pytest.raises(images.ImageError, match="cut.png"):
        images.load(truncated)
