"""Mixed precision (SOLVER.AMP) on CPU autocast.

bfloat16: the real engine runs the training and evaluation forwards in bfloat16, without a
gradient scaler, and keeps float32 weights. float16: ``train_step`` scales the loss, unscales the
gradients before the optimizer step and updates the scaler (on a small convolutional network,
against a float32 step); the engine creates the scaler only for float16 AMP, hands it to every
step, checkpoints it and restores it on resume. PyTorch's float16 convolution backward on the CPU
is a slow reference kernel (about 4 s per ResNet-18 step whatever the batch), so the engine's
float16 run uses a stand-in step that moves the scaler as a real step would (its math is the
first test's); its evaluation forwards are real.
"""

import os
import shutil

import pytest
import torch

from helpers import pretrain_argv
from pretrain.config.defaults import get_cfg
from pretrain.engine import trainer as engine
from pretrain.methods import MethodContext, build_method
from test_reliability import CONFIG, final_weights, run_in_process

# 2 iterations of 48 (32x32 crops), a checkpoint at the end only.
SHORT = [
    "INPUT.CROP_SIZE",
    "32",
    "INPUT.RESIZE_SIZE",
    "32",
    "SOLVER.EPOCHS",
    "1",
    "SOLVER.STEPS",
    "()",
    "SOLVER.IMS_PER_BATCH",
    "48",
    "SOLVER.CHECKPOINT_PERIOD",
    "100",
    "SOLVER.MAX_TO_KEEP",
    "0",
]


def args(root, out, dtype, *overrides, enabled=True, resume=False):
    amp = ["SOLVER.AMP.ENABLED", str(enabled), "SOLVER.AMP.DTYPE", dtype]
    flags = ["--resume"] if resume else []
    return pretrain_argv(CONFIG, root, out, *SHORT, *amp, *overrides, first=flags)


def checkpoint(out, iteration):
    return torch.load(os.path.join(out, f"model_{iteration:07d}.pth"), weights_only=True)


@pytest.fixture
def forward_dtypes(monkeypatch):
    """(training?, dtype of the classifier's output) of every forward of the trained model."""
    seen = []
    build = engine.build_model

    def recording_build(*args, **kwargs):
        model = build(*args, **kwargs)
        model.fc.register_forward_hook(
            lambda module, inputs, output: seen.append((module.training, output.dtype))
        )
        return model

    monkeypatch.setattr(engine, "build_model", recording_build)
    return seen


def test_bfloat16_autocasts_training_and_evaluation(forward_dtypes, synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    run_in_process(args(synthetic_root, out, "bfloat16"), fails=False)
    with open(os.path.join(out, "log.txt")) as f:
        assert "AMP bfloat16" in f.read()
    # 2 training steps, one evaluation batch of the 32 validation images.
    assert forward_dtypes == [(True, torch.bfloat16)] * 2 + [(False, torch.bfloat16)]
    assert "scaler" not in checkpoint(out, 2)
    assert all(
        v.dtype == torch.float32 for v in final_weights(out).values() if v.is_floating_point()
    )


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 4),
    )


def test_float16_step_scales_unscales_and_updates_the_scaler():
    cfg = get_cfg()
    cfg.METHOD.NAME = "baseline"
    method = build_method(
        MethodContext(
            cfg=cfg,
            num_classes=4,
            train_labels=[0, 1, 2, 3],
            device=torch.device("cpu"),
            per_rank_batch=8,
            epochs=1,
        )
    )
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(8, 3, 8, 8, generator=generator), torch.arange(8) % 4
    indices = torch.arange(8)
    steps = {}
    for amp in (None, torch.float16):
        model = small_cnn()
        dtypes = []
        model[-1].register_forward_hook(
            lambda module, inputs, output, seen=dtypes: seen.append(output.dtype)
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if amp else None
        before = [p.detach().clone() for p in model.parameters()]
        loss, _ = engine.train_step(method, model, optimizer, scaler, images, labels, indices, amp)
        steps[amp] = [p.detach() - b for p, b in zip(model.parameters(), before)]
        assert dtypes == [amp or torch.float32] and torch.isfinite(loss)
    # The float16 step moved the weights as the float32 step did: the gradients were unscaled.
    for fp16, fp32 in zip(steps[torch.float16], steps[None]):
        torch.testing.assert_close(fp16, fp32, rtol=2e-2, atol=1e-4)
    # ... and update() ran: one finite step counted towards growing the scale.
    assert scaler.state_dict()["_growth_tracker"] == 1 and scaler.get_scale() == 2.0**10


@pytest.fixture
def stand_in_steps(monkeypatch):
    """Replaces train_step by a step that records (scale before the step, AMP dtype) and halves
    the scale, as a step whose gradients overflowed does."""
    seen = []

    def step(method, module, optimizer, scaler, images, labels, indices, amp_dtype=None):
        seen.append((scaler.get_scale(), amp_dtype))
        scaler.scale(torch.ones(()))  # the scaler's first use creates its scale
        scaler.update(new_scale=scaler.get_scale() / 2)
        return torch.zeros(()), {}

    monkeypatch.setattr(engine, "train_step", step)
    return seen


def test_float16_engine_hands_over_checkpoints_and_restores_the_scaler(
    forward_dtypes, stand_in_steps, synthetic_root, tmp_path
):
    # 3 iterations of 32, checkpoints at 2 (mid-epoch) and 3.
    layout = ["SOLVER.IMS_PER_BATCH", "32", "SOLVER.CHECKPOINT_PERIOD", "2"]
    out = str(tmp_path / "run")
    run_in_process(args(synthetic_root, out, "float16", *layout), fails=False)
    assert stand_in_steps == [
        (2.0**16, torch.float16),
        (2.0**15, torch.float16),
        (2.0**14, torch.float16),
    ]
    assert (
        checkpoint(out, 2)["scaler"]["scale"] == 2.0**14
        and checkpoint(out, 3)["scaler"]["scale"] == 2.0**13
    )
    assert [dtype for training, dtype in forward_dtypes if not training] == [torch.float16]

    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    for name in ("config.yaml", "model_0000002.pth"):
        shutil.copy(os.path.join(out, name), resumed)
    with open(os.path.join(resumed, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    stand_in_steps.clear()
    run_in_process(args(synthetic_root, resumed, "float16", *layout, resume=True), fails=False)
    assert stand_in_steps == [(2.0**14, torch.float16)]
    assert checkpoint(resumed, 3)["scaler"] == checkpoint(out, 3)["scaler"]


@pytest.mark.parametrize(
    "enabled,dtype,scaler",
    [(True, "float16", True), (False, "float16", False), (True, "bfloat16", False)],
)
def test_a_scaler_exactly_for_float16_amp(
    enabled, dtype, scaler, synthetic_root, tmp_path, monkeypatch
):
    """The set-up only: training stops where it would start."""
    built = []
    monkeypatch.setattr(engine.Trainer, "train", lambda self, resume=False: built.append(self))
    run_in_process(args(synthetic_root, str(tmp_path / "run"), dtype, enabled=enabled), fails=False)
    (trainer,) = built
    assert isinstance(trainer.scaler, torch.amp.GradScaler) == scaler
    assert trainer.amp_dtype == (
        {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype] if enabled else None
    )
