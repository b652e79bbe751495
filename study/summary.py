"""Table 5 over seeds: per backbone the mean and spread of AP50 and of the ImageNet metrics, the
difference to the baseline with its 95% interval (study.statistics), beside the paper's.

Runs are grouped by (method label, architecture, detection protocol); within a group the seed is
the detection run's SEED, and a backbone's run is paired with the baseline's run of the same
seed. Writes table5_summary.md, table5_summary.csv and table5_diff.png (differences with error
bars, so that a 1-point effect is visible). Needs no Detectron2.
"""

import csv
import io
import os

import yaml

from detection.report import PAPER_TABLE5, read_run
from pretrain.fileio import atomic_open, atomic_write_text
from pretrain.methods import method_label
from pretrain.metrics import METRIC_KEYS, METRIC_LABELS

from .statistics import ScoredRun, bootstrap_weights, mean_std, paired_ap_interval, seed_interval

BASELINE = method_label("baseline")
PAPER_ARCH = "resnet152"
# The PS-KD paper, Table 4: ResNet-152 ImageNet top-1 error (%).
PAPER_TOP1_ERR = {
    BASELINE: 22.19,
    method_label("pskd"): 21.41,
    method_label("pskd", cutmix=True): 20.76,
}
SHOWN_METRICS = tuple((key, METRIC_LABELS[key]) for key in ("top1_err", "ece", "aurc"))


def protocol(det_cfg):
    """The detection schedule in words: which protocol, iterations, batch, learning rate."""
    solver = det_cfg.get("SOLVER", {})
    batch, iters, lr = solver.get("IMS_PER_BATCH"), solver.get("MAX_ITER"), solver.get("BASE_LR")
    name = "paper (batch 1)" if batch == 1 else "Detectron2"
    return (
        f"{name}: {iters} it, batch {batch}, lr {lr:g}"
        if lr is not None
        else f"{name}: {iters} it, batch {batch}"
    )


def collect_groups(run_dirs, labels=None):
    """{(method, arch, protocol): {seed: (run_dir, row)}} in the order of the paper's methods."""
    labels = labels or {}
    groups = {}
    for d in run_dirs:
        row = read_run(d, labels.get(os.path.normpath(d)))
        cfg_path = os.path.join(d, "config.yaml")
        det_cfg = {}
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                det_cfg = yaml.safe_load(f) or {}
        key = (row["method"] or "?", row["arch"] or "?", protocol(det_cfg))
        seed = det_cfg.get("SEED")
        group = groups.setdefault(key, {})
        if seed in group:
            raise ValueError(
                f"two runs of {key[0]} ({key[2]}) with SEED {seed}: {group[seed][0]} and {d}"
            )
        group[seed] = (d, row)
    order = list(PAPER_TABLE5)
    return dict(
        sorted(
            groups.items(),
            key=lambda kv: order.index(kv[0][0]) if kv[0][0] in order else len(order),
        )
    )


def _scored(run_dir):
    path = os.path.join(run_dir, "voc_detections.npz")
    return ScoredRun.from_file(path) if os.path.isfile(path) else None


