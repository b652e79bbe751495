"""The dataset of the CPU input path: items are ``(image tensor, label, index)``, decoded and
augmented with PIL in the loader workers; and the collate function that drops unreadable files.

Keys are the ``(index, sample_seed)`` pairs of ``samplers``: the transform runs with torch's
generator seeded by the sample's seed.
"""

import torch
from torch.utils.data import Dataset

from pretrain.data.images import DECODE_ERRORS, UnreadableImage, load_rgb
from pretrain.data.samplers import seeded_rng

# DATA.ON_BAD_IMAGE: stop naming the file, or drop it from its batch and log it.
BAD_IMAGE_POLICIES = ("error", "skip")


class BadSample:
    """What a dataset returns, under DATA.ON_BAD_IMAGE skip, for a file it cannot read."""

    def __init__(self, path, error):
        self.path, self.error = path, error


def bad_image(on_bad_image, path, index, exc):
    """The ``BadSample`` to return for an unreadable training file under DATA.ON_BAD_IMAGE skip;
    under "error" raises ``UnreadableImage`` naming the file."""
    message = f"cannot read training image {path!r} (sample {index}): {exc}"
    if on_bad_image == "error":
        raise UnreadableImage(message + " (set DATA.ON_BAD_IMAGE skip to skip such files)") from exc
    return BadSample(str(path), str(exc))


class IndexedDataset(Dataset):
    """Wraps a dataset of (PIL image, label) pairs. Keys are ``(index, sample_seed)`` tuples
    produced by the samplers; items are ``(tensor, label, index)``, or, for an image that
    cannot be decoded under the "skip" policy, a ``BadSample`` that the collate function drops."""

    def __init__(self, samples, targets, transform, load_image=None, on_bad_image="error"):
        self.samples = samples  # a path per item (ImageFolder) or an indexable of images
        self.targets = list(targets)
        self.transform = transform
        self.load_image = load_image or load_rgb
        self.on_bad_image = on_bad_image

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, key):
        index, sample_seed = key
        try:
            image = self.load_image(self.samples[index])
        except DECODE_ERRORS as exc:
            return bad_image(self.on_bad_image, self.samples[index], index, exc)
        with seeded_rng(sample_seed):
            tensor = self.transform(image)
        return tensor, self.targets[index], index


def split_bad(items):
    """(the readable items, the paths of the ``BadSample``s) of a batch's items."""
    return (
        [it for it in items if not isinstance(it, BadSample)],
        [it.path for it in items if isinstance(it, BadSample)],
    )


def collate(items):
    """Stack good samples; returns (images, labels, indices, skipped_paths)."""
    good, skipped = split_bad(items)
    if not good:
        return None, None, None, skipped
    images = torch.stack([it[0] for it in good])
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    indices = torch.tensor([it[2] for it in good], dtype=torch.long)
    return images, labels, indices, skipped
