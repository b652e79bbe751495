"""The study summary as files: table5_summary.md (Tables 5 and 4 over seeds), table5_summary.csv
(every metric's numbers) and table5_diff.png (the differences to the Baseline with their
intervals, beside the paper's)."""

import csv
import io

from detection import paper
from pretrain.metrics import METRIC_LABELS
from pretrain.runtime.fileio import figure_png

from .summary import BASELINE, METRICS, NO_DETECTION, PAPER_TEST_IMAGES, summarize

LABELS = dict(METRIC_LABELS, AP50="AP50 (%)")


def _f(value, digits=2, signed=False):
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pm(mean, std):
    if mean is None:
        return ""
    return _f(mean) + ("" if std is None else f" ± {_f(std)}")


def _diff(s, metric):
    d, lo, hi = s[f"d{metric}"], s[f"d{metric}_lo"], s[f"d{metric}_hi"]
    if d is None:
        return "n/a" if s[f"d{metric}_ci"] else ""  # no difference, for the reason d_ci gives
    return _f(d, signed=True) + (
        "" if lo is None else f" [{_f(lo, signed=True)}, {_f(hi, signed=True)}]"
    )


def _range(s, metric):
    lo, hi = s[f"d{metric}_pi_lo"], s[f"d{metric}_pi_hi"]
    return "" if lo is None else f"[{_f(lo, signed=True)}, {_f(hi, signed=True)}]"


def _in_range(flag):
    if flag is None:
        return ""
    if isinstance(flag, str):
        return "n/a"
    return "yes" if flag else "**no**"


def _setting(summary):
    """Why these numbers cannot speak to the paper's question, when they cannot."""
    reasons = sorted({f"backbone {s['arch']}" for s in summary if s["arch"] != paper.ARCH})
    for metric, what in (("AP50", "VOC07 test"), ("top1_err", "ImageNet validation")):
        sizes = {s["test_images"].get(metric) for s in summary} - {None}
        reasons += [
            f"{n:,} {what} images instead of {PAPER_TEST_IMAGES[metric]:,}"
            for n in sorted(sizes)
            if n != PAPER_TEST_IMAGES[metric]
        ]
    if not reasons:
        return []
    return [
        f"**Not the paper's setting** ({'; '.join(reasons)}): these numbers say nothing about the "
        "methods. They show the pipeline and its statistics at work; the comparison with the "
        "paper is n/a.",
        "",
    ]


def _seeds(s):
    """The seeds counted, and how many flagged runs were left out."""
    text = ", ".join(map(str, s["seeds"])) or "none"
    n = len(s.get("left_out", []))
    return text + (f" ({n} left out)" if n else "")


def _mean(s, metric):
    return _pm(s[f"{metric}_mean"], s[f"{metric}_std"]) if s["seeds"] else "n/a"


def _left_out(summary):
    """The flagged runs (detection.runs.run_flags), named with why, above the tables."""
    lines = [
        f"- {r['run']} ({s['method']}, SEED {r['seed']}): {'; '.join(r['flags'])}."
        for s in summary
        for r in s.get("left_out", [])
    ]
    if not lines:
        return []
    return [
        "**Runs left out** (flagged in table5.md: not finished results, so no number below "
        "includes them; their seeds are not counted):",
        "",
        *lines,
        "",
    ]


def _notes(summary, metrics):
    reasons = sorted(
        {
            s[f"paper_d{m}_in_pi"]
            for s in summary
            for m in metrics
            if isinstance(s[f"paper_d{m}_in_pi"], str)
        }
    )
    kinds = sorted({s[f"d{m}_ci"] for s in summary for m in metrics if s[f"d{m}_ci"]})
    lines = [f"Intervals: {'; '.join(kinds) or 'none (no Baseline to compare with)'}."]
    if reasons:
        lines.append(
            "Paper comparison n/a: " + "; ".join(r.removeprefix("n/a: ") for r in reasons) + "."
        )
    return lines


