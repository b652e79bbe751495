"""Table 5 from run folders: one row per run (``detection.runs``), the paper's value beside it,
as table5.md, table5.csv and table5.png; flagged runs (``detection.runs.run_flags``) are named
under the table. No Detectron2 import: reports are made anywhere.
"""

import csv
import io

from pretrain.runtime.fileio import figure_png

from .paper import TABLE5_AP50
from .runs import COLUMNS, DETECTION, PRETRAINING, collect


def _fmt(value, digits=2):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(rows):
    header = [
        "Method",
        "Run",
        "Arch",
        "AP50 (ours)",
        "AP50 (paper)",
        "AP",
        "AP75",
        "Pretrain top-1 err",
        "Pretrain ECE",
        "Fine-tuning",
    ]
    lines = [
        "# Table 5: Faster R-CNN on PASCAL VOC07 test",
        "",
        "VOC07 11-point mAP at IoU > 0.5 (AP50), in percent; AP averages IoU 0.50:0.95. Paper "
        "values:",
        "PS-KD (ICCV 2021) Table 5, ResNet-152 backbone fine-tuned on VOC07+12 trainval with batch "
        "1,",
        "lr 0.001 for 10 epochs (configs/detection/faster_rcnn_R_152_C4_voc0712_paper.yaml follows "
        "that",
        'protocol). "Fine-tuning" is each run\'s own, read from its config.yaml.',
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 4) + ["---"]) + "|",
    ]
    for r in rows:
        cells = [
            r["method"] or "?",
            r["run"] + (" (flagged)" if r["flags"] else ""),
            r["arch"] or "",
            _fmt(r["AP50"]),
            _fmt(r["paper_AP50"]),
            _fmt(r["AP"]),
            _fmt(r["AP75"]),
            _fmt(r["pretrain_top1_err"]),
            _fmt(r["pretrain_ece"]),
            r["protocol"] or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    settled = [r for r in rows if r["method_settings"]]
    if settled:
        lines += ["", "Method settings (each pretraining run's own keys; a study's search winner):"]
        lines += [f"- {r['run']}: {r['method_settings']}." for r in settled]
    flagged = [r for r in rows if r["flags"]]
    if flagged:
        lines += [
            "",
            "Flagged runs: not finished results, so table5_summary.md leaves them out of every "
            "number:",
        ]
        lines += [f"- {r['run']}: {'; '.join(r['flags'])}." for r in flagged]
    missing = [
        r["run"] for r in rows if r["run_kind"] == DETECTION and not r["backbone_checkpoint"]
    ]
    if missing:
        lines += [
            "",
            "No link to the pretraining run (MODEL.WEIGHTS is not a file written by "
            f"tools/convert_to_d2.py, or it moved) for: {', '.join(missing)}.",
        ]
    undetected = [r["run"] for r in rows if r["run_kind"] == PRETRAINING]
    if undetected:
        lines += [
            "",
            f"No VOC evaluation (voc_eval.json) yet for: {', '.join(undetected)}; their AP columns "
            "are empty.",
        ]
    lacking = [r for r in rows if r["classes_without_test_objects"]]
    if lacking:
        lines += [
            "",
            "AP50 is the mean over all classes (as Detectron2 and the paper report it); a class "
            "without a non-difficult test object counts as AP 0 in it:",
        ]
        lines += [
            f"- {r['run']}: no test object of {', '.join(r['classes_without_test_objects'])} "
            f"({len(r['classes_without_test_objects'])} classes); AP50 {_fmt(r['AP50'])}, "
            f"mean over the classes present {_fmt(r['AP50_present_classes'])}."
            for r in lacking
        ]
    protocols = {r["protocol"] for r in rows if r["protocol"]}
    if len(protocols) > 1:
        lines += [
            "",
            "The rows were fine-tuned with different protocols (Fine-tuning column): compare AP "
            "only between rows of the same one.",
        ]
    reference = ", ".join(f"{k} {v:.2f}" for k, v in TABLE5_AP50.items())
    lines += ["", f"Paper, all methods: {reference}.", ""]
    return "\n".join(lines)


def _csv_value(value, column=None):
    if value is None:
        return ""
    if column == "flags":
        return "; ".join(value)
    return " ".join(value) if isinstance(value, list) else value


def to_csv(rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(r[k], k) for k in COLUMNS})
    return buf.getvalue()


def chart_png(rows):
    """Grouped bars, ours vs the paper's AP50 per run, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    names = [
        f"{r['method'] or '?'}\n{r['run']}" + ("\n(flagged)" if r["flags"] else "") for r in rows
    ]
    ours = [r["AP50"] if r["AP50"] is not None else 0.0 for r in rows]
    paper = [r["paper_AP50"] if r["paper_AP50"] is not None else 0.0 for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2.0), 4.5))
    bars_ours = ax.bar([i - 0.2 for i in x], ours, width=0.4, label="ours")
    bars_paper = ax.bar([i + 0.2 for i in x], paper, width=0.4, label="paper (Table 5, R-152)")
    ax.bar_label(bars_ours, labels=[_fmt(r["AP50"]) or "n/a" for r in rows], fontsize=8)
    ax.bar_label(bars_paper, labels=[_fmt(r["paper_AP50"], 2) for r in rows], fontsize=8)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("VOC07 test AP50 (%)")
    ax.set_ylim(0, max(ours + paper + [1.0]) * 1.25)  # headroom for the labels and the legend
    ax.set_title("Faster R-CNN on PASCAL VOC07 test", fontsize=11)
    ax.legend(loc="upper left", ncol=2, fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def report_files(run_dirs, labels=None):
    """(rows, {file name: contents}) of the per-run table: table5.md, table5.csv, table5.png."""
    rows = collect(run_dirs, labels)
    files = {
        "table5.md": to_markdown(rows),
        "table5.csv": to_csv(rows),
        "table5.png": chart_png(rows),
    }
    return rows, files
