"""A backbone's hyperparameter search (study/search.py): the study file's ``search:`` entry and its
checks, the trials as pretraining stages before the backbone's runs, and the trials' values drawn
once by Optuna and recorded (a rerun never draws them again; more trials extend the search); a
backbone that takes another's winner (``winner_of``); a trial's metric recorded by two jobs at
once. The search run end to end, as Slurm jobs, is in tests/test_study_multinode.py."""

import itertools
import json
import os

import pytest
import yaml

from detection.runs import method_settings
from helpers import ROOT, tiny_study
from pretrain.cli import setup_cfg
from study.plan import PENDING, Plan
from study.search import journal_path, optuna_study, record_metric, recorded_values, sample_trials
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


@pytest.mark.parametrize("where", ["before tell reads the trial", "inside tell"])
def test_a_metric_recorded_by_two_jobs_at_once_is_recorded_once(tmp_path, monkeypatch, where):
    """Two trials' jobs that end together each record every finished trial: the second to
    record trial 0 finds it finished between its own check and its write. It must not fail (its
    job, whose trial trained, would exit 1 and Slurm cancel every stage after it)."""
    from optuna.storages import JournalStorage
    from optuna.study import Study

    study = load_study(_write(tmp_path, _searched(tmp_path)))
    search, root = study.backbone("tfkd").search, study.output_root
    sample_trials(root, "tfkd", search)

    def other_job_records_first(cls, name):
        original = getattr(cls, name)

        def patched(self, *args, **kwargs):
            monkeypatch.setattr(cls, name, original)  # once
            other = optuna_study(journal_path(root, "tfkd"), search, "tfkd")
            other.tell(0, 1.25)  # the other job, between this one's check and its write
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, patched)

    if where == "inside tell":
        other_job_records_first(JournalStorage, "set_trial_state_values")
    else:
        other_job_records_first(Study, "tell")
    record_metric(root, "tfkd", search, 0, 1.25)
    trials = optuna_study(journal_path(root, "tfkd"), search, "tfkd").trials
    assert [t.value for t in trials] == [1.25, None, None]


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


def _borrowing(tmp_path, **entry):
    """The tiny study with its TF-KD search and ``tfkd_cutmix``, TF-KD with CutMix taking the
    search's winner (``entry``: changes to that backbone)."""
    data = _searched(tmp_path)
    data["backbones"]["tfkd_cutmix"] = {
        "config": "configs/pretrain/cpu_synthetic_R_18_tfkd.yaml",
        "teacher": "baseline",
        "opts": {"AUG.CUTMIX.ENABLED": True},
        "winner_of": "tfkd",
        **entry,
    }
    return data


def _finish(plan, stage, nll):
    """``stage``'s run folder as a finished pretraining leaves it (what Plan.check reads)."""
    import torch

    os.makedirs(stage.out)
    torch.save({"model": {"w": torch.zeros(1)}}, os.path.join(stage.out, "model_final.pth"))
    with open(os.path.join(stage.out, "eval_final.json"), "w") as f:
        json.dump({"top1_err": 50.0, "nll": nll}, f)
    with open(os.path.join(stage.out, "config.yaml"), "w") as f:
        yaml.safe_dump({"SEED": stage.seed, "METHOD": {"NAME": stage.backbone.method}}, f)


