"""Checkpoint retention (SOLVER.MAX_TO_KEEP): exactly the newest periodic checkpoints of the run
remain, ``last_checkpoint`` names the newest, and pruning deletes nothing but this run's older
periodic checkpoints: not model_final.pth, not other files, not another run's folder. The
engine's own retention is asserted in tests/test_resume_branches.py (it shares that file's run)."""

import os

import pytest

from pretrain.config.defaults import get_cfg
from pretrain.runtime.checkpoint import load_latest, save_checkpoint


def names(folder):
    return sorted(os.listdir(folder))


def last_checkpoint(folder):
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read()


def ckpt(iteration):
    return f"model_{iteration:07d}.pth"


@pytest.mark.parametrize("max_to_keep", [1, 2, 3])
def test_exactly_the_newest_max_to_keep_remain_after_each_save(max_to_keep, tmp_path):
    out = str(tmp_path)
    saved = []
    for iteration in (5, 10, 15, 20, 25, 30):
        save_checkpoint(out, iteration, {"iteration": iteration}, max_to_keep=max_to_keep)
        saved.append(iteration)
        kept = [ckpt(i) for i in saved[-max_to_keep:]]
        assert names(out) == sorted(kept + ["last_checkpoint"]), iteration
        assert last_checkpoint(out) == ckpt(iteration)
    # What remains is loadable, and a resume picks the newest.
    path, state = load_latest(out)
    assert os.path.basename(path) == ckpt(30) and state == {"iteration": 30}


def test_zero_keeps_every_checkpoint(tmp_path):
    out = str(tmp_path)
    for iteration in (1, 2, 3, 4):
        save_checkpoint(out, iteration, {}, max_to_keep=0)
    assert names(out) == ["last_checkpoint"] + [ckpt(i) for i in (1, 2, 3, 4)]


def test_iterations_are_ordered_by_number_not_by_name(tmp_path):
    """Iteration 10,000,000 has one digit more than the 7-digit names: it is still the newest."""
    out = str(tmp_path)
    for iteration in (9_999_998, 9_999_999, 10_000_000):
        save_checkpoint(out, iteration, {}, max_to_keep=2)
    assert names(out) == ["last_checkpoint", "model_10000000.pth", ckpt(9_999_999)]


def test_pruning_spares_every_other_file(tmp_path):
    out = tmp_path / "run"
    os.makedirs(out / "sub")
    others = [
        "model_final.pth",
        "eval_final.json",
        "metrics.json",
        "config.yaml",
        "log.txt",
        "eval_only_model_0000001.json",
        "model_0000001.pth.bak",
        "my_model_0000001.pth",
        "model_best.pth",
        "sub/model_0000001.pth",
    ]
    for name in others:
        (out / name).write_bytes(b"kept")
    for iteration in (2, 4, 6):
        save_checkpoint(str(out), iteration, {}, max_to_keep=1)
    for name in others:
        assert (out / name).read_bytes() == b"kept", name
    assert sorted(n for n in names(out) if n.startswith("model_0")) == [
        "model_0000001.pth.bak",
        ckpt(6),
    ]


def test_pruning_never_reaches_another_runs_folder(tmp_path):
    """A run folder whose name holds glob characters ("run[12]", "run*") must not match the
    sibling folders run1/ and run2/: their checkpoints are another run's."""
    for sibling in ("run1", "run2", "run_a"):
        os.makedirs(tmp_path / sibling)
        for iteration in (1, 2):
            (tmp_path / sibling / ckpt(iteration)).write_bytes(b"other run")
    for name in ("run[12]", "run*", "run?"):
        out = tmp_path / name
        os.makedirs(out)
        for iteration in (3, 4, 5):
            save_checkpoint(str(out), iteration, {"run": name}, max_to_keep=1)
        assert names(out) == ["last_checkpoint", ckpt(5)], name
        # A resume of this folder reads this run's checkpoint only.
        path, state = load_latest(str(out))
        assert path == str(out / ckpt(5)) and state == {"run": name}
    for sibling in ("run1", "run2", "run_a"):
        assert names(tmp_path / sibling) == [ckpt(1), ckpt(2)], sibling


def test_default_keeps_a_checkpoint_to_fall_back_to():
    # Two or more: when the newest is unreadable, a resume falls back to the one before.
    assert get_cfg().SOLVER.MAX_TO_KEEP >= 2
