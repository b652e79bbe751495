"""Reading image files, and the one error type for a file that is not a readable image.

Training (both input paths) and Detectron2's dataset mapper report an undecodable file as
``UnreadableImage``, with the file named in the message.
"""

import warnings

from PIL import Image, UnidentifiedImageError

# What PIL raises for a file that is not a readable image: OSError for a truncated file,
# DecompressionBombError for an image of more than twice Image.MAX_IMAGE_PIXELS (and, through
# ``open_image``, for one above Image.MAX_IMAGE_PIXELS).
DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


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


def load_rgb(item):
    """An RGB PIL image from a path, or from a PIL image already in memory (CIFAR-100)."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with open(item, "rb") as f:
        image = open_image(f)
        image.load()  # decode now, so a truncated file fails here and not inside a transform
        return image.convert("RGB")
