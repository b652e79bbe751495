"""A stage's identity is what determines its result (study.identity): equivalent study files
keep it, a changed config file's content changes it and --status names the key; conversion and
the report are redone when their inputs change, their previous outputs kept beside."""

import os
import pickle
import re
import shutil

import pytest
import torch
import torchvision
import yaml

from helpers import ROOT, tiny_study
from study.identity import differences
from study.local import run_stage
from study.plan import Plan
from study.spec import load_study
from study.state import all_states, read_record, write_record


def _plan(tmp_path, data, name="study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Plan(load_study(str(path)))


def _finish(stage):
    """The outputs of a finished pretraining stage (seed 0, Baseline, an untrained ResNet-18);
    returns its model_final.pth."""
    os.makedirs(stage.out)
    with open(os.path.join(stage.out, "config.yaml"), "w") as f:
        yaml.safe_dump({"SEED": 0, "METHOD": {"NAME": "baseline"}}, f)
    with open(os.path.join(stage.out, "eval_final.json"), "w") as f:
        f.write('{"top1_err": 50.0}')
    final = os.path.join(stage.out, "model_final.pth")
    torch.save({"model": torchvision.models.resnet18(num_classes=4).state_dict()}, final)
    return final


def _identities(plan):
    return {s.id: plan.identity(s) for s in plan.stages}


@pytest.fixture
def configs(tmp_path):
    """The tiny study's configs copied, so that a test can edit a _BASE_ file."""
    folder = tmp_path / "configs"
    shutil.copytree(os.path.join(ROOT, "configs"), folder)
    data = tiny_study(tmp_path / "out")
    for b in data["backbones"].values():
        b["config"] = str(folder / os.path.relpath(b["config"], "configs"))
    data["detection"]["config"] = str(folder / "detection" / "faster_rcnn_R_18_FPN_tiny_cpu.yaml")
    return folder, data


def test_equivalent_study_files_keep_every_identity(tmp_path, configs):
    folder, data = configs
    before = _identities(_plan(tmp_path, data))
    moved = dict(data, output_root=str(tmp_path / "elsewhere"))  # a moved or copied output root
    moved["pretrain"] = {"opts": dict(data["pretrain"]["opts"], LOG_PERIOD=7)}
    # Config paths relative to the study file's folder instead of absolute ones.
    os.makedirs(tmp_path / "sub")
    for b in moved["backbones"].values():
        b["config"] = os.path.relpath(b["config"], tmp_path / "sub")
    assert _identities(_plan(tmp_path / "sub", moved)) == before


LOG_PERIOD = "LOG_PERIOD"  # may change on resume: not part of the identity


def test_a_changed_base_file_changes_what_depends_on_it(tmp_path, configs):
    folder, data = configs
    plan = _plan(tmp_path, data)
    before = _identities(plan)
    base = folder / "pretrain" / "Base-CPU-synthetic.yaml"
    assert "BASE_LR: 0.02\n" in base.read_text()
    base.write_text(base.read_text().replace("BASE_LR: 0.02\n", "BASE_LR: 0.03\n"))
    after = _identities(_plan(tmp_path, data))
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == sorted(
        s.id for s in plan.stages if s.kind in ("pretrain", "convert", "detect", "report")
    )
    stage = "pretrain/baseline/seed0"
    assert differences(before[stage], after[stage]) == ["config.SOLVER.BASE_LR: 0.02 -> 0.03"]
    # The detection config's own _BASE_ chain: its content, not its path.
    det_base = folder / "detection" / "Base-RCNN-FPN-VOC.yaml"
    det_base.write_text(det_base.read_text() + "\n# edited\n")
    again = _identities(_plan(tmp_path, data))
    assert [k for k in after if after[k] != again[k] and k.startswith("pretrain")] == []
    assert any(
        d.startswith("config.Base-RCNN-FPN-VOC.yaml:")
        for d in differences(after["detect/baseline/seed0"], again["detect/baseline/seed0"])
    )


def test_other_generated_data_changes_every_stage_that_used_it(tmp_path, configs):
    _, data = configs
    before = _identities(_plan(tmp_path, data))
    data["data"]["synthetic"]["classification"]["train_per_class"] += 1
    after = _identities(_plan(tmp_path, data))
    assert before["data/voc"] == after["data/voc"]
    assert all(before[k] != after[k] for k in before if k.startswith(("pretrain", "convert")))


def test_removing_a_backbone_changes_only_the_report(tmp_path, configs):
    _, data = configs
    before = _identities(_plan(tmp_path, data))
    fewer = dict(data, seeds=[0])
    after = _identities(_plan(tmp_path, fewer))
    report = "report/tiny_cpu"
    assert {k: v for k, v in after.items() if k != report} == {
        k: before[k] for k in after if k != report
    }
    assert after[report] != before[report]


@pytest.mark.integration
def test_a_run_stage_made_with_other_settings_is_changed_and_a_derived_one_is_redone(
    tmp_path, configs
):
    _, data = configs
    plan = _plan(tmp_path, data)
    pre, conv = plan.pretrain["baseline", 0], plan.convert["baseline", 0]
    final = _finish(pre)
    assert run_stage(plan, conv, resume=False) == (True, "")
    states = all_states(plan)
    assert states[pre.id] == ("done", "") and states[conv.id] == ("done", "")
    # Run by another interpreter path of the same environment: the same stage, still done.
    record = read_record(plan, conv)
    write_record(plan, conv, command=["/usr/bin/python3"] + record["command"][1:])
    assert all_states(plan)[conv.id] == ("done", "")

    # The pretraining was made with another learning rate: changed, naming the key.
    old = plan.identity(pre)
    write_record(
        plan, pre, identity=dict(old, config=dict(old["config"], **{"SOLVER.BASE_LR": 0.3}))
    )
    state, detail = all_states(plan)[pre.id]
    assert state == "changed" and detail == "config.SOLVER.BASE_LR: 0.3 -> 0.02"

    # The conversion was made from another pretraining: redone, the earlier file kept beside.
    write_record(plan, pre, identity=old)
    write_record(plan, conv, identity={"pretrain": "0123456789abcdef"})
    state, detail = all_states(plan)[conv.id]
    assert state == "ready" and re.fullmatch(
        r"to redo: pretrain: '0123456789abcdef' -> '\w+'", detail
    )
    with open(conv.out, "rb") as f:
        earlier = f.read()
    assert run_stage(plan, conv, resume=False) == (True, "")
    with open(f"{conv.out}.previous-1", "rb") as f:
        assert f.read() == earlier
    assert all_states(plan)[conv.id] == ("done", "")
    with open(conv.out, "rb") as f:
        assert pickle.load(f)["__source__"] == os.path.abspath(final)


def test_a_stage_that_failed_before_training_can_start_again(tmp_path, configs):
    _, data = configs
    plan = _plan(tmp_path, data)
    stage = plan.pretrain["baseline", 0]
    os.makedirs(stage.out)
    (tmp_path / "out" / "pretrain" / "baseline" / "seed0" / "log.txt").write_text("error: ...")
    write_record(plan, stage, identity={"config": {}}, status="failed", error="x", log="l")
    assert not plan.started(stage)
    assert all_states(plan)[stage.id][0] == "failed"  # not "changed": it never trained


@pytest.mark.integration
def test_a_moved_output_root_keeps_its_stages_done(tmp_path, configs):
    _, data = configs
    plan = _plan(tmp_path, data)
    pre, conv = plan.pretrain["baseline", 0], plan.convert["baseline", 0]
    _finish(pre)
    write_record(plan, pre, identity=plan.identity(pre))
    assert run_stage(plan, conv, resume=False) == (True, "")
    shutil.copytree(tmp_path / "out", tmp_path / "moved", copy_function=shutil.copy2)
    moved = _plan(tmp_path, dict(data, output_root=str(tmp_path / "moved")), "moved.yaml")
    states = all_states(moved)
    assert states[pre.id] == ("done", "") and states[conv.id] == ("done", "")
