"""Evaluation sharded over 2 CPU processes (gloo) gives exactly the numbers of one process: on a
validation set that does not split evenly (15 images: 8 on rank 0, 7 on rank 1), every sample is
counted once, in sample order, and every rank evaluates rank 0's model even when the ranks'
BatchNorm statistics differ (as they do after a training step: each rank updates them from its
own batch). Also when a rank has no validation sample at all, and for --eval-only (every rank
loads the weights file)."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import ROOT, file_rendezvous
from pretrain.cli import setup_cfg
from pretrain.data.build import build_dataset, build_loader
from pretrain.data.samplers import ShardedSampler
from pretrain.data.synthetic import write_imagefolder
from pretrain.metrics import per_sample_stats, summarize
from pretrain.models import build_resnet

pytestmark = pytest.mark.integration

CONFIG = os.path.join(ROOT, "configs/pretrain/cpu_synthetic_R_18_baseline.yaml")
WORLD = 2
# Batches of 4 per rank (8, 7 samples: 4+4 and 4+3) and of 8 in one process (8+7). No batch holds
# a single sample: CPU convolutions then give each sample the same result whatever its batch
# (a batch of one takes other kernels), so sharded and single-process stats are bit-identical.
SMALL = [
    "INPUT.CROP_SIZE",
    "32",
    "INPUT.RESIZE_SIZE",
    "32",
    "SOLVER.IMS_PER_BATCH",
    "8",
    "TEST.IMS_PER_BATCH",
    "8",
]


def _opts(root, out):
    return ["DATA.ROOT", root, "OUTPUT_DIR", out] + SMALL


def _rank_batchnorm_stats(model, rank):
    """Give ``model`` BatchNorm statistics of this rank's own."""
    g = torch.Generator().manual_seed(rank)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


def _evaluate_worker(rank, world, rendezvous, opts, result):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    from pretrain.engine.trainer import Trainer
    from pretrain.runtime import distributed as du

    try:
        # Rank 1 holds more rows than rank 0 (the sharded sampler never gives it more).
        gathered = du.all_gather_cat(torch.full((1 + 2 * rank, 2), float(rank)))
        trainer = Trainer(setup_cfg(CONFIG, opts))
        _rank_batchnorm_stats(trainer.model, rank)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        metrics, stats, _ = trainer.evaluate()
        after = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        # --eval-only: every rank loads the weights file (here rank 1's model, as it was before).
        weights = os.path.join(os.path.dirname(result), "weights.pth")
        if rank == 1:
            torch.save({"model": before}, weights)
        du.barrier()
        eval_only = trainer.evaluate_weights(weights)
        # A validation set of one sample: rank 1 has none.
        trainer.val_loader = build_loader(
            trainer.val_set, ShardedSampler(1, rank, world, shuffle=False, pad=False), 4, 0, False
        )
        one_metrics, one_stats, _ = trainer.evaluate()
        torch.save(
            {
                "gathered": gathered,
                "before": before,
                "after": after,
                "metrics": metrics,
                "stats": stats,
                "eval_only": eval_only,
                "one_metrics": one_metrics,
                "one_stats": one_stats,
            },
            f"{result}.{rank}",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory):
    """16 training and 15 validation images (4 classes; one validation image removed)."""
    root = write_imagefolder(
        str(tmp_path_factory.mktemp("odd")),
        num_classes=4,
        train_per_class=4,
        val_per_class=4,
        size=32,
    )
    folder = os.path.join(root, "val", "class_003")
    os.remove(os.path.join(folder, sorted(os.listdir(folder))[0]))
    return root


def _single_process_stats(opts, state):
    """The per-sample stats of ``state``'s model over the whole validation set, in one process and
    without pretrain.runtime.distributed or the engine."""
    cfg = setup_cfg(CONFIG, opts)
    model = build_resnet(cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CIFAR_STEM)
    model.load_state_dict(state)
    model.eval()
    data = build_dataset(cfg, cfg.DATA.VAL_SPLIT, train=False)
    loader = build_loader(
        data, ShardedSampler(len(data), shuffle=False, pad=False), cfg.TEST.IMS_PER_BATCH, 0, False
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return torch.cat(
                [per_sample_stats(model(images), labels) for images, labels, _, _ in loader]
            )
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_evaluate_rank_0s_model_like_one_process(odd_root, tmp_path):
    opts = _opts(odd_root, str(tmp_path / "out"))
    result = str(tmp_path / "result")
    mp.start_processes(
        _evaluate_worker,
        args=(WORLD, file_rendezvous(tmp_path), opts, result),
        nprocs=WORLD,
        start_method="spawn",
    )
    ranks = [torch.load(f"{result}.{rank}", weights_only=True) for rank in range(WORLD)]
    rank0 = ranks[0]["before"]
    buffers = [k for k in rank0 if "running_" in k]
    assert buffers and not any(torch.equal(rank0[k], ranks[1]["before"][k]) for k in buffers)

    expected = _single_process_stats(opts, rank0)
    assert expected.shape == (15, 4)
    weights_expected = _single_process_stats(opts, ranks[1]["before"])
    assert not torch.equal(weights_expected, expected)
    with open(tmp_path / "out" / "eval_only_weights.json") as f:
        assert json.load(f) == ranks[0]["eval_only"]
    for rank, out in enumerate(ranks):
        assert torch.equal(out["gathered"], torch.tensor([[0.0, 0.0]] + [[1.0, 1.0]] * 3)), rank
        # Every rank holds rank 0's model after the evaluation (the one rank 0 saves) ...
        for key, value in rank0.items():
            assert torch.equal(out["after"][key], value), (rank, key)
        # ... and gets the metrics of one process: each of the 15 samples once, in sample order.
        assert torch.equal(out["stats"], expected), rank
        assert out["metrics"] == summarize(expected) and out["metrics"]["num_samples"] == 15
        assert out["eval_only"] == dict(
            summarize(weights_expected), weights=str(tmp_path / "weights.pth")
        )
        # One validation sample (evaluated with the weights loaded last), none of it on rank 1: the
        # same sample's stats, counted once (a batch of one: equal up to rounding).
        assert out["one_metrics"]["num_samples"] == 1
        torch.testing.assert_close(out["one_stats"], weights_expected[:1], rtol=1e-5, atol=1e-6)
