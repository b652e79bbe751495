"""Data: stable sample indices, sharded samplers, per-sample augmentation seeds, presets."""

import os

import pytest
import torch

from helpers import ROOT
from pretrain.cli import setup_cfg
from pretrain.data.build import build_dataset, build_loader
from pretrain.data.samplers import ShardedSampler, seeded_rng
from pretrain.data.transforms import PCA_EIGVAL, PCA_EIGVEC, Lighting, build_train_transform

CPU_CONFIG = os.path.join(ROOT, "configs/pretrain/cpu_synthetic_R_18.yaml")


def test_training_shards_cover_everything_with_padding():
    shards = [list(ShardedSampler(10, r, 3, seed=1)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    seen = [i for s in shards for i, _ in s]
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 12  # 2 padded duplicates


def test_eval_shards_are_disjoint_and_complete():
    shards = [[i for i, _ in ShardedSampler(10, r, 3, shuffle=False, pad=False)] for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert [len(ShardedSampler(10, r, 3, shuffle=False, pad=False)) for r in range(3)] == [4, 3, 3]


def test_sampler_order_depends_on_epoch_and_start_skips():
    s = ShardedSampler(50, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert [i for i, _ in e0] != [i for i, _ in e1]
    s.set_start(20)
    assert list(s) == e1[20:] and len(s) == 30
    s.set_epoch(1)  # a new epoch starts at its beginning
    assert list(s) == e1
    # per-sample seeds differ between epochs for the same index
    assert dict(e0)[7] != dict(e1)[7]


def test_dataset_returns_stable_indices_and_labels(synthetic_root):
    cfg = setup_cfg(CPU_CONFIG, ["DATA.ROOT", synthetic_root])
    data = build_dataset(cfg, "train", train=True)
    assert len(data) == 96 and data.classes == [f"class_{c:03d}" for c in range(4)]
    image, label, index = data[(37, 123)]
    assert index == 37 and label == data.targets[37]
    assert image.shape == (3, 56, 56)


@pytest.mark.integration
def test_augmentation_is_seeded_per_sample_not_per_worker(synthetic_root):
    cfg = setup_cfg(CPU_CONFIG, ["DATA.ROOT", synthetic_root])
    data = build_dataset(cfg, "train", train=True)
    batches = []
    for workers in (0, 2):
        sampler = ShardedSampler(len(data), seed=5)
        sampler.set_epoch(2)
        batches.append(next(iter(build_loader(data, sampler, 8, workers, False))))
    torch.testing.assert_close(batches[0][0], batches[1][0], rtol=0, atol=0)
    assert torch.equal(batches[0][2], batches[1][2])
    # a different seed gives a different crop of the same sample
    a, _, _ = data[(0, 1)]
    b, _, _ = data[(0, 2)]
    assert not torch.equal(a, b)


def test_seeded_rng_draws_the_seed_s_stream_and_leaves_the_caller_s_alone():
    torch.manual_seed(9)
    caller = torch.rand(3)
    torch.manual_seed(9)
    with seeded_rng(123):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), caller)  # as if the block had not run
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), inside)


def test_lighting_adds_pca_noise_per_image():
    torch.manual_seed(0)
    img = torch.zeros(3, 2, 2)
    out = Lighting(0.1)(img)
    torch.manual_seed(0)
    alpha = torch.randn(3) * 0.1
    rgb = torch.tensor(PCA_EIGVEC) @ (alpha * torch.tensor(PCA_EIGVAL))
    torch.testing.assert_close(out, rgb.view(3, 1, 1).expand(3, 2, 2))
    assert torch.equal(Lighting(0.0)(img), img)


def test_colour_jitter_and_lighting_at_strength_0_are_not_built():
    def kinds(*opts):
        return [
            type(t).__name__ for t in build_train_transform(setup_cfg(CPU_CONFIG, opts)).transforms
        ]

    assert {"ColorJitter", "Lighting"} <= set(kinds())
    crop_flip_tensor = ["RandomResizedCrop", "RandomHorizontalFlip", "PILToTensor"]
    off = kinds("INPUT.COLOR_JITTER", "0", "INPUT.LIGHTING_STD", "0")
    assert off == crop_flip_tensor + ["ConvertImageDtype", "Normalize"]


def test_missing_root_and_class_count_mismatch_are_named(tmp_path, synthetic_root):
    cfg = setup_cfg(CPU_CONFIG, ["DATA.ROOT", str(tmp_path / "absent")])
    with pytest.raises(FileNotFoundError, match="absent"):
        build_dataset(cfg, "train", train=True)
    cfg = setup_cfg(CPU_CONFIG, ["DATA.ROOT", synthetic_root, "MODEL.NUM_CLASSES", "10"])
    with pytest.raises(ValueError, match="MODEL.NUM_CLASSES is 10 but .* has 4 classes"):
        build_dataset(cfg, "train", train=True)


def test_cifar100_absent_gives_clear_error(tmp_path):
    cfg = setup_cfg(
        os.path.join(ROOT, "configs/pretrain/cifar100_R_18_pskd.yaml"), ["DATA.ROOT", str(tmp_path)]
    )
    with pytest.raises(FileNotFoundError, match="cifar-100-python.*never downloaded"):
        build_dataset(cfg, "train", train=True)
