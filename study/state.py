"""Where each stage of a study stands, from its outputs first and its run record second.

Every stage an executor starts gets a record, ``OUTPUT_ROOT/.study/<stage>.json``: the command
it was planned with, the executor, the process id or Slurm job id, its log and how it ended.
Completion is never read from the record: a stage is ``done`` when ``Plan.check`` finds its
outputs valid. The record only tells the other states apart (running, failed, interrupted) and
catches a study file edited after a stage started (``changed``).
"""

import fcntl
import json
import os
import shlex
import socket
import subprocess
import time
from contextlib import contextmanager

from pretrain.runtime.fileio import atomic_write_json

from .identity import differences
from .plan import DERIVED_KINDS, RUN_KINDS


def record_path(plan, stage):
    return os.path.join(plan.root, ".study", stage.slug + ".json")


def log_path(plan, stage, node=0):
    """The stage's log; a multi-node stage's other nodes write theirs beside it
    (``<stage>.node<k>.log``): appends from several hosts to one file interleave their lines,
    and on NFS may overwrite each other."""
    name = stage.slug + (f".node{node}" if node else "")
    return os.path.join(plan.root, "logs", name + ".log")


def read_record(plan, stage):
    try:
        with open(record_path(plan, stage)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_record(plan, stage, **fields):
    record = read_record(plan, stage) or {}
    record.update(fields, id=stage.id, updated=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write_json(record_path(plan, stage), record)
    return record


def pid_alive(pid):
    """Whether process ``pid`` runs: it exists and has not ended. A process that ended stays a
    zombie until its parent reaps it, which for a stage whose study was killed with it can be
    after a ``--status`` right behind the kill."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _stat_fields(pid)
    return stat is None or stat[0] not in ("Z", "X")  # zombie, dead


def _stat_fields(pid):
    """/proc/<pid>/stat from field 3 (the state) on, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "


def _start_time(pid):
    """When process ``pid`` started (clock ticks after boot, /proc/<pid>/stat field 22) and in
    which boot; None where /proc cannot tell."""
    stat = _stat_fields(pid)
    if stat is None:
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return None
    return f"{boot}:{stat[19]}"


def process_identity(pid):
    """What names a process beyond its pid, which the system gives to a later process once this
    one ends: the host, and the start time. Fields of a stage's record."""
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _start_time(pid)}


def _recorded_process_runs(record):
    """True / False for a process of this host; None for one on another host (not checkable)."""
    if record.get("host") not in (None, socket.gethostname()):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not pid_alive(pid):
        return False
    return record.get("pid_start") in (None, _start_time(pid))


def slurm_job_state(job_id):
    """The job's state as squeue shows it (PENDING, RUNNING, ...), or None once it left the
    queue."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def stage_state(plan, stage, states):
    """``(state, detail)`` of ``stage``; ``states`` holds the states of the stages before it."""
    done, why_not = plan.check(stage)
    record = read_record(plan, stage)
    started = stage.kind in RUN_KINDS and plan.started(stage)
    ready_because = ""
    recorded = (record or {}).get("identity")
    if recorded is not None and (done or started) and recorded != plan.identity(stage):
        changes = "; ".join(differences(recorded, plan.identity(stage)))
        if stage.kind not in DERIVED_KINDS:
            return "changed", changes
        done, ready_because = False, f"to redo: {changes}"
    if done:
        return "done", ""
    if record and record.get("executor") == "slurm":
        # Slurm's queue, not the record, says whether the job lives: a job whose run failed
        # because one of its nodes was lost is requeued by Slurm and runs again (resuming).
        job_state = slurm_job_state(record["job_id"])
        if job_state:
            detail = f"Slurm job {record['job_id']} {job_state}"
            if record.get("status") == "failed":
                detail += f"; its last run failed ({record.get('error')})"
            return (
                "running" if job_state in ("RUNNING", "COMPLETING") else "queued"
            ), f"{detail}; log {record['log']}"
    elif record and record.get("status") in ("running", "submitted"):
        runs = _recorded_process_runs(record)
        if runs:
            return "running", f"pid {record['pid']}; log {record['log']}"
        if runs is None:
            return "running", (
                f"pid {record['pid']} on {record['host']}, not this host: check there; "
                f"log {record['log']}"
            )
    if record and record.get("status") == "failed":
        return (
            "failed",
            f"{record.get('error') or 'exit code ' + str(record.get('rc'))}; log {record['log']}",
        )
    if started:
        return "interrupted", why_not
    deps = [states[d][0] for d in stage.deps]
    if all(d == "done" for d in deps):
        return "ready", ready_because
    return "waiting", ", ".join(d for d, s in zip(stage.deps, deps) if s != "done")


def changed_problem(detail):
    """Why a `changed` stage is not run: its outputs were made with other settings."""
    return (
        f"its outputs were made with other settings ({detail}): restore them, or use another "
        "output_root (a study never trains over a finished or started run)"
    )


def all_states(plan):
    states = {}
    for stage in plan.stages:
        states[stage.id] = stage_state(plan, stage, states)
    return states


def print_status(plan, out=print):
    states = all_states(plan)
    width = max(len(s.id) for s in plan.stages)
    out(f"study {plan.study.name}: {plan.root}")
    for stage in plan.stages:
        state, detail = states[stage.id]
        out(f"  {stage.id:<{width}}  {state:<11} {detail}".rstrip())
    counts = {}
    for state, _ in states.values():
        counts[state] = counts.get(state, 0) + 1
    out(
        "  " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(plan.stages)} stages)"
    )
    return states


def print_plan(plan, out=print):
    """The stages, their dependencies and exact commands, as --dry-run prints them."""
    states = all_states(plan)
    out(f"study {plan.study.name}: {len(plan.stages)} stages, output root {plan.root}")
    out(
        f"(commands run from {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}; "
        "an interrupted run stage is continued by the same command with --resume)"
    )
    for n, stage in enumerate(plan.stages, 1):
        state, _ = states[stage.id]
        res = stage.resources
        out(
            f"\n[{n}] {stage.id}  ({state})  nodes {res['nodes']}, GPUs/node "
            f"{res['gpus_per_node']}, processes/node {res['processes_per_node']}, "
            f"{res['timeout_min']} min"
        )
        if stage.deps:
            out(f"    after: {', '.join(stage.deps)}")
        out(f"    output: {stage.out}")
        prefix = "    $ " if res["nodes"] == 1 else "    $ (on every node, under Slurm) "
        out(prefix + shlex.join(plan.command(stage)))
    return states


@contextmanager
def study_lock(plan):
    """One tools/study.py at a time per output root (two would start the same stages)."""
    os.makedirs(os.path.join(plan.root, ".study"), exist_ok=True)
    with open(os.path.join(plan.root, ".study", "lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another tools/study.py is running on {plan.root}") from None
        yield
