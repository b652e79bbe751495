#!/usr/bin/env python
"""Fine-tune Faster R-CNN on PASCAL VOC07+12 from a converted backbone; evaluate on VOC07 test.

    python tools/train_net.py --config-file configs/detection/faster_rcnn_R_152_C4_voc0712.yaml \\
        --num-gpus 8 MODEL.WEIGHTS r152_pskd.pkl OUTPUT_DIR output/det_pskd
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS
    output/det_pskd/model_final.pth

VOC is read from DATASETS.VOC_ROOT, else $DETECTRON2_DATASETS, else ./datasets (folders VOC2007/,
VOC2012/). A fresh run (no --resume) or an --eval-only run refuses an OUTPUT_DIR that already
holds a run. Every evaluation writes OUTPUT_DIR/voc_eval.json (AP50, AP, AP75, per-class AP50, the
iteration and checkpoint evaluated). A run resumed with --resume ends, on the CPU, exactly as if it
had not stopped (detection/stream.py, detection/resume.py). Before the first iteration
MODEL.WEIGHTS must initialise every backbone tensor and every split the config names must load;
errors are one `error:` line.
"""

import logging
import os
import sys
from datetime import timedelta

# Python puts this script's folder first on sys.path, where tools/pretrain.py and tools/study.py
# would shadow the packages pretrain and study (installed or not): the checkout's root goes first.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import build_detection_test_loader  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.engine import defaults as d2_defaults  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.events import get_event_storage  # noqa: E402

from detection.checks import (  # noqa: E402
    NamedImageMapper,
    check_backbone_weights,
    check_datasets,
    check_output_dir,
)
from detection.config import check_split_names, setup_detection_cfg  # noqa: E402
from detection.resume import ResumeState  # noqa: E402
from detection.rng import preserved_rng  # noqa: E402
from detection.runs import record_backbone  # noqa: E402
from detection.stream import build_stream_loader  # noqa: E402
from detection.voc import VOCEvaluator, eval_json_path, register_voc  # noqa: E402
from pretrain.cli import EXPECTED_ERRORS, tool  # noqa: E402
from pretrain.runtime.distributed import rank_stopped_message  # noqa: E402


def trained_model(cfg):
    """(iteration, checkpoint file) of the model an evaluation during training sees: the
    iterations done, and the file PeriodicCheckpointer wrote for them (None if none)."""
    # storage.iter is the 0-based iteration in after_step hooks, but already max_iter in the
    # after_train one (the final evaluation): at most MAX_ITER iterations are ever done.
    done = min(get_event_storage().iter + 1, cfg.SOLVER.MAX_ITER)
    if done >= cfg.SOLVER.MAX_ITER:
        name = "model_final.pth"
    elif done % cfg.SOLVER.CHECKPOINT_PERIOD == 0:
        name = f"model_{done - 1:07d}.pth"
    else:
        return done, None
    return done, os.path.abspath(os.path.join(cfg.OUTPUT_DIR, name))


def create_ddp_model(model, **kwargs):
    """Detectron2's, without device_ids for a model on the CPU: it passes [local rank], which
    DistributedDataParallel takes only for a GPU model, so that a CPU run of several processes
    (MODEL.DEVICE cpu, --num-gpus or --num-machines above 1) stopped before its first iteration."""
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


# DefaultTrainer.__init__ looks the function up in its module when it wraps the model; set at
# import, so in every process launch() starts as well.
_d2_create_ddp_model, d2_defaults.create_ddp_model = d2_defaults.create_ddp_model, create_ddp_model


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return VOCEvaluator(
            dataset_name,
            output_file=eval_json_path(cfg, dataset_name),
            weights=cfg.MODEL.WEIGHTS,
            evaluated=lambda: trained_model(cfg),
        )

    @classmethod
    def build_train_loader(cls, cfg):
        return build_stream_loader(cfg, NamedImageMapper(cfg, True))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # An evaluation during training (TEST.EVAL_PERIOD) must not draw from the training's
        # RNGs (its loader's iterator draws a seed from torch's): the checkpoint before it holds
        # them as they were, and a run resumed there would go on from other states.
        with preserved_rng(torch.device(cfg.MODEL.DEVICE)):
            return super().test(cfg, model, evaluators)

    def build_hooks(self):
        # First, so that it gathers the RNG states before PeriodicCheckpointer saves them.
        return [ResumeState(self.cfg, self._trainer.data_loader), *super().build_hooks()]

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=NamedImageMapper(cfg, False))


