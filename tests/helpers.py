"""What many test modules share: the checkout's root, skipping what needs Detectron2 (failing
instead under CI=true), running a tool in a subprocess and killing what it left, and the tiny
study's file. Fixtures and pytest's hooks stay in conftest.py."""

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_detectron2():
    """Skip the calling test (or module) when Detectron2 is absent, with the reason `make venv`
    recorded; under CI=true its absence fails instead, so CI cannot pass with the detection stage
    unchecked."""
    if importlib.util.find_spec("detectron2") is not None:
        return
    reason_file = os.path.join(sys.prefix, "detectron2-unavailable.txt")
    if os.path.isfile(reason_file):
        with open(reason_file) as f:
            reason = " ".join(f.read().split())
    else:
        reason = "Detectron2 is not installed in this environment (`make venv` installs it)"
    skip_unless_ci(reason)


def skip_unless_ci(reason):
    """Skip the calling test (or module) for ``reason``; under CI=true fail instead, so that CI
    cannot pass with what it was meant to check left out."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def file_rendezvous(folder):
    """An ``init_process_group`` init method for processes a test starts itself: a file in the
    test's own folder (a probed free port could be taken by another process before it is bound)."""
    return f"file://{os.path.join(str(folder), 'rendezvous')}"


def pretrain_argv(config, root, out, *opts, first=()):
    """tools/pretrain.py's argv: ``--config-file config``, then ``first`` (flags such as
    ``--resume``, or KEY VALUE pairs that ``opts`` may override), DATA.ROOT ``root``, OUTPUT_DIR
    ``out`` and the KEY VALUE pairs ``opts`` (a later pair wins)."""
    return [
        "tools/pretrain.py",
        "--config-file",
        config,
        *first,
        "DATA.ROOT",
        root,
        "OUTPUT_DIR",
        out,
        *opts,
    ]


def run_tool(args, nproc=1, timeout=300, check=True, env=None):
    """Run a tool from tools/ in a subprocess (under torchrun --standalone when nproc > 1: its
    rendezvous binds a port of the system's choosing). ``env``: variables to add."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
        ] + args
    else:
        cmd = [sys.executable] + args
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{' '.join(cmd)} did not end within {timeout} s:\n{stdout[-4000:]}\n{stderr[-4000:]}"
        ) from None
    proc = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout[-4000:]}\n{stderr[-4000:]}"
        )
    return proc


def descendants(pid):
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so a
    process-group kill would miss them)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError),
                open(f"/proc/{pid}/task/{task}/children") as f,
            ):
                for child in map(int, f.read().split()):
                    out += [child] + descendants(child)
    return out


def kill_tree(pid):
    """SIGKILL ``pid`` and every process below it, so that a test that failed leaves none behind."""
    for victim in [pid] + descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def first_checkpoint(study_data, stage):
    """The iteration of a synthetic study's pretraining stage's first checkpoint: the end of its
    first epoch (every training image once, in full batches)."""
    from pretrain.config.defaults import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, stage.backbone.config))
    images = study_data["data"]["synthetic"]["classification"]
    return images["classes"] * images["train_per_class"] // cfg.SOLVER.IMS_PER_BATCH


def tiny_study(output_root, search=False, **changes):
    """configs/study/tiny_cpu.yaml as a dict, writing into ``output_root``, with its data and
    detection schedule cut to what the study tests need: the file's own sizes make every AP50
    positive and different between runs (docs/study.md, minutes), while the tests check the
    study machinery, which 4 detection iterations on 12 training images exercise as well.
    ``search``: keep the file's hyperparameter search (3 more pretraining stages) for the test
    of the search; the other tests use the fixed value. ``changes``: top-level keys."""
    import yaml

    with open(os.path.join(ROOT, "configs", "study", "tiny_cpu.yaml")) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(output_root)
    if not search:
        del data["backbones"]["tfkd"]["search"]
    data["data"]["synthetic"] = {
        "classification": {"classes": 4, "train_per_class": 8, "val_per_class": 4, "size": 64},
        "voc": {"trainval07": 8, "test07": 10, "trainval12": 4},
    }
    data["detection"]["opts"].update(
        {"SOLVER.MAX_ITER": 4, "SOLVER.STEPS": [3], "SOLVER.WARMUP_ITERS": 1}
    )
    data.update(changes)
    return data
