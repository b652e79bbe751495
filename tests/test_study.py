"""The study file, its checks, the stage graph and the commands (no stage is run here)."""

import glob
import os
import re
import time

import pytest
import yaml

from helpers import ROOT
from pretrain.methods import METHODS
from study.plan import Plan
from study.spec import StudyError, load_study
from study.stage_configs import check_stage_configs
from study.state import all_states, process_identity, write_record
from tools.study import main as study_main

TABLE5 = os.path.join(ROOT, "configs", "study", "table5_R_152.yaml")
TABLE4 = os.path.join(ROOT, "configs", "study", "table4_R_152.yaml")
TINY = os.path.join(ROOT, "configs", "study", "tiny_cpu.yaml")


def _write(tmp_path, data):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _table5(tmp_path):
    with open(TABLE5) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(tmp_path / "out")
    return data


def test_table5_study_graph(tmp_path):
    plan = Plan(load_study(_write(tmp_path, _table5(tmp_path))))
    study = plan.study
    assert [b.name for b in study.backbones] == [
        "baseline",
        "ls",
        "cskd",
        "tfkd",
        "pskd",
        "pskd_cutmix",
    ]
    assert {b.method for b in study.backbones} <= set(METHODS) and study.seeds == [0, 1, 2]
    assert [b.name for b in study.backbones if b.teacher] == ["tfkd"]
    assert len(plan.stages) == 6 * 3 * 3 + 1
    order = [s.id for s in plan.stages]
    for seed in study.seeds:
        tfkd = plan.pretrain["tfkd", seed]
        teacher = plan.pretrain["baseline", seed]
        assert tfkd.deps == [teacher.id] and order.index(teacher.id) < order.index(tfkd.id)
        cmd = plan.command(tfkd)
        assert cmd[cmd.index("TEACHER.WEIGHTS") + 1] == os.path.join(teacher.out, "model_final.pth")
        assert cmd[cmd.index("SEED") + 1] == str(seed)
        assert (
            cmd[1:3] == ["-m", "torch.distributed.run"]
            and cmd[cmd.index("--nproc_per_node") + 1] == "8"
        )
        det = plan.command(plan.detect["pskd", seed])
        assert det[det.index("MODEL.WEIGHTS") + 1] == plan.convert["pskd", seed].out
        assert det[det.index("SEED") + 1] == str(seed) and det[det.index("--num-gpus") + 1] == "8"
        assert det[det.index("DATASETS.VOC_ROOT") + 1] == "/data"
    for stage in plan.stages:
        assert all(order.index(d) < order.index(stage.id) for d in stage.deps)
    assert sorted(plan.report.deps) == sorted(s.id for s in plan.detect.values())
    resumed = plan.command(plan.pretrain["pskd", 1], resume=True)
    assert [a for a in resumed if a != "--resume"] == plan.command(plan.pretrain["pskd", 1])
    assert resumed.index("--resume") < resumed.index("DATA.ROOT")  # before the KEY VALUE overrides
    states = all_states(plan)
    assert states["pretrain/baseline/seed0"][0] == "ready"
    assert states["pretrain/tfkd/seed0"] == ("waiting", "pretrain/baseline/seed0")


def test_table4_study_has_the_papers_ten_rows_and_shares_table5s_stages(tmp_path):
    from detection import paper

    def plan_of(path, folder):
        with open(path) as f:
            data = yaml.safe_load(f)
        data["output_root"] = str(tmp_path / "out")  # the same for both
        os.makedirs(tmp_path / folder)
        return Plan(load_study(_write(tmp_path / folder, data)))

    table4, table5 = plan_of(TABLE4, "t4"), plan_of(TABLE5, "t5")
    assert sorted(table4.labels().values()) == sorted(paper.TABLE4)
    cutmix = [b.name for b in table4.study.backbones if b.cutmix]
    assert cutmix == ["pskd_cutmix", "cutmix", "ls_cutmix", "cskd_cutmix", "tfkd_cutmix"]
    assert table4.study.backbone("tfkd_cutmix").teacher == "baseline"
    # Every stage of Table 5 is a stage of Table 4 with the same command: run once, shared.
    shared = [s for s in table5.stages if s.kind != "report"]
    assert all(table4.command(table4.by_id[s.id]) == table5.command(s) for s in shared)
    assert len(table4.stages) == 10 * 3 * 3 + 1
    assert table4.report.out != table5.report.out
    assert table4.report.id == "report/table4_R_152"


