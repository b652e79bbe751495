"""The CIFAR-100 path: a small dataset written in the real on-disk format (the pickled batches of
cifar-100-python/ that torchvision.datasets.CIFAR100 reads) is loaded by the project's data code
with the shipped CIFAR config: both splits, their labels and class names, the 32x32 padded-crop
and flip augmentation, CIFAR-100 normalisation, and the CIFAR stem of the model."""

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

from helpers import ROOT, pretrain_argv
from pretrain.cli import setup_cfg
from pretrain.data.build import build_dataset
from pretrain.engine import trainer as engine
from test_reliability import run_in_process

CIFAR_CONFIG = os.path.join(ROOT, "configs/pretrain/cifar100_R_18_baseline.yaml")
# The CIFAR-100 training set's per-channel statistics (not ImageNet's).
MEAN = torch.tensor([0.5071, 0.4865, 0.4409]).view(3, 1, 1)
STD = torch.tensor([0.2673, 0.2564, 0.2762]).view(3, 1, 1)
# Class names in the meta file's order, which is not alphabetical.
NAMES = [f"fine_{(37 * i) % 100:02d}" for i in range(100)]
TRAIN, TEST = 20, 6


def _md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """``(root, {split: (rows, fine labels)})``: cifar-100-python/{train,test,meta} as the
    originals are laid out (each row 3072 uint8: the red plane, then green, then blue, each
    32x32 row-major), with random pixels and labels."""
    root = str(tmp_path_factory.mktemp("cifar"))
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", TRAIN), ("test", TEST)):
        rows = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 100, size=count)]
        batch = {
            "filenames": [f"{split}_{i}.png" for i in range(count)],
            "batch_label": f"{split} batch",
            "fine_labels": labels,
            "coarse_labels": [label // 5 for label in labels],
            "data": rows,
        }
        with open(os.path.join(folder, split), "wb") as f:
            pickle.dump(batch, f, protocol=2)
        splits[split] = (rows, labels)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump(
            {"fine_label_names": NAMES, "coarse_label_names": [f"coarse_{i}" for i in range(20)]},
            f,
            protocol=2,
        )
    return root, splits


@pytest.fixture(autouse=True)
def checksums_of_the_generated_files(cifar, monkeypatch):
    """torchvision checks each file against the original's MD5: give it the generated files'."""
    folder = os.path.join(cifar[0], "cifar-100-python")
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", _md5(os.path.join(folder, "train"))]])
    monkeypatch.setattr(cls, "test_list", [["test", _md5(os.path.join(folder, "test"))]])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=_md5(os.path.join(folder, "meta"))))


def cifar_cfg(root, *overrides):
    return setup_cfg(
        CIFAR_CONFIG,
        ["DATA.ROOT", root, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", *overrides],
    )


def as_image(row):
    """(3, 32, 32) float in [0, 1] of one stored row."""
    return torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255.0)


def test_both_splits_load_with_their_labels_and_class_names(cifar):
    root, splits = cifar
    cfg = cifar_cfg(root)
    assert (cfg.DATA.FORMAT, cfg.MODEL.NUM_CLASSES, cfg.INPUT.PRESET) == ("cifar100", 100, "cifar")
    for split, train in ((cfg.DATA.TRAIN_SPLIT, True), (cfg.DATA.VAL_SPLIT, False)):
        data = build_dataset(cfg, split, train=train)
        rows, labels = splits["train" if train else "test"]
        assert len(data) == len(rows) and data.targets == labels
        assert data.classes == NAMES


def test_evaluation_images_are_the_stored_pixels_normalised(cifar):
    root, splits = cifar
    data = build_dataset(cifar_cfg(root), "val", train=False)
    rows, labels = splits["test"]
    for index in range(TEST):
        image, label, returned = data[(index, 0)]
        assert image.shape == (3, 32, 32) and (label, returned) == (labels[index], index)
        torch.testing.assert_close(image, (as_image(rows[index]) - MEAN) / STD, rtol=0, atol=1e-5)


def test_training_images_are_padded_crops_and_flips_seeded_per_sample(cifar):
    root, splits = cifar
    data = build_dataset(cifar_cfg(root), "train", train=True)
    rows, labels = splits["train"]
    found = set()
    for index in range(TRAIN):
        image, label, _ = data[(index, 1000 + index)]
        assert image.shape == (3, 32, 32) and label == labels[index]
        assert torch.equal(image, data[(index, 1000 + index)][0])  # the same seed, the same pixels
        # Which 32x32 window of the 4-pixel zero-padded image, flipped or not, this is.
        pixels = image * STD + MEAN
        padded = torch.nn.functional.pad(as_image(rows[index]), (4, 4, 4, 4))
        windows = {
            (dy, dx): padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)
        }
        matches = [
            (dy, dx, flip)
            for (dy, dx), window in windows.items()
            for flip in (False, True)
            if torch.allclose(pixels, window.flip(-1) if flip else window, atol=1e-5)
        ]
        assert len(matches) == 1, (index, matches)
        found.add(matches[0])
    # The draws vary: shifted and unshifted, flipped and not.
    assert len({(dy, dx) for dy, dx, _ in found}) > 5 and {flip for _, _, flip in found} == {
        False,
        True,
    }


def test_the_cifar_run_builds_a_cifar_stem_and_evaluates_the_test_split(
    cifar, tmp_path, monkeypatch, one_thread
):
    """The set-up of tools/pretrain.py with the CIFAR config (training stops where it would
    start), then one evaluation of the untrained model."""
    root, splits = cifar
    built = []
    monkeypatch.setattr(engine.Trainer, "train", lambda self, resume=False: built.append(self))
    run_in_process(
        pretrain_argv(
            CIFAR_CONFIG,
            root,
            str(tmp_path / "run"),
            *["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"],
            *["SOLVER.IMS_PER_BATCH", "10", "TEST.IMS_PER_BATCH", "6"],
        ),
        fails=False,
    )
    (trainer,) = built
    assert (len(trainer.train_set), len(trainer.val_set), trainer.iters_per_epoch) == (
        TRAIN,
        TEST,
        2,
    )
    stem = trainer.model.conv1
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert (
        isinstance(trainer.model.maxpool, torch.nn.Identity)
        and trainer.model.fc.out_features == 100
    )
    logits = []
    trainer.model.fc.register_forward_hook(lambda module, inputs, output: logits.append(output))
    metrics, stats, _ = trainer.evaluate()
    assert metrics["num_samples"] == TEST and stats.shape == (TEST, 4)
    # Each sample's NLL is that of its own label in the test split.
    nll = torch.nn.functional.cross_entropy(
        torch.cat(logits), torch.tensor(splits["test"][1]), reduction="none"
    )
    torch.testing.assert_close(stats[:, 0], nll.double())
