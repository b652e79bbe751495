"""The input pipeline built from the config: the dataset of a split (DATA.FORMAT, DATA.ROOT),
on the CPU path (``datasets``) or the device-decode path (``device_decode``) as DATALOADER.DECODE
says, and its loader."""

import os

import torch
from PIL import Image
from torch.utils.data import DataLoader

from pretrain.data.datasets import IndexedDataset, collate
from pretrain.data.samplers import ShardedSampler
from pretrain.data.transforms import build_eval_transform, build_train_transform

# DATA.FORMAT: an ImageFolder tree per split, or torchvision's local CIFAR-100 copy.
FORMATS = ("imagefolder", "cifar100")
# DATALOADER.DECODE: PIL in the loader workers, or torchvision.io on MODEL.DEVICE (device_decode).
DECODES = ("cpu", "device")


def build_dataset(cfg, split, train):
    """The training or validation set named by DATA.FORMAT / DATA.ROOT / DATA.*_SPLIT."""
    # torchvision here, not with the module: see pretrain.models.build_resnet.
    import torchvision

    from pretrain.data.device_decode import device_decode_dataset

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
            raise FileNotFoundError(
                f"dataset split folder {folder!r} not found (DATA.ROOT={root!r})"
            )
        try:
            base = torchvision.datasets.ImageFolder(folder)
        except FileNotFoundError as exc:  # e.g. an empty class folder
            raise FileNotFoundError(f"ImageFolder {folder!r}: {exc}") from exc
        data = IndexedDataset(
            [p for p, _ in base.samples],
            base.targets,
            transform,
            on_bad_image=cfg.DATA.ON_BAD_IMAGE,
        )
        data.classes = base.classes
    else:  # "cifar100"
        try:
            base = torchvision.datasets.CIFAR100(root, train=train, download=False)
        except RuntimeError as exc:
            raise FileNotFoundError(
                f"CIFAR-100 not found under DATA.ROOT {root!r}: expected torchvision's local copy "
                f"({os.path.join(root, 'cifar-100-python')}); it is never downloaded ({exc})"
            ) from exc
        images = [Image.fromarray(a) for a in base.data]
        data = IndexedDataset(images, base.targets, transform, on_bad_image=cfg.DATA.ON_BAD_IMAGE)
        data.classes = base.classes
    if cfg.DATALOADER.DECODE == "device":
        data = device_decode_dataset(data, cfg, train)
    if len(data.classes) != cfg.MODEL.NUM_CLASSES:
        raise ValueError(
            f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but {root!r} split {split!r} "
            f"has {len(data.classes)} classes"
        )
    return data


def build_loader(dataset, sampler, batch_size, num_workers, pin_memory, drop_last=False):
    # A generator of its own: otherwise every iter(loader) draws a worker seed from the global
    # RNG, which CutMix uses and checkpoints, and a resumed run would draw once more or less.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator(),
        collate_fn=getattr(dataset, "collate", collate),
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def build_train_loader(cfg, dataset, sampler, batch_size, device):
    """The training loader: ``batch_size`` keys a step from the method's sampler, the last
    partial batch of an epoch dropped (see ``engine.full_batches_per_epoch``)."""
    return build_loader(
        dataset,
        sampler,
        batch_size,
        cfg.DATALOADER.NUM_WORKERS,
        device.type == "cuda",
        drop_last=True,
    )


def build_val_loader(cfg, dataset, rank, world_size, device):
    """The validation loader of this rank: its shard of the set in order, every sample once
    overall, TEST.IMS_PER_BATCH / world_size a batch."""
    sampler = ShardedSampler(len(dataset), rank, world_size, shuffle=False, pad=False)
    return build_loader(
        dataset,
        sampler,
        cfg.TEST.IMS_PER_BATCH // world_size,
        cfg.DATALOADER.NUM_WORKERS,
        device.type == "cuda",
    )
