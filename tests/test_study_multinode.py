"""The Slurm executor on a real two-node Slurm cluster in network namespaces on this machine
(tests/slurm_cluster.py): a study to its report, one job per stage with afterok dependencies
(TF-KD's run waits for its teacher's), its pretraining and detection stages each on 2 nodes x 1
process, a detection fine-tune preempted (requeued,
resumed from its checkpoint: it then equals an uninterrupted run of it); then one two-node
pretraining preempted, then losing a node, that ends with the weights of the study's
uninterrupted run. Skipped with the reason where Slurm, MUNGE, root or network
namespaces are missing; under CI=true that fails instead."""

import contextlib
import json
import os
import pickle
import re
import subprocess
import sys
import time

import pytest
import yaml

from helpers import ROOT, require_detectron2, run_tool, skip_unless_ci, tiny_study
from slurm_cluster import NODES, NamespacesUnavailable, TwoNodeCluster, unavailable_reason
from study.plan import Plan
from study.spec import SLURM_REQUEUE_DEFAULTS, load_study
from study.state import read_record

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
if unavailable_reason():
    skip_unless_ci(unavailable_reason())
require_detectron2()


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    try:
        c.start()
    except NamespacesUnavailable as exc:
        skip_unless_ci(f"no network namespaces here: {exc}")
    yield c
    c.stop()


def test_one_task_on_each_node(cluster):
    out = cluster.run(["srun", "-N2", "hostname"], check=True)
    assert sorted(out.stdout.split()) == sorted(NODES)


