"""Every training step has one shape: the loader drops each epoch's last, partial batch, so a
compiled model keeps one static-shape graph across epochs (counted with a counting
torch.compile backend, on CPU); and the cuDNN autotuner setting training and the benchmark share."""

import os

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from helpers import ROOT
from pretrain.cli import setup_cfg
from pretrain.engine.trainer import Trainer

CONFIG = os.path.join(ROOT, "configs/pretrain/cpu_synthetic_R_18.yaml")


def _trainer(root, out, *opts):
    torch.set_num_threads(1)
    # 96 training images in batches of 20: 4 full batches and 16 left over each epoch.
    return Trainer(
        setup_cfg(
            CONFIG,
            [
                "DATA.ROOT",
                root,
                "OUTPUT_DIR",
                str(out),
                "SOLVER.IMS_PER_BATCH",
                "20",
                "TEST.IMS_PER_BATCH",
                "32",
                "SOLVER.EPOCHS",
                "2",
                "SOLVER.STEPS",
                "()",
                "SOLVER.WARMUP_EPOCHS",
                "0.0",
                "SOLVER.CHECKPOINT_PERIOD",
                "100",
            ]
            + list(opts),
        )
    )


def test_last_partial_training_batch_is_dropped(synthetic_root, tmp_path):
    trainer = _trainer(synthetic_root, tmp_path)
    assert trainer.iters_per_epoch == 4
    sizes = [len(batch[0]) for batch in trainer.train_loader]
    assert sizes == [20, 20, 20, 20]


@pytest.mark.integration
def test_compiled_training_keeps_one_graph_across_epochs(synthetic_root, tmp_path, monkeypatch):
    counter = CompileCounter()
    compile_ = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kwargs: compile_(model, backend=counter, **kwargs)
    )
    torch._dynamo.reset()
    try:
        trainer = _trainer(
            synthetic_root, tmp_path, "MODEL.COMPILE", "True", "METHOD.NAME", "baseline"
        )
        trainer.train()
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == 1
    assert trainer.iteration == 8  # 2 epochs of 4 steps


def test_a_training_set_smaller_than_a_batch_is_refused(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="96 samples.*fewer than one batch of 128"):
        _trainer(synthetic_root, tmp_path, "SOLVER.IMS_PER_BATCH", "128")


def test_training_and_the_benchmark_use_the_cudnn_autotuner(synthetic_root, tmp_path):
    from tools.benchmark import main

    torch.backends.cudnn.benchmark = False
    _trainer(synthetic_root, tmp_path)
    assert torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    main(["--device", "cpu", "--table-only"])
    assert torch.backends.cudnn.benchmark
