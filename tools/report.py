#!/usr/bin/env python
"""Assemble Table 5 (detection AP50 per pretraining method, beside the paper's) from run folders.

    python tools/report.py output/det_baseline output/det_pskd ... --out output/table5 \\
        [--label output/det_pskd="PS-KD"]

Writes table5.md, table5.csv and table5.png (one row per run) into --out. The method comes from
--label, else from the pretraining run the backbone was converted from, else from the run folder's
name. Also writes table5_summary.md / .csv and table5_diff.png: Tables 5 (VOC07 AP50) and 4 (the
ImageNet metrics) over seeds (the runs' SEED), per method the mean and std, the difference to the
Baseline with a 95% interval over seeds and test images, and the paper's values with whether its
one-run difference is in our one-run range (docs/study.md). A run it cannot vouch for as a
finished result is flagged in table5.md / .csv (no voc_eval.json, evaluated before SOLVER.MAX_ITER,
a backbone from another pretraining checkpoint than model_final.pth, a pretraining run not
finished) and left out of the summary's numbers. Needs no Detectron2.
"""

import argparse
import os
import sys

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detection.report import report_files  # noqa: E402
from pretrain.cli import tool  # noqa: E402
from pretrain.runtime.fileio import check_folder_path, write_files_together  # noqa: E402
from study.summary_tables import summary_files  # noqa: E402


@tool
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs",
        nargs="+",
        help="OUTPUT_DIRs of tools/train_net.py (or of tools/pretrain.py: a row without AP)",
    )
    parser.add_argument("--out", required=True, help="folder for table5.md / .csv / .png")
    parser.add_argument(
        "--label", action="append", default=[], metavar="RUN_DIR=NAME", help="method name of a run"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="test-image resamples of the intervals of table5_summary.md (default 1000)",
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 10:
        parser.error(f"--bootstrap {args.bootstrap}: at least 10 resamples")
    seen = set()
    for run in args.runs:
        if os.path.normpath(run) in seen:
            parser.error(f"{run}: given twice (each run counts once in the tables)")
        seen.add(os.path.normpath(run))
    check_folder_path(args.out, "--out")  # before the runs are read
    runs = seen
    labels = {}
    for item in args.label:
        run, sep, name = item.rpartition("=")
        if not sep or os.path.normpath(run) not in runs:
            parser.error(
                f"--label {item!r}: expected RUN_DIR=NAME with RUN_DIR one of the runs given"
            )
        labels[os.path.normpath(run)] = name
    # Every input is read and every file made before anything is written: a bad run leaves the
    # previous report as it was, and the files are replaced together.
    rows, files = report_files(args.runs, labels)
    files.update(summary_files(args.runs, labels, args.bootstrap)[1])
    write_files_together(args.out, files)
    for r in rows:
        ap50 = "n/a" if r["AP50"] is None else f"{r['AP50']:.2f}"
        flag = f" (flagged: {'; '.join(r['flags'])})" if r["flags"] else ""
        print(f"{r['method'] or '?':<16} {r['run']:<30} AP50 {ap50}{flag}")
    print(f"wrote {', '.join(files)} to {args.out}")


if __name__ == "__main__":
    main()
