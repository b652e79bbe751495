"""The Slurm executor against a real slurmctld/slurmd on localhost (tests/slurm_cluster.py): a
stage requeued at its time limit more often than submitit allows by default still finishes.
The whole study on Slurm (dependencies, preemption, two nodes) is tests/test_study_multinode.py.
Skipped where Slurm or MUNGE is not installed."""

import os
import pickle
import re
import subprocess
import sys
import time

import pytest
import yaml

from helpers import ROOT, require_detectron2, tiny_study
from slurm_cluster import SlurmCluster, unavailable_reason
from study.plan import Plan
from study.spec import load_study

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
if unavailable_reason():
    pytest.skip(unavailable_reason(), allow_module_level=True)
require_detectron2()


@pytest.fixture(scope="module")
def cluster():
    c = SlurmCluster().start()
    yield c
    c.stop()


def _study(cluster, path, *args, **env):
    return subprocess.run(
        [sys.executable, "tools/study.py", "--config-file", path, *args],
        cwd=ROOT,
        env=dict(cluster.env, OMP_NUM_THREADS="1", **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_stage_requeued_at_its_time_limit_four_times_still_finishes(cluster, tmp_path):
    """submitit gives up on a job after slurm_max_num_timeout time limits (3 unless told): the
    study's default (30) lets a multi-day stage go on. A time limit of 10 minutes or less makes
    submitit count every signal as one (its guaranteed walltime is the limit minus 10 minutes),
    so four signals, each at a checkpoint the stage then waits after, are four time limits."""
    data = tiny_study(tmp_path / "out", seeds=[0])
    del data["backbones"]["tfkd"]
    data["pretrain"]["opts"].update({"SOLVER.EPOCHS": 4, "SOLVER.STEPS": [3]})
    assert data["resources"]["pretrain"]["timeout_min"] <= 10 and "slurm" not in data
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = Plan(load_study(str(path)))
    stage = plan.pretrain["baseline", 0]
    fault = f"hang at checkpoint * in {stage.out}"  # after each epoch's checkpoint
    submitted = _study(cluster, str(path), "--executor", "slurm", PRETRAIN_FAULT=fault)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    jobs = dict(re.findall(r"^(\S+): Slurm job (\d+)", submitted.stdout, re.M))
    job = jobs[stage.id]
    # Only this stage matters here: the ones after it (conversion, detection, report) are dropped.
    after = [jobs[s.id] for s in plan.stages if s.kind in ("convert", "detect", "report")]
    subprocess.run(["scancel", *after], env=cluster.env, check=True)
    marker = os.path.join(stage.out, "last_checkpoint")
    deadline = time.time() + 900
    signalled = []
    while len(signalled) < 4:  # one signal per checkpoint, each after the requeued run resumed
        while not os.path.exists(marker) or open(marker).read() in signalled:
            assert time.time() < deadline, cluster.logs()
            time.sleep(0.2)
        signalled.append(open(marker).read())
        time.sleep(1)  # past the checkpoint, into the wait
        subprocess.run(["scancel", "--signal=USR2", job], env=cluster.env, check=True)
    while cluster.squeue():
        assert time.time() < deadline, f"jobs left: {cluster.squeue()}\n{cluster.logs()}"
        time.sleep(1)
    assert plan.check(stage) == (True, "")
    with open(os.path.join(plan.root, "slurm", job, f"{job}_submitted.pkl"), "rb") as f:
        assert pickle.load(f)._timeout_countdown == 30 - 4  # four time limits counted
    with open(os.path.join(stage.out, "log.txt")) as f:
        assert f.read().count("resumed from") == 4
