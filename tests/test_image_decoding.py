"""Image files are read alike in every stage (pretrain/images.py): greyscale of more than 8 bits
is scaled to 8 bits (not clipped at 255), and the EXIF orientation is applied, in pretraining's
CPU path as in Detectron2's reader for detection. The device path: tests/test_gpu_input.py."""

import numpy as np
import pytest
from PIL import Image

from pretrain.images import load_rgb

# A 16-bit horizontal gradient from black to white, 8 rows of 64 columns. Its low bytes are not
# those of 8-bit values widened (v * 257), so a reduction by rounding would differ from one
# keeping the high byte.
GRADIENT = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))

# Orientation tag -> the upright image from the stored one (HWC arrays), by the EXIF
# definitions: 2 mirrored, 3 turned 180, 4 flipped, 5 mirrored and turned 90 counter-clockwise
# (a transpose), 6 turned 90 clockwise, 7 mirrored and turned 90 clockwise, 8 turned 90
# counter-clockwise.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a[:, ::-1], -1),
    8: lambda a: np.rot90(a, 1),
}


def write_16bit(path, mode):
    """GRADIENT saved so that PIL opens it in ``mode``: a PNG ("I;16"), a big-endian TIFF
    ("I;16B") or a PGM ("I")."""
    if mode == "I;16B":
        Image.frombytes(mode, (64, 8), GRADIENT.astype(">u2").tobytes()).save(path, "TIFF")
    else:
        Image.fromarray(GRADIENT).save(path, {"I;16": "PNG", "I": "PPM"}[mode])
    assert Image.open(path).mode == mode
    return path


def write_turned_jpeg(path, orientation):
    """A 48x32 JPEG (width x height) of four flat colour blocks, unlike under any turn or flip,
    with the EXIF ``orientation`` tag; returns the stored pixels (HWC, decoded as stored)."""
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:16, :16] = (255, 0, 0)
    pixels[:16, 16:] = (0, 255, 0)
    pixels[16:, :32] = (0, 0, 255)
    pixels[16:, 32:] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)
    return np.asarray(Image.open(path).convert("RGB"))  # Image.open does not turn it


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16bit_greyscale_is_scaled_to_8_bits(tmp_path, mode):
    path = write_16bit(tmp_path / "deep.img", mode)
    pixels = np.asarray(load_rgb(path))
    assert pixels.shape == (8, 64, 3)
    expected = (GRADIENT >> 8).astype(np.uint8)  # the high byte; convert("RGB") clips at 255
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)


def test_pixels_of_no_known_range_are_refused(tmp_path):
    # A float TIFF, and 32-bit integers beyond 16 bits: any mapping to 0..255 would be a guess.
    Image.fromarray(GRADIENT.astype(np.float32) / 65535).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"mode F\) have no known range"):
        load_rgb(tmp_path / "float.tif")
    Image.fromarray(GRADIENT.astype(np.int32) * 2).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"from 0 to 131070: outside 0\.\.65535"):
        load_rgb(tmp_path / "wide.tif")


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = write_turned_jpeg(tmp_path / "turned.jpg", orientation)
    image = load_rgb(tmp_path / "turned.jpg")
    expected = UPRIGHT[orientation](stored)
    assert image.size == (expected.shape[1], expected.shape[0])
    assert image.size == ((32, 48) if orientation >= 5 else (48, 32))  # (width, height)
    np.testing.assert_array_equal(np.asarray(image), expected)