@pytest.mark.parametrize(
    "path",
    sorted(glob.glob(os.path.join(ROOT, "configs", "study", "*.yaml"))),
    ids=os.path.basename,
)
def test_every_shipped_study_loads_and_assembles_its_stage_configs(tmp_path, path):
    """What tools/study.py checks before it runs anything (--dry-run too), for every study file
    shipped: its keys, and every stage's config as its tool will assemble it."""
    with open(path) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(tmp_path / "out")
    check_stage_configs(Plan(load_study(_write(tmp_path, data))))


def test_dry_run_and_status_print_every_stage(tmp_path, capsys):
    path = _write(tmp_path, _table5(tmp_path))
    assert study_main(["--config-file", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = Plan(load_study(path))
    assert all(f"] {s.id}  (" in out for s in plan.stages)
    assert (
        "TEACHER.WEIGHTS " + os.path.join(plan.pretrain["baseline", 2].out, "model_final.pth")
        in out
    )
    assert not os.path.exists(tmp_path / "out")  # nothing written
    assert study_main(["--config-file", path, "--status"]) == 0
    out = capsys.readouterr().out
    assert "15 ready, 40 waiting (of 55 stages)" in out


@pytest.mark.parametrize(
    "mutate, key, message",
    [
        (lambda d: d.update(seed=[0]), "seed", "unknown key"),
        (lambda d: d.pop("seeds"), "seeds", "missing"),
        (lambda d: d.update(seeds=[0, 0]), "seeds", "listed twice"),
        (lambda d: d.update(seeds="0"), "seeds", "list of non-negative integers"),
        (
            lambda d: d["backbones"]["ls"].update(config="configs/pretrain/nope.yaml"),
            "backbones.ls.config",
            "not found",
        ),
        (
            lambda d: d["backbones"]["ls"].update(opts={"SOLVER.NOPE": 1}),
            "backbones.ls",
            "SOLVER.NOPE",
        ),
        (
            lambda d: d["backbones"]["tfkd"].update(teacher="teacher"),
            "backbones.tfkd.teacher",
            "not a backbone",
        ),
        (
            lambda d: d["backbones"].pop("baseline"),
            "backbones.tfkd.teacher",
            "'baseline' is not a backbone",
        ),
        (
            lambda d: d["backbones"]["ls"].update(teacher="baseline"),
            "backbones.ls.teacher",
            "takes no teacher",
        ),
        (
            lambda d: d["backbones"]["ls"].update(opts={"METHOD.NAME": "nope"}),
            "backbones.ls",
            "METHOD.NAME is 'nope', must be one of 'baseline'",
        ),
        (
            lambda d: d["resources"]["pretrain"].update(gpus_per_node=-1),
            "resources.pretrain.gpus_per_node",
            "non-negative",
        ),
        (lambda d: d["resources"]["detect"].update(gpu=8), "resources.detect.gpu", "unknown key"),
        (lambda d: d["data"].pop("voc"), "data.voc", "missing"),
        (
            lambda d: d.update(data={"synthetic": {"voc": {"test07": 4}}}),
            "data.synthetic.voc.test07",
            "expected at least 5 .* got 4",
        ),
        (lambda d: d["detection"].update(config="x.yaml"), "detection.config", "not found"),
        (lambda d: d.update(report={"bootstrap": 5}), "report.bootstrap", ">= 10"),
    ],
)
def test_bad_study_file_names_the_key(tmp_path, capsys, mutate, key, message):
    data = _table5(tmp_path)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(StudyError, match=message) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    with pytest.raises(SystemExit) as exit_info:
        study_main(["--config-file", path, "--status"])
    assert str(exit_info.value.code).startswith(f"error: {path}: {key}: ")


@pytest.mark.parametrize(
    "mutate, stage, message",
    [
        (
            lambda d: d["detection"].update(opts={"SOLVER.MAXITER": 200}),
            "detect/baseline/seed0",
            "command-line override: Non-existent key: SOLVER.MAXITER",
        ),
        (
            lambda d: d["detection"].update(opts={"SOLVER.MAX_ITER": "many"}),
            "detect/baseline/seed0",
            "command-line override: .*SOLVER.MAX_ITER",
        ),
        (
            lambda d: d["detection"].update(opts={"DATASETS.TRAIN": ["voc_2007_trainvall"]}),
            "detect/baseline/seed0",
            "DATASETS.TRAIN: 'voc_2007_trainvall' is no registered split",
        ),
        (
            lambda d: d["detection"].update(opts={"MODEL.ROI_HEADS.NAME": "Res5ROIHead"}),
            "detect/baseline/seed0",
            "the model of this config cannot be built: .*Res5ROIHead",
        ),
        (
            lambda d: d.update(seeds=[0, 2**40]),
            f"pretrain/baseline/seed{2**40}",
            "config value not admitted: SEED is",
        ),
    ],
)
def test_dry_run_assembles_every_stages_config_before_anything_runs(
    tmp_path, mutate, stage, message
):
    """What each stage's tool would refuse on its node, after days of pretraining for a detect
    stage, stops tools/study.py at once (--dry-run as well), naming the stage."""
    data = _table5(tmp_path)
    mutate(data)
    path = _write(tmp_path, data)
    load_study(path)  # the study file itself is fine
    for flag in (["--dry-run"], []):
        with pytest.raises(SystemExit) as info:
            study_main(["--config-file", path, *flag])
        assert re.fullmatch(f"error: stage {stage}: {message}.*", str(info.value.code))
    assert not os.path.exists(tmp_path / "out")  # nothing started, nothing written


def test_a_pretraining_schedule_outside_its_epochs_is_the_study_files_error(tmp_path):
    data = _table5(tmp_path)
    data["pretrain"] = {"opts": {"SOLVER.EPOCHS": 3}}  # the paper's steps are epochs 30 and 60
    with pytest.raises(StudyError, match=r"backbones.baseline: .*SOLVER.STEPS is \[30, 60\]"):
        load_study(_write(tmp_path, data))


@pytest.mark.parametrize(
    "before, duplicate, lines",
    [
        (
            "  pskd_cutmix:",
            "  baseline: {config: configs/pretrain/imagenet_R_152_pskd.yaml}",
            (12, 18),
        ),
        ("output_root:", "name: other", (5, 6)),
    ],
)
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, before, duplicate, lines):
    """PyYAML would keep the second silently: "baseline" would train PS-KD under its name."""
    path = tmp_path / "study.yaml"
    path.write_text(open(TABLE5).read().replace(before, f"{duplicate}\n{before}", 1))
    key = duplicate.split(":")[0].strip()
    with pytest.raises(StudyError) as info:
        load_study(str(path))
    assert str(info.value) == f"{path}: key {key!r} given twice: lines {lines[0]} and {lines[1]}"


def test_teacher_methods_come_from_the_registry():
    """A backbone's teacher dependency is the method class's needs_teacher, for every method."""
    assert {name for name, cls in METHODS.items() if cls.needs_teacher} == {"tfkd", "nkd"}


def test_tiny_study_generates_its_data(tmp_path):
    with open(TINY) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(tmp_path)
    plan = Plan(load_study(_write(tmp_path, data)))
    assert [s.id for s in plan.stages[:2]] == ["data/classification", "data/voc"]
    assert plan.pretrain["baseline", 0].deps == ["data/classification"]
    assert "data/voc" in plan.detect["tfkd", 1].deps
    cmd = plan.command(plan.pretrain["baseline", 1])
    assert cmd[cmd.index("DATA.ROOT") + 1] == str(tmp_path / "data" / "classification")
    assert cmd[:2] == [cmd[0], "tools/pretrain.py"]  # one process: no torchrun


def _process_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.integration
def test_a_recorded_process_runs_only_if_it_is_the_same_process(tmp_path):
    """A record names its process by host, pid and start time: a dead pid, one that ended but is
    not reaped yet, or a pid the system gave to a later process, is never "running"."""
    import subprocess
    import sys

    with open(TINY) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(tmp_path / "out")
    plan = Plan(load_study(_write(tmp_path, data)))
    stage = plan.stages[0]

    def state(**fields):
        write_record(plan, stage, status="running", executor="local", log="x.log", **fields)
        return all_states(plan)[stage.id]

    me = process_identity(os.getpid())
    assert me["host"] and me["pid_start"]
    assert state(**me)[0] == "running"
    assert state(**dict(me, pid_start=me["pid_start"] + "0")) == ("ready", "")  # pid reused
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    assert state(**dict(me, pid=int(dead.stdout), pid_start=None)) == ("ready", "")
    # A stage's process that ended but is not reaped yet (a zombie: its study was killed with it).
    child = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    ended = process_identity(child.pid)
    assert state(**ended)[0] == "running"
    child.stdin.close()
    while _process_state(child.pid) != "Z":
        time.sleep(0.01)
    assert state(**ended) == ("ready", "")
    child.wait()
    elsewhere = state(**dict(me, host="node-7"))
    assert elsewhere[0] == "running" and "on node-7, not this host" in elsewhere[1]


@pytest.mark.integration
def test_generated_data_appears_whole_and_a_folder_the_study_did_not_make_is_kept(tmp_path):
    from study.local import run_stage

    with open(TINY) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(tmp_path / "out")
    data["data"]["synthetic"]["classification"] = {"classes": 2, "train_per_class": 2}
    plan = Plan(load_study(_write(tmp_path, data)))
    stage = plan.by_id["data/classification"]
    assert run_stage(plan, stage, resume=False) == (True, "")
    assert plan.check(stage) == (True, "")
    assert os.listdir(os.path.dirname(stage.out)) == ["classification"]  # no partial folder left

    # Other sizes asked of the same output root: the data there is not regenerated over the
    # runs that used it, nor deleted.
    data["data"]["synthetic"]["classification"]["train_per_class"] = 3
    plan = Plan(load_study(_write(tmp_path, data)))
    before = sorted(os.walk(stage.out))
    ok, error = run_stage(plan, plan.by_id["data/classification"], resume=False)
    assert not ok and error.startswith(f"{stage.out} exists but does not hold the data")
    assert "4 images, expected 6" in error and "deletes only what it created" in error
    assert sorted(os.walk(stage.out)) == before

    # A user's own files where the generated VOC data would go: kept, and named.
    voc = plan.by_id["data/voc"]
    os.makedirs(voc.out)
    (tmp_path / "out" / "data" / "voc" / "mine.txt").write_text("keep")
    ok, error = run_stage(plan, voc, resume=False)
    assert not ok and voc.out in error
    assert (tmp_path / "out" / "data" / "voc" / "mine.txt").read_text() == "keep"


def test_a_damaged_output_is_a_state_naming_its_file(tmp_path, capsys):
    import json

    import torch

    with open(TINY) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(tmp_path / "out")
    path = _write(tmp_path, data)
    plan = Plan(load_study(path))
    stage = plan.pretrain["baseline", 0]
    os.makedirs(stage.out)
    with open(os.path.join(stage.out, "config.yaml"), "w") as f:
        yaml.safe_dump({"SEED": 0, "METHOD": {"NAME": "baseline"}}, f)
    with open(os.path.join(stage.out, "eval_final.json"), "w") as f:
        json.dump({"top1_err": 50.0}, f)
    final = os.path.join(stage.out, "model_final.pth")
    torch.save({"model": {"w": torch.zeros(1000)}}, final)
    assert plan.check(stage) == (True, "")
    with open(final, "rb") as f:
        whole = f.read()
    with open(final, "wb") as f:
        f.write(whole[: len(whole) // 2])  # a copy cut short
    state, detail = all_states(plan)[stage.id]
    assert state == "interrupted" and detail.startswith(f"{final}: unreadable")
    for flag in ("--status", "--dry-run"):
        study_main(["--config-file", path, flag])
    out = capsys.readouterr().out
    assert f"{final}: unreadable" in out and "Traceback" not in out


def test_tiny_study_keeps_the_sizes_of_its_measured_run():
    """configs/study/tiny_cpu.yaml's data and schedules are those of the run docs/study.md
    records: every detection AP50 above 0 and different between runs, so the report's intervals
    are not degenerate. Its earlier sizes (4 detection iterations on 12 training images, 3
    pretraining epochs on 32 images) gave AP50 0.00 and top-1 error 75% (chance) in every run.
    The study tests run a cut copy (helpers.tiny_study), not this one."""
    with open(TINY) as f:
        data = yaml.safe_load(f)
    assert data["seeds"] == [0, 1] and list(data["backbones"]) == ["baseline", "tfkd"]
    assert data["data"]["synthetic"] == {
        "classification": {"classes": 4, "train_per_class": 24, "val_per_class": 8, "size": 64},
        "voc": {"trainval07": 40, "test07": 20, "trainval12": 40},
    }
    assert data["pretrain"]["opts"]["SOLVER.EPOCHS"] == 3
    assert data["detection"] == {
        "config": "configs/detection/faster_rcnn_R_18_FPN_tiny_cpu.yaml",
        "opts": {"SOLVER.MAX_ITER": 200, "SOLVER.STEPS": [150], "SOLVER.WARMUP_ITERS": 50},
    }


def test_the_study_files_slurm_settings_reach_each_stages_job(tmp_path):
    """What a stage's job is submitted with (submitit's executor; no Slurm needed to build it):
    its resources, the study file's requeue settings or their defaults (submitit's own 3 time
    limits would stop a multi-day stage on day 3), partition, account and extra parameters, and
    afterok on the jobs of its unfinished dependencies. Submitted to a real cluster:
    tests/test_study_multinode.py."""
    from study.slurm import _executor
    from study.spec import SLURM_REQUEUE_DEFAULTS

    with open(TINY) as f:
        data = yaml.safe_load(f)
    data["output_root"] = str(tmp_path / "out")
    plan = Plan(load_study(_write(tmp_path, data)))
    stage = plan.pretrain["baseline", 0]
    job = _executor(plan, stage, ["12", "13"])._executor
    assert job.max_num_timeout == SLURM_REQUEUE_DEFAULTS["max_num_timeout"] == 30
    assert job.parameters["signal_delay_s"] == SLURM_REQUEUE_DEFAULTS["signal_delay_s"]
    extra = job.parameters["additional_parameters"]
    assert extra == {"kill-on-invalid-dep": "yes", "dependency": "afterok:12:13"}
    assert job.parameters["nodes"] == stage.resources["nodes"]
    assert job.parameters["cpus_per_task"] == stage.resources["cpus_per_task"]

    data["slurm"] = {
        "max_num_timeout": 5,
        "signal_delay_s": 45,
        "partition": "long",
        "account": "lab",
        "additional_parameters": {"qos": "high"},
    }
    plan = Plan(load_study(_write(tmp_path, data)))
    job = _executor(plan, plan.pretrain["baseline", 0], [])._executor
    assert job.max_num_timeout == 5 and job.parameters["signal_delay_s"] == 45
    assert job.parameters["partition"] == "long" and job.parameters["account"] == "lab"
    assert job.parameters["additional_parameters"] == {"kill-on-invalid-dep": "yes", "qos": "high"}
