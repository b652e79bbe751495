"""Resuming under several processes: rank 0 picks the checkpoint and every rank reads that one, a
rank that cannot stops the whole job naming the file and the host, and ranks that resumed at
different iterations stop it too (2 CPU processes, each with its own OUTPUT_DIR as with
node-local folders). Checkpoint files are memory-mapped when read."""

import datetime
import json
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

from helpers import ROOT, file_rendezvous, pretrain_argv, run_tool
from pretrain.runtime.checkpoint import load_file

CONFIG = os.path.join(ROOT, "configs/pretrain/cpu_synthetic_R_18.yaml")
# One epoch of 6 iterations, checkpoints at iterations 3 and 6.
SHORT = [
    "SOLVER.EPOCHS",
    "1",
    "SOLVER.STEPS",
    "()",
    "SOLVER.WARMUP_EPOCHS",
    "0.0",
    "SOLVER.CHECKPOINT_PERIOD",
    "3",
    "SOLVER.MAX_TO_KEEP",
    "0",
]


def test_checkpoint_files_are_memory_mapped(tmp_path):
    path = str(tmp_path / "model_0000001.pth")
    torch.save({"model": {"w": torch.randn(256, 256)}}, path)
    tensor = load_file(path)["model"]["w"]
    with open("/proc/self/maps") as f:
        mapped = [line.split()[0].split("-") for line in f if line.rstrip().endswith(path)]
    assert any(int(lo, 16) <= tensor.data_ptr() < int(hi, 16) for lo, hi in mapped)


def _resume_worker(rank, world, rendezvous, root, out_dirs, result):
    torch.set_num_threads(1)
    # Joined here (init_distributed then finds the group), as torchrun's workers join in Trainer.
    torch.distributed.init_process_group(
        "gloo",
        init_method=rendezvous,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    from pretrain.cli import setup_cfg
    from pretrain.engine.trainer import Trainer
    from pretrain.runtime import distributed as du

    cfg = setup_cfg(CONFIG, ["DATA.ROOT", root, "OUTPUT_DIR", out_dirs[rank]] + SHORT)
    try:
        trainer = Trainer(cfg)
        trainer.train(resume=True)
        outcome = {"iteration": trainer.iteration}
    except Exception as exc:  # noqa: BLE001 - the test reads every outcome
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        du.destroy()
    with open(f"{result}.{rank}", "w") as f:
        json.dump(outcome, f)


def _resume_two_ranks(tmp_path, root, out_dirs):
    result = str(tmp_path / "outcome")
    context = mp.start_processes(
        _resume_worker,
        args=(2, file_rendezvous(tmp_path), root, out_dirs, result),
        nprocs=2,
        start_method="spawn",
        join=False,
    )
    for _ in range(240):  # a hang would otherwise end only with DIST.TIMEOUT_S, per collective
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.terminate()
        pytest.fail("the two ranks did not finish within 240 s")
    outcomes = []
    for rank in range(2):
        with open(f"{result}.{rank}") as f:
            outcomes.append(json.load(f))
    return outcomes


@pytest.fixture(scope="module")
def checkpoints(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("first"))
    run_tool(pretrain_argv(CONFIG, synthetic_root, out, *SHORT))
    return out


def _folder(path, checkpoints, names, last):
    os.makedirs(path)
    for name in names:
        shutil.copy(os.path.join(checkpoints, name), path)
    if last:
        with open(os.path.join(path, "last_checkpoint"), "w") as f:
            f.write(last)
    return str(path)


@pytest.mark.slow
def test_every_rank_resumes_from_rank_0s_choice(checkpoints, synthetic_root, tmp_path):
    both = ["model_0000003.pth", "model_0000006.pth"]
    # Rank 1's last_checkpoint is stale: it would resume mid-epoch at iteration 3.
    dirs = [
        _folder(tmp_path / "r0", checkpoints, both, "model_0000006.pth"),
        _folder(tmp_path / "r1", checkpoints, both, "model_0000003.pth"),
    ]
    assert _resume_two_ranks(tmp_path, synthetic_root, dirs) == [{"iteration": 6}, {"iteration": 6}]


@pytest.mark.slow
def test_a_rank_without_the_checkpoint_stops_the_job(checkpoints, synthetic_root, tmp_path):
    dirs = [
        _folder(
            tmp_path / "r0",
            checkpoints,
            ["model_0000003.pth", "model_0000006.pth"],
            "model_0000006.pth",
        ),
        _folder(tmp_path / "r1", checkpoints, [], None),
    ]
    outcomes = _resume_two_ranks(tmp_path, synthetic_root, dirs)
    missing = os.path.join(dirs[1], "model_0000006.pth")
    for outcome in outcomes:  # both ranks stop, with the same message
        assert "error" in outcome, outcomes
        assert (
            missing in outcome["error"]
            and f"rank 1 (host {socket.gethostname()})" in outcome["error"]
        )


@pytest.mark.slow
def test_ranks_resumed_at_different_iterations_stop_the_job(checkpoints, synthetic_root, tmp_path):
    dirs = [
        _folder(tmp_path / "r0", checkpoints, ["model_0000006.pth"], "model_0000006.pth"),
        _folder(tmp_path / "r1", checkpoints, ["model_0000006.pth"], "model_0000006.pth"),
    ]
    # Rank 1 sees an older copy under the same name (as through a stale network file system cache).
    stale = torch.load(os.path.join(dirs[1], "model_0000006.pth"), weights_only=True)
    stale["trainer"]["iteration"] = 5
    torch.save(stale, os.path.join(dirs[1], "model_0000006.pth"))
    outcomes = _resume_two_ranks(tmp_path, synthetic_root, dirs)
    for outcome in outcomes:
        assert "error" in outcome, outcomes
        assert (
            "iteration resumed from" in outcome["error"]
            and "differs between ranks" in outcome["error"]
        )
        assert (
            "rank 0" in outcome["error"] and ": 6" in outcome["error"] and ": 5" in outcome["error"]
        )