class DropDivergenceTraceback(logging.Filter):
    """Drops Detectron2's logged traceback of a non-finite loss: main() reports it as one line."""

    def filter(self, record):
        return not (record.exc_info and isinstance(record.exc_info[1], FloatingPointError))


def train(cfg, resume):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    logging.getLogger("detectron2.engine.train_loop").addFilter(DropDivergenceTraceback())
    try:
        return trainer.train()
    except FloatingPointError:
        # Detectron2 stops at the first non-finite loss (on the main process).
        raise FloatingPointError(
            f"training diverged: the loss became Inf/NaN at iteration {trainer.iter} "
            f"(run folder {cfg.OUTPUT_DIR}). Try a lower SOLVER.BASE_LR, a longer "
            "SOLVER.WARMUP_ITERS, or SOLVER.CLIP_GRADIENTS.ENABLED True."
        ) from None


def setup(args):
    cfg, settings = setup_detection_cfg(args.config_file, args.opts)
    check_output_dir(
        cfg.OUTPUT_DIR, args.eval_only, args.resume
    )  # before default_setup writes into it
    default_setup(cfg, args)
    return cfg, settings


@tool  # in every worker process launch() starts: one error line, or one interrupted line
def main(args, dist_timeout_s):
    logger = logging.getLogger("detectron2")
    try:
        return run(args)
    except KeyboardInterrupt:
        # Detectron2 names a checkpoint in last_checkpoint once it is written: that one is whole.
        logger.warning("interrupted; continue with --resume from the last checkpoint")
        raise
    except EXPECTED_ERRORS:  # every rank's own: one error line each
        raise
    except Exception as exc:
        if comm.get_world_size() > 1:  # most often another rank's failure: say so, in log.txt
            logger.error(
                rank_stopped_message(comm.get_rank(), comm.get_world_size(), exc, dist_timeout_s)
            )
        raise


def run(args):
    cfg, settings = setup(args)
    # In every worker process: launch() starts them fresh, and the catalog is per process.
    register_voc(settings.voc_root)
    # A resumed run continues from its own last checkpoint; MODEL.WEIGHTS is then not loaded.
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not resuming:
        check_backbone_weights(cfg, cfg.MODEL.WEIGHTS)
    check_split_names(cfg)  # before any split is loaded: a typo is no KeyError in the loader
    check_datasets(cfg, training=not args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpoint = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        # Detectron2 stores the 0-based index of the last iteration done.
        done = checkpoint["iteration"] + 1 if "iteration" in checkpoint else None
        evaluated = (
            done,
            os.path.abspath(checkpointer.get_checkpoint_file() if resuming else cfg.MODEL.WEIGHTS),
        )
        evaluators = [
            VOCEvaluator(
                name,
                output_file=eval_json_path(cfg, name),
                weights=cfg.MODEL.WEIGHTS,
                evaluated=lambda: evaluated,
            )
            for name in cfg.DATASETS.TEST
        ]
        return Trainer.test(cfg, model, evaluators)
    if comm.is_main_process():
        record_backbone(cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS)  # for tools/report.py
    return train(cfg, args.resume)


@tool  # a bad config stops here, once, before any worker starts
def launch_workers(args):
    # launch() sets the process group's timeout: the config is read before the workers start.
    _, settings = setup_detection_cfg(args.config_file, args.opts)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, settings.dist_timeout_s),
        timeout=timedelta(seconds=settings.dist_timeout_s),
    )


if __name__ == "__main__":
    launch_workers(default_argument_parser().parse_args())
