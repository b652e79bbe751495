#!/usr/bin/env python
"""Fine-tune Faster R-CNN on PASCAL VOC07+12 from a converted backbone; evaluate on VOC07 test.

    python tools/train_net.py --config-file configs/detection/faster_rcnn_R_152_C4_voc0712.yaml \\
        --num-gpus 8 MODEL.WEIGHTS r152_pskd.pkl OUTPUT_DIR output/det_pskd
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/det_pskd/model_final.pth

VOC is read from DATASETS.VOC_ROOT, else $DETECTRON2_DATASETS, else ./datasets (folders VOC2007/,
VOC2012/). Every evaluation writes OUTPUT_DIR/voc_eval.json (AP50, AP, AP75, per-class AP50).
"""

import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from detection.config import add_pskd_detection_config, voc_root  # noqa: E402
from detection.report import record_backbone  # noqa: E402
from detection.voc import VOCEvaluator, eval_json_path, register_voc  # noqa: E402


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return VOCEvaluator(dataset_name, output_file=eval_json_path(cfg, dataset_name), weights=cfg.MODEL.WEIGHTS)


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
        sys.exit(f"error: training diverged: the loss became Inf/NaN at iteration {trainer.iter} "
                 f"(run folder {cfg.OUTPUT_DIR}). Try a lower SOLVER.BASE_LR, a longer "
                 "SOLVER.WARMUP_ITERS, or SOLVER.CLIP_GRADIENTS.ENABLED True.")


def setup(args):
    cfg = get_cfg()
    add_pskd_detection_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if not cfg.MODEL.WEIGHTS:
        # Detectron2 would silently start from random weights, which is no transfer experiment.
        sys.exit("error: set MODEL.WEIGHTS (a .pkl from tools/convert_to_d2.py, or a trained model_final.pth)")
    # In every worker process: launch() starts them fresh, and the catalog is per process.
    register_voc(voc_root(cfg))
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    if comm.is_main_process():
        record_backbone(cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS)  # for tools/report.py
    return train(cfg, args.resume)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
