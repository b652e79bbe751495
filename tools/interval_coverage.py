#!/usr/bin/env python
"""How well the study's intervals work, and how many seeds a difference needs, by simulation
(study/simulate.py; docs/study.md has the tables this prints).

    python tools/interval_coverage.py coverage [--images 1000] [--replicates 400]
    python tools/interval_coverage.py power [--seeds 3 5 10] [--sd-seed 0.3 0.5 0.8]
                                            [--se-images 0.15 0.3]

coverage: simulated studies with a known truth (two backbones, null and an effect, seed- and
image-dominated noise, 3 and 5 seeds) through the study's own scoring and intervals; per cell
the share of 95% intervals that hold the truth, their median half-width against the ideal one,
and how often the effect is detected. power: the smallest difference detected in 80% of studies,
for the spread of the per-seed differences (--sd-seed, their sample sd: sqrt(S * v_seed) of a
report's CSV) and the test-image term (--se-images: sqrt(v_img)).
"""

import argparse
import itertools
import os
import sys

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from pretrain.cli import tool  # noqa: E402
from study.simulate import (  # noqa: E402
    IMAGE_DOMINATED,
    SEED_DOMINATED,
    ap50_truth,
    coverage,
    detectable_effect,
    top1_truth,
)

EFFECT = 0.15


def print_coverage(args):
    print(f"{args.images} test images, {args.replicates} studies a cell, 200 resamples each\n")
    print("| metric | effect | noise | seeds | truth | coverage | median half / ideal | detected |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    cells = itertools.product(args.metric, (0.0, EFFECT), (SEED_DOMINATED, IMAGE_DOMINATED), (3, 5))
    for k, (metric, effect, noise, seeds) in enumerate(cells):
        if metric == "AP50":
            truth = ap50_truth(args.images, effect, noise)[0] if effect else 0.0
        else:
            truth = top1_truth(effect, noise)
        out = coverage(metric, truth, args.images, seeds, effect, noise, args.replicates, seed=k)
        name = "seed-dominated" if noise is SEED_DOMINATED else "image-dominated"
        print(
            f"| {metric} | {'yes' if effect else 'none'} | {name} | {seeds} | {truth:+.2f} | "
            f"{out['coverage']:.1%} | {out['median_half']:.2f} / {out['ideal_half']:.2f} = "
            f"{out['median_half'] / out['ideal_half']:.2f} | {out['detected']:.0%} |",
            flush=True,
        )


def print_power(args):
    print("| sd of d_s | image term (se) | " + " | ".join(f"S = {s}" for s in args.seeds) + " |")
    print("|---:|---:|" + "---:|" * len(args.seeds))
    for sd_seed, se_images in itertools.product(args.sd_seed, args.se_images):
        effects = [detectable_effect(s, sd_seed, se_images) for s in args.seeds]
        print(
            f"| {sd_seed:.2f} | {se_images:.2f} | "
            + " | ".join(f"{e:.2f}" for e in effects)
            + " |",
            flush=True,
        )


@tool
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cov = sub.add_parser("coverage", help="coverage and width of the intervals")
    cov.add_argument("--images", type=int, default=1000)
    cov.add_argument("--replicates", type=int, default=400)
    cov.add_argument("--metric", nargs="+", default=["AP50", "top1_err"])
    power = sub.add_parser("power", help="the difference detected in 80%% of studies")
    power.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    power.add_argument("--sd-seed", type=float, nargs="+", default=[0.3, 0.5, 0.8])
    power.add_argument("--se-images", type=float, nargs="+", default=[0.15, 0.3])
    args = parser.parse_args(argv)
    if any(s < 2 for s in getattr(args, "seeds", [2])):
        parser.error("--seeds: at least 2 (one seed has no seed term to test against)")
    torch.set_num_threads(1)  # many small tensors: threads cost more than they give
    print_coverage(args) if args.command == "coverage" else print_power(args)


if __name__ == "__main__":
    main()
