"""Reading image files as 8-bit pixels the way every stage sees them, and the one error type for a
file that is not a readable image.

Training (both input paths) and Detectron2's dataset mapper report an undecodable file as
``UnreadableImage``, with the file named in the message.

Both stages read a file as Detectron2's ``read_image`` does for detection, so that a backbone is
pretrained on the pictures it is later fine-tuned on:

* the EXIF orientation tag is applied (the image is turned or flipped upright, its size swapped
  for a quarter turn), with the same tag-to-transpose table as Detectron2;
* greyscale images of more than 8 bits per pixel (16-bit PNG, TIFF and PGM: PIL modes "I;16",
  "I;16B", "I", ...) are reduced to 8 bits by keeping the high byte (``value >> 8``), which is
  how PIL itself reads 16-bit colour PNGs; ``convert("RGB")`` would clip them at 255 instead and
  make nearly every pixel white. Detectron2's ``read_image`` clips them; the detection mapper
  (``detection/checks.py``) reads through ``read_8bit`` instead.
"""

import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# What PIL raises for a file that is not a readable image: OSError for a truncated file,
# DecompressionBombError for an image of more than twice Image.MAX_IMAGE_PIXELS (and, through
# ``open_image``, for one above Image.MAX_IMAGE_PIXELS). ``read_8bit`` raises ValueError for
# pixels of no known range.
DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)

# The EXIF orientations that ask for a turn or a flip (1 is upright; other values are invalid
# and, as in PIL and Detectron2, ignored), and those of them whose transpose is a quarter turn
# (5-8: with or without a flip), which swaps the width and the height.
_TURNED = range(2, 9)
_QUARTER_TURNED = range(5, 9)


class UnreadableImage(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def open_image(fp):
    """``Image.open`` that also refuses images above Image.MAX_IMAGE_PIXELS, which PIL only warns
    about: a decompression bomb is a bad image, not tens of GB of pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(fp)
        except Image.DecompressionBombWarning as exc:
            raise Image.DecompressionBombError(str(exc)) from None


def is_turned(image):
    """Whether an opened image's EXIF orientation asks for a turn or a flip (read from the
    header: nothing is decoded)."""
    return _orientation(image) in _TURNED


def _orientation(image):
    return image.getexif().get(ExifTags.Base.Orientation)


def upright_size(path):
    """``(width, height)`` of an image file as ``read_8bit`` returns it (EXIF orientation
    applied), read from the header: nothing is decoded. A file that is no image is an
    UnreadableImage naming it."""
    try:
        with open_image(path) as image:
            width, height = image.size
            quarter_turned = _orientation(image) in _QUARTER_TURNED
    except DECODE_ERRORS as exc:
        raise UnreadableImage(f"cannot read image {path!r}: {exc}") from exc
    return (height, width) if quarter_turned else (width, height)


def read_8bit(image):
    """An opened image decoded upright (EXIF orientation applied) with 8 bits per channel, in an
    8-bit PIL mode ("L", "RGB", "RGBA", "P", ...). Raises ValueError for pixels of no known
    range."""
    ImageOps.exif_transpose(image, in_place=True)  # also decodes, whether turned or not
    if image.mode == "F":
        raise ValueError("32-bit float pixels (PIL mode F) have no known range to map to 0..255")
    if image.mode == "I" or image.mode.startswith("I;16"):
        pixels = np.asarray(image)
        if image.mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
            # 16-bit files open as "I" with values 0..65535 (PGM's scaled to it by PIL); a
            # 32-bit TIFF may hold anything.
            raise ValueError(
                f"32-bit integer pixels (PIL mode I) from {pixels.min()} to {pixels.max()}: "
                "outside 0..65535, no known range to map to 0..255"
            )
        return Image.fromarray((pixels >> 8).astype(np.uint8))
    return image


def load_rgb(item):
    """An RGB PIL image from a path, or from a PIL image already in memory (CIFAR-100)."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with open(item, "rb") as f:
        # Decoded now, so a truncated file fails here and not inside a transform.
        return read_8bit(open_image(f)).convert("RGB")
