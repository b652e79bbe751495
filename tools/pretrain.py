#!/usr/bin/env python
"""Pretrain a torchvision ResNet with the method named by METHOD.NAME (PS-KD, baseline, ...).

python tools/pretrain.py --config-file configs/pretrain/imagenet_R_152_pskd.yaml
torchrun --nproc_per_node 8 tools/pretrain.py --config-file ... [--resume] [KEY VALUE ...]
python tools/pretrain.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth
"""

import logging
import os
import sys

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pretrain.cli import EXPECTED_ERRORS, default_argument_parser, error_message, setup_cfg, tool  # noqa: E402
from pretrain.engine.trainer import Trainer  # noqa: E402
from pretrain.runtime import distributed as du  # noqa: E402
from pretrain.runtime.run_folder import check_fresh, check_writable  # noqa: E402

logger = logging.getLogger("pretrain")


@tool
def main(argv=None):
    args = default_argument_parser(__doc__).parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    if args.eval_only and not cfg.MODEL.WEIGHTS:
        raise ValueError("--eval-only needs MODEL.WEIGHTS (a checkpoint or torchvision weights)")
    # Before Trainer: its set-up writes log.txt, and ranks meet first in init_distributed.
    check_writable(cfg.OUTPUT_DIR)
    if not (args.resume or args.eval_only):
        check_fresh(cfg.OUTPUT_DIR)
    trainer = None
    try:
        trainer = Trainer(cfg)  # validates the dataset
        if args.eval_only:
            trainer.evaluate_weights(cfg.MODEL.WEIGHTS)
        else:
            trainer.train(resume=args.resume)
    # Logged here as well as printed by ``tool``: log.txt outlives a cluster job's stderr.
    except KeyboardInterrupt as exc:
        where = f" at iteration {trainer.iteration}" if trainer is not None else ""
        # Checkpoints are written whole or not at all: the last one is intact.
        logger.warning(
            "interrupted (%s)%s; continue with --resume from the last checkpoint",
            exc.args[0] if exc.args else "SIGINT",
            where,
        )
        raise
    except EXPECTED_ERRORS as exc:
        logger.error("stopped: %s", error_message(exc))
        raise
    except Exception as exc:
        if trainer is not None and trainer.world > 1:  # most often another rank's failure: say so
            logger.error(
                du.rank_stopped_message(trainer.rank, trainer.world, exc, cfg.DIST.TIMEOUT_S)
            )
        raise
    finally:
        du.destroy()


if __name__ == "__main__":
    main()
