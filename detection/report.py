"""Table 5 from detection run folders: one row per run, the paper's value beside it. A
pretraining run folder given instead (not fine-tuned yet) gets a row with its ImageNet metrics
and empty detection columns.

A detection run (tools/train_net.py's OUTPUT_DIR) holds Detectron2's ``config.yaml`` and our
``voc_eval.json``. Its MODEL.WEIGHTS names the converted .pkl, whose ``"__source__"`` entry
(written by tools/convert_to_d2.py) is the pretraining checkpoint; that checkpoint's folder is the
pretraining OUTPUT_DIR with its own ``config.yaml`` (the method) and ``eval_final.json``.
Training also records the link in ``backbone.json`` (``record_backbone``), which a report of an
--eval-only folder (whose MODEL.WEIGHTS is the fine-tuned model) does not have.
Any broken link leaves blanks, never a failure. No Detectron2 import: reports are made anywhere.
"""

import csv
import io
import json
import os
import re

import yaml

from detection.convert import read_source
from pretrain.fileio import atomic_write_json, figure_png
from pretrain.methods import METHODS, method_label
from pretrain.metrics import METRIC_KEYS

from .paper import METHOD_ORDER, TABLE5_AP50

LINK_FILE = "backbone.json"
# What a fine-tuning run leaves in its OUTPUT_DIR once it has started (Detectron2's files).
DETECTION_RUN_FILES = ("last_checkpoint", "metrics.json", "model_final.pth", "voc_eval.json")

COLUMNS = (
    ["run", "method", "method_from", "arch", "AP50", "paper_AP50", "AP", "AP75"]
    + ["AP50_present_classes", "classes_without_test_objects"]
    + [f"pretrain_{m}" for m in METRIC_KEYS]
    + ["protocol", "max_iter", "ims_per_batch", "weights", "backbone_checkpoint"]
)


def label_from_dirname(path):
    """Guess the method from a folder name such as ``det_pskd_cutmix`` or ``voc-PS-KD``."""
    tokens = [
        t for t in re.split(r"[^a-z0-9]+", os.path.basename(os.path.normpath(path)).lower()) if t
    ]
    # "ps-kd" splits into "ps", "kd": also try neighbouring pairs joined.
    candidates = tokens + [a + b for a, b in zip(tokens, tokens[1:])]
    method = next((c for c in candidates if c in METHODS), None)
    return method_label(method, "cutmix" in candidates) if method else None