def test_a_backbone_takes_the_winner_of_another_backbones_search(tmp_path):
    path = _write(tmp_path, _borrowing(tmp_path))
    plan = Plan(load_study(path))
    assert list(plan.trials) == ["tfkd"]  # no trials of its own
    ids = [s.id for s in plan.stages]
    for seed in (0, 1):
        run = plan.pretrain["tfkd_cutmix", seed]
        assert run.deps == [
            "data/classification",
            f"pretrain/baseline/seed{seed}",
            *(t.id for t in plan.trials["tfkd"]),
        ]
        assert all(ids.index(d) < ids.index(run.id) for d in run.deps)
        # Before the winner is known: the placeholder, and an identity saying so.
        assert plan.search_opts(run) is None and PENDING[0] in plan.command(run)
        assert plan.identity(run) == {"search": "values not known yet"}

    plan.sample_trials()
    for k, t in enumerate(plan.trials["tfkd"]):
        _finish(plan, t, nll=[1.2, 0.7, 0.9][k])  # trial 1 wins on the tiny study's metric (nll)
    plan = Plan(load_study(path))  # as a later tools/study.py or a Slurm job sees it
    won = recorded_values(plan.root, "tfkd", plan.study.backbone("tfkd").search)[1]
    alpha = won["TFKD.ALPHA"]
    for seed in (0, 1):
        own, taken = plan.pretrain["tfkd", seed], plan.pretrain["tfkd_cutmix", seed]
        assert plan.search_opts(taken) == plan.search_opts(own) == ["TFKD.ALPHA", repr(alpha)]
        config, opts = plan.tool_config(taken)
        cfg = setup_cfg(config, opts)
        assert cfg.TFKD.ALPHA == alpha and cfg.AUG.CUTMIX.ENABLED and cfg.SEED == seed
        # The report's method settings are read from the run's config: the winner's alpha.
        assert f"TFKD.ALPHA {alpha:g}" in method_settings(yaml.safe_load(cfg.dump()))
        identity = plan.identity(taken)
        assert identity["config"]["TFKD.ALPHA"] == alpha
        assert identity["config"]["AUG.CUTMIX.ENABLED"] is True
        assert identity["config"] == {**plan.identity(own)["config"], "AUG.CUTMIX.ENABLED": True}


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"winner_of": "tfkd", "search": {"space": {"TFKD.ALPHA": [0.1]}}},
            "has its own search or takes another's winner, not both",
        ),
        ({"winner_of": "tfdk"}, "'tfdk' is not a backbone of this study \\(baseline, tfkd"),
        ({"winner_of": "baseline"}, "'baseline' has no search"),
        ({"winner_of": "chained"}, "'chained' itself takes the winner of 'tfkd'"),
        (
            {"config": "configs/pretrain/cpu_synthetic_R_18_baseline.yaml", "teacher": None},
            "searches for method 'tfkd', this backbone is 'baseline'",
        ),
        (
            {"opts": {"SOLVER.EPOCHS": 2, "SOLVER.STEPS": [1], "SOLVER.WARMUP_EPOCHS": 1.0}},
            "tfkd's SOLVER.WARMUP_EPOCHS 2.5 does not fit this backbone: .*must be at most "
            "SOLVER.EPOCHS \\(2\\)",
        ),
    ],
)
def test_a_bad_winner_of_names_its_key(tmp_path, entry, message):
    data = _borrowing(tmp_path, **entry)
    # A search space whose upper bound fits the searched backbone (3 epochs), not every borrower.
    space = data["backbones"]["tfkd"]["search"]["space"]
    space["SOLVER.WARMUP_EPOCHS"] = {"low": 0.5, "high": 2.5}
    data["backbones"]["chained"] = _borrowing(tmp_path)["backbones"]["tfkd_cutmix"]
    path = _write(tmp_path, data)
    with pytest.raises(StudyError, match=message) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: backbones.tfkd_cutmix.winner_of: ")


def test_the_shipped_search_studies_load_and_share_the_output_root(tmp_path):
    """Both search studies have the four searches (same names, spaces, configs); Table 4's CutMix
    rows of CS-KD and TF-KD take the winner of the method's search. The four R-152 studies share
    one output root: a stage two of them have has one command, and so is run once."""
    from detection import paper

    plans = {}
    for name in ("table5_R_152", "table4_R_152", "table5_R_152_search", "table4_R_152_search"):
        with open(os.path.join(ROOT, "configs", "study", f"{name}.yaml")) as f:
            data = yaml.safe_load(f)
        data["output_root"] = str(tmp_path / "out")  # the same for all, as shipped
        os.makedirs(tmp_path / name)
        plans[name] = Plan(load_study(_write(tmp_path / name, data)))
    for a, b in itertools.combinations(plans.values(), 2):
        shared = set(a.by_id) & set(b.by_id)
        assert all(a.command(a.by_id[i]) == b.command(b.by_id[i]) for i in shared)
    table5, table4 = plans["table5_R_152_search"], plans["table4_R_152_search"]
    for plan in (table5, table4):
        searched = {b.name for b in plan.study.backbones if b.search}
        assert searched == {"cskd_search", "tfkd_search", "pskd_search", "pskd_cutmix_search"}
        assert all(len(plan.trials[name]) == 5 for name in searched)
    assert {s.id for s in table5.stages if s.kind != "report"} <= set(table4.by_id)
    assert sorted(table4.labels().values()) == sorted(paper.TABLE4)
    assert {"pretrain/cutmix/seed0", "pretrain/ls_cutmix/seed0"} <= set(plans["table4_R_152"].by_id)
    taken = {b.name: b.winner_of for b in table4.study.backbones if b.winner_of}
    assert taken == {"cskd_cutmix_search": "cskd_search", "tfkd_cutmix_search": "tfkd_search"}
    # 30 runs and 20 trials of 90 ImageNet epochs; searching the two CutMix rows apart would
    # have added 10 trials.
    pretrain = [s for s in table4.stages if s.kind == "pretrain"]
    assert len(pretrain) == 10 * 3 + 4 * 5
    for name, source in taken.items():
        run = table4.pretrain[name, 0]
        assert [t.id for t in table4.trials[source]] == run.deps[-5:]
        assert table4.study.backbone(name).cutmix and PENDING[0] in table4.command(run)
