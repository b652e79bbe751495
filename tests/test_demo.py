"""The demo: `make demo` runs configs/study/demo_cpu.yaml through tools/study.py in console mode
(study/console.py). Its file keeps the demo's sizes; the console mode's headers, streamed output,
heartbeat, durations and closing lines are checked on stand-in tools (fast; with the real tools
where tests/test_study_e2e.py resumes the cut tiny study); without Detectron2 the study says so
before it runs anything, runs the rest, and a second run after the install finishes it."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, require_detectron2, tiny_study
from study import console, local
from study.completion import Completion
from study.plan import Plan
from study.spec import load_study
from tools.study import main as study_main

DEMO = os.path.join(ROOT, "configs", "study", "demo_cpu.yaml")

# What each stage's stand-in tool prints and writes (argv: the stage's kind, its output path).
# A detect stage prints a Detectron2 setting (kept from the console) and a progress line (shown);
# a pretrain stage falls silent for longer than the heartbeat.
STAND_IN = """
import os, sys, time
kind, out = sys.argv[1:3]
if kind == "detect":
    print("[d2] Running with full config: MODEL.DEVICE cpu")
    print("[d2] eta: 0:00:01  iter: 19  total_loss: 1.2")
if kind == "pretrain":
    print("epoch 1/3 loss 1.0", flush=True)
    time.sleep(2.5)
if kind == "convert":
    os.makedirs(os.path.dirname(out), exist_ok=True)
    open(out, "w").close()
else:
    os.makedirs(out, exist_ok=True)
if kind == "report":
    with open(os.path.join(out, "table5_summary.csv"), "w") as f:
        f.write("method,AP50_mean,AP50_std\\nBaseline,66.5,0.26\\nTF-KD,57.84,5.33\\n")
"""


def _write(tmp_path, data):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture
def stand_ins(monkeypatch):
    """Every stage runs STAND_IN instead of its tool, and is done once its output exists; the
    console's heartbeat comes after 0.5 s of silence."""
    monkeypatch.setattr(
        Plan,
        "command",
        lambda self, stage, resume=False, node=None: [
            sys.executable,
            "-c",
            STAND_IN,
            stage.kind,
            stage.out,
        ],
    )
    monkeypatch.setattr(
        Completion, "check", lambda self, stage: (os.path.exists(stage.out), "not there")
    )
    monkeypatch.setattr(console, "HEARTBEAT_S", 0.5)


def test_demo_study_keeps_the_demo_sizes():
    """The demo's backbones on its generated data at the sizes docs/demo.md measured: Baseline,
    PS-KD and PS-KD + CutMix (ResNet-18) x 2 seeds, 4 epochs, 200 detection iterations."""
    with open(DEMO) as f:
        data = yaml.safe_load(f)
    assert data["data"]["synthetic"] == {
        "classification": {"classes": 4, "train_per_class": 24, "val_per_class": 8, "size": 64},
        "voc": {"trainval07": 40, "test07": 20, "trainval12": 40},
    }
    assert data["pretrain"]["opts"]["SOLVER.EPOCHS"] == 4
    assert data["detection"] == {
        "config": "configs/detection/faster_rcnn_R_18_FPN_tiny_cpu.yaml",
        "opts": {"SOLVER.MAX_ITER": 200, "SOLVER.STEPS": [150], "SOLVER.WARMUP_ITERS": 50},
    }
    plan = Plan(load_study(DEMO))
    assert plan.study.seeds == [0, 1]
    assert plan.labels() == {
        "baseline": "Baseline",
        "pskd": "PS-KD",
        "pskd_cutmix": "PS-KD + CutMix",
    }
    assert {b.arch for b in plan.study.backbones} == {"resnet18"}
    assert not any(b.search or b.teacher for b in plan.study.backbones)
    assert len(plan.stages) == 2 + 3 * 2 * 3 + 1


