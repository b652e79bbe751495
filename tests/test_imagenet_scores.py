"""The ImageNet metrics on weighted validation images (bootstrap resamples): each row equals the
metrics of the expanded set (sample j repeated w_j times), the per-image file keeps what the
metrics need, (a finished run's file gives back its
eval_final.json: tests/test_run_folder.py)."""

import numpy as np
import pytest
import torch

from pretrain.metrics import (
    METRIC_KEYS,
    load_per_image,
    per_sample_stats,
    save_per_image,
    summarize,
    validation_digest,
)
from study.imagenet_scores import ImageNetScores
from study.statistics import bootstrap_weights


def _stats(n=300, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 3
    stats = per_sample_stats(logits, torch.randint(0, classes, (n,), generator=g))
    stats[:40, 1] = 1.0  # saturated confidences: ties in the AURC ranking
    stats[40:45, 1] = 0.3  # on a bin edge of ECE
    return stats


def test_each_resample_equals_the_metrics_of_the_expanded_set():
    stats = _stats()
    weights = bootstrap_weights(len(stats), 70, seed=4)  # over two blocks of rows
    out = summarize(stats, weights)
    assert set(out) == set(METRIC_KEYS)
    for r in range(len(weights)):
        expanded = stats[torch.from_numpy(np.repeat(np.arange(len(stats)), weights[r].astype(int)))]
        expected = summarize(expanded)
        assert {k: out[k][r].item() for k in METRIC_KEYS} == pytest.approx(
            {k: expected[k] for k in METRIC_KEYS}, abs=1e-9
        )
    assert out["aurc"].std() > 0 and out["ece"].std() > 0


def test_a_bootstrap_of_one_metric_computes_that_one_and_keeps_it(monkeypatch):
    from study import imagenet_scores

    stats = _stats()
    weights = bootstrap_weights(len(stats), 20, seed=1)
    full = summarize(stats, weights)
    asked = []

    def recorded(*args, keys):
        asked.append(keys)
        return summarize(*args, keys=keys)

    monkeypatch.setattr(imagenet_scores, "summarize", recorded)
    scores = ImageNetScores(stats, np.arange(len(stats)), "x")
    for metric in ("top1_err", "eaurc", "aurc", "top1_err", "nll"):
        np.testing.assert_array_equal(scores.bootstrap(metric, weights), full[metric].numpy())
    assert asked == [("top1_err",), ("eaurc",), ("nll",)]  # AURC came with E-AURC; kept
    pair = summarize(stats, weights, keys=("top5_err", "aurc"))
    assert set(pair) == {"top5_err", "aurc", "eaurc"}


def test_unweighted_aurc_is_the_mean_risk():
    confidence = torch.tensor([0.9, 0.8, 0.8, 0.6], dtype=torch.float64)
    correct = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    stats = torch.stack([torch.zeros(4), confidence, correct, correct], dim=1)
    # Ranked 0.9, then the later of the tied 0.8s (wrong), then the earlier, then 0.6:
    # errors 0, 1, 0, 1 -> risks 0, 1/2, 1/3, 2/4.
    assert summarize(stats)["aurc"] == pytest.approx(1000 * (0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)


def test_per_image_file_round_trip(tmp_path):
    stats = _stats(50)
    index = torch.arange(0, 100, 2)  # every other sample (the rest skipped as unreadable)
    samples = [f"/data/val/n{k % 3:08d}/img_{k}.JPEG" for k in range(100)]
    path = str(tmp_path / "eval_final_per_image.npz")
    save_per_image(path, stats, index, samples)
    loaded, loaded_index, digest = load_per_image(path)
    assert torch.equal(loaded, stats.double())
    np.testing.assert_array_equal(loaded_index, index.numpy())
    # Names without the mount point: the same set elsewhere pairs; another order or set does not.
    moved = [s.replace("/data/", "/mnt/shared/") for s in samples]
    assert digest == validation_digest(moved, index)
    assert digest != validation_digest(samples[::-1], index)
    assert digest != validation_digest(samples, index + 1)


def test_scores_pair_only_on_the_same_images():
    stats = _stats(20)
    a = ImageNetScores(stats, np.arange(20), "x")
    assert a.pairs_with(ImageNetScores(_stats(20, seed=1), np.arange(20), "x"))
    assert not a.pairs_with(ImageNetScores(stats, np.arange(20), "y"))
    assert not a.pairs_with(ImageNetScores(stats, np.arange(1, 21), "x"))
    assert a.value("top1_err") == summarize(stats)["top1_err"]
