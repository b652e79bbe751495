"""The branches of --resume, on the real engine (1 epoch of 6 iterations, 32x32 crops): the
checkpoints SOLVER.MAX_TO_KEEP keeps; metrics.json after a resume holds every iteration once;
a folder without a checkpoint starts over, unless its config.yaml is another run's; and a
checkpoint of another world size resumes with fresh RNG streams, or is refused when it was
taken mid-epoch with another number of iterations per epoch."""

import json
import logging
import os
import shutil

import pytest
import torch

from helpers import pretrain_argv
from test_reliability import CONFIG, assert_same_weights, final_weights, run_in_process
from test_run_folder import digest

# 6 iterations; checkpoints at 2, 4 and 6, of which MAX_TO_KEEP 2 keeps 4 and 6.
SHORT = [
    "INPUT.CROP_SIZE",
    "32",
    "INPUT.RESIZE_SIZE",
    "32",
    "SOLVER.EPOCHS",
    "1",
    "SOLVER.STEPS",
    "()",
    "SOLVER.CHECKPOINT_PERIOD",
    "2",
    "SOLVER.MAX_TO_KEEP",
    "2",
    "LOG_PERIOD",
    "1",
]


def args(root, out, *overrides, resume=False):
    flags = ["--resume"] if resume else []
    return pretrain_argv(CONFIG, root, out, *SHORT, *overrides, first=flags)


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def loss_iterations(out):
    return [
        r["iteration"]
        for r in map(json.loads, read_lines(os.path.join(out, "metrics.json")))
        if "loss" in r
    ]


def eval_iterations(out):
    return [
        r["iteration"]
        for r in map(json.loads, read_lines(os.path.join(out, "metrics.json")))
        if "val/top1_err" in r
    ]


@pytest.fixture(scope="module")
def first_run(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("first") / "run")
    run_in_process(args(synthetic_root, out), fails=False)
    return out


def killed_after(first_run, out, iteration, *names):
    """``out`` as a kill after checkpoint ``iteration`` (None: before the first one) leaves it:
    ``first_run``'s config.yaml, log.txt and metrics.json, with every line logged up to the end
    and a last line cut in the middle."""
    os.makedirs(out)
    for name in ("config.yaml", "log.txt", "metrics.json") + names:
        shutil.copy(os.path.join(first_run, name), out)
    with open(os.path.join(out, "metrics.json"), "a") as f:
        f.write('{"iteration": 7, "loss": 1.2')
    if iteration is not None:
        checkpoint = f"model_{iteration:07d}.pth"
        shutil.copy(os.path.join(first_run, checkpoint), out)
        with open(os.path.join(out, "last_checkpoint"), "w") as f:
            f.write(checkpoint)
    return out


def test_the_engine_keeps_max_to_keep_newest_checkpoints(first_run):
    assert sorted(n for n in os.listdir(first_run) if n.startswith("model_")) == [
        "model_0000004.pth",
        "model_0000006.pth",
        "model_final.pth",
    ]
    with open(os.path.join(first_run, "last_checkpoint")) as f:
        assert f.read() == "model_0000006.pth"
    assert loss_iterations(first_run) == [1, 2, 3, 4, 5, 6] and eval_iterations(first_run) == [6]


def test_resume_drops_the_lines_logged_after_the_checkpoint(first_run, synthetic_root, tmp_path):
    out = killed_after(first_run, str(tmp_path / "run"), 4)
    run_in_process(args(synthetic_root, out, resume=True), fails=False)
    # Every iteration once, the evaluation once, no cut line; the lines up to the checkpoint
    # are the killed run's own.
    assert loss_iterations(out) == [1, 2, 3, 4, 5, 6] and eval_iterations(out) == [6]
    assert (
        read_lines(os.path.join(out, "metrics.json"))[:4]
        == read_lines(os.path.join(first_run, "metrics.json"))[:4]
    )
    assert_same_weights(final_weights(out), final_weights(first_run))


def test_resume_without_a_checkpoint_starts_over(first_run, synthetic_root, tmp_path):
    out = killed_after(first_run, str(tmp_path / "run"), None)
    # (A checkpoint at the end only: what is asserted needs no other.)
    run_in_process(
        args(synthetic_root, out, "SOLVER.CHECKPOINT_PERIOD", "6", resume=True), fails=False
    )
    with open(os.path.join(out, "log.txt")) as f:
        assert f"no readable checkpoint in {out}: starting from scratch" in f.read()
    # The killed attempt's lines are dropped: the run's iterations are logged once.
    assert loss_iterations(out) == [1, 2, 3, 4, 5, 6] and eval_iterations(out) == [6]
    assert_same_weights(final_weights(out), final_weights(first_run))


