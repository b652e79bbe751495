"""DATALOADER.DECODE device (pretrain/gpu_input.py), on the CPU: batch order, shapes, per-sample
determinism, closeness to the PIL pipeline, and files nvjpeg cannot take."""
import os
import shutil

import pytest
import torch
from PIL import Image

from pretrain.cli import setup_cfg
from pretrain.data import build_dataset, build_loader
from pretrain.images import UnreadableImage
from pretrain.samplers import ShardedSampler

from conftest import ROOT

CPU_CONFIG = os.path.join(ROOT, "configs/pretrain/cpu_synthetic_R_18.yaml")


def _cfg(root, *opts):
    return setup_cfg(CPU_CONFIG, ["DATA.ROOT", root] + list(opts))


def _first_batch(cfg, train, batch=16, workers=0, epoch=1, seed=3):
    data = build_dataset(cfg, "train" if train else "val", train=train)
    sampler = ShardedSampler(len(data), seed=seed, shuffle=train, pad=train)
    sampler.set_epoch(epoch)
    images, labels, indices, skipped = next(iter(build_loader(data, sampler, batch, workers, False)))
    if not isinstance(images, torch.Tensor):
        images = images.to("cpu", memory_format=torch.channels_last)
    return images, labels, indices, skipped


def test_train_batches_match_the_pil_path_in_order_and_closely_in_pixels(synthetic_root):
    cpu = _first_batch(_cfg(synthetic_root), train=True)
    dev = _first_batch(_cfg(synthetic_root, "DATALOADER.DECODE", "device"), train=True)
    assert torch.equal(cpu[1], dev[1]) and torch.equal(cpu[2], dev[2])  # labels, indices, order
    assert dev[0].shape == cpu[0].shape == (16, 3, 56, 56) and dev[0].dtype == torch.float32
    assert dev[0].is_contiguous(memory_format=torch.channels_last)
    # Same crop box, flip, jitter and lighting draws; only kernels and rounding differ.
    diff = (dev[0] - cpu[0]).abs().mean(dim=(1, 2, 3))
    assert diff.max() < 0.06
    other_epoch = _first_batch(_cfg(synthetic_root), train=True, epoch=2)
    same_index = [int((other_epoch[2] == i).nonzero()[0]) for i in dev[2] if i in other_epoch[2]]
    assert same_index  # the same samples, other draws: far apart
    assert (dev[0][:len(same_index)] - other_epoch[0][same_index]).abs().mean() > 5 * diff.mean()


def test_augmentation_depends_only_on_seed_epoch_and_index(synthetic_root):
    cfg = _cfg(synthetic_root, "DATALOADER.DECODE", "device")
    a = _first_batch(cfg, train=True, batch=8, workers=0)
    b = _first_batch(cfg, train=True, batch=16, workers=2)  # other workers, other batch
    torch.testing.assert_close(b[0][:8], a[0], rtol=0, atol=0)
    assert torch.equal(a[2], b[2][:8])
    c = _first_batch(cfg, train=True, batch=8, epoch=2)
    assert not torch.equal(c[0], a[0])


def test_eval_resize_and_centre_crop_match_pil(synthetic_root):
    opts = ("INPUT.RESIZE_SIZE", "48", "INPUT.CROP_SIZE", "40")  # a real downscale
    cpu = _first_batch(_cfg(synthetic_root, *opts), train=False)
    dev = _first_batch(_cfg(synthetic_root, *opts, "DATALOADER.DECODE", "device"), train=False)
    assert torch.equal(cpu[2], dev[2]) and dev[0].shape == (16, 3, 40, 40)
    assert (dev[0] - cpu[0]).abs().mean() < 0.03


def test_non_jpeg_and_grayscale_files_are_decoded_by_pil(tmp_path, synthetic_root):
    root = tmp_path / "mixed"
    shutil.copytree(synthetic_root, root)
    folder = root / "train" / "class_000"
    first, second = sorted(folder.iterdir())[:2]
    Image.open(first).save(first, format="PNG")  # a PNG named .jpg, as in ImageNet
    Image.open(second).convert("L").save(second, format="JPEG")
    cpu = _first_batch(_cfg(str(root)), train=True, batch=96)
    dev = _first_batch(_cfg(str(root), "DATALOADER.DECODE", "device"), train=True, batch=96)
    assert torch.equal(cpu[2], dev[2]) and (dev[0] - cpu[0]).abs().mean() < 0.06


def test_truncated_jpeg_is_named(tmp_path, synthetic_root):
    root = tmp_path / "bad"
    shutil.copytree(synthetic_root, root)
    path = sorted((root / "train" / "class_001").iterdir())[0]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnreadableImage, match=path.name):
        _first_batch(_cfg(str(root), "DATALOADER.DECODE", "device"), train=True, batch=96)


def test_decode_key_is_checked(synthetic_root):
    with pytest.raises(ValueError, match="DATALOADER.DECODE"):
        build_dataset(_cfg(synthetic_root, "DATALOADER.DECODE", "gpu"), "train", train=True)


def test_batch_of_files_all_decoded_by_pil(tmp_path, synthetic_root):
    # Every file of a batch decoded in the workers (PNG, CMYK): no nvjpeg call is left to make.
    root = tmp_path / "pil_only"
    shutil.copytree(synthetic_root, root)
    for i, path in enumerate(sorted((root / "train").glob("*/*.jpg"))):
        image = Image.open(path)
        if i % 2:
            image.save(path, format="PNG")
        else:
            image.convert("CMYK").save(path, format="JPEG")
    cpu = _first_batch(_cfg(str(root)), train=True, batch=8)
    dev = _first_batch(_cfg(str(root), "DATALOADER.DECODE", "device"), train=True, batch=8)
    assert torch.equal(cpu[2], dev[2]) and dev[0].shape == (8, 3, 56, 56)
    assert (dev[0] - cpu[0]).abs().mean() < 0.06
