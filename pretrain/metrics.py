"""The paper's Table 1/4 metrics: top-1/top-5 error, NLL, ECE, AURC and E-AURC.

Evaluation reduces each sample to four numbers (``per_sample_stats``); metrics are computed from
those over the whole validation set, so a set sharded over ranks gives exactly the numbers of
one process once the stats are gathered.
"""

import hashlib
import math
import os

import numpy as np
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


def _bin_edges(n_bins):
    return torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)


def _bin_membership(confidence, n_bins):
    """(N, n_bins) bool: which of ``n_bins`` equal-width bins (l, u] holds each confidence."""
    edges = _bin_edges(n_bins)
    c = confidence[:, None]
    return (c > edges[:-1]) & (c <= edges[1:])


def reliability_bins(confidence, correct, n_bins=10):
    """The confidence bins of ECE and the reliability diagram: ``n_bins`` equal-width bins
    (l, u]. Per bin: (lower, upper, count, accuracy, mean confidence); empty bins have NaN stats."""
    rows = []
    edges = _bin_edges(n_bins).tolist()
    for b, in_bin in enumerate(_bin_membership(confidence, n_bins).unbind(dim=1)):
        n = int(in_bin.sum())
        acc = correct[in_bin].mean().item() if n else math.nan
        conf = confidence[in_bin].mean().item() if n else math.nan
        rows.append((edges[b], edges[b + 1], n, acc, conf))
    return rows


def ece(confidence, correct, n_bins=10, weights=None):
    """Expected calibration error in percent over ``reliability_bins``:
    ``100 * sum_b (n_b / N) * |acc_b - conf_b|`` = ``100 / N * sum_b |sum_{i in b} (correct_i -
    conf_i)|``. ``weights`` (B, N): how often each sample counts, per row; then a (B,) tensor."""
    w = _rows(weights, confidence)
    gap = _bin_membership(confidence, n_bins).double() * (correct - confidence)[:, None]
    out = 100.0 * (w @ gap).abs().sum(dim=1) / w.sum(dim=1)
    return out if weights is not None else out.item()


def optimal_aurc(num_errors, n):
    """The smallest AURC that ``num_errors`` errors among ``n`` samples allow (all errors ranked
    last): ``(1/n) * sum_{i=1..r} i / (n - r + i)``, the authors' discrete formula. Its large-n
    limit ``rho + (1 - rho) ln(1 - rho)`` (rho = r / n) is about ``rho / (2n)`` lower: x1000, 0.01
    at n = 10,000 and 1.0 at n = 100 for rho = 0.2.

    The sum is ``r - (n - r) (H(n) - H(n - r))`` (H the harmonic numbers, through digamma), so
    ``num_errors`` and ``n`` may be tensors: one optimum per bootstrap resample, without a loop
    over r terms each."""
    r = torch.as_tensor(num_errors, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64)
    harmonic_gap = torch.special.digamma(n + 1) - torch.special.digamma(n - r + 1)
    out = (r - (n - r) * harmonic_gap) / n
    return out if out.dim() else out.item()


def aurc_eaurc(confidence, correct, weights=None):
    """Area under the risk-coverage curve and its excess over the optimum, both x1000.

    Samples are ranked by confidence, highest first; the risk at coverage k/N is the error rate
    among the first k; AURC is the mean risk over k = 1..N and E-AURC = AURC - ``optimal_aurc``.
    Ties are ordered as the authors' ``np.argsort(conf)[::-1]`` orders them: an ascending sort
    reversed, so among equal confidences the later sample comes first (a stable sort here; numpy's
    default quicksort is not stable, so their tie order may vary with the array). Ties matter when
    many confidences saturate at 1.0.

    ``weights`` (B, N), integer counts: per row, the metrics of the set with sample j repeated
    c_j times (adjacent copies: same confidence, same error); then two (B,) tensors. A run of
    copies at ranks P+1..P+c adds ``sum_t (E + t e) / (P + t) = E dH + e (c - P dH)`` to the sum
    of risks (E: errors ranked before it, dH = H(P + c) - H(P), H the harmonic numbers), so no
    row is expanded; with every c_j = 1 this is the plain mean of the risks.
    """
    order = torch.sort(confidence, stable=True).indices.flip(0)
    errors = 1.0 - correct[order]
    counts = _rows(weights, confidence)
    n = counts.shape[1]
    inverse = 1.0 / torch.arange(1, n + 1, dtype=torch.float64)
    harmonic = torch.cat([torch.zeros(1, dtype=torch.float64), inverse.cumsum(0)])  # H(0..n)
    aurc, eaurc = [], []
    for block in counts.split(_ROWS_PER_BLOCK):
        c = block[:, order].round()
        ranks = c.cumsum(dim=1)  # P + c, the rank of each sample's last copy
        errs = (c * errors).cumsum(dim=1)  # E + c e
        before, errs_before = ranks - c, errs - c * errors
        total = ranks[:, -1]
        d_h = harmonic[ranks.long()] - harmonic[before.long()]
        risk = (errs_before * d_h + errors * (c - before * d_h)).sum(dim=1) / total
        aurc.append(1000.0 * risk)
        eaurc.append(1000.0 * (risk - optimal_aurc(errs[:, -1].round(), total)))
    aurc, eaurc = torch.cat(aurc), torch.cat(eaurc)
    return (aurc, eaurc) if weights is not None else (aurc.item(), eaurc.item())


