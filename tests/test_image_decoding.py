"""Image files are read alike in every stage (pretrain/data/images.py): greyscale of more than
8 bits is scaled to 8 bits (not clipped at 255), and the EXIF orientation is applied, in
pretraining's CPU path as in Detectron2's reader for detection. The device path:
tests/test_device_decode.py."""

import os

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, require_detectron2
from pretrain.data.images import load_rgb, upright_size

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
    assert upright_size(tmp_path / "turned.jpg") == image.size  # from the header alone
    np.testing.assert_array_equal(np.asarray(image), expected)


@pytest.mark.detectron2
def test_detection_reads_what_pretraining_reads(tmp_path):
    # Detectron2's own reader turns the image as pretraining does; ours (the dataset mapper's)
    # also scales 16-bit greyscale where Detectron2's clips it.
    require_detectron2()
    from detectron2.data.detection_utils import read_image as detectron2_read_image

    from detection.checks import read_image

    for orientation in UPRIGHT:
        path = tmp_path / f"turned_{orientation}.jpg"
        write_turned_jpeg(path, orientation)
        pretraining = np.asarray(load_rgb(path))
        np.testing.assert_array_equal(detectron2_read_image(str(path), "RGB"), pretraining)
        np.testing.assert_array_equal(read_image(str(path), "RGB"), pretraining)
    deep = str(write_16bit(tmp_path / "deep.png", "I;16"))
    np.testing.assert_array_equal(read_image(deep, "BGR"), np.asarray(load_rgb(deep)))
    assert (detectron2_read_image(deep, "RGB") == 255).mean() > 0.95  # why the mapper has its own


@pytest.mark.detectron2
def test_detection_mapper_scales_16bit_greyscale(tmp_path):
    require_detectron2()
    from detectron2.config import get_cfg
    from detectron2.data import detection_utils

    from detection.checks import NamedImageMapper
    from detection.config import add_pskd_detection_config

    cfg = get_cfg()
    add_pskd_detection_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/detection/faster_rcnn_R_18_FPN_tiny_cpu.yaml"))
    detectron2_read_image = detection_utils.read_image
    deep = str(write_16bit(tmp_path / "deep.png", "I;16"))
    record = {"file_name": deep, "height": 8, "width": 64, "image_id": 0, "annotations": []}
    image = NamedImageMapper(cfg, False)(record)["image"]  # resized to the test size
    # The gradient's mean (about 127) through the resize, not nearly 255 as clipped.
    assert abs(image.float().mean() - (GRADIENT >> 8).mean()) < 1
    assert detection_utils.read_image is detectron2_read_image  # restored after the call
