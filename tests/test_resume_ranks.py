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


def _resume_worker(rank, world, folder, root, scenarios):
    """Every scenario in turn (one spawned pair for all: each start imports torch and the
    project), each a process group of its own joined here (init_distributed then finds it, as
    torchrun's workers' in Trainer), resumed from ``scenarios[name]`` (each rank's OUTPUT_DIR);
    the outcomes into folder/<name>.<rank>."""
    torch.set_num_threads(1)
    from pretrain.cli import setup_cfg
    from pretrain.engine.trainer import Trainer
    from pretrain.runtime import distributed as du

    for name, out_dirs in scenarios.items():
        torch.distributed.init_process_group(
            "gloo",
            init_method=file_rendezvous(os.path.join(folder, name)),
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=30),
        )
        cfg = setup_cfg(CONFIG, ["DATA.ROOT", root, "OUTPUT_DIR", out_dirs[rank]] + SHORT)
        try:
            trainer = Trainer(cfg)
            trainer.train(resume=True)
            outcome = {"iteration": trainer.iteration}
        except Exception as exc:  # noqa: BLE001 - the test reads every outcome
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            du.destroy()
        with open(os.path.join(folder, f"{name}.{rank}"), "w") as f:
            json.dump(outcome, f)


def _folder(path, checkpoints, names, last):
    os.makedirs(path)
    for name in names:
        shutil.copy(os.path.join(checkpoints, name), path)
    if last:
        with open(os.path.join(path, "last_checkpoint"), "w") as f:
            f.write(last)
    return str(path)


@pytest.fixture(scope="module")
def outcomes(synthetic_root, tmp_path_factory):
    """Each scenario's two ranks' outcomes ({"iteration": ...} or {"error": ...}) and their
    folders: {name: (outcomes, folders)}."""
    checkpoints = str(tmp_path_factory.mktemp("first"))
    run_tool(pretrain_argv(CONFIG, synthetic_root, checkpoints, *SHORT))
    folder = tmp_path_factory.mktemp("ranks")
    both = ["model_0000003.pth", "model_0000006.pth"]
    only_6 = ["model_0000006.pth"]
    last_6 = "model_0000006.pth"
    scenarios = {
        # Rank 1's last_checkpoint is stale: it would resume mid-epoch at iteration 3.
        "stale": [(both, last_6), (both, "model_0000003.pth")],
        "missing": [(both, last_6), ([], None)],
        "different": [(only_6, last_6), (only_6, last_6)],
    }
    dirs = {
        name: [
            _folder(folder / name / f"r{rank}", checkpoints, names, last)
            for rank, (names, last) in enumerate(ranks)
        ]
        for name, ranks in scenarios.items()
    }
    # In "different", rank 1 sees an older copy under the same name (as through a stale network
    # file system cache).
    stale_copy = os.path.join(dirs["different"][1], "model_0000006.pth")
    state = torch.load(stale_copy, weights_only=True)
    state["trainer"]["iteration"] = 5
    torch.save(state, stale_copy)

    context = mp.start_processes(
        _resume_worker,
        args=(2, str(folder), synthetic_root, dirs),
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
    results = {}
    for name in scenarios:
        ranks = []
        for rank in range(2):
            with open(folder / f"{name}.{rank}") as f:
                ranks.append(json.load(f))
        results[name] = (ranks, dirs[name])
    return results


@pytest.mark.slow
def test_every_rank_resumes_from_rank_0s_choice(outcomes):
    assert outcomes["stale"][0] == [{"iteration": 6}, {"iteration": 6}]


@pytest.mark.slow
def test_a_rank_without_the_checkpoint_stops_the_job(outcomes):
    ranks, dirs = outcomes["missing"]
    missing = os.path.join(dirs[1], "model_0000006.pth")
    for outcome in ranks:  # both ranks stop, with the same message
        assert "error" in outcome, ranks
        assert (
            missing in outcome["error"]
            and f"rank 1 (host {socket.gethostname()})" in outcome["error"]
        )


@pytest.mark.slow
def test_ranks_resumed_at_different_iterations_stop_the_job(outcomes):
    ranks, _ = outcomes["different"]
    for outcome in ranks:
        assert "error" in outcome, ranks
        assert (
            "iteration resumed from" in outcome["error"]
            and "differs between ranks" in outcome["error"]
        )
        assert (
            "rank 0" in outcome["error"] and ": 6" in outcome["error"] and ": 5" in outcome["error"]
        )
