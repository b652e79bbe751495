"""The learning rate of every iteration: the shipped configs' schedules at their boundaries
(warmup start and end, the last iteration before and the first after each x0.1 step, the end of
training), and the Trainer setting exactly that schedule's value before each step."""

import os

import pytest
import torch

from helpers import ROOT
from pretrain.cli import setup_cfg
from pretrain.engine import trainer as engine
from pretrain.engine.lr_schedule import build_lr_schedule
from pretrain.engine.trainer import Trainer

CONFIGS = os.path.join(ROOT, "configs", "pretrain")

# ImageNet: 1,281,167 images in batches of 256 -> 5004 full batches an epoch; CIFAR-100:
# 50,000 images -> 390 batches of 128, 781 of 64; the generated CPU data: 96 images -> 6 of 16.
IMAGENET, CIFAR_128, CIFAR_64, CPU = 5004, 390, 781, 6

# config file, iterations per epoch, {iteration: learning rate}: the paper's recipes (the ImageNet
# and CIFAR-100 steps x0.1 at epochs 30/60 and 150/225; HSAKD's 150/180/210), and the CPU
# config's one-epoch linear warmup from 0.1 x BASE_LR.
BOUNDARIES = [
    (
        "imagenet_R_152_baseline.yaml",
        IMAGENET,
        {
            0: 0.1,
            30 * IMAGENET - 1: 0.1,
            30 * IMAGENET: 0.01,
            60 * IMAGENET - 1: 0.01,
            60 * IMAGENET: 0.001,
            90 * IMAGENET - 1: 0.001,
        },
    ),
    (
        "cifar100_R_18_baseline.yaml",
        CIFAR_128,
        {
            0: 0.1,
            150 * CIFAR_128 - 1: 0.1,
            150 * CIFAR_128: 0.01,
            225 * CIFAR_128 - 1: 0.01,
            225 * CIFAR_128: 0.001,
            300 * CIFAR_128 - 1: 0.001,
        },
    ),
    (
        "cifar100_R_18_lsskd.yaml",
        CIFAR_64,
        {
            0: 0.05,
            150 * CIFAR_64 - 1: 0.05,
            150 * CIFAR_64: 0.005,
            180 * CIFAR_64 - 1: 0.005,
            180 * CIFAR_64: 0.0005,
            210 * CIFAR_64 - 1: 0.0005,
            210 * CIFAR_64: 0.00005,
            240 * CIFAR_64 - 1: 0.00005,
        },
    ),
    (
        "cpu_synthetic_R_18.yaml",
        CPU,
        {
            0: 0.002,
            3: 0.02 * (0.1 + 0.9 * 3 / 6),
            5: 0.02 * (0.1 + 0.9 * 5 / 6),
            6: 0.02,
            4 * CPU - 1: 0.02,
            4 * CPU: 0.002,
            6 * CPU - 1: 0.002,
        },
    ),
]


@pytest.mark.parametrize(
    "name, iters_per_epoch, expected", BOUNDARIES, ids=[b[0] for b in BOUNDARIES]
)
def test_shipped_schedules_at_their_boundaries(name, iters_per_epoch, expected):
    cfg = setup_cfg(os.path.join(CONFIGS, name))
    schedule = build_lr_schedule(cfg, iters_per_epoch)
    total = cfg.SOLVER.EPOCHS * iters_per_epoch
    # The Trainer's learning rate at iteration i: BASE_LR * schedule(i / total iterations).
    lrs = {i: cfg.SOLVER.BASE_LR * schedule(i / total) for i in expected}
    assert lrs == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "steps, shown", [("(4, 2)", r"\[4, 2\]"), ("(6,)", r"\[6\]"), ("(2, 2)", r"\[2, 2\]")]
)
def test_bad_steps_are_refused_when_the_config_is_assembled(steps, shown):
    # Before the data scan and the process group, not when the schedule is built on the node.
    with pytest.raises(
        ValueError,
        match=rf"SOLVER.STEPS is {shown}, must be increasing epochs inside "
        r"\(0, SOLVER.EPOCHS=6\)",
    ):
        setup_cfg(os.path.join(CONFIGS, "cpu_synthetic_R_18.yaml"), ["SOLVER.STEPS", steps])


def test_the_trainer_sets_the_scheduled_lr_before_every_step(synthetic_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    # 96 training images in batches of 24: 4 iterations an epoch, 20 in all; warmup over epoch 0,
    # x0.1 at epochs 2 and 4.
    trainer = Trainer(
        setup_cfg(
            os.path.join(CONFIGS, "cpu_synthetic_R_18_baseline.yaml"),
            [
                "DATA.ROOT",
                synthetic_root,
                "OUTPUT_DIR",
                str(tmp_path),
                "SOLVER.IMS_PER_BATCH",
                "24",
                "SOLVER.EPOCHS",
                "5",
                "SOLVER.STEPS",
                "(2, 4)",
                "SOLVER.WARMUP_EPOCHS",
                "1.0",
                "SOLVER.WARMUP_FACTOR",
                "0.1",
                "SOLVER.BASE_LR",
                "0.02",
            ],
        )
    )
    assert trainer.iters_per_epoch == 4
    trainer.train_loader = [next(iter(trainer.train_loader))] * trainer.iters_per_epoch
    monkeypatch.setattr(trainer.checkpointer, "save", lambda *args: None)
    lrs = []

    def record_lr(method, module, optimizer, *args, **kwargs):
        lrs.append({group["lr"] for group in optimizer.param_groups})
        return torch.zeros(()), {}

    monkeypatch.setattr(engine, "train_step", record_lr)
    for epoch in range(5):
        trainer.train_one_epoch(epoch, 0)
    warmup = [
        0.1 + 0.9 * i / 4 for i in range(4)
    ]  # linear from 0.1 x over the 4 iterations of epoch 0
    expected = [0.02 * f for f in warmup + [1.0] * 4 + [0.1] * 8 + [0.01] * 4]
    assert all(len(lr) == 1 for lr in lrs)  # one rate for every parameter group
    assert [lr.pop() for lr in lrs] == pytest.approx(expected, rel=1e-9)


def test_steps_may_start_at_epoch_one_not_zero_and_warmup_may_be_off():
    name = os.path.join(CONFIGS, "cpu_synthetic_R_18.yaml")
    cfg = setup_cfg(name, ["SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_EPOCHS", "0.0"])
    schedule = build_lr_schedule(cfg, CPU)
    total = cfg.SOLVER.EPOCHS * CPU
    lrs = [schedule(i / total) for i in (0, CPU - 1, CPU, total - 1)]
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1], rel=1e-9)
    with pytest.raises(ValueError, match=r"inside \(0, SOLVER.EPOCHS=6\)"):
        setup_cfg(name, ["SOLVER.STEPS", "(0,)"])
