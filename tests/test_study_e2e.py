"""The tiny CPU study end to end through tools/study.py: killed mid-stage, the independent stages
go on, --resume finishes it (in console mode) with the numbers of an uninterrupted run, a rerun
does nothing; a failing stage is reported with its log while the stages that do not depend on it
run."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from helpers import ROOT, first_checkpoint, require_detectron2, run_tool, tiny_study
from study.plan import Plan
from study.search import journal_path, optuna_study, recorded_values, trial_metric
from study.spec import load_study

require_detectron2()

pytestmark = pytest.mark.slow


def _study(tmp_path, **changes):
    data = tiny_study(tmp_path / "out", **changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path), data


def _study_cmd(path, *args):
    return [sys.executable, "tools/study.py", "--config-file", path, *args]


def _run(path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        _study_cmd(path, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def test_tiny_study_killed_resumed_and_rerun(tmp_path):
    """TF-KD's run, after its search of TFKD.ALPHA (2 trials), killed; one seed: the stages of a
    second would add nothing the first does not show."""
    path, data = _study(tmp_path, seeds=[0], search=True)
    data["backbones"]["tfkd"]["search"]["trials"] = 2  # the lower NLL of two: a choice
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    # The tiny study's 3 epochs, a checkpoint after each: the kill after the first lands inside the
    # stage.
    assert data["pretrain"]["opts"]["SOLVER.EPOCHS"] == 3
    plan = Plan(load_study(path))
    victim = plan.pretrain["tfkd", 0]
    # Its first checkpoint, at the end of the first epoch, kills the study and the stage it runs
    # (one process group), as a node failure would.
    first = first_checkpoint(data, victim)
    fault = f"kill group at checkpoint {first} in {victim.out}"
    proc = subprocess.Popen(
        _study_cmd(path),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1", PRETRAIN_FAULT=fault),
    )
    assert proc.wait(timeout=600) == -signal.SIGKILL
    assert os.path.isfile(os.path.join(victim.out, f"model_{first:07d}.pth"))
    assert not os.path.exists(os.path.join(victim.out, "model_final.pth"))

    status = _run(path, "--status").stdout
    for stage in ["pretrain/baseline/seed0", *(t.id for t in plan.trials["tfkd"])]:
        assert re.search(rf"{stage} +done", status), status
    assert re.search(r"pretrain/tfkd/seed0 +interrupted", status)

    # Without --resume the started stage is left alone; what does not depend on it runs.
    second = _run(path)
    assert second.returncode == 1
    assert (
        "pretrain/tfkd/seed0: interrupted earlier" in second.stdout and "--resume" in second.stdout
    )
    assert "detect/tfkd/seed0: not run: convert/tfkd/seed0 did not" in second.stdout
    for stage in ("convert/baseline/seed0", "detect/baseline/seed0"):
        assert f"{stage}: done in" in second.stdout, second.stdout
    assert "report/tiny_cpu: not run" in second.stdout

    # In console mode (what `make demo` shows): a header per stage, the tools' output streamed
    # (Detectron2's trimmed to its progress and results), each stage's wall and CPU time, and
    # where the report is with its headline.
    third = _run(path, "--resume", "--console")
    out = third.stdout
    assert third.returncode == 0, out + third.stderr
    headers = re.findall(r"^\[(\d)/4\] (\S+) \((.*)\)  \(elapsed \d+:\d\d\)$", out, re.M)
    assert headers == [  # nothing done is run again
        ("1", "pretrain/tfkd/seed0", "resnet18, 3 epochs; resuming"),
        ("2", "convert/tfkd/seed0", "to Detectron2"),
        ("3", "detect/tfkd/seed0", "Faster R-CNN, 4 iterations"),
        ("4", "report/tiny_cpu", "Table 5 from 2 detection runs"),
    ], out
    assert len(re.findall(r"^      done in \d+\.\d s \(CPU \d+\.\d s\)$", out, re.M)) == 4
    assert "saved checkpoint" in out and "copypaste:" in out
    assert "Running with full config" not in out
    with open(os.path.join(plan.root, "logs", "detect__tfkd__seed0.log")) as f:
        assert "Running with full config" in f.read()
    report = tmp_path / "out" / "report" / "tiny_cpu" / "table5_summary.md"
    assert out.splitlines()[-2] == f"report: {report}"
    assert re.fullmatch(
        r"  VOC07 test AP50, mean ± std over seeds: Baseline \d+\.\d\d, TF-KD \d+\.\d\d; .*",
        out.splitlines()[-1],
    )
    with open(os.path.join(victim.out, "log.txt")) as f:
        assert "resumed from" in f.read()

    n = len(plan.stages)  # data 2, pretrain 2, convert 2, detect 2, report 1
    fourth = _run(path, "--console").stdout
    assert fourth.startswith(f"nothing to do: all {n} stages of study tiny_cpu are done")
    assert fourth.splitlines()[-2:] == out.splitlines()[-2:]
    assert f"{n} done (of {n} stages)" in _run(path, "--status").stdout

    # The same numbers as the same stage run without interruption.
    cmd = Plan(load_study(path)).command(victim)  # with the search's winner, drawn since
    cmd[cmd.index("OUTPUT_DIR") + 1] = str(tmp_path / "reference")
    run_tool(cmd[1:], timeout=600)
    for name in ("eval_final.json",):
        with open(os.path.join(victim.out, name)) as a, open(tmp_path / "reference" / name) as b:
            assert json.load(a) == json.load(b)
    resumed = torch.load(os.path.join(victim.out, "model_final.pth"), weights_only=True)["model"]
    reference = torch.load(tmp_path / "reference" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)

    # The winner of the search (the trials' lowest validation NLL, each recorded in the journal)
    # trained TF-KD's run; the report names its value.
    search = plan.study.backbone("tfkd").search
    values = recorded_values(plan.root, "tfkd", search)
    nll = [trial_metric(t.out, "nll") for t in plan.trials["tfkd"]]
    assert len(set(nll)) == 2  # the trials differ: the choice is not a tie
    best = values[nll.index(min(nll))]["TFKD.ALPHA"]
    with open(os.path.join(victim.out, "config.yaml")) as f:
        assert yaml.safe_load(f)["TFKD"]["ALPHA"] == best
    journal = optuna_study(journal_path(plan.root, "tfkd"), search, "tfkd").trials
    assert [t.params for t in journal] == values and [t.value for t in journal] == nll
    with open(tmp_path / "out" / "report" / "tiny_cpu" / "table5.md") as f:
        assert f"TFKD.ALPHA {best:g}," in f.read()

    summary = (tmp_path / "out" / "report" / "tiny_cpu" / "table5_summary.md").read_text()
    assert re.search(r"\| TF-KD \| resnet18 \| batch 4, lr 0\.01, [0-9,]+ it [^|]*\| 0 \|", summary)
    assert "**Not the paper's setting** (backbone resnet18;" in summary
    for det in plan.detect.values():
        assert os.path.isfile(os.path.join(det.out, "voc_detections.npz"))


def test_failed_stage_reported_and_independent_stages_go_on(tmp_path):
    path, data = _study(tmp_path, seeds=[0])
    # A pretraining that stops before its first step: 3 classes configured, 4 class folders.
    data["backbones"] = {
        "broken": {
            "config": data["backbones"]["baseline"]["config"],
            "opts": {"MODEL.NUM_CLASSES": 3},
        },
        "baseline": data["backbones"]["baseline"],
    }
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    result = _run(path)
    assert result.returncode == 1
    log = os.path.join(str(tmp_path / "out"), "logs", "pretrain__broken__seed0.log")
    assert (
        "pretrain/broken/seed0: FAILED: error:" in result.stdout and f"log: {log}" in result.stdout
    )
    assert "detect/baseline/seed0: done in" in result.stdout
    assert "detect/broken/seed0: not run: convert/broken/seed0 did not finish" in result.stdout
    status = _run(path, "--status").stdout
    assert re.search(r"pretrain/broken/seed0 +failed +error:", status) and log in status
