"""What a demo run can be (tools/demo.py's choices): the pretraining runs it offers, its sizes,
its stages, and whether Detectron2 is there for the detection stage.

The demo pretrains one ResNet-18 per run named in --methods: a METHOD.NAME, or
``<METHOD.NAME>_cutmix`` for the method with CutMix; each has its config in ``CONFIGS``. The
labels come from the method registry (pretrain.methods), as in every table of the project.
"""

import argparse
import importlib.util
import os
import sys

from pretrain.methods import METHODS, method_label

from .tool_step import ROOT

PRETRAIN_CONFIGS = os.path.join(ROOT, "configs", "pretrain")

# Each run the demo offers: its config file in configs/pretrain/. All share
# Base-CPU-synthetic.yaml (ResNet-18).
CONFIGS = {
    "baseline": "cpu_synthetic_R_18_baseline.yaml",
    "ls": "cpu_synthetic_R_18_ls.yaml",
    "cskd": "cpu_synthetic_R_18_cskd.yaml",
    "tfkd": "cpu_synthetic_R_18_tfkd.yaml",
    "pskd": "cpu_synthetic_R_18.yaml",
    "pskd_cutmix": "cpu_synthetic_R_18_pskd_cutmix.yaml",
    "uskd": "cpu_synthetic_R_18_uskd.yaml",
    "lsskd": "cpu_synthetic_R_18_lsskd.yaml",
    "nkd": "cpu_synthetic_R_18_nkd.yaml",
}
DEFAULT_METHODS = "baseline,pskd,pskd_cutmix"

# small: `make demo` (<= 10 min on 2 CPU cores); tiny: the test (about a minute).
SIZES = {
    "small": dict(
        classes=4,
        train_per_class=24,
        val_per_class=8,
        image=64,
        epochs=4,
        lr_steps=(3,),
        voc=(40, 20, 40),
        det_iters=200,
        det_warmup=50,
    ),
    "tiny": dict(
        classes=4,
        train_per_class=8,
        val_per_class=4,
        image=64,
        epochs=2,
        lr_steps=(1,),
        voc=(8, 20, 4),
        det_iters=4,
        det_warmup=1,
    ),
}

STAGES = ("data", "pretrain", "convert", "detection", "report")


def run_method(run):
    """(METHOD.NAME, CutMix) of a run of ``CONFIGS``."""
    return (run[: -len("_cutmix")], True) if run.endswith("_cutmix") else (run, False)


def run_label(run):
    return method_label(*run_method(run))


def taught_by_baseline(run):
    """Whether the run's method needs a teacher: in the demo, the baseline run."""
    return METHODS[run_method(run)[0]].needs_teacher


def parse_methods(text):
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CONFIGS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown}; choose from {', '.join(CONFIGS)}"
        )
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError("a method is listed twice")
    for m in filter(taught_by_baseline, methods):
        if "baseline" not in methods or methods.index("baseline") > methods.index(m):
            raise argparse.ArgumentTypeError(
                f"{m}'s teacher is the baseline: list baseline before {m}"
            )
    return methods


def detectron2_installed():
    return importlib.util.find_spec("detectron2") is not None


def detectron2_missing_reason():
    """Why `make venv` could not build Detectron2 (tools/install_detectron2.sh records it), if
    known."""
    path = os.path.join(sys.prefix, "detectron2-unavailable.txt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.readline().strip()
