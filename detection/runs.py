"""What a run folder given to the report is, as one row of Table 5: a detection run's AP and
protocol, the pretraining run its backbone came from (method, ImageNet metrics), and what the
report cannot vouch for (``run_flags``). A pretraining run folder given instead (not fine-tuned
yet) is a row with its ImageNet metrics and no detection columns.

A detection run (tools/train_net.py's OUTPUT_DIR) holds Detectron2's ``config.yaml`` and our
``voc_eval.json``. Its MODEL.WEIGHTS names the converted .pkl, whose ``"__source__"`` entry
(written by tools/convert_to_d2.py) is the pretraining checkpoint; that checkpoint's folder is the
pretraining OUTPUT_DIR with its own ``config.yaml`` (the method) and ``eval_final.json``.
Training also records the link in ``backbone.json`` (``record_backbone``), which a report of an
--eval-only folder (whose MODEL.WEIGHTS is the fine-tuned model) does not have.
Any broken link leaves blanks, never a failure. No Detectron2 import: reports are made anywhere.

A row the report cannot vouch for as a finished result gets ``flags`` (``run_flags``): a
detection run without voc_eval.json, one evaluated at another iteration than its SOLVER.MAX_ITER,
a backbone converted from another pretraining checkpoint than model_final.pth (the ImageNet
metrics of eval_final.json are not that checkpoint's: they are left blank), and a pretraining run
not finished yet. table5.md names them, table5.csv has a ``flags`` column, and the summary over
seeds (study.summary) leaves them out of every number.

"""

import json
import os
import re

import yaml

from detection.convert import read_source
from pretrain.config.types import lookup
from pretrain.methods import METHODS, method_label
from pretrain.metrics import METRIC_KEYS
from pretrain.runtime.fileio import atomic_write_json
from pretrain.runtime.run_folder import FINISHED_MARKER

from .paper import METHOD_ORDER, TABLE5_AP50

LINK_FILE = "backbone.json"
# The pretraining checkpoint that FINISHED_MARKER (eval_final.json) evaluates.
FINAL_CHECKPOINT = "model_final.pth"
# What a fine-tuning run leaves in its OUTPUT_DIR once it has started (Detectron2's files).
DETECTION_RUN_FILES = ("last_checkpoint", "metrics.json", "model_final.pth", "voc_eval.json")

COLUMNS = (
    ["run", "run_kind", "method", "method_from", "arch", "AP50", "paper_AP50", "AP", "AP75"]
    + ["AP50_present_classes", "classes_without_test_objects"]
    + [f"pretrain_{m}" for m in METRIC_KEYS]
    + ["protocol", "max_iter", "eval_iteration", "ims_per_batch", "weights"]
    + ["backbone_checkpoint", "method_settings", "flags"]
)
DETECTION, PRETRAINING = "detection", "pretraining"


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


def is_pretraining_config(cfg):
    """Whether a config.yaml is tools/pretrain.py's (its METHOD section, which no Detectron2
    config has)."""
    return isinstance(cfg.get("METHOD"), dict)


def protocol(det_cfg):
    """How a detection run was fine-tuned, from the values in its config.yaml (so overrides
    show): global batch, base lr, iterations and lr steps, train / test short side in px. None
    for a pretraining config: its solver is no fine-tuning protocol."""
    if is_pretraining_config(det_cfg):
        return None
    batch, lr, iters = (
        lookup(det_cfg, k) for k in ("SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.MAX_ITER")
    )
    if None in (batch, lr, iters):
        return None
    text = f"batch {batch}, lr {lr:g}, {iters:,} it"
    steps = lookup(det_cfg, "SOLVER.STEPS")
    if steps:
        text += " (x{:g} at {})".format(
            lookup(det_cfg, "SOLVER.GAMMA", 0.1), ", ".join(f"{s:,}" for s in steps)
        )
    train, test = lookup(det_cfg, "INPUT.MIN_SIZE_TRAIN"), lookup(det_cfg, "INPUT.MIN_SIZE_TEST")
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


def _is_pretraining_run(run_dir, cfg):
    """A tools/pretrain.py OUTPUT_DIR, finished (eval_final.json) or not (its config.yaml), with
    no VOC evaluation of its own."""
    if os.path.isfile(os.path.join(run_dir, "voc_eval.json")):
        return False
    return os.path.isfile(os.path.join(run_dir, FINISHED_MARKER)) or is_pretraining_config(cfg)


def _read_pretraining(row, pre_dir, checkpoint=FINAL_CHECKPOINT):
    """Fill the pretraining columns from ``pre_dir`` when ``checkpoint`` (the file converted) is
    the one its eval_final.json evaluated; return its config (empty if absent)."""
    metrics_path = os.path.join(pre_dir, FINISHED_MARKER)
    if checkpoint == FINAL_CHECKPOINT and os.path.isfile(metrics_path):
        metrics = _read_json(metrics_path)
        row.update({f"pretrain_{m}": metrics.get(m) for m in METRIC_KEYS})
    cfg_path = os.path.join(pre_dir, "config.yaml")
    return _read_yaml(cfg_path) if os.path.isfile(cfg_path) else {}


def _evaluated_iteration(result):
    """(known, iteration) of the model a voc_eval.json evaluated: evaluations written before the
    file recorded it say nothing (known False); a recorded None is an unknown iteration."""
    return "iteration" in result, result.get("iteration")


