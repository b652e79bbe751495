"""The local executor: the stages that are not done, one after another, on this machine.

A stage runs its command (``Plan.command``) as a subprocess from the project root, its output
appended to ``OUTPUT_ROOT/logs/<stage>.log``. A failed stage is reported with that log and its
last ``error:`` line; the stages that do not depend on it still run. A run stage (pretraining,
detection) that has written anything is only continued with ``--resume`` (the tools then load
the newest checkpoint), never restarted over its own outputs. ``--console`` (study/console.py)
streams each stage's output to the console as well. Without Detectron2 the detect stages, and
the report that waits for them, are not run, and the study says so before it runs anything.
"""

import glob
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from .console import Console
from .plan import DERIVED_KINDS, RUN_KINDS
from .state import all_states, changed_problem, log_path, process_identity, study_lock
from .state import write_record as _write_record
from .summary_tables import summary_headline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _last_error(log):
    try:
        with open(log) as f:
            lines = [line.strip() for line in f if line.startswith("error:")]
    except OSError:
        return None
    return lines[-1] if lines else None


def run_stage(
    plan, stage, resume, executor="local", job_id=None, node=None, record=True, console=None
):
    """Run one stage's command to its end (also what a Slurm job calls on each of its nodes);
    return ``(ok, message)``. ``resume`` continues a started run stage from its newest
    checkpoint; ``node`` places a multi-node stage (Plan.command); ``record``: this process
    keeps the stage's record (one per stage: the first node's); ``console``: a Console the
    output streams to as well."""
    write_record = _write_record if record else _no_record
    log = log_path(plan, stage, node[1] if node else 0)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    cmd = plan.command(stage, resume=resume, node=node)
    if stage.kind == "data":
        refused = _refuse_existing_data(plan, stage)
        if refused:
            write_record(plan, stage, command=plan.command(stage), status="failed", error=refused)
            return False, refused
        partial = _fresh_partial_folder(stage.out)
        cmd = [partial if arg == stage.out else arg for arg in cmd]
    if stage.kind in DERIVED_KINDS and os.path.exists(stage.out):
        _keep_previous(stage.out)
    write_record(
        plan,
        stage,
        command=plan.command(stage),
        identity=plan.identity(stage),
        status="running",
        executor=executor,
        **process_identity(os.getpid()),
        job_id=job_id,
        log=log,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        rc=None,
        error=None,
    )
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        # The child's pid goes into the record so that --status can tell running from killed.
        # Without a console the tool writes into the log itself: it goes on writing there if
        # the study is killed.
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE if console else f,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            text=True,
        )
        write_record(plan, stage, **process_identity(proc.pid))
        try:
            rc = console.follow(proc, f, stage) if console else proc.wait()
        except KeyboardInterrupt as exc:
            _stop(proc)
            write_record(plan, stage, status="interrupted", rc=proc.returncode)
            raise StageInterrupted(stage, exc.args[0] if exc.args else "SIGINT") from None
        except BaseException:
            _stop(proc)
            raise
    if rc != 0:
        error = _last_error(log) or f"exit code {rc}"
        write_record(plan, stage, status="failed", rc=rc, error=error)
        return False, error
    if stage.kind == "data":
        os.rename(partial, stage.out)  # complete data appears at once, or not at all
    done, why_not = plan.check(stage)
    if not done:
        error = f"the command succeeded but its outputs are not valid: {why_not}"
        write_record(plan, stage, status="failed", rc=rc, error=error)
        return False, error
    write_record(plan, stage, status="finished", rc=0)
    if stage.trial is not None and record:
        plan.record_trials()  # into its search's journal, beside the values it was drawn
    return True, ""


def _no_record(*args, **kwargs):
    pass


class StageInterrupted(Exception):
    """Ctrl-C or SIGTERM reached the study while ``stage`` ran; the stage was stopped."""

    def __init__(self, stage, signal_name):
        super().__init__(f"{signal_name} while {stage.id} ran")
        self.stage, self.signal_name = stage, signal_name


def _stop(proc):
    """Stop a stage's tool and wait for it: Ctrl-C reaches the whole process group, so it is
    most often stopping already; otherwise (SIGTERM to the study alone) SIGTERM, which the tools
    handle as Ctrl-C (``interrupted`` in their log, checkpoints intact), then SIGKILL."""
    for signal_it, wait_s in ((None, 10), (proc.terminate, 60), (proc.kill, None)):
        if signal_it:
            signal_it()
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _keep_previous(out):
    """Move a derived stage's earlier output (a report, a converted file) aside, never over it:
    ``<out>.previous-<n>``."""
    n = 1
    while os.path.exists(f"{out}.previous-{n}"):
        n += 1
    os.rename(out, f"{out}.previous-{n}")


def _refuse_existing_data(plan, stage):
    """Generated data that is not done, in a folder that exists, is not the study's to delete
    (a user's files, or data made for another study file): the reason to stop, or None."""
    if not os.path.exists(stage.out):
        return None
    _, why_not = plan.check(stage)
    return (
        f"{stage.out} exists but does not hold the data this study file asks for ({why_not}); "
        "the study deletes only what it created: move that folder away, or use another "
        "output_root"
    )