def test_resume_without_a_checkpoint_refuses_another_runs_config(
    first_run, synthetic_root, tmp_path
):
    """Starting over would keep config.yaml, which would then describe another run."""
    out = killed_after(first_run, str(tmp_path / "run"), None)
    before = digest(out)
    message = run_in_process(args(synthetic_root, out, "METHOD.NAME", "baseline", resume=True))
    assert message.startswith(f"error: --resume: {os.path.join(out, 'config.yaml')!r}"), message
    assert "METHOD.NAME: 'pskd' in the config.yaml, 'baseline' now" in message, message
    assert digest(out) == before


# -- another world size ---------------------------------------------------------------------------
def as_written_by(state, world_size, iters_per_epoch=None):
    """``state`` as ``world_size`` processes write it: one RNG state per rank; rank 0's is a
    stream of its own, so that restoring it shows."""
    trainer = dict(state["trainer"], world_size=world_size)
    if iters_per_epoch is not None:
        trainer["iters_per_epoch"] = iters_per_epoch
    generator = torch.Generator().manual_seed(12345)
    trainer["rng"] = [
        dict(trainer["rng"][0], torch=generator.get_state()) for _ in range(world_size)
    ]
    return dict(state, trainer=trainer)


@pytest.fixture(scope="module")
def trainer(synthetic_root, tmp_path_factory, one_thread):
    """A Trainer of the run's config (its set-up only); its log handlers are removed afterwards."""
    from pretrain.cli import setup_cfg
    from pretrain.engine.trainer import Trainer

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = str(tmp_path_factory.mktemp("trainer"))
    built = Trainer(setup_cfg(CONFIG, ["DATA.ROOT", synthetic_root, "OUTPUT_DIR", out, *SHORT]))
    added = [handler for handler in root.handlers if handler not in handlers]
    yield built
    for handler in added:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture(scope="module")
def mid_epoch_state(first_run):
    return torch.load(os.path.join(first_run, "model_0000004.pth"), weights_only=True)


def test_same_world_size_restores_the_rng_streams(trainer, mid_epoch_state):
    state = as_written_by(mid_epoch_state, 1)
    assert trainer.checkpointer.load(state, trainer.iters_per_epoch) == (4, 0, 4)
    assert torch.equal(torch.get_rng_state(), state["trainer"]["rng"][0]["torch"])


def test_another_world_size_resumes_mid_epoch_with_fresh_rng_streams(
    trainer, mid_epoch_state, caplog
):
    """Samples are dealt out of one global order, so 2 processes that did 4 steps of 8 samples
    each consumed the samples one process's 4 steps of 16 do: the run continues there."""
    state = as_written_by(mid_epoch_state, 2)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        assert trainer.checkpointer.load(state, trainer.iters_per_epoch) == (4, 0, 4)
    assert "checkpoint written by 2 processes, resuming with 1: RNG streams restart" in caplog.text
    assert not torch.equal(torch.get_rng_state(), state["trainer"]["rng"][0]["torch"])


def test_epoch_end_checkpoint_of_another_layout_resumes_at_the_next_epoch(trainer, first_run):
    state = torch.load(os.path.join(first_run, "model_0000006.pth"), weights_only=True)
    state = as_written_by(state, 4, iters_per_epoch=5)  # fewer than this run's 6
    state["trainer"]["steps_in_epoch"] = 5
    assert trainer.checkpointer.load(state, trainer.iters_per_epoch)[1:] == (1, 0)


def test_mid_epoch_checkpoint_of_another_layout_is_refused(
    first_run, mid_epoch_state, synthetic_root, tmp_path
):
    """Another number of iterations per epoch (a world size whose padding deals out another
    count): the step to continue from has no meaning in this run."""
    out = killed_after(first_run, str(tmp_path / "run"), 4)
    checkpoint = os.path.join(out, "model_0000004.pth")
    torch.save(as_written_by(mid_epoch_state, 8, iters_per_epoch=7), checkpoint)
    before = digest(out)
    message = run_in_process(args(synthetic_root, out, resume=True))
    assert message.startswith(f"error: resuming from {checkpoint} failed on rank 0"), message
    assert "taken mid-epoch with 7 iterations per epoch, this run has 6" in message
    assert "same world size and batch" in message
    assert digest(out) == before
