"""A run folder (OUTPUT_DIR) belongs to one run.

A fresh run refuses a folder that already holds outputs; ``--resume`` refuses a checkpoint whose
run-defining config keys or training files differ from the current ones, and a run that has
already finished; ``--eval-only`` writes outputs named after the weights it evaluates and
refuses to replace them. Every check runs before the first training step and before anything is
written.
"""

import hashlib
import os

import yaml

from pretrain.config.defaults import get_cfg
from pretrain.metrics import per_image_path
from pretrain.runtime.fileio import OutputWriteError

# Files a failed set-up may leave in a folder that holds no run yet.
SETUP_FILES = ("log.txt",)
# The config a run started with, written when its training starts and kept by a resume.
CONFIG_FILE = "config.yaml"
# Written last by a finished run (after model_final.pth).
FINISHED_MARKER = "eval_final.json"

# Keys that do not change what is trained, with why; every other key defines the run and must
# be the same when it is resumed.
MAY_CHANGE_ON_RESUME = {
    "OUTPUT_DIR": "the run folder may be moved",
    "DATA.ROOT": "the dataset may be moved; its training files (relative paths and labels) are "
    "compared instead",
    "DATALOADER.NUM_WORKERS": "augmentation is seeded per sample, not per worker",
    "LOG_PERIOD": "logging only",
    "SOLVER.CHECKPOINT_PERIOD": "when checkpoints are written",
    "SOLVER.MAX_TO_KEEP": "how many checkpoints are kept",
    "TEST.EVAL_PERIOD": "how often the validation set is evaluated during training",
    "TEST.IMS_PER_BATCH": "evaluation batch size",
    "DIST.TIMEOUT_S": "how long a collective waits",
    "MODEL.WEIGHTS": "read by --eval-only only",
    "MODEL.COMPILE": "speed only (results equal up to float rounding)",
    "MODEL.CHANNELS_LAST": "speed only (results equal up to float rounding)",
}


def _entries(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def check_writable(output_dir):
    """Create ``output_dir`` if needed and check that files can be created in it."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputWriteError(f"OUTPUT_DIR {output_dir!r} is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(
            f"cannot create OUTPUT_DIR {output_dir!r}: {exc.strerror or exc}"
        ) from exc
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise OutputWriteError(f"OUTPUT_DIR {output_dir!r} is not writable")


def check_fresh(output_dir):
    """A run started without --resume needs a folder that holds no other run's outputs."""
    held = [name for name in _entries(output_dir) if name not in SETUP_FILES]
    if held:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise ValueError(
            f"OUTPUT_DIR {output_dir!r} already holds a run ({shown}): add --resume to continue "
            f"that run, or set OUTPUT_DIR to a new or empty folder for a new run"
        )


def check_unfinished(output_dir):
    """--resume of a run whose final outputs are written would only rewrite them."""
    if os.path.isfile(os.path.join(output_dir, FINISHED_MARKER)):
        raise ValueError(
            f"OUTPUT_DIR {output_dir!r} holds a finished run ({FINISHED_MARKER}, model_final.pth): "
            f"nothing to resume; train longer or differently in a new OUTPUT_DIR"
        )


def flatten(node, prefix=""):
    """A nested dict as {dotted key: value}."""
    flat = {}
    for name, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, prefix + name + "."))
        else:
            flat[prefix + name] = value
    return flat


def plain_config(cfg_yaml):
    """A dumped config as a flat {dotted key: value} dict (tuples become lists, as in a dump)."""
    return flatten(yaml.safe_load(cfg_yaml) or {})


def config_differences(saved_yaml, cfg):
    """``[(key, saved value, current value)]`` for every run-defining key that differs. A key
    the saved config lacks (added to the project later) counts as its default."""
    saved = plain_config(get_cfg().dump())
    saved.update(plain_config(saved_yaml))
    current = plain_config(cfg.dump())
    return [
        (key, saved.get(key, "<absent>"), current.get(key, "<absent>"))
        for key in sorted(saved.keys() | current.keys())
        if key not in MAY_CHANGE_ON_RESUME and saved.get(key) != current.get(key)
    ]


