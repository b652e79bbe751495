"""Datasets that return (image, label, index), the samplers that feed them, and the loaders.

Every sample is keyed by its stable index (its position in the dataset's sample list, the same
on every rank): PS-KD's prediction table is addressed by it. Augmentation randomness is seeded
per sample from (SEED, epoch, index), so a batch's pixels do not depend on the number of
loader workers or on where a resumed run restarted.
"""
import logging
import os
import warnings

import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from .transforms import build_eval_transform, build_train_transform

logger = logging.getLogger(__name__)

# Errors that mean "this file is not a readable image" (PIL raises OSError for truncated files,
# DecompressionBombError for images of more than twice Image.MAX_IMAGE_PIXELS).
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableImage(ValueError):
    """An image file that cannot be decoded under DATA.ON_BAD_IMAGE error; the message names it."""


def open_image(fp):
    """``Image.open`` that also refuses images above Image.MAX_IMAGE_PIXELS, which PIL only warns
    about: a decompression bomb is a bad image, not tens of GB of pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(fp)
        except Image.DecompressionBombWarning as exc:
            raise Image.DecompressionBombError(str(exc)) from None


class IndexedDataset(Dataset):
    """Wraps a dataset of (PIL image, label) pairs. Keys are ``(index, sample_seed)`` tuples
    produced by the samplers below; items are ``(tensor, label, index)``, or, for an image that
    cannot be decoded under the "skip" policy, a ``BadSample`` that the collate function drops."""

    def __init__(self, samples, targets, transform, load_image=None, on_bad_image="error"):
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"DATA.ON_BAD_IMAGE must be 'error' or 'skip', got {on_bad_image!r}")
        self.samples = samples          # a path per item (ImageFolder) or an indexable of images
        self.targets = list(targets)
        self.transform = transform
        self.load_image = load_image or _load_rgb
        self.on_bad_image = on_bad_image

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, key):
        index, sample_seed = key
        try:
            image = self.load_image(self.samples[index])
        except _DECODE_ERRORS as exc:
            message = f"cannot read training image {self.samples[index]!r} (sample {index}): {exc}"
            if self.on_bad_image == "error":
                raise UnreadableImage(message + " (set DATA.ON_BAD_IMAGE skip to skip such files)") from exc
            return BadSample(str(self.samples[index]), str(exc))
        # fork_rng keeps the caller's CPU RNG untouched when loading in the main process.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(sample_seed)
            tensor = self.transform(image)
        return tensor, self.targets[index], index


class BadSample:
    def __init__(self, path, error):
        self.path, self.error = path, error


def _load_rgb(item):
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with open(item, "rb") as f:
        image = open_image(f)
        image.load()  # decode now, so a truncated file fails here and not inside a transform
        return image.convert("RGB")


def collate(items):
    """Stack good samples; returns (images, labels, indices, skipped_paths)."""
    good = [it for it in items if not isinstance(it, BadSample)]
    skipped = [it.path for it in items if isinstance(it, BadSample)]
    if not good:
        return None, None, None, skipped
    images = torch.stack([it[0] for it in good])
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    indices = torch.tensor([it[2] for it in good], dtype=torch.long)
    return images, labels, indices, skipped


def sample_seed(seed, epoch, index):
    """Seed of one sample's augmentation: distinct for every (run seed, epoch, index)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 2_654_435_761) % (2**63 - 1)


class ShardedSampler(Sampler):
    """One global order per epoch (a permutation seeded by (seed, epoch) when shuffling),
    padded to a multiple of the world size when ``pad`` (training, as DistributedSampler does),
    and dealt out rank::world_size. Yields ``(index, sample_seed)``.

    ``set_epoch`` selects the epoch; ``set_start(k)`` skips this rank's first k samples of it
    (resuming mid-epoch). Without padding (evaluation) every index is seen exactly once overall.
    """

    def __init__(self, num_samples, rank=0, world_size=1, seed=0, shuffle=True, pad=True):
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle, self.pad = seed, shuffle, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch):
        self.epoch, self.start = epoch, 0

    def set_start(self, start):
        self.start = start

    def global_order(self, epoch):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.pad:
            total = -(-self.num_samples // self.world_size) * self.world_size
            order = torch.cat([order, order[: total - self.num_samples]])
        return order

    def local_order(self):
        return self.global_order(self.epoch)[self.rank:: self.world_size]

    def __len__(self):
        if self.pad:
            return -(-self.num_samples // self.world_size) - self.start
        return len(range(self.rank, self.num_samples, self.world_size)) - self.start

    def __iter__(self):
        for index in self.local_order()[self.start:].tolist():
            yield index, sample_seed(self.seed, self.epoch, index)


def build_dataset(cfg, split, train):
    """The training or validation set named by DATA.FORMAT / DATA.ROOT / DATA.*_SPLIT."""
    transform = build_train_transform(cfg) if train else build_eval_transform(cfg)
    root = cfg.DATA.ROOT
    if not root:
        raise ValueError("DATA.ROOT is empty: set it to the folder holding the dataset")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"DATA.ROOT {root!r} does not exist or is not a folder")
    fmt = cfg.DATA.FORMAT
    if fmt == "imagefolder":
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"dataset split folder {folder!r} not found (DATA.ROOT={root!r})")
        try:
            base = torchvision.datasets.ImageFolder(folder)
        except FileNotFoundError as exc:  # e.g. an empty class folder
            raise FileNotFoundError(f"ImageFolder {folder!r}: {exc}") from exc
        data = IndexedDataset([p for p, _ in base.samples], base.targets, transform,
                              on_bad_image=cfg.DATA.ON_BAD_IMAGE)
        data.classes = base.classes
    elif fmt == "cifar100":
        try:
            base = torchvision.datasets.CIFAR100(root, train=train, download=False)
        except RuntimeError as exc:
            raise FileNotFoundError(
                f"CIFAR-100 not found under DATA.ROOT {root!r}: expected torchvision's local copy "
                f"({os.path.join(root, 'cifar-100-python')}); it is never downloaded ({exc})") from exc
        images = [Image.fromarray(a) for a in base.data]
        data = IndexedDataset(images, base.targets, transform, on_bad_image=cfg.DATA.ON_BAD_IMAGE)
        data.classes = base.classes
    else:
        raise ValueError(f"DATA.FORMAT: unknown format {fmt!r} (expected 'imagefolder' or 'cifar100')")
    if cfg.DATALOADER.DECODE == "device":
        if fmt != "imagefolder":
            raise ValueError(f"DATALOADER.DECODE device reads JPEG files: it needs DATA.FORMAT imagefolder, got {fmt!r}")
        from .gpu_input import device_decode_dataset  # imports this module

        data = device_decode_dataset(data, cfg, train)
    elif cfg.DATALOADER.DECODE != "cpu":
        raise ValueError(f"DATALOADER.DECODE must be 'cpu' or 'device', got {cfg.DATALOADER.DECODE!r}")
    if len(data.classes) != cfg.MODEL.NUM_CLASSES:
        raise ValueError(f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but {root!r} split {split!r} "
                         f"has {len(data.classes)} classes")
    return data


def build_loader(dataset, sampler, batch_size, num_workers, pin_memory, drop_last=False):
    # A generator of its own: otherwise every iter(loader) draws a worker seed from the global
    # RNG, which CutMix uses and checkpoints, and a resumed run would draw once more or less.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator(),
                      collate_fn=getattr(dataset, "collate", collate), pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=num_workers > 0)