def _read_yaml(path):
    with open(path) as f:
        data = yaml.safe_load(f)
    return data if isinstance(data, dict) else {}


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _get(cfg, dotted, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _resolve(path, run_dir):
    """A weights path as the run saw it: absolute, relative to where it ran, or to the run."""
    if not path or "://" in path:
        return None
    for candidate in (path, os.path.join(run_dir, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def _sizes(value):
    """INPUT.MIN_SIZE_* as dumped (an int or a list) -> "600" or "480-800"."""
    sizes = value if isinstance(value, (list, tuple)) else [value]
    return f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"


def protocol(det_cfg):
    """How a detection run was fine-tuned, from the values in its config.yaml (so overrides
    show): global batch, base lr, iterations and lr steps, train / test short side in px."""
    batch, lr, iters = (
        _get(det_cfg, k) for k in ("SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.MAX_ITER")
    )
    if None in (batch, lr, iters):
        return None
    text = f"batch {batch}, lr {lr:g}, {iters:,} it"
    steps = _get(det_cfg, "SOLVER.STEPS")
    if steps:
        text += " (x{:g} at {})".format(
            _get(det_cfg, "SOLVER.GAMMA", 0.1), ", ".join(f"{s:,}" for s in steps)
        )
    train, test = _get(det_cfg, "INPUT.MIN_SIZE_TRAIN"), _get(det_cfg, "INPUT.MIN_SIZE_TEST")
    if train is not None and test is not None:
        text += f", train {_sizes(train)} / test {_sizes(test)} px"
    return text


def _pretrain_checkpoint(weights, run_dir):
    pkl = _resolve(weights, run_dir)
    return read_source(pkl) if pkl and pkl.endswith(".pkl") else None


def record_backbone(output_dir, weights):
    """Write ``output_dir/backbone.json`` linking a detection run to its pretraining checkpoint
    (when ``weights`` is a file of tools/convert_to_d2.py); called when training starts."""
    source = _pretrain_checkpoint(weights, output_dir)
    if source:
        atomic_write_json(
            os.path.join(output_dir, LINK_FILE),
            {"weights": _resolve(weights, output_dir), "pretrain_checkpoint": source},
        )
    return source


def _is_pretraining_run(run_dir):
    """A tools/pretrain.py OUTPUT_DIR (eval_final.json, and no VOC evaluation of its own)."""
    return os.path.isfile(os.path.join(run_dir, "eval_final.json")) and not os.path.isfile(
        os.path.join(run_dir, "voc_eval.json")
    )


def _read_pretraining(row, pre_dir):
    """Fill the pretraining columns from ``pre_dir``; return its config (empty if absent)."""
    if os.path.isfile(os.path.join(pre_dir, "eval_final.json")):
        metrics = _read_json(os.path.join(pre_dir, "eval_final.json"))
        row.update({f"pretrain_{m}": metrics.get(m) for m in METRIC_KEYS})
    cfg_path = os.path.join(pre_dir, "config.yaml")
    return _read_yaml(cfg_path) if os.path.isfile(cfg_path) else {}


def read_run(run_dir, label=None):
    """One table row (a dict over COLUMNS, None for unknown values) for a detection run, or for a
    pretraining run not fine-tuned yet (its detection columns blank)."""
    cfg_path = os.path.join(run_dir, "config.yaml")
    eval_path = os.path.join(run_dir, "voc_eval.json")
    if not os.path.isfile(cfg_path) and not os.path.isfile(eval_path):
        raise FileNotFoundError(
            f"{run_dir}: neither config.yaml nor voc_eval.json; not a detection "
            f"or pretraining run folder"
        )
    row = dict.fromkeys(COLUMNS)
    row["run"] = os.path.basename(os.path.normpath(run_dir))
    if _is_pretraining_run(run_dir):
        det_cfg = {}
        final = os.path.join(run_dir, "model_final.pth")
        row["backbone_checkpoint"] = os.path.abspath(final) if os.path.isfile(final) else None
        pre_cfg = _read_pretraining(row, run_dir)
    else:
        det_cfg = _read_yaml(cfg_path) if os.path.isfile(cfg_path) else {}
        row["protocol"] = protocol(det_cfg)
        row["max_iter"] = _get(det_cfg, "SOLVER.MAX_ITER")
        row["ims_per_batch"] = _get(det_cfg, "SOLVER.IMS_PER_BATCH")
        if os.path.isfile(eval_path):
            result = _read_json(eval_path)
            row.update({k: result.get(k) for k in ("AP50", "AP", "AP75", "AP50_present_classes")})
            # Absent from evaluations written before the key existed: unknown, not "none".
            row["classes_without_test_objects"] = result.get("classes_without_test_objects")
        weights = _get(det_cfg, "MODEL.WEIGHTS") or ""
        row["weights"] = weights or None
        source = _pretrain_checkpoint(weights, run_dir)
        if not source and os.path.isfile(os.path.join(run_dir, LINK_FILE)):
            source = _read_json(os.path.join(run_dir, LINK_FILE)).get("pretrain_checkpoint")
        row["backbone_checkpoint"] = source
        pre_cfg = _read_pretraining(row, os.path.dirname(source)) if source else {}
    row["arch"] = _get(pre_cfg, "MODEL.ARCH") or (
        f"resnet{_get(det_cfg, 'MODEL.RESNETS.DEPTH')}"
        if _get(det_cfg, "MODEL.RESNETS.DEPTH")
        else None
    )

    method = _get(pre_cfg, "METHOD.NAME")
    if label:
        row["method"], row["method_from"] = label, "--label"
    elif method:
        row["method"] = method_label(method, bool(_get(pre_cfg, "AUG.CUTMIX.ENABLED", False)))
        row["method_from"] = "pretraining config"
    else:
        row["method"] = label_from_dirname(run_dir)
        row["method_from"] = "run folder name" if row["method"] else None
    row["paper_AP50"] = TABLE5_AP50.get(row["method"])
    return row


def collect(run_dirs, labels=None):
    """Rows for ``run_dirs`` in the paper's method order (other methods after, as given)."""
    labels = labels or {}
    rows = [read_run(d, labels.get(os.path.normpath(d))) for d in run_dirs]
    return sorted(
        rows,
        key=lambda r: (
            METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else len(METHOD_ORDER)
        ),
    )


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
            r["run"],
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
    missing = [r["run"] for r in rows if not r["backbone_checkpoint"]]
    if missing:
        lines += [
            "",
            "No link to the pretraining run (MODEL.WEIGHTS is not a file written by "
            f"tools/convert_to_d2.py, or it moved) for: {', '.join(missing)}.",
        ]
    undetected = [r["run"] for r in rows if r["AP50"] is None]
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


def _csv_value(value):
    if value is None:
        return ""
    return " ".join(value) if isinstance(value, list) else value


def to_csv(rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(r[k]) for k in COLUMNS})
    return buf.getvalue()


def chart_png(rows):
    """Grouped bars, ours vs the paper's AP50 per run, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    names = [f"{r['method'] or '?'}\n{r['run']}" for r in rows]
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
