"""Every metric against hand-computed cases, as the PS-KD authors' code computes them (ECE over 10
equal-width confidence bins; AURC / E-AURC from the confidence ranking, x1000)."""

import math

import numpy as np
import pytest
import torch

from pretrain.metrics import (
    aurc_eaurc,
    ece,
    optimal_aurc,
    per_sample_stats,
    plot_reliability_diagram,
    summarize,
)

CONF = torch.tensor([0.85, 0.75, 0.6, 0.55], dtype=torch.float64)
CORRECT = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)


def test_ece_hand_computed():
    # bins (0.8,0.9]: |0.85-1|*1/4; (0.7,0.8]: |0.75-0|*1/4; (0.5,0.6]: |0.575-0.5|*2/4
    assert ece(CONF, CORRECT) == pytest.approx(100 * (0.15 / 4 + 0.75 / 4 + 0.075 / 2))


def test_ece_bins_are_left_open_right_closed():
    # 0.6 belongs to (0.5, 0.6], not (0.6, 0.7]: one bin with acc 0.5, conf 0.6.
    conf = torch.tensor([0.6, 0.6], dtype=torch.float64)
    assert ece(conf, torch.tensor([1.0, 0.0], dtype=torch.float64)) == pytest.approx(10.0)


def test_aurc_and_eaurc_hand_computed():
    # sorted errors 0,1,0,1 -> risks 0, 1/2, 1/3, 1/2; optimum for r = 2 errors of n = 4 (the
    # authors' discrete sum): (1/4) * (1/3 + 2/4)
    aurc, eaurc = aurc_eaurc(CONF, CORRECT)
    expected = (0 + 0.5 + 1 / 3 + 0.5) / 4
    assert aurc == pytest.approx(1000 * expected)
    assert eaurc == pytest.approx(1000 * (expected - (1 / 3 + 2 / 4) / 4))


def test_perfect_ranking_has_zero_eaurc():
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    aurc, eaurc = aurc_eaurc(conf, correct)
    assert aurc == pytest.approx(1000 * 0.25 / 4)
    assert eaurc == pytest.approx(0.0, abs=1e-12)  # the discrete optimum is reached exactly


def test_optimal_aurc_is_the_discrete_sum_not_the_closed_form():
    assert optimal_aurc(0, 10) == 0.0
    assert optimal_aurc(10, 10) == pytest.approx(1.0)
    assert optimal_aurc(1, 4) == pytest.approx(1 / 4 / 4)
    # The closed form rho + (1 - rho) ln(1 - rho) is its large-n limit, about rho / (2n) lower.
    for n, gap in ((100, 1.0e-3), (10_000, 1.0e-5)):
        closed = 0.2 + 0.8 * math.log(0.8)
        assert optimal_aurc(n // 5, n) - closed == pytest.approx(gap, rel=0.01)


def reference_aurc(conf, correct):
    """The authors' calc_aurc (PS-KD utils/metric.py) in numpy, with a stable argsort."""
    order = np.argsort(conf, kind="stable")[::-1]
    wrong = 1 - correct[order]
    n, r = len(wrong), int(wrong.sum())
    aurc = np.mean(np.cumsum(wrong) / np.arange(1, n + 1))
    opt = (1.0 / n) * np.sum(np.arange(1, r + 1) / (n - r + np.arange(1, r + 1)))
    return 1000 * aurc, 1000 * (aurc - opt)


def test_ties_are_ordered_as_an_ascending_argsort_reversed():
    # Three samples at confidence 1.0, ranked 2, 1, 0. Only sample 1 wrong: risks 0, 1/2, 1/3.
    conf = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    aurc, _ = aurc_eaurc(conf, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    assert aurc == pytest.approx(1000 * (0 + 1 / 2 + 1 / 3) / 3)
    # Only sample 2 wrong: it ranks first (a descending stable sort would rank it last: 0, 0, 1/3).
    aurc, _ = aurc_eaurc(conf, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    assert aurc == pytest.approx(1000 * (1 + 1 / 2 + 1 / 3) / 3)
    # Many saturated confidences, against the reference formula.
    gen = np.random.default_rng(0)
    conf = np.where(gen.random(2000) < 0.4, 1.0, gen.random(2000))
    correct = (gen.random(2000) < 0.8).astype(np.float64)
    ours = aurc_eaurc(torch.from_numpy(conf), torch.from_numpy(correct))
    assert ours == pytest.approx(reference_aurc(conf, correct), rel=1e-12)


def test_per_sample_stats_and_summary_from_logits():
    probs = torch.tensor(
        [
            [0.5, 0.2, 0.1, 0.09, 0.06, 0.05],
            [0.5, 0.2, 0.1, 0.09, 0.06, 0.05],
            [0.1, 0.6, 0.1, 0.1, 0.05, 0.05],
        ]
    )
    labels = torch.tensor([5, 4, 1])
    stats = per_sample_stats(probs.log(), labels)
    torch.testing.assert_close(stats[:, 0], -probs[torch.arange(3), labels].log().double())
    torch.testing.assert_close(stats[:, 1], torch.tensor([0.5, 0.5, 0.6], dtype=torch.float64))
    assert stats[:, 2].tolist() == [0, 0, 1]  # top-1 correct
    assert stats[:, 3].tolist() == [0, 1, 1]  # top-5 correct (label 5 is 6th)
    m = summarize(stats)
    assert m["top1_err"] == pytest.approx(200 / 3)
    assert m["top5_err"] == pytest.approx(100 / 3)
    assert m["nll"] == pytest.approx(-(math.log(0.05) + math.log(0.06) + math.log(0.6)) / 3)
    assert m["num_samples"] == 3
    assert set(m) >= {"top1_err", "top5_err", "nll", "ece", "aurc", "eaurc"}


def test_summary_depends_on_the_set_not_its_order():
    torch.manual_seed(0)
    stats = per_sample_stats(torch.randn(50, 10), torch.randint(0, 10, (50,)))
    shuffled = stats[torch.randperm(50)]
    a, b = summarize(stats), summarize(shuffled)
    for key in ("top1_err", "top5_err", "nll", "ece"):
        assert a[key] == pytest.approx(b[key])


def test_reliability_diagram_is_a_png(tmp_path):
    stats = per_sample_stats(torch.randn(40, 5), torch.randint(0, 5, (40,)))
    path = tmp_path / "rel.png"
    plot_reliability_diagram(stats, str(path), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
