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
    reliability_bins,
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


def test_each_bin_holds_its_upper_edge():
    # Confidence k / 10 (the float64 value) is in bin k - 1 = (k - 1, k] / 10, for all ten bins.
    conf = torch.arange(1, 11, dtype=torch.float64) / 10
    bins = reliability_bins(conf, torch.ones(10, dtype=torch.float64))
    assert [(lo, hi, n) for lo, hi, n, _, _ in bins] == [
        pytest.approx((k / 10, (k + 1) / 10, 1)) for k in range(10)
    ]
    assert [conf_b for *_, conf_b in bins] == pytest.approx(conf.tolist())
    # ECE sees the same bins: every sample right, so each bin's gap is 1 - its confidence.
    assert ece(conf, torch.ones(10, dtype=torch.float64)) == pytest.approx(100 * 0.45)


def test_ece_takes_its_number_of_bins():
    # Ten by default: 0.81 (right) and 0.89 (wrong) share (0.8, 0.9]: acc 0.5, conf 0.85.
    pair = torch.tensor([0.81, 0.89], dtype=torch.float64)
    assert ece(pair, torch.tensor([1.0, 0.0], dtype=torch.float64)) == pytest.approx(35.0)
    # Two bins, (0, 0.5] and (0.5, 1]: [0.3 right, 0.45 wrong] and [0.7 right, 0.9 right].
    conf = torch.tensor([0.3, 0.45, 0.7, 0.9], dtype=torch.float64)
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert ece(conf, correct, n_bins=2) == pytest.approx(100 * (2 / 4 * 0.125 + 2 / 4 * 0.2))


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


def test_optimal_aurc_of_many_rows_is_the_authors_sum():
    pairs = [(r, n) for n in (1, 7, 1000, 50_000) for r in sorted({0, 1, n // 3, n - 1, n})]
    direct = [sum(i / (n - r + i) for i in range(1, r + 1)) / n for r, n in pairs]
    rows = optimal_aurc(torch.tensor([r for r, _ in pairs]), torch.tensor([n for _, n in pairs]))
    assert rows.tolist() == pytest.approx(direct, rel=1e-10, abs=1e-12)
    assert [optimal_aurc(r, n) for r, n in pairs] == pytest.approx(direct, rel=1e-10, abs=1e-12)


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


@pytest.mark.parametrize("title", [None, "R-18 PS-KD"])
def test_reliability_diagram_draws_each_bins_accuracy_gap_and_share(tmp_path, monkeypatch, title):
    import matplotlib.colors
    import matplotlib.pyplot as plt

    drawn = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (drawn.append(fig), close(fig)))
    # Bins (0.8, 0.9]: 0.85 right; (0.7, 0.8]: 0.75 wrong; (0.5, 0.6]: 0.6 right, 0.55 wrong.
    stats = torch.stack([torch.zeros(4), CONF, CORRECT, CORRECT], dim=1)
    path = tmp_path / "rel.png"
    if title is None:
        plot_reliability_diagram(stats, str(path))
    else:
        plot_reliability_diagram(stats, str(path), title=title)
    (fig,) = drawn
    assert not plt.fignum_exists(fig.number)  # closed: a long run draws one per evaluation
    ax, shares_ax = fig.axes
    # Three bar series of 10 bars each, centred on the bins, 0.1 wide: accuracy, gap, share.
    acc_bars, gap_bars = ax.containers
    (share_bars,) = shares_ax.containers
    centers = [k / 10 + 0.05 for k in range(10)]
    for bars in (acc_bars, gap_bars, share_bars):
        assert [b.get_x() + b.get_width() / 2 for b in bars] == pytest.approx(centers)
        assert [b.get_width() for b in bars] == pytest.approx([0.1] * 10)
    acc = [0, 0, 0, 0, 0, 0.5, 0, 0, 1, 0]
    assert [b.get_height() for b in acc_bars] == pytest.approx(acc)
    # The gap spans accuracy to mean confidence: above the bar (0.5 -> 0.575, 0 -> 0.75) or
    # inside it (0.85 -> 1); empty bins draw nothing.
    assert [b.get_y() for b in gap_bars] == pytest.approx([0] * 5 + [0.5, 0, 0, 0.85, 0])
    assert [b.get_height() for b in gap_bars] == pytest.approx([0] * 5 + [0.075, 0, 0.75, 0.15, 0])
    assert [b.get_height() for b in share_bars] == pytest.approx([0] * 5 + [0.5, 0, 0.25, 0.25, 0])
    rgba = matplotlib.colors.to_rgba
    assert acc_bars[0].get_facecolor() == rgba("tab:blue")
    assert acc_bars[0].get_edgecolor() == share_bars[0].get_edgecolor() == rgba("black")
    assert gap_bars[0].get_edgecolor() == rgba("tab:red") and not gap_bars[0].get_fill()
    assert gap_bars[0].get_hatch() == "//" and share_bars[0].get_facecolor() == rgba("gray")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["accuracy", "gap to confidence"]
    assert ax.get_legend()._loc == 2  # upper left
    (diagonal,) = ax.lines
    assert diagonal.get_xydata().tolist() == [[0, 0], [1, 1]]
    assert (diagonal.get_linestyle(), diagonal.get_color(), diagonal.get_linewidth()) == (
        "--",
        "k",
        1,
    )
    assert ax.get_xlim() == ax.get_ylim() == (0, 1)
    assert (ax.get_ylabel(), shares_ax.get_xlabel(), shares_ax.get_ylabel()) == (
        "accuracy",
        "confidence",
        "share",
    )
    ece_text = f"ECE {ece(CONF, CORRECT):.2f}%"
    assert ax.get_title() == (ece_text if title is None else f"{title}  {ece_text}")
    assert shares_ax.get_shared_x_axes().joined(ax, shares_ax)
    # 4.5 x 6 inches at 120 dpi; the accuracy panel three times the share panel's height.
    assert ax.get_position().height == pytest.approx(3 * shares_ax.get_position().height, rel=0.05)
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (540, 720)