def _fresh_partial_folder(out):
    """An empty folder beside ``out`` for the data to be generated into, then renamed to
    ``out``; partial folders of earlier generations that were killed (the study's own, by their
    name) are removed first."""
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.partial-*")):
        shutil.rmtree(stale)
    return tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)


def detectron2_missing():
    """Why the detect stages cannot run in this environment (tools/install_detectron2.sh records
    why it could not build Detectron2), or None when Detectron2 is installed."""
    if importlib.util.find_spec("detectron2") is not None:
        return None
    why = os.path.join(sys.prefix, "detectron2-unavailable.txt")
    if os.path.isfile(why):
        with open(why) as f:
            return f.readline().strip()
    return "Detectron2 is not installed in this environment."


def _needs_detectron2(detect, why):
    return (
        f"Detectron2 is not installed, and the {len(detect)} detect stage(s) need it: they will "
        "not run, nor the report that waits for them; the other stages run now.\n"
        f"  ({why})\n"
        "To finish the study: install Detectron2 into this environment (`make venv` builds it at "
        "the pinned commit: needs a C/C++ compiler and a few minutes; DETECTRON2_SRC=<clone or "
        "archive> where GitHub is out of reach; README, section Install), then run this command "
        "again: it runs only the stages that are not done."
    )


def _report_lines(plan):
    """Where the study's report is, and a line of what it holds."""
    report = os.path.join(plan.report.out, "table5_summary.md")
    lines = [f"report: {report}"]
    try:
        with open(os.path.join(plan.report.out, "table5_summary.csv")) as f:
            lines.append("  " + summary_headline(f.read()))
    except OSError:
        pass  # a report written before table5_summary.csv existed
    return lines


def run_local(plan, resume=False, out=print, console=False):
    """Run every stage that is not done; return 0 when all are done at the end, else 1.
    ``console``: stream each stage's output to the console (study/console.py)."""
    with study_lock(plan):
        states = all_states(plan)
        todo = [s for s in plan.stages if states[s.id][0] != "done"]
        if not todo:
            out(f"nothing to do: all {len(plan.stages)} stages of study {plan.study.name} are done")
            for line in _report_lines(plan):
                out(line)
            return 0
        out(
            f"study {plan.study.name}: {len(plan.stages) - len(todo)} of {len(plan.stages)} stages "
            f"done, {len(todo)} to run (output root {plan.root})"
        )
        detect = [s for s in todo if s.kind == "detect"]
        no_detectron2 = detect and detectron2_missing()
        if no_detectron2:
            out(_needs_detectron2(detect, no_detectron2))
        stream = Console(plan) if console else None
        problems = {}  # stage id -> why it did not finish in this run
        for n, stage in enumerate(todo, 1):
            state, detail = states[stage.id]
            blocked = [d for d in stage.deps if d in problems]
            prefix = f"[{n}/{len(todo)}] {stage.id}"
            if blocked:
                problems[stage.id] = f"not run: {', '.join(blocked)} did not finish"
            elif stage.kind == "detect" and no_detectron2:
                problems[stage.id] = "not run: needs Detectron2, which is not installed"
            elif state == "changed":
                problems[stage.id] = changed_problem(detail)
            elif stage.resources["nodes"] > 1:
                problems[stage.id] = (
                    f"{stage.resources['nodes']} nodes: run this study with --executor slurm"
                )
            elif state in ("running", "queued"):
                problems[stage.id] = f"already {state} ({detail})"
            elif stage.kind in RUN_KINDS and plan.started(stage) and not resume:
                problems[stage.id] = (
                    f"interrupted earlier ({state}); rerun with --resume to continue it from "
                    f"its last checkpoint (log {log_path(plan, stage)})"
                )
            if stage.id in problems:
                out(f"{prefix}: {problems[stage.id]}")
                continue
            continuing = resume and stage.kind in RUN_KINDS and plan.started(stage)
            if stream:
                stream.open(f"[{n}/{len(todo)}]", stage, continuing)
            else:
                action = "resuming" if continuing else "running"
                out(f"{prefix}: {action} (log {log_path(plan, stage)})")
            sys.stdout.flush()
            t0 = time.time()
            ok, error = run_stage(plan, stage, resume=continuing, console=stream)
            if not ok:
                problems[stage.id] = error
                out(f"{prefix}: FAILED: {error}\n    log: {log_path(plan, stage)}")
            elif stream:
                stream.close(time.time() - t0)
            else:
                out(f"{prefix}: done in {time.time() - t0:.1f} s")
        if problems:
            out(f"{len(problems)} stage(s) did not finish:")
            for sid, why in problems.items():
                out(f"  {sid}: {why}")
            return 1
        out(f"study {plan.study.name} finished")
        for line in _report_lines(plan):
            out(line)
        return 0