@pytest.mark.integration
def test_make_demo_is_one_study_command():
    """`make demo` runs the demo study once, in console mode, with DEMO_ARGS passed on; the tiny
    study is not run besides it."""
    venv = sys.prefix
    dry = subprocess.run(
        ["make", "-n", "demo", f"VENV={venv}", "DEMO_ARGS=--device cuda"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    runs = [line for line in dry.splitlines() if "tools/" in line and ".py" in line]
    assert runs == [
        f"{venv}/bin/python tools/study.py --config-file configs/study/demo_cpu.yaml --console "
        "--device cuda"
    ]


@pytest.mark.integration
@pytest.mark.detectron2
def test_console_streams_each_stage_between_a_header_and_its_duration(tmp_path, stand_ins, capsys):
    require_detectron2()  # a detect stage's header reads its config through Detectron2's
    data = tiny_study(tmp_path / "out", seeds=[0])
    del data["backbones"]["tfkd"]
    path = _write(tmp_path, data)
    assert study_main(["--config-file", path, "--console"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    headers = [line for line in lines if line.startswith("[")]
    expected = [
        ("data/classification", "4 classes, 8 train / 4 val images each, 64 px"),
        ("data/voc", "VOC2007 trainval 8 / test 10, VOC2012 trainval 4 images"),
        ("pretrain/baseline/seed0", "resnet18, 3 epochs"),
        ("convert/baseline/seed0", "to Detectron2"),
        ("detect/baseline/seed0", "Faster R-CNN, 4 iterations"),
        ("report/tiny_cpu", "Table 5 from 1 detection runs"),
    ]
    assert len(headers) == len(expected)
    elapsed = []
    for n, (header, (stage, what)) in enumerate(zip(headers, expected), 1):
        m = re.fullmatch(
            rf"\[{n}/6\] {re.escape(stage)} \({re.escape(what)}\)  \(elapsed (\S+)\)", header
        )
        assert m, header
        elapsed.append(m.group(1))
        # Each stage ends with its duration, before the next header.
        block = out.split(header, 1)[1].split("\n[", 1)[0]
        assert re.search(r"\n      done in \d+\.\d s \(CPU \d+\.\d s\)(\n|$)", block), block
    assert all(re.fullmatch(r"\d+:\d\d", e) for e in elapsed) and elapsed[-1] >= "0:02"
    pretrain = out.split(headers[2], 1)[1].split(headers[3], 1)[0]
    assert "      epoch 1/3 loss 1.0\n" in pretrain
    assert re.search(r"      \.\.\. still running \(0:0\d in this stage\)", pretrain)
    # Detectron2's output is trimmed to its progress on the console; its log has all of it.
    detect = out.split(headers[4], 1)[1]
    assert "eta: 0:00:01" in detect and "full config" not in detect
    with open(tmp_path / "out" / "logs" / "detect__baseline__seed0.log") as f:
        log = f.read()
    assert "full config" in log and "eta: 0:00:01" in log
    # The closing lines: where the report is, and what it holds.
    report = tmp_path / "out" / "report" / "tiny_cpu" / "table5_summary.md"
    assert lines[-3:] == [
        "study tiny_cpu finished",
        f"report: {report}",
        "  VOC07 test AP50, mean ± std over seeds: Baseline 66.50 ± 0.26, TF-KD 57.84 ± 5.33; "
        "with each difference to the Baseline and its 95% interval, Table 4's ImageNet metrics, "
        "and the paper's values",
    ]
    # Run again: nothing to do, and the same report.
    assert study_main(["--config-file", path, "--console"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == lines[-2:]


@pytest.mark.integration
def test_without_detectron2_says_so_first_runs_the_rest_then_finishes(
    tmp_path, stand_ins, capsys, monkeypatch
):
    data = tiny_study(tmp_path / "out", seeds=[0])
    del data["backbones"]["tfkd"]
    path = _write(tmp_path, data)
    why = "Detectron2 is not installed: no C++ compiler found (c++)."
    monkeypatch.setattr(local, "detectron2_missing", lambda: why)
    assert study_main(["--config-file", path, "--no-console"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "Detectron2 is not installed, and the 1 detect stage(s) need it: they will not run, nor "
        "the report that waits for them; the other stages run now."
    )
    assert lines[2] == f"  ({why})"
    assert "`make venv` builds it at the pinned commit" in lines[3]
    assert lines[3].endswith(
        "then run this command again: it runs only the stages that are not done."
    )
    assert [line.split(":")[0] for line in lines[4:] if ": done in" in line] == [
        "[1/6] data/classification",
        "[2/6] data/voc",
        "[3/6] pretrain/baseline/seed0",
        "[4/6] convert/baseline/seed0",
    ]
    assert "[5/6] detect/baseline/seed0: not run: needs Detectron2, which is not installed" in lines
    assert "[6/6] report/tiny_cpu: not run: detect/baseline/seed0 did not finish" in lines
    # Detectron2 installed, the same command runs what is left.
    monkeypatch.setattr(local, "detectron2_missing", lambda: None)
    assert study_main(["--config-file", path, "--no-console"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("study tiny_cpu: 4 of 6 stages done, 2 to run")
    assert [line for line in lines if ": done in" in line][0].startswith("[1/2] detect/")


def test_device_cuda_writes_beside_the_cpu_runs(tmp_path, capsys):
    """--device sets MODEL.DEVICE of every run stage, into an output root of its own: the
    CPU runs are never trained over, nor taken as done."""
    path = _write(tmp_path, tiny_study(tmp_path / "out", seeds=[0]))
    assert study_main(["--config-file", path, "--device", "cuda", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"output root {tmp_path / 'out'}-cuda" in out
    commands = [line for line in out.splitlines() if "$ " in line]
    run_stages = [c for c in commands if "pretrain.py" in c or "train_net.py" in c]
    assert len(run_stages) == 4 and all("MODEL.DEVICE cuda" in c for c in run_stages)
