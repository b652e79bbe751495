"""A backbone's hyperparameter search (study/search.py): the study file's ``search:`` entry and its
checks, the trials as pretraining stages before the backbone's runs, and the trials' values drawn
once by Optuna and recorded (a rerun never draws them again; more trials extend the search). The
search run end to end, with a killed trial, is in tests/test_study_e2e.py."""

import os

import pytest
import yaml

from helpers import ROOT, tiny_study
from study.plan import Plan
from study.search import journal_path, recorded_values, sample_trials
from study.spec import StudyError, load_study
from tools.study import main as study_main


def _write(tmp_path, data):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _searched(tmp_path, **search):
    data = tiny_study(tmp_path / "out", search=True)
    data["backbones"]["tfkd"]["search"].update(search)
    return data


def test_trials_are_pretraining_stages_before_the_backbones_runs(tmp_path, capsys):
    path = _write(tmp_path, _searched(tmp_path))
    plan = Plan(load_study(path))
    trials = plan.trials["tfkd"]
    assert [t.id for t in trials] == [f"pretrain/tfkd/trial{k}" for k in range(3)]
    ids = [s.id for s in plan.stages]
    for t in trials:  # after the teacher's run of the search's seed, before every tfkd run
        assert t.kind == "pretrain" and t.seed == 0 and "pretrain/baseline/seed0" in t.deps
        assert ids.index("pretrain/baseline/seed0") < ids.index(t.id)
        for seed in (0, 1):
            assert t.id in plan.pretrain["tfkd", seed].deps
            assert ids.index(t.id) < ids.index(f"pretrain/tfkd/seed{seed}")
    # --dry-run shows them, values to come, and writes nothing (no journal either).
    assert study_main(["--config-file", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pretrain/tfkd/trial2  (waiting)" in out and "search values: drawn at the first" in out
    assert not os.path.exists(tmp_path / "out")


def test_values_are_drawn_once_recorded_and_extended(tmp_path):
    study = load_study(_write(tmp_path, _searched(tmp_path)))
    search, root = study.backbone("tfkd").search, study.output_root
    assert recorded_values(root, "tfkd", search) == []  # nothing drawn before the first run
    first = sample_trials(root, "tfkd", search)
    assert len(first) == 3 and all(0.05 <= v["TFKD.ALPHA"] <= 0.9 for v in first)
    assert len({v["TFKD.ALPHA"] for v in first}) == 3
    assert os.path.isfile(journal_path(root, "tfkd"))
    # Another process, or the same one again: nothing is drawn again.
    assert sample_trials(root, "tfkd", search) == first == recorded_values(root, "tfkd", search)
    # Five trials: the first three are kept, two are added.
    search.trials = 5
    more = sample_trials(root, "tfkd", search)
    assert more[:3] == first and len(more) == 5
    # The draws depend on the sampler's seed and the trial's number, not on the process: a new
    # output root draws the same values.
    other = sample_trials(str(tmp_path / "other"), "tfkd", search)
    assert other == more


def test_the_trials_commands_carry_their_values_and_the_runs_wait_for_the_winner(tmp_path):
    path = _write(
        tmp_path, _searched(tmp_path, trial_opts={"SOLVER.EPOCHS": 2, "SOLVER.STEPS": [1]})
    )
    plan = Plan(load_study(path))
    plan.sample_trials()
    values = recorded_values(plan.root, "tfkd", plan.study.backbone("tfkd").search)
    for k, t in enumerate(plan.trials["tfkd"]):
        cmd = plan.command(t)
        assert cmd[cmd.index("TFKD.ALPHA") + 1] == repr(values[k]["TFKD.ALPHA"])
        # The trials' own opts come after the study's: the trials train 2 epochs, the runs 3.
        assert cmd[len(cmd) - 1 - cmd[::-1].index("SOLVER.EPOCHS") + 1] == "2"
    assert plan.winner(plan.study.backbone("tfkd")) is None  # no trial has run
    assert plan.search_opts(plan.pretrain["tfkd", 0]) is None


@pytest.mark.parametrize(
    "search, key, message",
    [
        ({"space": {"TFKD.ALPA": [0.1]}}, "space.TFKD.ALPA", "not a key of the pretraining config"),
        ({"space": {"SEED": [1, 2]}}, "space.SEED", "set by the study"),
        ({"space": {"TFKD.ALPHA": {"low": 0.5, "high": 1.5}}}, "space.TFKD.ALPHA", "1.5: .*in"),
        ({"space": {"TFKD.ALPHA": {"low": 0, "high": 1, "log": True}}}, "space.TFKD.ALPHA", "> 0"),
        ({"space": {"TFKD.KL_REDUCTION": ["sum"]}}, "space.TFKD.KL_REDUCTION", "one of"),
        ({"space": {"TFKD.ALPHA": [0.1]}, "trials": 0}, "trials", ">= 1"),
        ({"space": {"TFKD.ALPHA": [0.1]}, "metric": "top1"}, "metric", "top1_err"),
        ({"space": {"TFKD.ALPHA": [0.1]}, "seed": 7}, "seed", "no seed of this study"),
        (
            {"space": {"TFKD.ALPHA": [0.1]}, "trial_opts": {"SOLVER.EPOCHS": 1}},
            "trial_opts",
            "SOLVER.STEPS is \\[2\\]",
        ),
    ],
)
def test_a_bad_search_names_its_key(tmp_path, search, key, message):
    data = tiny_study(tmp_path / "out")
    data["backbones"]["tfkd"]["search"] = search
    path = _write(tmp_path, data)
    with pytest.raises(StudyError, match=message) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: backbones.tfkd.search.{key}: ")


def test_the_shipped_search_studies_load(tmp_path):
    for name in ("table5_R_152_search.yaml",):
        with open(os.path.join(ROOT, "configs", "study", name)) as f:
            data = yaml.safe_load(f)
        data["output_root"] = str(tmp_path / name)
        plan = Plan(load_study(_write(tmp_path, data)))
        searched = {b.name for b in plan.study.backbones if b.search}
        assert searched == {"cskd_search", "tfkd_search", "pskd_search", "pskd_cutmix_search"}
        assert all(len(plan.trials[name]) == 5 for name in searched)
