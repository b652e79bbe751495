"""The Slurm executor against a real slurmctld/slurmd on localhost (tests/slurm_cluster.py):
one job per stage with afterok dependencies, and a job signalled as on preemption is requeued
and its stage resumes from its last checkpoint. Skipped where Slurm or MUNGE is not installed."""

import os
import pickle
import re
import subprocess
import sys
import time

import pytest
import yaml

from helpers import ROOT, first_checkpoint, require_detectron2, tiny_study
from slurm_cluster import SlurmCluster, unavailable_reason
from study.plan import Plan
from study.spec import load_study
from study.state import read_record

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
if unavailable_reason():
    pytest.skip(unavailable_reason(), allow_module_level=True)
require_detectron2()


@pytest.fixture(scope="module")
def cluster():
    c = SlurmCluster().start()
    yield c
    c.stop()


def _study_file(tmp_path):
    data = tiny_study(tmp_path / "out", seeds=[0])
    data["slurm"] = {"max_num_timeout": 5, "signal_delay_s": 45}
    # The tiny study's 3 epochs, a checkpoint after each: the job is signalled after the first.
    assert data["pretrain"]["opts"]["SOLVER.EPOCHS"] == 3
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path), data


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


def test_study_on_slurm_with_dependencies_and_requeue(cluster, tmp_path):
    path, data = _study_file(tmp_path)
    plan = Plan(load_study(path))
    victim = plan.pretrain["tfkd", 0]
    # The jobs inherit the submitting environment: the TF-KD pretraining stops after its first
    # checkpoint and waits there for the preemption signal, so it cannot finish before it.
    fault = f"hang at checkpoint {first_checkpoint(data, victim)} in {victim.out}"
    submitted = _study(cluster, path, "--executor", "slurm", PRETRAIN_FAULT=fault)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    jobs = {sid: job for sid, job in re.findall(r"^(\S+): Slurm job (\d+)", submitted.stdout, re.M)}
    assert set(jobs) == {s.id for s in plan.stages}
    # Dependencies are Slurm's: TF-KD's pretraining waits for the baseline's job.
    after = re.search(
        r"^pretrain/tfkd/seed0: Slurm job \d+ \(afterok:([\d:]+)\)", submitted.stdout, re.M
    )
    assert after and jobs["pretrain/baseline/seed0"] in after.group(1).split(":")
    # Requeue at the time limit up to slurm.max_num_timeout times, signalled signal_delay_s
    # before it (submitit's defaults, 3 and 90, would stop a multi-day stage on day 3).
    job_dir = os.path.join(data["output_root"], "slurm", jobs[victim.id])
    with open(os.path.join(job_dir, f"{jobs[victim.id]}_submission.sh")) as f:
        assert "#SBATCH --signal=USR2@45" in f.read()
    with open(os.path.join(job_dir, f"{jobs[victim.id]}_submitted.pkl"), "rb") as f:
        assert pickle.load(f)._timeout_countdown == 5
    again = _study(cluster, path, "--executor", "slurm")
    assert (
        not re.search(r"^\S+: Slurm job", again.stdout, re.M) and "already queued" in again.stdout
    )  # none twice

    # Preempt the TF-KD pretraining once it has a checkpoint: submitit's signal, then requeue.
    deadline = time.time() + 900
    while not os.path.exists(os.path.join(victim.out, "last_checkpoint")):
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR2", jobs[victim.id]], env=cluster.env, check=True)

    while cluster.squeue():
        assert time.time() < deadline, f"jobs left: {cluster.squeue()}\n{cluster.logs()}"
        time.sleep(1)
    status = _study(cluster, path, "--status").stdout
    assert f"{len(plan.stages)} done (of {len(plan.stages)} stages)" in status, status
    with open(os.path.join(victim.out, "log.txt")) as f:
        assert "resumed from" in f.read()  # continued from its checkpoint, not restarted
    assert read_record(plan, victim)["job_id"] == jobs[victim.id]  # the same job, requeued
    done = _study(cluster, path, "--executor", "slurm")
    assert done.returncode == 0 and "nothing to do" in done.stdout


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
