#!/usr/bin/env python
"""The whole pipeline on generated data, in one command (what `make demo` runs).

    python tools/demo.py [--out demo_output] [--device cpu|cuda] [--size small|tiny]
                         [--methods baseline,pskd,pskd_cutmix] [--skip-detection] [--from STAGE]

Generates a small classification set and a PASCAL VOC layout, pretrains a ResNet-18 per method
on it, gathers the classification metrics and reliability diagrams, converts the backbones to
Detectron2, fine-tunes and evaluates Faster R-CNN (R-18 FPN) with each of them on the generated
VOC data, and writes Table 5 (table5.md / .csv / .png). Every step is one of the project's real
tools run as a subprocess (its full output goes to OUT/logs/); the demo only chains them.
Without Detectron2 the detection steps are skipped and the demo says how to install it and how to
run just the rest (--from detection). Numbers from generated data and minutes of CPU training
say nothing about the methods: the demo shows the pipeline works end to end, nothing more.
"""

import argparse
import os
import sys

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pretrain.cli import tool  # noqa: E402
from study.demo import Demo  # noqa: E402
from study.demo_choices import (  # noqa: E402
    CONFIGS,
    DEFAULT_METHODS,
    SIZES,
    STAGES,
    detectron2_installed,
    parse_methods,
)


@tool
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="MODEL.DEVICE of pretraining and detection (default: cpu)",
    )
    parser.add_argument(
        "--size",
        choices=tuple(SIZES),
        default="small",
        help="small: `make demo`, <= 10 min on 2 CPU cores; tiny: the test's, about a minute",
    )
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=parse_methods(DEFAULT_METHODS),
        help=f"comma-separated pretraining methods (default: {DEFAULT_METHODS}; "
        f"all: {','.join(CONFIGS)})",
    )
    parser.add_argument(
        "--epochs", type=int, default=0, help="pretraining epochs (default: the size's)"
    )
    parser.add_argument(
        "--det-iters", type=int, default=0, help="detection iterations (default: the size's)"
    )
    parser.add_argument(
        "--skip-detection", action="store_true", help="stop before fine-tuning Faster R-CNN"
    )
    parser.add_argument(
        "--from",
        dest="from_stage",
        choices=STAGES,
        help="run from this stage on, reusing the earlier stages' outputs in --out "
        "(e.g. --from detection after installing Detectron2)",
    )
    args = parser.parse_args(argv)
    if args.from_stage == "detection" and not detectron2_installed():
        parser.error(
            "--from detection needs Detectron2, which is not installed: `make venv` builds it "
            "(README, section Install)"
        )
    return Demo(args).main()


if __name__ == "__main__":
    sys.exit(main())
