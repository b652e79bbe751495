"""Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (to the study alone) while a stage
trains: the study stops that stage's tool, prints one line saying which stage and how to go on,
leaves no process behind and no traceback anywhere, and the stage is resumable."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from helpers import ROOT, descendants, first_checkpoint, tiny_study
from study.plan import Plan
from study.spec import load_study

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_interrupted_study_stops_its_stage_with_one_line(tmp_path, sig, to_group):
    data = tiny_study(tmp_path / "out", seeds=[0])
    del data["backbones"]["tfkd"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = Plan(load_study(str(path)))
    stage = plan.pretrain["baseline", 0]
    # The stage waits after its first checkpoint: the signal lands inside it, after a checkpoint.
    fault = f"hang at checkpoint {first_checkpoint(data, stage)} in {stage.out}"
    study = subprocess.Popen(
        [sys.executable, "tools/study.py", "--config-file", str(path)],
        cwd=ROOT,
        start_new_session=True,  # its own group, as a shell gives a foreground command
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", PRETRAIN_FAULT=fault),
    )
    deadline = time.time() + 600
    while not os.path.exists(os.path.join(stage.out, "last_checkpoint")):
        assert study.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(1)  # past the checkpoint's rename, into the hang
    below = descendants(study.pid)
    assert below
    (os.killpg if to_group else os.kill)(study.pid, sig)
    out, err = study.communicate(timeout=120)
    name = signal.Signals(sig).name
    assert study.returncode == 128 + sig
    assert err.strip().splitlines() == [
        f"stopped by {name}: pretrain/baseline/seed0 was interrupted (log "
        f"{os.path.join(plan.root, 'logs', 'pretrain__baseline__seed0.log')}); continue with: "
        f"python tools/study.py --config-file {path} --resume"
    ]
    assert all(not os.path.exists(f"/proc/{pid}") for pid in below)  # no orphan left training
    with open(os.path.join(plan.root, "logs", "pretrain__baseline__seed0.log")) as f:
        log = f.read()
    assert f"interrupted ({name}) at iteration" in log and "Traceback" not in log
    status = subprocess.run(
        [sys.executable, "tools/study.py", "--config-file", str(path), "--status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"pretrain/baseline/seed0 +interrupted", status), status
