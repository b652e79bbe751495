"""End to end on generated data, on CPU: training lowers the error and writes every output.
(A mid-epoch --resume ending bit-identical: tests/test_resume_branches.py,
and after SIGKILLs tests/test_reliability.py; 2 processes under torchrun: tests/test_reliability.py
trains them to the end, tests/test_distributed_eval.py checks sharded evaluation against one
process.)"""

import json
import os

import pytest
import torch
import torchvision

from helpers import pretrain_argv, run_tool

CONFIG = "configs/pretrain/cpu_synthetic_R_18.yaml"

pytestmark = pytest.mark.slow


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    run_tool(pretrain_argv(CONFIG, synthetic_root, out, "SOLVER.MAX_TO_KEEP", "0"))
    return out


def test_training_lowers_error_and_writes_outputs(trained_run):
    out = trained_run
    evals = [r for r in read_jsonl(os.path.join(out, "metrics.json")) if "val/top1_err" in r]
    assert len(evals) == 6
    final = json.load(open(os.path.join(out, "eval_final.json")))
    assert set(final) >= {"top1_err", "top5_err", "nll", "ece", "aurc", "eaurc"}
    assert final["top1_err"] == evals[-1]["val/top1_err"]
    assert final["top1_err"] < evals[0]["val/top1_err"] and final["top1_err"] <= 35  # chance: 75
    # model_final.pth: {"model": plain torchvision state dict}
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert list(state) == ["model"]
    torchvision.models.resnet18(num_classes=4).load_state_dict(state["model"])
    for name in ("config.yaml", "log.txt", "reliability_final.png", "last_checkpoint"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    train_lines = [r for r in read_jsonl(os.path.join(out, "metrics.json")) if "loss" in r]
    assert train_lines and all("lr" in r and "img_per_s" in r for r in train_lines)
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "method: pskd" in log and "eta " in log