def to_markdown(summary, resamples):
    lines = ["# Tables 5 and 4 over seeds: ResNet backbones, VOC07 detection and ImageNet", ""]
    lines += _setting(summary)
    lines += _left_out(summary)
    lines += [
        "Mean ± sample std over seeds. Δ: difference to the Baseline of the same architecture and "
        "fine-tuning, seed by seed, with its 95% confidence interval for the expected difference "
        "(what it covers: the Intervals line). Paper: PS-KD (ICCV 2021), one run per backbone. "
        '"One-run Δ range": where 95% of single runs\' Δ on this same test set fall, from our '
        "seeds' spread; \"paper in range\" says whether the paper's one-run Δ lies in it.",
        "",
        "## Table 5: Faster R-CNN on PASCAL VOC07 test, AP50 (%)",
        "",
        "| Method | Backbone | Fine-tuning | Seeds | AP50 | Δ AP50 [95% CI] | AP50 (paper) | Δ "
        "(paper) | one-run Δ range | paper in range |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    detected = [s for s in summary if s["protocol"] != NO_DETECTION]
    for s in detected:
        lines.append(
            f"| {s['method']} | {s['arch']} | {s['protocol']} | {_seeds(s)} "
            f"| {_mean(s, 'AP50')} | {_diff(s, 'AP50')} "
            f"| {_f(s['paper_AP50'])} | {_f(s['paper_dAP50'], signed=True)} | {_range(s, 'AP50')} "
            f"| {_in_range(s['paper_dAP50_in_pi'])} |"
        )
    lines += [""] + _notes(detected, ["AP50"])
    shown, table4 = set(), []
    for s in summary:  # a backbone fine-tuned with several protocols: its first group
        if (s["method"], s["arch"]) not in shown:
            shown.add((s["method"], s["arch"]))
            table4.append(s)
    metrics = paper.TABLE4_METRICS
    lines += [
        "",
        "## Table 4: ImageNet validation (in parentheses: the paper's value; ours minus it)",
        "",
        "| Method | Backbone | Seeds | " + " | ".join(LABELS[m] for m in metrics) + " |",
        "|---|---|---|" + "---:|" * len(metrics),
    ]
    for s in table4:
        cells = [
            _mean(s, m)
            + (
                ""
                if s[f"paper_{m}"] is None
                else f" ({_f(s[f'paper_{m}'])})"
                if s[f"{m}_vs_paper"] is None
                else f" ({_f(s[f'paper_{m}'])}; {_f(s[f'{m}_vs_paper'], signed=True)})"
            )
            for m in metrics
        ]
        lines.append(f"| {s['method']} | {s['arch']} | {_seeds(s)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Differences to the Baseline: Δ [95% CI]; the paper's Δ, and whether it lies in our "
        "one-run Δ range.",
        "",
        "| Method | " + " | ".join(f"Δ {LABELS[m]}" for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for s in table4:
        if s["method"] == BASELINE:
            continue
        cells = []
        for m in metrics:
            cell = _diff(s, m)
            if s[f"paper_d{m}"] is not None:
                cell += f"; paper {_f(s[f'paper_d{m}'], signed=True)}"
                in_range = _in_range(s[f"paper_d{m}_in_pi"])
                cell += f" ({in_range})" if in_range else ""
            cells.append(cell)
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    lines += [""] + _notes(table4, metrics)
    lines += [
        "",
        "## How the intervals are computed",
        "",
        "Seed s pairs a backbone's run with the Baseline's; d_s is their difference on the whole "
        "test set and Δ = mean d_s. Seeds: v_seed = sample variance of d_s / S (seed effect and "
        "seed x image interaction). Test images: "
        f"{resamples} resamples of the test images with replacement, the same for every run; each "
        "metric is recomputed on each resample from the saved per-image results (VOC07 AP50 from "
        "voc_detections.npz exactly as the VOC07 evaluator, the ImageNet metrics from "
        "eval_final_per_image.npz); v_img = mean over seed pairs s ≠ s' of the covariance of d_s "
        "and d_s' over the resamples (the image effect the seeds share). Interval: Δ ± t(0.975, "
        "ν) · sqrt(v_img + v_seed), ν = (S−1)(v_img + v_seed)² / v_seed² (Welch-Satterthwaite). "
        "One seed: Δ ± 1.96 · sqrt(variance of d_1 over the resamples), test images only. "
        "Without per-image data: Δ ± t(0.975, S−1) · sqrt(v_seed), seeds only. One-run Δ range: "
        "mean d_s ± t(0.975, S−1) · sd(d_s) · sqrt(1 + 1/S). docs/study.md gives the assumptions "
        "and the simulation that checks the coverage.",
        "",
    ]
    return "\n".join(lines)


CSV_COLUMNS = ["method", "arch", "protocol", "seeds", "left_out"] + [
    f"{p}{m}{q}"
    for m in METRICS
    for p, q in (
        ("", "_mean"),
        ("", "_std"),
        ("d", ""),
        ("d", "_lo"),
        ("d", "_hi"),
        ("d", "_ci"),
        ("d", "_pi_lo"),
        ("d", "_pi_hi"),
        ("paper_", ""),
        ("", "_vs_paper"),
        ("paper_d", ""),
        ("paper_d", "_in_pi"),
    )
]


def to_csv(summary):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for s in summary:
        row = {k: "" if s.get(k) is None else s[k] for k in CSV_COLUMNS}
        row["seeds"] = " ".join(map(str, s["seeds"]))
        row["left_out"] = " | ".join(
            f"{r['run']} (SEED {r['seed']}): {'; '.join(r['flags'])}" for r in s.get("left_out", [])
        )
        writer.writerow(row)
    return buf.getvalue()


def chart_png(summary):
    """Differences to the baseline with their 95% intervals (ours) beside the paper's, for AP50
    and top-1 error: an axis around zero, not bars from zero, so small effects stay visible.
    PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summary if s["method"] != BASELINE]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.2 * len(rows) + 3.0), 4.2))
    panels = (
        (axes[0], "AP50", "Δ VOC07 AP50 vs Baseline (points)"),
        (axes[1], "top1_err", "Δ ImageNet top-1 err vs Baseline (%)"),
    )
    for ax, metric, title in panels:
        ax.axhline(0.0, color="grey", linewidth=0.8)
        for i, s in enumerate(rows):
            d = s[f"d{metric}"]
            if d is not None:
                lo, hi = s[f"d{metric}_lo"], s[f"d{metric}_hi"]
                err = [[d - lo], [hi - d]] if lo is not None else None
                ax.errorbar(
                    [i - 0.1],
                    [d],
                    yerr=err,
                    fmt="o",
                    color="C0",
                    capsize=4,
                    label="ours (mean over seeds, 95% CI)" if i == 0 else None,
                )
            paper_d = s[f"paper_d{metric}"]
            if paper_d is not None:
                first = not any(r[f"paper_d{metric}"] is not None for r in rows[:i])
                ax.plot(
                    [i + 0.1],
                    [paper_d],
                    "x",
                    color="C3",
                    markersize=8,
                    label="paper" if first else None,
                )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{s['method']}\n{s['arch']}" for s in rows], fontsize=8)
        ax.set_title(title, fontsize=10)
        if rows:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return figure_png(fig)


def summary_files(run_dirs, labels=None, resamples=1000):
    """(summary, {file name: contents}): table5_summary.md / .csv and table5_diff.png."""
    summary = summarize(run_dirs, labels, resamples)
    files = {
        "table5_summary.md": to_markdown(summary, resamples),
        "table5_summary.csv": to_csv(summary),
        "table5_diff.png": chart_png(summary),
    }
    return summary, files


def _csv_ap50(row):
    std = row["AP50_std"]  # empty for one seed
    return _pm(float(row["AP50_mean"]), float(std) if std else None)


def summary_headline(csv_text):
    """One line of what a table5_summary.csv holds, for the end of a study: each backbone's VOC07
    AP50 over seeds, and what else the summary gives."""
    rows = [r for r in csv.DictReader(io.StringIO(csv_text)) if r["AP50_mean"]]
    ap50 = ", ".join(f"{r['method']} {_csv_ap50(r)}" for r in rows)
    return (
        f"VOC07 test AP50, mean ± std over seeds: {ap50 or 'none (no detection run)'}; "
        "with each difference to the Baseline and its 95% interval, Table 4's ImageNet metrics, "
        "and the paper's values"
    )
