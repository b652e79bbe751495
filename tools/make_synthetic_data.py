#!/usr/bin/env python
"""Write small generated datasets in the real on-disk formats (for tests and the demo).

python tools/make_synthetic_data.py classification OUT_DIR [--classes 4 --train-per-class 24]
python tools/make_synthetic_data.py voc OUT_DIR [--trainval07 40 --test07 20 --trainval12 40]
"""

import argparse
import os
import sys

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detection.synthetic_voc import MIN_SIZE, MIN_TEST07, write_voc  # noqa: E402
from pretrain.cli import tool  # noqa: E402
from pretrain.data.synthetic import write_imagefolder  # noqa: E402


@tool
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    cls = sub.add_parser("classification", help="an ImageFolder tree with train/ and val/")
    cls.add_argument("out")
    cls.add_argument("--classes", type=int, default=4)
    cls.add_argument("--train-per-class", type=int, default=24)
    cls.add_argument("--val-per-class", type=int, default=8)
    cls.add_argument("--size", type=int, default=64)
    cls.add_argument("--seed", type=int, default=0)
    voc = sub.add_parser("voc", help="a PASCAL VOC2007 + VOC2012 tree (use as DETECTRON2_DATASETS)")
    voc.add_argument("out")
    voc.add_argument("--trainval07", type=int, default=40)
    voc.add_argument(
        "--test07",
        type=int,
        default=20,
        help=f"{MIN_TEST07} or more; every class is in the test set whatever the size",
    )
    voc.add_argument("--trainval12", type=int, default=40)
    voc.add_argument(
        "--size", type=int, default=128, help=f"largest image side ({MIN_SIZE} or more)"
    )
    voc.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "classification":
        write_imagefolder(
            args.out, args.classes, args.train_per_class, args.val_per_class, args.size, args.seed
        )
        print(f"wrote an ImageFolder tree with {args.classes} classes to {args.out}")
    elif args.kind == "voc":
        write_voc(args.out, args.trainval07, args.test07, args.trainval12, args.size, args.seed)
        print(f"wrote VOC2007 (trainval, test) and VOC2012 (trainval) to {args.out}")


if __name__ == "__main__":
    main()