def run_flags(row, run_dir, result, det_cfg):
    """Why the report cannot vouch for ``row`` as a finished result (empty: it can). ``result``:
    the run's voc_eval.json (None if absent); ``det_cfg``: its config.yaml."""
    flags = []
    if row["run_kind"] == PRETRAINING:
        if not os.path.isfile(os.path.join(run_dir, FINISHED_MARKER)):
            flags.append(
                f"pretraining not finished (no {FINISHED_MARKER}): no ImageNet metrics, and no "
                "detection run"
            )
        return flags
    if result is None:
        flags.append(
            "no voc_eval.json (training unfinished, or stopped before its evaluation): continue "
            "it with tools/train_net.py --resume (same config and OUTPUT_DIR), which evaluates "
            "the final model"
        )
    else:
        known, iteration = _evaluated_iteration(result)
        max_iter = lookup(det_cfg, "SOLVER.MAX_ITER")
        if known and iteration is None:
            flags.append(
                "voc_eval.json does not record the iteration of the model it evaluated "
                f"({result.get('checkpoint') or result.get('weights') or 'weights unknown'}): "
                "not known to be trained to SOLVER.MAX_ITER"
            )
        elif known and max_iter is not None and iteration < max_iter:
            flags.append(
                f"evaluated at iteration {iteration:,} of {max_iter:,} (SOLVER.MAX_ITER): not "
                "the full schedule"
            )
        elif known and max_iter is not None and iteration > max_iter:
            flags.append(
                f"evaluated a model of iteration {iteration:,}, but config.yaml's "
                f"SOLVER.MAX_ITER is {max_iter:,}: the Fine-tuning column does not describe it"
            )
    source = row["backbone_checkpoint"]
    if source and os.path.basename(source) != FINAL_CHECKPOINT:
        flags.append(
            f"backbone from checkpoint {os.path.basename(source)}, not {FINAL_CHECKPOINT}: "
            "ImageNet metrics are the final model's, not shown"
        )
    return flags


def method_settings(pre_cfg):
    """The pretraining method's own hyperparameters as its run used them (the keys the method
    declares), e.g. ``TFKD.ALPHA 0.31, TFKD.TEMPERATURE 20, TFKD.KL_REDUCTION batchmean``: what a
    study's search chose shows here. None for a method without keys, or no pretraining config."""
    method = METHODS.get(str(lookup(pre_cfg, "METHOD.NAME")).lower())
    keys = [*method.config_ranges, *method.config_choices] if method else []
    values = [(key, lookup(pre_cfg, key)) for key in keys]
    text = ", ".join(
        f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
        for key, value in values
        if value is not None
    )
    return text or None


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
    cfg = _read_yaml(cfg_path) if os.path.isfile(cfg_path) else {}
    result = None
    if _is_pretraining_run(run_dir, cfg):
        # Its solver is pretraining's: no detection column is read from it.
        row["run_kind"], det_cfg = PRETRAINING, {}
        final = os.path.join(run_dir, FINAL_CHECKPOINT)
        row["backbone_checkpoint"] = os.path.abspath(final) if os.path.isfile(final) else None
        pre_cfg = _read_pretraining(row, run_dir)
    else:
        row["run_kind"], det_cfg = DETECTION, cfg
        row["protocol"] = protocol(det_cfg)
        row["max_iter"] = lookup(det_cfg, "SOLVER.MAX_ITER")
        row["ims_per_batch"] = lookup(det_cfg, "SOLVER.IMS_PER_BATCH")
        if os.path.isfile(eval_path):
            result = _read_json(eval_path)
            row.update({k: result.get(k) for k in ("AP50", "AP", "AP75", "AP50_present_classes")})
            # Absent from evaluations written before the key existed: unknown, not "none".
            row["classes_without_test_objects"] = result.get("classes_without_test_objects")
            row["eval_iteration"] = result.get("iteration")
        weights = lookup(det_cfg, "MODEL.WEIGHTS") or ""
        row["weights"] = weights or None
        source = _pretrain_checkpoint(weights, run_dir)
        if not source and os.path.isfile(os.path.join(run_dir, LINK_FILE)):
            source = _read_json(os.path.join(run_dir, LINK_FILE)).get("pretrain_checkpoint")
        row["backbone_checkpoint"] = source
        pre_cfg = (
            _read_pretraining(row, os.path.dirname(source), os.path.basename(source))
            if source
            else {}
        )
    row["arch"] = lookup(pre_cfg, "MODEL.ARCH") or (
        f"resnet{lookup(det_cfg, 'MODEL.RESNETS.DEPTH')}"
        if lookup(det_cfg, "MODEL.RESNETS.DEPTH")
        else None
    )

    method = lookup(pre_cfg, "METHOD.NAME")
    if label:
        row["method"], row["method_from"] = label, "--label"
    elif method:
        row["method"] = method_label(method, bool(lookup(pre_cfg, "AUG.CUTMIX.ENABLED", False)))
        row["method_from"] = "pretraining config"
    else:
        row["method"] = label_from_dirname(run_dir)
        row["method_from"] = "run folder name" if row["method"] else None
    row["method_settings"] = method_settings(pre_cfg)
    row["paper_AP50"] = TABLE5_AP50.get(row["method"])
    row["flags"] = run_flags(row, run_dir, result, det_cfg)
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
