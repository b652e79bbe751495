"""End to end on generated data, on CPU: training lowers the error and writes every output, and
2 processes under torchrun train and evaluate to the end with the same metrics as one process.
(A mid-epoch --resume ending bit-identical: tests/test_resume_branches.py, and after SIGKILLs
tests/test_reliability.py.)"""
import json
import os

import pytest
import torch
import torchvision

from conftest import run_tool

CONFIG = "configs/pretrain/cpu_synthetic_R_18.yaml"

pytestmark = pytest.mark.slow


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    run_tool(["tools/pretrain.py", "--config-file", CONFIG, "DATA.ROOT", synthetic_root,
              "OUTPUT_DIR", out, "SOLVER.MAX_TO_KEEP", "0"])
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


def test_two_processes_train_and_evaluate_like_one(trained_run, synthetic_root, tmp_path):
    out2 = str(tmp_path / "ddp")
    run_tool(["tools/pretrain.py", "--config-file", CONFIG, "DATA.ROOT", synthetic_root, "OUTPUT_DIR", out2,
              "SOLVER.EPOCHS", "2", "SOLVER.STEPS", "(1,)"], nproc=2)
    final = json.load(open(os.path.join(out2, "eval_final.json")))
    assert final["num_samples"] == 32
    torchvision.models.resnet18(num_classes=4).load_state_dict(
        torch.load(os.path.join(out2, "model_final.pth"), weights_only=True)["model"])
    # Sharded evaluation of one model gives the metrics of one process.
    weights = os.path.join(trained_run, "model_final.pth")
    results = []
    for nproc in (1, 2):
        out = str(tmp_path / f"eval{nproc}")
        run_tool(["tools/pretrain.py", "--config-file", CONFIG, "--eval-only", "DATA.ROOT", synthetic_root,
                  "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights], nproc=nproc)
        results.append(json.load(open(os.path.join(out, "eval_only_model_final.json"))))
    single, sharded = results
    assert single["num_samples"] == sharded["num_samples"] == 32
    for key in ("top1_err", "top5_err", "nll", "ece", "aurc", "eaurc"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
