"""What a training run reports as it goes: the log (stdout, and OUTPUT_DIR/log.txt on rank 0),
and on rank 0 the same numbers in metrics.json (one JSON object a line) and TensorBoard."""

import datetime
import json
import logging
import os
import sys

import torch

from pretrain.metrics import METRIC_KEYS
from pretrain.runtime.fileio import atomic_write_text

logger = logging.getLogger("pretrain")


class _PrintableFormatter(logging.Formatter):
    """Escapes what UTF-8 cannot encode (a file name that is not UTF-8 arrives as lone
    surrogates), so that such a line is logged instead of failing in the handler."""

    def format(self, record):
        return super().format(record).encode("utf-8", "backslashreplace").decode("utf-8")


class _LogFile(logging.FileHandler):
    """log.txt; a failed write (a full disk) is not reported again by a traceback on stderr: the
    error itself stops the run with its own message."""

    def handleError(self, record):
        pass


def setup_logging(output_dir, rank):
    """Rank 0 logs INFO to stdout and OUTPUT_DIR/log.txt; other ranks log warnings only."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = _PrintableFormatter(f"[%(asctime)s r{rank}] %(message)s", datefmt="%m/%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file = _LogFile(os.path.join(output_dir, "log.txt"), encoding="utf-8")
        file.setFormatter(fmt)
        root.addHandler(file)


def format_metrics(metrics):
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in METRIC_KEYS)


class MetricsWriter:
    """metrics.json (one JSON object a line) and TensorBoard scalars; rank 0 only.

    A resumed run first drops the lines logged after its checkpoint, so every iteration is
    reported once; a run started from scratch starts a new file.
    """

    def __init__(self, output_dir, keep_until_iteration=None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = os.path.join(output_dir, "metrics.json")
        kept = []
        if keep_until_iteration is not None and os.path.isfile(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    if record.get("iteration", 0) <= keep_until_iteration:
                        kept.append(json.dumps(record) + "\n")
        atomic_write_text(self.path, "".join(kept))
        self.tb = SummaryWriter(output_dir, purge_step=keep_until_iteration)

    def write(self, iteration, **scalars):
        record = {"iteration": iteration, **scalars}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, iteration)
        self.tb.flush()

    def close(self):
        self.tb.close()


class TrainingEvents:
    """The lines of one training run: its set-up, each logging window, each evaluation; with a
    ``MetricsWriter`` (rank 0, once ``open``ed) the same numbers go to metrics.json too."""

    def __init__(self, cfg, device, iters_per_epoch):
        self.cfg, self.device, self.iters_per_epoch = cfg, device, iters_per_epoch
        self.total_iters = cfg.SOLVER.EPOCHS * iters_per_epoch
        self.writer = None

    def open(self, keep_until_iteration):
        """Start metrics.json; a resumed run keeps its lines up to ``keep_until_iteration``."""
        self.writer = MetricsWriter(self.cfg.OUTPUT_DIR, keep_until_iteration)

    def close(self):
        if self.writer:
            self.writer.close()

    def start(self, method, world, batch, train_size, val_size):
        cfg = self.cfg
        logger.info("method: %s", method.describe())
        logger.info(
            "model %s, %d classes, %s x %d process(es), batch %d per process (%d global), "
            "%d epochs x %d iterations, AMP %s, channels_last %s, compile %s",
            cfg.MODEL.ARCH,
            cfg.MODEL.NUM_CLASSES,
            self.device.type,
            world,
            batch,
            cfg.SOLVER.IMS_PER_BATCH,
            cfg.SOLVER.EPOCHS,
            self.iters_per_epoch,
            cfg.SOLVER.AMP.DTYPE if cfg.SOLVER.AMP.ENABLED else "off",
            cfg.MODEL.CHANNELS_LAST,
            cfg.MODEL.COMPILE,
        )
        logger.info(
            "data: %d training images, %d validation images (%s)",
            train_size,
            val_size,
            cfg.DATA.ROOT,
        )

    def train(self, iteration, epoch, step, scalars):
        """A logging window's line and record. ``scalars``: ``loss`` (the total), ``lr``, ``time``
        and ``data_time`` (seconds per iteration), the method's loss terms (``loss_*``) and
        whatever else it measures (``Method.log_statistics``); a new name needs no change here."""
        sec_per_iter = scalars["time"]
        eta = datetime.timedelta(seconds=int(sec_per_iter * (self.total_iters - iteration)))
        scalars = dict(scalars, img_per_s=self.cfg.SOLVER.IMS_PER_BATCH / sec_per_iter)
        terms = {k: v for k, v in scalars.items() if k.startswith("loss_")}
        known = {"loss", "lr", "time", "data_time", "img_per_s", *terms}
        mem = (
            f"  max_mem {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f}M"
            if self.device.type == "cuda"
            else ""
        )
        logger.info(
            "eta %s  epoch %d/%d  iter %d/%d  loss %.4f (%s)  lr %.5g  %.3f s/it  data %.3f s/it  "
            "%.0f img/s%s%s",
            eta,
            epoch + 1,
            self.cfg.SOLVER.EPOCHS,
            step,
            self.iters_per_epoch,
            scalars["loss"],
            # The terms without their common prefix: "loss 2.3456 (ce 2.1000  kd 0.2456)".
            "  ".join(f"{k[len('loss_') :]} {v:.4f}" for k, v in terms.items()),
            scalars["lr"],
            sec_per_iter,
            scalars["data_time"],
            scalars["img_per_s"],
            mem,
            "".join(f"  {k} {v:.4g}" for k, v in scalars.items() if k not in known),
        )
        if self.writer:
            self.writer.write(iteration, epoch=epoch, **scalars)

    def evaluation(self, iteration, epoch, metrics):
        logger.info("eval after epoch %d: %s", epoch + 1, format_metrics(metrics))
        if self.writer:
            self.writer.write(iteration, epoch=epoch, **{f"val/{k}": v for k, v in metrics.items()})