# Resamples computed at once: bounds the (rows, samples) arrays of a bootstrap.
_ROWS_PER_BLOCK = 64


def _rows(weights, like):
    """``weights`` as a float64 (B, N) tensor; None -> one row of ones."""
    if weights is None:
        return torch.ones(1, like.numel(), dtype=torch.float64)
    return torch.as_tensor(weights, dtype=torch.float64).reshape(-1, like.numel())


def summarize(stats, weights=None, keys=METRIC_KEYS):
    """The metric dict written to metrics.json and eval_final.json, from gathered stats.
    ``weights`` (B, N): how often each sample counts in each of B resamples of the set (a
    bootstrap); then every metric is a (B,) tensor, computed by the same definitions. ``keys``:
    the metrics to compute (a bootstrap of top-1 error need not pay for the AURC's sort and
    sums); AURC and E-AURC come from one computation, so asking for either gives both."""
    nll, confidence, correct1, correct5 = stats.double().unbind(dim=1)
    w = _rows(weights, nll)
    n = w.sum(dim=1)
    compute = {
        "top1_err": lambda: 100.0 * (1.0 - w @ correct1 / n),
        "top5_err": lambda: 100.0 * (1.0 - w @ correct5 / n),
        "nll": lambda: w @ nll / n,
        "ece": lambda: ece(confidence, correct1, weights=w),
    }
    out = {k: compute[k]() for k in keys if k in compute}
    if {"aurc", "eaurc"} & set(keys):  # last, as in METRIC_KEYS
        out["aurc"], out["eaurc"] = aurc_eaurc(confidence, correct1, w)
    if weights is not None:
        return out
    return dict({k: v.item() for k, v in out.items()}, num_samples=int(stats.shape[0]))


# The columns of ``per_sample_stats``, as the per-image file names them.
PER_IMAGE_COLUMNS = ("nll", "confidence", "correct1", "correct5")


def per_image_path(metrics_path):
    """Where each image's numbers sit beside a metrics file: eval_final.json ->
    eval_final_per_image.npz."""
    return os.path.splitext(metrics_path)[0] + "_per_image.npz"


def _sample_name(sample, index):
    # An image file as class folder / file name (the same wherever the dataset is mounted); an
    # in-memory sample (CIFAR) by its index.
    if isinstance(sample, str):
        return "/".join(os.path.normpath(sample).split(os.sep)[-2:])
    return str(index)


def validation_digest(samples, index):
    """SHA-256 of the evaluated samples' names in order: two runs can be paired image by image
    only when theirs are equal."""
    names = "\n".join(_sample_name(samples[int(i)], int(i)) for i in index)
    return hashlib.sha256(names.encode()).hexdigest()


def save_per_image(path, stats, index, samples):
    """Each evaluated sample's NLL, confidence, top-1 and top-5 hit (``per_sample_stats``), its
    index in the validation set and the set's ``validation_digest``: ~20 bytes an image."""
    from pretrain.runtime.fileio import atomic_open

    stats = stats.double().numpy()
    with atomic_open(path, "wb") as f:
        np.savez_compressed(
            f,
            **{k: stats[:, i] for i, k in enumerate(PER_IMAGE_COLUMNS[:2])},
            **{k: stats[:, i + 2].astype(bool) for i, k in enumerate(PER_IMAGE_COLUMNS[2:])},
            index=index.numpy().astype(np.int64),
            digest=np.array(validation_digest(samples, index)),
        )


def load_per_image(path):
    """(stats (N, 4) float64 tensor as ``per_sample_stats`` gives it, index array, digest)."""
    with np.load(path) as data:
        columns = [data[k].astype(np.float64) for k in PER_IMAGE_COLUMNS]
        return torch.from_numpy(np.stack(columns, axis=1)), data["index"], str(data["digest"])


def plot_reliability_diagram(stats, path, title=""):
    """Accuracy per confidence bin against the diagonal, with the bins' sample shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.runtime.fileio import atomic_open

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