def summarize(run_dirs, labels=None, resamples=1000):
    """One dict per backbone group: AP50 and ImageNet metrics over seeds, differences to the
    baseline of the same architecture and protocol, the paper's values and differences."""
    groups = collect_groups(run_dirs, labels)
    scored = {d: _scored(d) for runs in groups.values() for d, _ in runs.values()}
    num_images = {len(s.image_ids) for s in scored.values() if s is not None}
    weights = bootstrap_weights(num_images.pop(), resamples) if len(num_images) == 1 else None
    out = []
    for (method, arch, proto), runs in groups.items():
        s = {
            "method": method,
            "arch": arch,
            "protocol": proto,
            "seeds": sorted(runs, key=str),
            "runs": len(runs),
        }
        ap50 = {seed: row["AP50"] for seed, (_, row) in runs.items() if row["AP50"] is not None}
        s["AP50_mean"], s["AP50_std"] = mean_std(list(ap50.values())) if ap50 else (None, None)
        base = groups.get((BASELINE, arch, proto))
        s["paper_AP50"] = PAPER_TABLE5.get(method)
        s["paper_dAP50"] = (
            PAPER_TABLE5[method] - PAPER_TABLE5[BASELINE]
            if method in PAPER_TABLE5 and method != BASELINE
            else None
        )
        s["dAP50"] = s["dAP50_lo"] = s["dAP50_hi"] = None
        s["interval"] = ""
        if base and method != BASELINE:
            runs_scored = {seed: scored[d] for seed, (d, _) in runs.items()}
            base_scored = {seed: scored[d] for seed, (d, _) in base.items()}
            if weights is not None and all(
                v is not None for v in (*runs_scored.values(), *base_scored.values())
            ):
                ci = paired_ap_interval(runs_scored, base_scored, weights)
                s["interval"] = (
                    "seeds + test images" if ci and ci["v_seed"] is not None else "test images only"
                )
            else:  # no saved detections: seed variation only
                ci = seed_interval(
                    ap50,
                    {
                        seed: row["AP50"]
                        for seed, (_, row) in base.items()
                        if row["AP50"] is not None
                    },
                )
                s["interval"] = "seeds only"
            if ci:
                s["dAP50"], s["dAP50_lo"], s["dAP50_hi"] = ci["diff"], ci["lo"], ci["hi"]
        s["paper_in_ci"] = _inside(s["paper_dAP50"], s["dAP50_lo"], s["dAP50_hi"])
        for metric in METRIC_KEYS:
            values = {
                seed: row[f"pretrain_{metric}"]
                for seed, (_, row) in runs.items()
                if row[f"pretrain_{metric}"] is not None
            }
            s[f"{metric}_mean"], s[f"{metric}_std"] = (
                mean_std(list(values.values())) if values else (None, None)
            )
            ci = None
            if base and method != BASELINE and values:
                ci = seed_interval(
                    values,
                    {
                        seed: row[f"pretrain_{metric}"]
                        for seed, (_, row) in base.items()
                        if row[f"pretrain_{metric}"] is not None
                    },
                )
            s[f"d{metric}"], s[f"d{metric}_lo"], s[f"d{metric}_hi"] = (
                (ci["diff"], ci["lo"], ci["hi"]) if ci else (None, None, None)
            )
        s["paper_dtop1_err"] = (
            PAPER_TOP1_ERR[method] - PAPER_TOP1_ERR[BASELINE]
            if method in PAPER_TOP1_ERR and method != BASELINE
            else None
        )
        s["paper_top1_in_ci"] = _inside(s["paper_dtop1_err"], s["dtop1_err_lo"], s["dtop1_err_hi"])
        out.append(s)
    return out


def _inside(value, lo, hi):
    if value is None or lo is None or hi is None:
        return None
    return lo <= value <= hi


def _f(value, digits=2, signed=False):
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pm(mean, std, digits=2):
    if mean is None:
        return ""
    return _f(mean, digits) + ("" if std is None else f" ± {_f(std, digits)}")


def _diff(s, key, digits=2):
    d, lo, hi = s[key], s[f"{key}_lo"], s[f"{key}_hi"]
    if d is None:
        return ""
    return _f(d, digits, True) + (
        "" if lo is None else f" [{_f(lo, digits, True)}, {_f(hi, digits, True)}]"
    )


def _yes(flag):
    return "" if flag is None else ("yes" if flag else "**no**")


def to_markdown(summary, resamples):
    lines = [
        "# Table 5 over seeds: Faster R-CNN on PASCAL VOC07 test",
        "",
        "AP50 is VOC07 11-point mAP at IoU > 0.5 (%), mean ± sample std over seeds. Δ is the "
        "difference to the Baseline of the same backbone architecture and protocol, seed by seed, "
        "with its 95% interval (how: at the end). Paper: PS-KD (ICCV 2021) Table 5 (AP50) and "
        "Table 4 (top-1 error), ResNet-152.",
        "",
    ]
    for arch in sorted({s["arch"] for s in summary if s["arch"] != PAPER_ARCH}):
        lines += [
            f"**Warning:** backbone {arch}, not the paper's ResNet-152: its absolute numbers "
            "cannot be compared with the paper's; the differences only say how the methods rank "
            "here.",
            "",
        ]
    lines += [
        "| Method | Backbone | Protocol | Seeds | AP50 (ours) | Δ AP50 (ours) [95% CI] | AP50 "
        "(paper) | Δ AP50 (paper) | paper Δ inside CI |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['arch']} | {s['protocol']} | {', '.join(map(str, s['seeds']))} "
            f"| {_pm(s['AP50_mean'], s['AP50_std'])} | {_diff(s, 'dAP50')} | {_f(s['paper_AP50'])} "
            f"| {_f(s['paper_dAP50'], 2, True)} | {_yes(s['paper_in_ci'])} |"
        )
    lines += [
        "",
        "## ImageNet metrics of the same backbones (pretraining eval_final.json)",
        "",
        "| Method | "
        + " | ".join(f"{name} | Δ {name} [95% CI]" for _, name in SHOWN_METRICS)
        + " | Δ top-1 err (paper) | paper Δ inside CI |",
        "|---|" + "---:|---:|" * len(SHOWN_METRICS) + "---:|---|",
    ]
    for s in summary:
        cells = [
            f"{_pm(s[f'{m}_mean'], s[f'{m}_std'])} | {_diff(s, f'd{m}')}" for m, _ in SHOWN_METRICS
        ]
        lines.append(
            f"| {s['method']} | "
            + " | ".join(cells)
            + f" | {_f(s['paper_dtop1_err'], 2, True)} | {_yes(s['paper_top1_in_ci'])} |"
        )
    kinds = sorted({s["interval"] for s in summary if s["interval"]})
    lines += [
        "",
        "## How the intervals are computed",
        "",
        "For a backbone and the Baseline, seed s pairs their runs; d_s is the difference of AP50 "
        "on the whole test set and Δ = mean d_s. Test-image sampling: "
        f"{resamples} resamples of the test images with replacement, the same resamples for every "
        "run, AP50 recomputed on each from the saved detections (voc_detections.npz) exactly as "
        "the VOC07 evaluator would; v_img = variance of mean_s d_s over the resamples. Seed "
        "variation: v_seed = sample variance of d_s / S. Interval: Δ ± t(0.975, S−1) · sqrt(v_img "
        "+ v_seed); with one seed Δ ± 1.96 · sqrt(v_img) (test images only). ImageNet metrics: Δ ± "
        "t(0.975, S−1) · sd(d_s)/√S (seed variation only; no per-image predictions are kept).",
        "",
        f"Intervals in this table: {', '.join(kinds) or 'none (no Baseline to compare with)'}.",
        "",
    ]
    return "\n".join(lines)


