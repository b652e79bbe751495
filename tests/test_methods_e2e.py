"""Every method trains two epochs end to end on generated data on CPU: in one process (and,
for methods with state of their own, resumes mid-epoch bit-exactly), and with 2 processes
under torchrun (gloo; all but the two whose only difference is their loss); each logs its loss
terms (and PS-KD and LSSKD their targets' statistics) to log.txt, metrics.json and TensorBoard."""

import json
import os
import shutil

import pytest
import torch
import torchvision

from helpers import ROOT, run_tool
from pretrain.cli import setup_cfg
from pretrain.engine.trainer import Trainer

pytestmark = pytest.mark.integration

CONFIGS = os.path.join(ROOT, "configs", "pretrain")

# 24 training images, 8 per step: 3 iterations an epoch; checkpoints at each epoch end and at
# iteration 4 (step 1 of epoch 1), where the resume test restarts.
SMALL = [
    "INPUT.CROP_SIZE",
    "32",
    "INPUT.RESIZE_SIZE",
    "36",
    "SOLVER.EPOCHS",
    "2",
    "SOLVER.STEPS",
    "(1,)",
    "SOLVER.WARMUP_EPOCHS",
    "0.0",
    "SOLVER.IMS_PER_BATCH",
    "8",
    "TEST.IMS_PER_BATCH",
    "8",
    "SOLVER.CHECKPOINT_PERIOD",
    "4",
    "SOLVER.MAX_TO_KEEP",
    "0",
    "LOG_PERIOD",
    "1",
]

# run name: (config file, overrides): the shipped per-method CPU configs (plain PS-KD,
# cpu_synthetic_R_18.yaml, is trained by test_train_e2e.py), the other PS-KD source, and CutMix
# on the methods that treat mixed batches in their own way.
RUNS = {
    "baseline": ("cpu_synthetic_R_18_baseline.yaml", []),
    "ls": ("cpu_synthetic_R_18_ls.yaml", []),
    "pskd_cutmix": ("cpu_synthetic_R_18_pskd_cutmix.yaml", []),
    "pskd_previous_model": (
        "cpu_synthetic_R_18_pskd_cutmix.yaml",
        ["PSKD.SOURCE", "previous_model"],
    ),
    "cskd": (
        "cpu_synthetic_R_18_cskd.yaml",
        ["AUG.CUTMIX.ENABLED", "True", "AUG.CUTMIX.PROB", "1.0"],
    ),
    "tfkd": ("cpu_synthetic_R_18_tfkd.yaml", []),
    "uskd": ("cpu_synthetic_R_18_uskd.yaml", ["AUG.CUTMIX.ENABLED", "True"]),
    "lsskd": ("cpu_synthetic_R_18_lsskd.yaml", ["AUG.CUTMIX.ENABLED", "True"]),
    "nkd": (
        "cpu_synthetic_R_18_nkd.yaml",
        ["AUG.CUTMIX.ENABLED", "True", "AUG.CUTMIX.PROB", "1.0"],
    ),
}
# Method state or a sampler of their own, or a teacher reloaded from its file.
STATEFUL = ["pskd_previous_model", "cskd", "uskd", "nkd", "lsskd"]
# What the 2-process test trains: every run but the baseline's and LS's, whose only difference
# from the base method is their loss; the base method's 2-process path is trained by PS-KD's runs
# here and under torchrun in tests/test_reliability.py and tests/test_resume_ranks.py.
DISTRIBUTED = [name for name in RUNS if name not in ("baseline", "ls")]
# The loss terms each run logs (docs/methods.md), and whether it logs its targets' statistics.
TERMS = {
    "baseline": ["loss_ce"],
    "ls": ["loss_ce"],
    "pskd_cutmix": ["loss_ce"],
    "pskd_previous_model": ["loss_ce"],
    "cskd": ["loss_ce", "loss_kd"],
    "tfkd": ["loss_ce", "loss_kd"],
    "uskd": ["loss_target", "loss_non_target", "loss_weak", "loss_ce"],
    "lsskd": ["loss_ce", "loss_branch_ce", "loss_kd", "loss_feat"],
    "nkd": ["loss_target", "loss_non_target", "loss_ce"],
}
SELF_KD = ["self_kd/target_label_prob", "self_kd/past_label_prob", "self_kd/past_top_prob"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from pretrain.data.synthetic import write_imagefolder

    return write_imagefolder(
        str(tmp_path_factory.mktemp("synthetic")),
        num_classes=4,
        train_per_class=6,
        val_per_class=2,
        size=40,
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "model_final.pth")
    torch.save({"model": torchvision.models.resnet18(num_classes=4).state_dict()}, path)
    return path


def run_args(name, data_root, teacher, output_dir):
    config, overrides = RUNS[name]
    return (
        os.path.join(CONFIGS, config),
        SMALL
        + overrides
        + ["DATA.ROOT", data_root, "TEACHER.WEIGHTS", teacher, "OUTPUT_DIR", output_dir],
    )


def check_outputs(output_dir, method):
    state = torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=True)
    assert list(state) == ["model"]
    # A plain torchvision ResNet-18: no USKD head or LSSKD branches, no wrapper prefixes.
    torchvision.models.resnet18(num_classes=4).load_state_dict(state["model"])
    final = json.load(open(os.path.join(output_dir, "eval_final.json")))
    assert final["method"] == method and final["epochs"] == 2
    with open(os.path.join(output_dir, "log.txt")) as f:
        assert f"method: {method}: " in f.read()
    return state["model"]