def _write_study(folder, data=None, backbones=("baseline", "tfkd"), opts=None, det_opts=None):
    """The tests' tiny study (one seed) with its pretraining and detection stages on 2 nodes x
    1 process, one CPU a task: the baseline, and TF-KD taught by it (a Slurm dependency), then
    both detection fine-tunes at once. ``data``: instead of generated data, another study's;
    ``opts``, ``det_opts``: added to its pretraining's, its detection's. (TF-KD's search, the
    same stages run by the same code: tests/test_study_e2e.py.)"""
    study = tiny_study(os.path.join(folder, "out"), seeds=[0])
    study["detection"]["opts"].update(det_opts or {})
    if data:
        study["data"] = data
    study["backbones"] = {b: study["backbones"][b] for b in backbones}
    study["pretrain"]["opts"].update(opts or {})
    for kind in ("pretrain", "detect"):
        study["resources"][kind].update(nodes=2, cpus_per_task=1)
    # Signalled 45 s before the time limit (the study file's value, in each job's script; its
    # default: 120 s); requeued at it up to the study's default 30 times (submitit's own 3 would
    # stop a multi-day stage on day 3).
    study["slurm"] = {"signal_delay_s": 45}
    path = os.path.join(folder, "study.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(study, f, sort_keys=False)
    return path, Plan(load_study(path))


def _study(cluster, path, *args, **env):
    """tools/study.py where Slurm's clients run (the controller's namespace)."""
    return subprocess.run(
        cluster.command([sys.executable, "tools/study.py", "--config-file", path, *args]),
        cwd=ROOT,
        env=dict(cluster.env, OMP_NUM_THREADS="1", **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _wait_for(what, condition, cluster, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}: not within {timeout} s\n{cluster.logs()}"
        time.sleep(0.2)


def _wait_until_idle(cluster):
    _wait_for("every job ended", lambda: not cluster.squeue(), cluster, 600)


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory):
    """The study from one submission, the baseline's detection fine-tune preempted after its
    iteration 2 of 4 (the jobs inherit the submitting environment: it waits there for the
    signal, so it cannot finish before it; a pretraining preempted:
    test_two_node_pretraining_preempted_then_a_node_lost): (study file, plan, the submission's
    output, a second submission's output while the jobs were queued)."""
    path, plan = _write_study(
        str(tmp_path_factory.mktemp("study")), det_opts={"SOLVER.CHECKPOINT_PERIOD": 2}
    )
    victim = plan.detect["baseline", 0]
    fault = f"hang at checkpoint 1 in {victim.out}"  # model_0000001.pth: 2 iterations done
    submitted = _study(cluster, path, "--executor", "slurm", PRETRAIN_FAULT=fault)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    again = _study(cluster, path, "--executor", "slurm")
    jobs = dict(re.findall(r"^(\S+): Slurm job (\d+)", submitted.stdout, re.M))
    # Once its checkpoint is there (the stage then waits in its fault), submitit's preemption
    # signal to its job.
    checkpointed = lambda: os.path.exists(os.path.join(victim.out, "last_checkpoint"))  # noqa: E731
    _wait_for("the victim's checkpoint", checkpointed, cluster, 600)
    cluster.run(["scancel", "--signal=USR2", jobs[victim.id]], check=True)
    _wait_until_idle(cluster)
    return path, plan, submitted.stdout, again.stdout


def _commands(plan, stage):
    """The commands of each node's log of the stage (node 0's, node 1's), one per start."""
    commands = []
    for name in (f"{stage.slug}.log", f"{stage.slug}.node1.log"):
        with open(os.path.join(plan.root, "logs", name)) as f:
            commands.append(re.findall(r"^\$ (.*)$", f.read(), re.M))
    return commands


def test_a_study_on_two_nodes(cluster, study):
    """Every stage done from one submission, as one job each, TF-KD's run after its teacher's
    and each detection after its conversion; a second submission while they ran submitted none
    twice; the preempted stage's job was requeued and resumed from its checkpoint; each
    pretraining and detection stage ran one command per node, placed among the nodes, as one
    process group of 2."""
    path, plan, submitted, again = study
    status = _study(cluster, path, "--status").stdout
    assert f"{len(plan.stages)} done (of {len(plan.stages)} stages)" in status, (
        status + cluster.logs()
    )
    jobs = dict(re.findall(r"^(\S+): Slurm job (\d+)", submitted, re.M))
    assert set(jobs) == {s.id for s in plan.stages}
    for stage, needs in (
        ("pretrain/tfkd/seed0", ["pretrain/baseline/seed0"]),
        ("detect/tfkd/seed0", ["convert/tfkd/seed0"]),
    ):
        after = re.search(rf"^{stage}: Slurm job \d+ \(afterok:([\d:]+)\)", submitted, re.M)
        assert after and {jobs[s] for s in needs} <= set(after.group(1).split(":"))
    assert not re.search(r"^\S+: Slurm job", again, re.M) and "already queued" in again
    victim = plan.detect["baseline", 0]
    with open(os.path.join(victim.out, "log.txt")) as f:  # from its checkpoint, not restarted
        assert f"Loading from {os.path.join(victim.out, 'model_0000001.pth')}" in f.read()
    _preempted_and_requeued(plan, victim, jobs[victim.id])
    for stage in plan.stages:
        if stage.kind not in ("pretrain", "detect"):
            continue
        # One command on each node (in its own log), placed among the nodes, the first as host;
        # a preempted stage a second, resuming.
        commands = _commands(plan, stage)
        starts = 2 if stage is victim else 1
        assert [len(c) for c in commands] == [starts, starts], commands
        for rank, (command, *resumed) in enumerate(commands):
            assert all("--resume" in c for c in resumed)
            if stage.kind == "pretrain":
                assert f"--nnodes 2 --node_rank {rank} " in command
                assert "--rdzv_endpoint node1:" in command
            else:
                assert f"--num-machines 2 --machine-rank {rank} --dist-url tcp://node1:" in command
        group = "cpu x 2 process(es)" if stage.kind == "pretrain" else "World size: 2"
        with open(os.path.join(stage.out, "log.txt")) as f:
            assert group in f.read()
    assert os.path.isfile(os.path.join(plan.report.out, "table5_summary.md"))
    done = _study(cluster, path, "--executor", "slurm")
    assert done.returncode == 0 and "nothing to do" in done.stdout


def _preempted_and_requeued(plan, stage, job):
    """The stage's job, sent submitit's signal once, was requeued as the same job (its record
    names it), with the study's slurm settings."""
    job_dir = os.path.join(plan.root, "slurm", job)
    with open(os.path.join(job_dir, f"{job}_submission.sh")) as f:
        assert "#SBATCH --signal=USR2@45" in f.read()
    # The study's default slurm.max_num_timeout, less the one signal: under a time limit of 10
    # minutes or less (the tiny study's) submitit counts every signal as a time limit.
    with open(os.path.join(job_dir, f"{job}_submitted.pkl"), "rb") as f:
        assert pickle.load(f)._timeout_countdown == SLURM_REQUEUE_DEFAULTS["max_num_timeout"] - 1
    assert read_record(plan, stage)["job_id"] == job


def test_a_two_node_detection_preempted_ends_as_uninterrupted(cluster, study, tmp_path):
    """The baseline's detection fine-tune, preempted after iteration 2 of 4 and resumed on both
    nodes (test_a_study_on_two_nodes), has the weights and the detections of the same command
    run uninterrupted as 2 processes of one machine (the same ranks and world size: the same
    data shards, seeds and all-reduces; detection.resume makes a resume exact on the CPU)."""
    import numpy as np

    plan = study[1]
    stage = plan.detect["baseline", 0]
    cmd = plan.command(stage)
    at = cmd.index("--num-machines")
    del cmd[at : at + 6]  # --num-machines 2 --machine-rank R --dist-url URL
    cmd[cmd.index("--num-gpus") + 1] = "2"
    cmd[cmd.index("OUTPUT_DIR") + 1] = str(tmp_path / "reference")
    run_tool(cmd[1:], timeout=600)
    assert _same_weights(stage.out, tmp_path / "reference")
    with open(os.path.join(stage.out, "voc_eval.json")) as a:
        with open(tmp_path / "reference" / "voc_eval.json") as b:
            assert json.load(a)["AP50"] == json.load(b)["AP50"]
    with np.load(os.path.join(stage.out, "voc_detections.npz")) as a:
        with np.load(tmp_path / "reference" / "voc_detections.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def _pretraining_alone(cluster, reference, folder, fault, opts):
    """A study of the baseline alone on ``reference``'s data, ``opts`` added to its
    pretraining's, submitted with ``fault`` (PRETRAIN_FAULT; ``{out}``: the run folder) in its
    jobs' environment. Returns (study file, plan, pretraining stage, its job)."""
    ref = reference[1]
    data = {"pretrain": ref.pretrain_root(), "voc": ref.voc_root()}
    path, plan = _write_study(folder, data, ("baseline",), opts)
    stage = plan.pretrain["baseline", 0]
    fault = fault.format(out=stage.out)
    return path, plan, stage, _submit_pretraining(cluster, path, stage, PRETRAIN_FAULT=fault)


def _submit_pretraining(cluster, path, stage, *args, **env):
    """Submit the study (``args`` added) and cancel the jobs after ``stage``: its job id."""
    submitted = _study(cluster, path, "--executor", "slurm", *args, **env)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    jobs = dict(re.findall(r"^(\S+): Slurm job (\d+)", submitted.stdout, re.M))
    cluster.run(["scancel", *(j for s, j in jobs.items() if s != stage.id)], check=True)
    return jobs[stage.id]


def _wait_for_checkpoint(cluster, stage, iteration):
    def written():
        with contextlib.suppress(FileNotFoundError), open(marker) as f:
            return f.read() == f"model_{iteration:07d}.pth"

    marker = os.path.join(stage.out, "last_checkpoint")
    _wait_for(f"checkpoint {iteration}", written, cluster)


def _node_of_rank(cluster, rank):
    """The node where the pretraining's rank ``rank`` runs (torchrun's RANK)."""
    for node in NODES:
        for pid in cluster.pids(node):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:  # ended meanwhile
                continue
            if f"RANK={rank}".encode() in env and b"tools/pretrain.py" in cmdline:
                return node
    raise AssertionError(f"no rank {rank} on any node")


def _same_weights(run, reference):
    """torch.equal on every tensor of the two runs' model_final.pth."""
    import torch

    def tensors(folder):
        return torch.load(os.path.join(folder, "model_final.pth"), weights_only=True)["model"]

    got, expected = tensors(run), tensors(reference)
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_two_node_pretraining_preempted_then_a_node_lost_ends_as_uninterrupted(
    cluster, study, tmp_path
):
    """One two-node pretraining run (the baseline's, 3 epochs of 2 iterations, a checkpoint
    after each) interrupted twice, mid-epoch each time, at the checkpoint of iteration 3, then 5,
    after which rank 1 stops answering (PRETRAIN_FAULT), and rank 0 goes on to wait for it:

    1. preempted (submitit's USR2): the job is requeued and resumes on both nodes from the
       checkpoint of iteration 3;
    2. node2, where rank 1 runs, lost (its link down, every process on it killed): rank 0 stops
       within DIST.TIMEOUT_S, Slurm requeues the job with srun's error naming the node, and
       --status shows the stage queued (nothing to submit twice). The job cancelled (as where
       Slurm does not requeue), the stage is failed; with node2 back, --resume submits it again
       and it resumes on both nodes from the checkpoint of iteration 5.

    Its final weights are the study's uninterrupted run's, tensor for tensor (one run for both
    interruptions: each costs a job start and a pretraining to its checkpoint)."""
    timeout_s = 15
    path, plan, stage, job = _pretraining_alone(
        cluster,
        study,
        str(tmp_path),
        "hang at checkpoint [35] in {out} on rank 1",
        {"SOLVER.CHECKPOINT_PERIOD": 1, "DIST.TIMEOUT_S": timeout_s},
    )

    def log():
        with open(os.path.join(stage.out, "log.txt")) as f:
            return f.read()

    _wait_for_checkpoint(cluster, stage, 3)
    cluster.run(["scancel", "--signal=USR2", job], check=True)  # submitit's preemption signal
    _wait_for_checkpoint(cluster, stage, 5)
    assert "model_0000003.pth: epoch 1, step 1 of 2, iteration 3" in log()
    for starts in _commands(plan, stage):  # each node: started, then resumed
        assert len(starts) == 2 and "--resume" in starts[1], starts
    _preempted_and_requeued(plan, stage, job)

    # c10d numbers the nodes by hostname: node1 runs rank 0, the batch step and the record.
    assert _node_of_rank(cluster, 1) == "node2"
    lost = time.time()
    cluster.lose("node2")
    _wait_for("rank 0 stops", lambda: "rank 0 of 2 stopped" in log(), cluster)
    assert time.time() - lost < timeout_s + 10, log()
    assert f"DIST.TIMEOUT_S ({timeout_s} s)" in log()
    # Slurm marks node2 down (SlurmdTimeout) and requeues the job; srun's error names the node.
    requeued = lambda: [j[:2] for j in cluster.squeue()] == [[job, "PENDING"]]  # noqa: E731
    _wait_for("the job requeued", requeued, cluster)
    with open(os.path.join(plan.root, "slurm", job, f"{job}_0_log.err")) as f:
        assert "Node failure on node2" in f.read()
    status = _study(cluster, path, "--status").stdout
    assert re.search(rf"{stage.id} +queued +Slurm job {job} PENDING; its last run failed", status)
    cluster.run(["scancel", job], check=True)
    _wait_until_idle(cluster)
    assert re.search(rf"{stage.id} +failed", _study(cluster, path, "--status").stdout)

    cluster.revive("node2")
    _submit_pretraining(cluster, path, stage, "--resume")
    _wait_until_idle(cluster)
    assert plan.check(stage) == (True, ""), cluster.logs()
    assert "model_0000005.pth: epoch 2, step 1 of 2, iteration 5" in log()
    for starts in _commands(plan, stage):
        assert len(starts) == 3 and "--resume" in starts[2], starts
    reference = study[1]
    assert _same_weights(stage.out, reference.pretrain["baseline", 0].out)