CSV_COLUMNS = (
    [
        "method",
        "arch",
        "protocol",
        "seeds",
        "AP50_mean",
        "AP50_std",
        "dAP50",
        "dAP50_lo",
        "dAP50_hi",
        "interval",
        "paper_AP50",
        "paper_dAP50",
        "paper_in_ci",
    ]
    + [
        f"{p}{m}{q}"
        for m in METRIC_KEYS
        for p, q in (("", "_mean"), ("", "_std"), ("d", ""), ("d", "_lo"), ("d", "_hi"))
    ]
    + ["paper_dtop1_err", "paper_top1_in_ci"]
)


def to_csv(summary):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for s in summary:
        writer.writerow(
            {
                k: " ".join(map(str, s[k])) if k == "seeds" else ("" if s[k] is None else s[k])
                for k in CSV_COLUMNS
            }
        )
    return buf.getvalue()


def write_chart(summary, path):
    """Differences to the baseline with their 95% intervals (ours) beside the paper's, for AP50
    and top-1 error: an axis around zero, not bars from zero, so small effects stay visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summary if s["method"] != BASELINE]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.2 * len(rows) + 3.0), 4.2))
    panels = (
        (axes[0], "dAP50", "paper_dAP50", "Δ VOC07 AP50 vs Baseline (points)"),
        (axes[1], "dtop1_err", "paper_dtop1_err", "Δ ImageNet top-1 err vs Baseline (%)"),
    )
    for ax, key, paper_key, title in panels:
        ax.axhline(0.0, color="grey", linewidth=0.8)
        for i, s in enumerate(rows):
            if s[key] is not None:
                lo, hi = s[f"{key}_lo"], s[f"{key}_hi"]
                err = [[s[key] - lo], [hi - s[key]]] if lo is not None else None
                ax.errorbar(
                    [i - 0.1],
                    [s[key]],
                    yerr=err,
                    fmt="o",
                    color="C0",
                    capsize=4,
                    label="ours (mean over seeds, 95% CI)" if i == 0 else None,
                )
            if s[paper_key] is not None:
                ax.plot(
                    [i + 0.1],
                    [s[paper_key]],
                    "x",
                    color="C3",
                    markersize=8,
                    label="paper" if not any(r[paper_key] is not None for r in rows[:i]) else None,
                )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{s['method']}\n{s['arch']}" for s in rows], fontsize=8)
        ax.set_title(title, fontsize=10)
        if rows:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def write_summary(run_dirs, out_dir, labels=None, resamples=1000):
    """Write table5_summary.md / .csv and table5_diff.png into ``out_dir``; return the summary."""
    summary = summarize(run_dirs, labels, resamples)
    atomic_write_text(os.path.join(out_dir, "table5_summary.md"), to_markdown(summary, resamples))
    atomic_write_text(os.path.join(out_dir, "table5_summary.csv"), to_csv(summary))
    write_chart(summary, os.path.join(out_dir, "table5_diff.png"))
    return summary