@pytest.fixture(scope="module")
def single_runs(data_root, teacher, tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("single")
    outputs = {}
    for name in RUNS:
        outputs[name] = str(root / name)
        Trainer(setup_cfg(*run_args(name, data_root, teacher, outputs[name]))).train()
    return outputs


@pytest.mark.parametrize("name", RUNS)
def test_method_trains_two_epochs_in_one_process(single_runs, name):
    check_outputs(single_runs[name], setup_cfg(*run_args(name, "x", "x", "x")).METHOD.NAME)


@pytest.mark.parametrize("name", STATEFUL)
def test_method_resumes_mid_epoch_bit_exactly(
    single_runs, data_root, teacher, tmp_path, one_thread, name
):
    # Iteration 4 is step 1 of epoch 1 (3 iterations an epoch).
    out = str(tmp_path / "resumed")
    os.makedirs(out)
    shutil.copy(os.path.join(single_runs[name], "model_0000004.pth"), out)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000004.pth")
    Trainer(setup_cfg(*run_args(name, data_root, teacher, out))).train(resume=True)
    method = setup_cfg(*run_args(name, "x", "x", "x")).METHOD.NAME
    resumed, straight = check_outputs(out, method), check_outputs(single_runs[name], method)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.parametrize("name", RUNS)
def test_method_logs_its_loss_terms_and_target_statistics(single_runs, name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = single_runs[name]
    with open(os.path.join(out, "metrics.json")) as f:
        train = [r for r in map(json.loads, f) if "loss" in r]
    assert [r["iteration"] for r in train] == list(range(1, 7))  # LOG_PERIOD 1
    for r in train:
        assert [k for k in r if k.startswith("loss_")] == TERMS[name]
        # Means over the window of each term and of their sum: equal up to float32 rounding.
        assert sum(r[k] for k in TERMS[name]) == pytest.approx(r["loss"], rel=1e-5, abs=1e-6)
    stats = [r for r in train if SELF_KD[0] in r]
    if name.startswith("pskd"):
        assert stats == train  # every batch trains some samples on PS-KD targets
    elif name == "lsskd":  # from epoch 1, on the batches CutMix (AUG.CUTMIX.PROB 0.5) left alone
        assert stats and all(r["epoch"] == 1 for r in stats)
    else:
        assert stats == []
    for r in stats:
        assert all(0 < r[k] <= 1 for k in SELF_KD), r
        assert r["self_kd/past_label_prob"] <= r["self_kd/past_top_prob"] + 1e-6
    events = EventAccumulator(out)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", *TERMS[name]} <= tags
    assert (set(SELF_KD) <= tags) == bool(stats)
    # The log line names each term without its prefix: "loss 2.3456 (ce 2.1000  kd 0.2456)".
    with open(os.path.join(out, "log.txt")) as f:
        line = next(line for line in f if "  iter 1/3  " in line)
    shown = "  ".join(f"{k[len('loss_') :]} {train[0][k]:.4f}" for k in TERMS[name])
    assert f"loss {train[0]['loss']:.4f} ({shown})" in line


DRIVER = """
import json, sys
from pretrain.runtime import distributed as du
from pretrain.cli import setup_cfg
from pretrain.engine.trainer import Trainer

with open(sys.argv[1]) as f:
    runs = json.load(f)
for config, opts in runs:  # one process group for every run: torchrun starts once
    Trainer(setup_cfg(config, opts)).train()
du.destroy()
"""


@pytest.mark.slow
def test_every_method_trains_two_epochs_with_two_processes(data_root, teacher, tmp_path):
    driver = tmp_path / "train_all.py"
    driver.write_text(DRIVER)
    runs = {name: run_args(name, data_root, teacher, str(tmp_path / name)) for name in DISTRIBUTED}
    (tmp_path / "runs.json").write_text(json.dumps(list(runs.values())))
    run_tool([str(driver), str(tmp_path / "runs.json")], nproc=2, timeout=600)
    for name, (config, opts) in runs.items():
        out = opts[opts.index("OUTPUT_DIR") + 1]
        check_outputs(out, setup_cfg(config, opts).METHOD.NAME)
        with open(os.path.join(out, "log.txt")) as f:
            assert "cpu x 2 process(es)" in f.read()
