"""The paper's Table 1/4 metrics: top-1/top-5 error, NLL, ECE, AURC and E-AURC.

Evaluation reduces each sample to four numbers (``per_sample_stats``); metrics are computed from
those over the whole validation set, so a set sharded over ranks gives exactly the numbers of
one process once the stats are gathered.
"""

import math

import torch
import torch.nn.functional as F

# The metrics of ``summarize``, in the order they are reported, with their labels in reports.
METRIC_LABELS = {
    "top1_err": "top-1 err (%)",
    "top5_err": "top-5 err (%)",
    "nll": "NLL",
    "ece": "ECE (%)",
    "aurc": "AURC (x1000)",
    "eaurc": "E-AURC (x1000)",
}
METRIC_KEYS = tuple(METRIC_LABELS)


def per_sample_stats(logits, labels):
    """(N, 4) float64: NLL, max softmax probability, top-1 correct, top-5 correct."""
    logits = logits.float()
    nll = F.cross_entropy(logits, labels, reduction="none")
    probs = logits.softmax(dim=1)
    confidence, pred = probs.max(dim=1)
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return torch.stack([nll, confidence, (pred == labels).float(), top5.float()], dim=1).double()


def reliability_bins(confidence, correct, n_bins=10):
    """The confidence bins of ECE and the reliability diagram: ``n_bins`` equal-width bins
    (l, u]. Per bin: (lower, upper, count, accuracy, mean confidence); empty bins have NaN stats."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    rows = []
    for lower, upper in zip(edges[:-1].tolist(), edges[1:].tolist()):
        in_bin = (confidence > lower) & (confidence <= upper)
        n = int(in_bin.sum())
        acc = correct[in_bin].mean().item() if n else math.nan
        conf = confidence[in_bin].mean().item() if n else math.nan
        rows.append((lower, upper, n, acc, conf))
    return rows


def ece(confidence, correct, n_bins=10):
    """Expected calibration error in percent over ``reliability_bins``:
    ``100 * sum_b (n_b / N) * |acc_b - conf_b|``."""
    total = confidence.numel()
    return 100.0 * sum(
        n / total * abs(acc - conf)
        for _, _, n, acc, conf in reliability_bins(confidence, correct, n_bins)
        if n
    )


def optimal_aurc(num_errors, n):
    """The smallest AURC that ``num_errors`` errors among ``n`` samples allow (all errors ranked
    last): ``(1/n) * sum_{i=1..r} i / (n - r + i)``, the authors' discrete formula. Its large-n
    limit ``rho + (1 - rho) ln(1 - rho)`` (rho = r / n) is about ``rho / (2n)`` lower: x1000, 0.01
    at n = 10,000 and 1.0 at n = 100 for rho = 0.2."""
    i = torch.arange(1, num_errors + 1, dtype=torch.float64)
    return (i / (n - num_errors + i)).sum().item() / n


def aurc_eaurc(confidence, correct):
    """Area under the risk-coverage curve and its excess over the optimum, both x1000.

    Samples are ranked by confidence, highest first; the risk at coverage k/N is the error rate
    among the first k; AURC is the mean risk over k = 1..N and E-AURC = AURC - ``optimal_aurc``.
    Ties are ordered as the authors' ``np.argsort(conf)[::-1]`` orders them: an ascending sort
    reversed, so among equal confidences the later sample comes first (a stable sort here; numpy's
    default quicksort is not stable, so their tie order may vary with the array). Ties matter when
    many confidences saturate at 1.0.
    """
    order = torch.sort(confidence, stable=True).indices.flip(0)
    errors = 1.0 - correct[order]
    n = errors.numel()
    risks = errors.cumsum(0) / torch.arange(1, n + 1, dtype=torch.float64)
    aurc = risks.mean().item()
    optimal = optimal_aurc(int(round(errors.sum().item())), n)
    return 1000.0 * aurc, 1000.0 * (aurc - optimal)


def summarize(stats):
    """The metric dict written to metrics.json and eval_final.json, from gathered stats."""
    nll, confidence, correct1, correct5 = stats.double().unbind(dim=1)
    aurc, eaurc = aurc_eaurc(confidence, correct1)
    return {
        "top1_err": 100.0 * (1.0 - correct1.mean().item()),
        "top5_err": 100.0 * (1.0 - correct5.mean().item()),
        "nll": nll.mean().item(),
        "ece": ece(confidence, correct1),
        "aurc": aurc,
        "eaurc": eaurc,
        "num_samples": int(stats.shape[0]),
    }


def plot_reliability_diagram(stats, path, title=""):
    """Accuracy per confidence bin against the diagonal, with the bins' sample shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import atomic_open

    _, confidence, correct1, _ = stats.double().unbind(dim=1)
    bins = reliability_bins(confidence, correct1)
    centers = [(lo + hi) / 2 for lo, hi, *_ in bins]
    accs = [0.0 if n == 0 else acc for _, _, n, acc, _ in bins]
    # The gap spans accuracy to mean confidence, above the bar (over-confident bins) or inside it.
    gap_low = [0.0 if n == 0 else min(acc, conf) for _, _, n, acc, conf in bins]
    gaps = [0.0 if n == 0 else abs(conf - acc) for _, _, n, acc, conf in bins]
    shares = [n / max(1, confidence.numel()) for _, _, n, _, _ in bins]
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(4.5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.bar(centers, accs, width=0.1, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(
        centers,
        gaps,
        bottom=gap_low,
        width=0.1,
        edgecolor="tab:red",
        fill=False,
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}  ECE {ece(confidence, correct1):.2f}%".strip())
    ax.legend(loc="upper left")
    ax2.bar(centers, shares, width=0.1, edgecolor="black", color="gray")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("share")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
