#!/usr/bin/env python
"""Run a study: every backbone x seed from pretraining to Table 5, resumable, locally or on Slurm.

    python tools/study.py --config-file configs/study/table5_R_152.yaml [--executor local|slurm]
                          [--dry-run] [--status] [--resume] [--console] [--device cpu|cuda]

The study file (docs/study.md) names the backbones, seeds, data, detection config, resources and
output root. Stages: pretrain(backbone, seed) -> convert -> detect -> report, each one of the
project's tools run as a subprocess; a teacher-based method (TF-KD) pretrains after its
teacher of the same seed. Running the same command again runs only what is not done (checked by
the outputs); --resume continues interrupted stages from their last checkpoint. --console (the
default when stdout is a terminal) streams each local stage's output with a header and its
duration; the log keeps all of it either way.
"""

import argparse
import os
import signal
import sys

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from pretrain.cli import tool  # noqa: E402
from study.local import StageInterrupted, run_local  # noqa: E402
from study.plan import Plan  # noqa: E402
from study.spec import load_study, on_device  # noqa: E402
from study.stage_configs import check_stage_configs  # noqa: E402
from study.state import log_path, print_plan, print_status  # noqa: E402


@tool
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="study file (configs/study/*.yaml)"
    )
    parser.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: stages one after another here; slurm: one job per stage (submitit)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the exact commands; run nothing"
    )
    parser.add_argument(
        "--status", action="store_true", help="print every stage's state; run nothing"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted pretraining/detection stages from their last checkpoint",
    )
    parser.add_argument(
        "--console",
        action=argparse.BooleanOptionalAction,
        help="stream each stage's output here, with a header and its duration (local executor; "
        "default: when stdout is a terminal)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="MODEL.DEVICE of every pretraining and detection stage, into <output_root>-<device> "
        "(default: the configs' own)",
    )
    args = parser.parse_args(argv)
    if args.console and args.executor == "slurm":
        parser.error("--console streams the stages run here: it goes with --executor local")
    runs_here = args.executor == "local" and not (args.dry_run or args.status)
    if args.device == "cuda" and runs_here and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here: use --device cpu")
    study = load_study(args.config_file)
    if args.device:
        study = on_device(study, args.device)
    plan = Plan(study)
    if args.status:
        print_status(plan)
        return 0
    if not args.dry_run:
        plan.sample_trials()  # a search's trials get their values once, recorded (study.search)
    # Every stage's config as its tool will assemble it, before anything runs or is submitted.
    note = check_stage_configs(plan)
    if args.dry_run:
        print_plan(plan)
        if note:
            print(f"\n{note}")
        return 0
    try:
        if args.executor == "slurm":
            from study.slurm import submit_slurm

            return submit_slurm(plan, resume=args.resume)
        console = sys.stdout.isatty() if args.console is None else args.console
        return run_local(plan, resume=args.resume, console=console)
    except StageInterrupted as exc:
        print(
            f"stopped by {exc.signal_name}: {exc.stage.id} was interrupted (log "
            f"{log_path(plan, exc.stage)}); continue with: python tools/study.py --config-file "
            f"{args.config_file}{f' --device {args.device}' if args.device else ''} --resume",
            file=sys.stderr,
        )
        return 128 + signal.Signals[exc.signal_name].value
    except KeyboardInterrupt:  # between stages: nothing was running
        print("stopped between stages; rerun the same command to go on", file=sys.stderr)
        raise
    except RuntimeError as exc:  # a stage failed, or another tools/study.py holds the root
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
