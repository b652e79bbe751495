#!/usr/bin/env python
"""Convert a pretrained torchvision ResNet checkpoint to Detectron2's backbone weight format.

    python tools/convert_to_d2.py OUTPUT_DIR/model_final.pth r152_pskd.pkl [--verify]

Takes our final or periodic checkpoints, plain torchvision state dicts and dicts wrapping one
("model", "state_dict"), with or without module./_orig_mod./model. prefixes;
ResNet-18/34/50/101/152. The classifier is dropped. The output records the input's absolute path
("__source__") so that tools/report.py can find the pretraining run. --verify (needs Detectron2)
loads the file into Detectron2's ResNet and checks that every backbone weight was used.
"""

import argparse
import os
import sys

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detection.convert import DEPTHS, convert  # noqa: E402
from pretrain.cli import tool  # noqa: E402


@tool
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="checkpoint (.pth) or torchvision state dict")
    parser.add_argument("output", help="Detectron2 weight file to write (.pkl)")
    parser.add_argument(
        "--verify", action="store_true", help="load the result into Detectron2's ResNet"
    )
    args = parser.parse_args(argv)
    arch = convert(args.input, args.output)
    print(f"converted {arch} from {args.input} to {args.output}")
    if args.verify:
        from detection.verify import verify_d2_weights

        print(verify_d2_weights(args.output, DEPTHS[arch]))  # a ValueError names what did not load


if __name__ == "__main__":
    main()