def _check_same_config(source, saved_as, saved_yaml, cfg):
    diffs = config_differences(saved_yaml, cfg)
    if diffs:
        listed = "; ".join(
            f"{key}: {old!r} in the {saved_as}, {new!r} now" for key, old, new in diffs
        )
        raise ValueError(
            f"--resume: {source} was written with another config, and these keys define the run: "
            f"{listed}. Resume with the {saved_as}'s values, or start a new run in another "
            f"OUTPUT_DIR (keys that may change on resume: {', '.join(MAY_CHANGE_ON_RESUME)})"
        )


def check_same_run(checkpoint_path, state, cfg, data_fingerprint):
    """Refuse to resume from ``state`` (a loaded checkpoint) unless it was written by this run:
    the same run-defining keys and the same training files."""
    if "config" not in state:
        raise ValueError(
            f"checkpoint {checkpoint_path!r} holds no config: it is not a checkpoint of "
            f"tools/pretrain.py and cannot be resumed"
        )
    _check_same_config(f"checkpoint {checkpoint_path!r}", "checkpoint", state["config"], cfg)
    saved = state.get("trainer", {}).get("data")
    if saved is not None and saved != data_fingerprint:
        raise ValueError(
            f"--resume: checkpoint {checkpoint_path!r} was trained on other data: "
            f"{saved['samples']} training samples then, {data_fingerprint['samples']} now under "
            f"DATA.ROOT {cfg.DATA.ROOT!r} (or the same number with other files or labels); the "
            "prediction table and the sampler are keyed by sample index, so the run cannot "
            "continue"
        )


def started_config(output_dir):
    """The ``config.yaml`` a run wrote when its training started, as text; None if absent."""
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read()


def check_same_started_run(output_dir, saved_yaml, cfg):
    """--resume without a readable checkpoint starts the run over and keeps its ``config.yaml``
    (``saved_yaml``, None if none was written): refuse unless the run-defining keys are the
    ones in it, or the folder would hold a run that its config.yaml mislabels."""
    if saved_yaml is not None:
        _check_same_config(
            f"{os.path.join(output_dir, CONFIG_FILE)!r} (no readable checkpoint: the run would "
            f"start over)",
            CONFIG_FILE,
            saved_yaml,
            cfg,
        )


def dataset_fingerprint(dataset, root):
    """What identifies the training data: the number of samples and a hash of every sample's
    path relative to DATA.ROOT (or, for in-memory data, only the labels) with its label."""
    digest = hashlib.sha256()
    digest.update("\n".join(dataset.classes).encode("utf-8", "surrogateescape"))
    for sample, target in zip(dataset.samples, dataset.targets):
        name = os.path.relpath(sample, root) if isinstance(sample, str) else ""
        digest.update(f"\n{name}\t{target}".encode("utf-8", "surrogateescape"))
    return {"samples": len(dataset.targets), "sha256": digest.hexdigest()}


def eval_only_outputs(output_dir, weights):
    """The files --eval-only writes, named after the weights file, so that they never replace a
    training run's outputs nor an earlier evaluation; refuses if one exists."""
    stem = "eval_only_" + os.path.splitext(os.path.basename(weights))[0]
    outputs = {
        "metrics": stem + ".json",
        "reliability": stem + "_reliability.png",
        "config": stem + "_config.yaml",
    }
    outputs = {kind: os.path.join(output_dir, name) for kind, name in outputs.items()}
    outputs["per_image"] = per_image_path(outputs["metrics"])
    existing = [path for path in outputs.values() if os.path.exists(path)]
    if existing:
        raise ValueError(
            f"--eval-only would replace {existing[0]!r}, written by an earlier evaluation of "
            f"{os.path.basename(weights)!r}: set OUTPUT_DIR to another folder, or move that file "
            "away"
        )
    return outputs
