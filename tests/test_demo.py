"""tools/demo.py (study/demo.py) end to end at its smallest size, the way a newcomer meets it: first
without Detectron2 (every step that does not need it, then the install instructions), then, where
Detectron2 is installed, the remaining steps with --from detection on the same output folder."""

import argparse
import contextlib
import io
import json
import os

import pytest

from helpers import require_detectron2
from pretrain.cli import setup_cfg
from pretrain.methods import METHODS as METHODS_OF_THE_TOOLKIT
from study import demo, demo_choices
from tools.demo import main as demo_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["baseline", "pskd"]  # two backbones keep the test short; `make demo` runs three


def table_rows(md_path):
    with open(md_path) as f:
        lines = [line for line in f if line.startswith("| ") and not line.startswith("| Method")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


@pytest.fixture(scope="module")
def demo_without_d2(tmp_path_factory):
    """The tiny demo run as if Detectron2 were absent (the tools it runs do not need it); its
    console output (module-scoped, so captured here rather than by capsys)."""
    out = str(tmp_path_factory.mktemp("demo") / "out")
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(demo, "detectron2_installed", lambda: False)
        rc = demo_main(["--out", out, "--size", "tiny", "--methods", ",".join(METHODS)])
    return out, rc, stdout.getvalue()


@pytest.mark.slow
def test_demo_without_detectron2_runs_the_rest_and_says_how_to_finish(demo_without_d2):
    out, rc, stdout = demo_without_d2
    assert rc == 0
    summary = json.load(open(os.path.join(out, "demo_steps.json")))
    status = {s["stage"]: set() for s in summary["steps"]}
    for s in summary["steps"]:
        status[s["stage"]].add(s["status"])
    assert status == {
        "data": {"done"},
        "pretrain": {"done"},
        "convert": {"done"},
        "detection": {"skipped"},
        "report": {"done"},
    }
    assert sum(s["stage"] == "detection" for s in summary["steps"]) == len(METHODS)
    # Step headers with their number, and the exact install command and the re-run command.
    assert "[3/" in stdout and "pretraining Baseline backbone (resnet18, 2 epochs)" in stdout
    assert "Detectron2 is not installed" in stdout
    assert "`make venv` builds it at the pinned commit" in stdout
    assert (
        f'make demo DEMO_ARGS="--out {out} --size tiny --methods baseline,pskd --from detection"'
        in stdout
    )
    assert stdout.rstrip().endswith(f"Output folder: {out}")
    # What exists without detection: metrics, diagrams, converted weights, a Table 5 without AP50.
    for m in METHODS:
        assert os.path.getsize(os.path.join(out, f"reliability_{m}.png")) > 0
        assert os.path.getsize(os.path.join(out, "d2", f"r18_{m}.pkl")) > 0
    for name in ("table5.md", "table5.csv", "table5.png", "pretraining.md"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert (
        "No VOC evaluation (voc_eval.json) yet for" in open(os.path.join(out, "table5.md")).read()
    )
    rows = table_rows(os.path.join(out, "table5.md"))
    assert [r[0] for r in rows] == ["Baseline", "PS-KD"]
    assert all(r[3] == "" and r[4] for r in rows)  # AP50 (ours) empty, the paper's there
    assert len(table_rows(os.path.join(out, "pretraining.md"))) == len(METHODS)


@pytest.mark.slow
@pytest.mark.detectron2
def test_demo_from_detection_finishes_table5(demo_without_d2, capsys):
    require_detectron2()
    out, rc, _ = demo_without_d2
    assert rc == 0
    assert (
        demo_main(
            [
                "--out",
                out,
                "--size",
                "tiny",
                "--methods",
                ",".join(METHODS),
                "--det-iters",
                "2",
                "--from",
                "detection",
            ]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    assert "fine-tuning Faster R-CNN R-18 FPN from the PS-KD backbone (2 iterations)" in stdout
    assert "Detectron2 is not installed" not in stdout
    summary = json.load(open(os.path.join(out, "demo_steps.json")))
    assert {s["stage"]: s["status"] for s in summary["steps"]}["detection"] == "done"
    for m in METHODS:
        assert os.path.isfile(os.path.join(out, "detection", m, "voc_eval.json"))
    md = open(os.path.join(out, "table5.md")).read()
    assert "No VOC evaluation" not in md
    rows = table_rows(os.path.join(out, "table5.md"))
    assert [r[0] for r in rows] == ["Baseline", "PS-KD"]
    assert all(r[3] != "" for r in rows)  # AP50 measured (near 0 after 2 iterations, but measured)
    assert os.path.getsize(os.path.join(out, "table5.png")) > 0


@pytest.mark.integration
def test_demo_names_the_failed_step_and_its_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(demo_choices.CONFIGS, "baseline", "no_such_config.yaml")
    out = str(tmp_path / "out")
    assert (
        demo_main(["--out", out, "--size", "tiny", "--methods", "baseline", "--skip-detection"])
        == 1
    )
    err = capsys.readouterr().err
    log = os.path.join(out, "logs", "03_pretrain.log")
    assert "DEMO FAILED at step [3/7] pretraining Baseline backbone" in err
    assert f"Full log of the step: {log}" in err and os.path.isfile(log)
    # The tool's own error line, in the failure message and among the log's last lines.
    missing = os.path.join(ROOT, "configs", "pretrain", "no_such_config.yaml")
    error = f"error: config file '{missing}': not found"
    assert f"pretrain.py exited with code 1\n  {error}" in err
    tail = err.split("Its last lines:\n", 1)[1]
    assert f"    {error}" in tail.splitlines()


def test_demo_from_a_later_stage_needs_the_earlier_outputs(tmp_path):
    with pytest.raises(SystemExit, match="--from convert reuses earlier steps' outputs"):
        demo_main(["--out", str(tmp_path / "empty"), "--from", "convert", "--skip-detection"])


@pytest.mark.parametrize("taught", ["tfkd", "nkd"])
def test_demo_methods_taught_by_the_baseline_need_it_first(taught):
    assert demo_choices.parse_methods(f"baseline,{taught}") == ["baseline", taught]
    for methods in (taught, f"{taught},baseline"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"{taught}'s teacher is the baseline"):
            demo_choices.parse_methods(methods)


def test_demo_offers_every_method():
    # pskd_cutmix is PS-KD with a config of its own.
    assert set(demo_choices.CONFIGS) - {"pskd_cutmix"} == set(METHODS_OF_THE_TOOLKIT)


@pytest.mark.parametrize("run", sorted(demo_choices.CONFIGS))
def test_demo_run_config_trains_the_method_its_name_says(run):
    cfg = setup_cfg(os.path.join(demo_choices.PRETRAIN_CONFIGS, demo_choices.CONFIGS[run]))
    assert (cfg.METHOD.NAME, cfg.AUG.CUTMIX.ENABLED) == demo_choices.run_method(run)
    label = "PS-KD + CutMix" if run == "pskd_cutmix" else METHODS_OF_THE_TOOLKIT[run].label
    assert demo_choices.run_label(run) == label
