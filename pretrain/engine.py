"""The training engine: build everything from the config, train with checkpoints and logs,
evaluate, and write the final outputs.

Outputs in OUTPUT_DIR: ``config.yaml``, ``log.txt``, ``metrics.json`` (one JSON object a line),
TensorBoard events, ``model_<iter>.pth`` checkpoints with ``last_checkpoint``, and at the end
``model_final.pth`` (``{"model": torchvision state dict}``), ``eval_final.json`` and
``reliability_final.png``. ``--eval-only`` writes ``eval_only_<weights name>.json``,
``..._reliability.png`` and ``..._config.yaml`` instead (pretrain/run_folder.py).
"""
import datetime
import json
import logging
import os
import random
import sys
import time

import torch
from fvcore.common.param_scheduler import (CompositeParamScheduler, LinearParamScheduler,
                                           MultiStepParamScheduler)

from . import distributed as du
from . import faults
from .checkpoint import load_resume_checkpoint, load_weights, save_checkpoint
from .data import ShardedSampler, build_dataset, build_loader
from .fileio import atomic_torch_save, atomic_write_json, atomic_write_text, remove_stale_temporaries
from .methods import MethodContext, build_method
from .metrics import per_sample_stats, plot_reliability_diagram, summarize
from .models import build_resnet
from .run_folder import check_same_run, check_unfinished, dataset_fingerprint, eval_only_outputs

logger = logging.getLogger("pretrain")

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


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


def build_lr_schedule(cfg, iters_per_epoch):
    """Multiplier of BASE_LR as a function of where in training we are (0 <= where < 1):
    x GAMMA at each epoch of SOLVER.STEPS, after an optional linear warmup."""
    epochs, steps = cfg.SOLVER.EPOCHS, list(cfg.SOLVER.STEPS)
    if steps != sorted(steps) or any(not 0 < s < epochs for s in steps):
        raise ValueError(f"SOLVER.STEPS {steps} must be increasing epochs inside (0, SOLVER.EPOCHS={epochs})")
    total = epochs * iters_per_epoch
    schedule = MultiStepParamScheduler(
        values=[cfg.SOLVER.GAMMA ** i for i in range(len(steps) + 1)],
        num_updates=total, milestones=[s * iters_per_epoch for s in steps])
    warmup = cfg.SOLVER.WARMUP_EPOCHS / epochs
    if warmup <= 0:
        return schedule
    return CompositeParamScheduler(
        [LinearParamScheduler(cfg.SOLVER.WARMUP_FACTOR, 1.0), schedule],
        lengths=[warmup, 1.0 - warmup], interval_scaling=["rescaled", "fixed"])


def configure_cudnn():
    """cuDNN's autotuner, for training and tools/benchmark.py alike: the first forward and
    backward of each input shape time the candidate convolution algorithms and keep the fastest.
    The choice can differ from run to run (timings vary), so on a GPU two runs with the same
    seed are not bit-identical; they are not anyway (atomic adds in some backward kernels, the
    order of NCCL's sums). CPU runs do not use cuDNN."""
    torch.backends.cudnn.benchmark = True


def full_batches_per_epoch(samples_per_rank, batch, dataset_size):
    """Training steps per epoch: the loader drops each epoch's last, partial batch (at most
    ``batch - 1`` samples per process, other ones every epoch since the order is reshuffled), so
    every step has the same shape, which keeps a compiled model on one graph."""
    if samples_per_rank < batch:
        raise ValueError(f"the training set has {dataset_size} samples, {samples_per_rank} per process: fewer "
                         f"than one batch of {batch} per process (lower SOLVER.IMS_PER_BATCH)")
    return samples_per_rank // batch


def train_step(method, module, optimizer, scaler, images, labels, indices, amp_dtype=None):
    """One optimisation step (forward and loss under autocast unless ``amp_dtype`` is None,
    backward, optimizer step); returns the loss, still on the device. tools/benchmark.py times
    this same function."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss, _ = method.training_step(module, images, labels, indices)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


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


class Trainer:
    """Builds the run from ``cfg`` and trains it (``train``) or evaluates it (``evaluate``)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = du.init_distributed(cfg.MODEL.DEVICE, cfg.DIST.TIMEOUT_S)
        configure_cudnn()
        self.rank, self.world = du.get_rank(), du.get_world_size()
        setup_logging(cfg.OUTPUT_DIR, self.rank)
        if cfg.SOLVER.IMS_PER_BATCH % self.world or cfg.TEST.IMS_PER_BATCH % self.world:
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) and TEST.IMS_PER_BATCH "
                             f"({cfg.TEST.IMS_PER_BATCH}) must be multiples of the {self.world} processes")
        self.batch = cfg.SOLVER.IMS_PER_BATCH // self.world
        self.amp_dtype = AMP_DTYPES.get(cfg.SOLVER.AMP.DTYPE)
        if self.amp_dtype is None:
            raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(AMP_DTYPES)}, got {cfg.SOLVER.AMP.DTYPE!r}")
        self.amp = cfg.SOLVER.AMP.ENABLED

        self.train_set = build_dataset(cfg, cfg.DATA.TRAIN_SPLIT, train=True)
        self.val_set = build_dataset(cfg, cfg.DATA.VAL_SPLIT, train=False)
        if self.train_set.classes != self.val_set.classes:
            raise ValueError(f"the class folders of {cfg.DATA.TRAIN_SPLIT!r} and {cfg.DATA.VAL_SPLIT!r} "
                             f"under DATA.ROOT {cfg.DATA.ROOT!r} differ")
        self.data_fingerprint = dataset_fingerprint(self.train_set, cfg.DATA.ROOT)

        torch.manual_seed(cfg.SEED)  # the same initial weights on every rank
        self.model = build_resnet(cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CIFAR_STEM).to(self.device)
        self.memory_format = torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)

        self.method = build_method(MethodContext(
            cfg=cfg, num_classes=cfg.MODEL.NUM_CLASSES, train_labels=self.train_set.targets,
            device=self.device, per_rank_batch=self.batch, epochs=cfg.SOLVER.EPOCHS))
        self.sampler = self.method.build_train_sampler(len(self.train_set), self.rank, self.world, cfg.SEED)
        self.loader_batch = self.method.loader_batch_size(self.batch)
        self.iters_per_epoch = full_batches_per_epoch(len(self.sampler), self.loader_batch, len(self.train_set))
        self.total_iters = cfg.SOLVER.EPOCHS * self.iters_per_epoch
        module = self.method.wrap_model(self.model)
        self.optimizer = torch.optim.SGD(
            module.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.amp and self.amp_dtype == torch.float16 else None)
        if self.world > 1:
            module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.MODEL.COMPILE:
            # Every training batch has the same shape (see full_batches_per_epoch): one graph with
            # static shapes, compiled once, instead of a recompile for a short last batch and
            # dynamic-shape kernels from then on.
            module = torch.compile(module, dynamic=False)
        self.train_module = module
        self.schedule = build_lr_schedule(cfg, self.iters_per_epoch)

        pin = self.device.type == "cuda"
        self.train_loader = build_loader(self.train_set, self.sampler, self.loader_batch,
                                         cfg.DATALOADER.NUM_WORKERS, pin, drop_last=True)
        self.val_loader = build_loader(
            self.val_set, ShardedSampler(len(self.val_set), self.rank, self.world, shuffle=False, pad=False),
            cfg.TEST.IMS_PER_BATCH // self.world, cfg.DATALOADER.NUM_WORKERS, pin)
        # Per-rank RNG streams from here on (e.g. CutMix draws differ between ranks).
        torch.manual_seed(cfg.SEED * 1_000 + 1 + self.rank)
        random.seed(cfg.SEED * 1_000 + 1 + self.rank)

        self.iteration = 0
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.writer = None

    # -- training ---------------------------------------------------------------------------
    def train(self, resume=False):
        cfg = self.cfg
        start_epoch, start_step = 0, 0
        if resume:
            check_unfinished(cfg.OUTPUT_DIR)
            path, state = load_resume_checkpoint(cfg.OUTPUT_DIR)
            if state is None:
                logger.info("no readable checkpoint in %s: starting from scratch", cfg.OUTPUT_DIR)
            else:
                check_same_run(path, state, cfg, self.data_fingerprint)
            du.barrier()  # every rank has checked before rank 0 removes or writes anything
            if self.rank == 0:  # nothing writes yet: any temporary file is a killed write's
                for stale in remove_stale_temporaries(cfg.OUTPUT_DIR):
                    logger.info("removed %s, left by an interrupted write", stale)
            if state is not None:
                start_epoch, start_step = du.on_every_rank(lambda: self.load_state(state), f"resuming from {path}")
                du.check_same_on_every_rank(self.iteration, f"the iteration resumed from {path}")
                logger.info("resumed from %s: epoch %d, step %d of %d, iteration %d",
                            path, start_epoch, start_step, self.iters_per_epoch, self.iteration)
        if self.rank == 0:
            config_path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
            if not os.path.isfile(config_path):  # a resumed run keeps the config it started with
                atomic_write_text(config_path, cfg.dump())
            self.writer = MetricsWriter(cfg.OUTPUT_DIR, self.iteration if resume else None)
        self.log_start()
        for epoch in range(start_epoch, cfg.SOLVER.EPOCHS):
            first = start_step if epoch == start_epoch else 0
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(first * self.loader_batch)
            if first == 0:
                self.method.on_epoch_start(epoch, self.model)
            self.train_one_epoch(epoch, first)
            if (epoch + 1) % cfg.TEST.EVAL_PERIOD == 0 and epoch + 1 < cfg.SOLVER.EPOCHS:
                metrics, _ = self.evaluate()
                self.log_eval(epoch, metrics)
        metrics, stats = self.evaluate()
        self.log_eval(cfg.SOLVER.EPOCHS - 1, metrics)
        self.write_final(metrics, stats)
        if self.writer:
            self.writer.close()
        return metrics

    def train_one_epoch(self, epoch, first_step):
        cfg, device = self.cfg, self.device
        self.train_module.train()
        loss_sum = torch.zeros((), device=device)
        window_start, window_iters, data_time = time.perf_counter(), 0, 0.0
        skipped_in_epoch = []
        loader = iter(self.train_loader)
        for step in range(first_step, self.iters_per_epoch):
            t_data = time.perf_counter()
            images, labels, indices, skipped = next(loader)
            for path in skipped:
                logger.warning("skipped unreadable training image %s", path)
            skipped_in_epoch += skipped
            if images is None:
                raise ValueError(f"every image of a batch was unreadable: {skipped}")
            images = images.to(device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(device, non_blocking=True)
            indices = indices.to(device, non_blocking=True)
            data_time += time.perf_counter() - t_data

            lr = cfg.SOLVER.BASE_LR * self.schedule(self.iteration / self.total_iters)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(self.method, self.train_module, self.optimizer, self.scaler,
                              images, labels, indices, self.amp_dtype if self.amp else None)
            self.iteration += 1
            faults.reached(f"step {self.iteration}")
            window_iters += 1
            # Device-side bookkeeping only: the host looks at these at log/checkpoint time.
            loss = loss.detach()
            self.nonfinite |= ~torch.isfinite(loss)
            loss_sum += loss

            last = step + 1 == self.iters_per_epoch
            if (step + 1) % cfg.LOG_PERIOD == 0 or last:
                self.check_finite()
                seconds = time.perf_counter() - window_start
                self.log_train(epoch, step + 1, lr, du.all_reduce_sum(loss_sum).item() / (window_iters * self.world),
                               seconds / window_iters, data_time / window_iters)
                loss_sum.zero_()
                window_start, window_iters, data_time = time.perf_counter(), 0, 0.0
            if self.iteration % cfg.SOLVER.CHECKPOINT_PERIOD == 0 or last:
                self.save(epoch, step + 1)
        # Every rank's skipped files, in rank 0's log.txt (rank > 0 logs to its stdout only).
        skipped_in_epoch = sorted(p for paths in du.all_gather_object(skipped_in_epoch) for p in paths)
        if skipped_in_epoch:
            logger.warning("epoch %d: skipped %d unreadable training images (DATA.ON_BAD_IMAGE skip): %s",
                           epoch + 1, len(skipped_in_epoch), ", ".join(skipped_in_epoch))

    def check_finite(self, weights=False):
        """Stop on a non-finite loss (on any rank) before anything is logged or saved, so
        ``last_checkpoint`` keeps pointing at the last good checkpoint. Before saving
        (``weights``) the weights are checked too: the step after the last loss may have broken them."""
        flag = self.nonfinite.float()
        if weights:
            finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
            flag = flag + (~finite).float()
        flag = du.all_reduce_sum(flag)
        if flag.item() > 0:
            raise FloatingPointError(
                f"non-finite loss or weights at iteration {self.iteration}: training stopped; the last good "
                f"checkpoint is the one named in {os.path.join(self.cfg.OUTPUT_DIR, 'last_checkpoint')} "
                f"(lower SOLVER.BASE_LR or check the data)")

    # -- checkpoints ------------------------------------------------------------------------
    def rng_state(self):
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, epoch, steps_done):
        self.check_finite(weights=True)
        method_state = self.method.state_dict()  # collective: rank 0 gets the whole state
        rng = [None] * self.world
        if self.world > 1:
            torch.distributed.all_gather_object(rng, self.rng_state())
        else:
            rng = [self.rng_state()]
        if self.rank == 0:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "method": method_state,
                "trainer": {"epoch": epoch, "steps_in_epoch": steps_done, "iteration": self.iteration,
                            "iters_per_epoch": self.iters_per_epoch, "world_size": self.world, "rng": rng,
                            "data": self.data_fingerprint},
                "config": self.cfg.dump(),
            }
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            save_checkpoint(self.cfg.OUTPUT_DIR, self.iteration, state, self.cfg.SOLVER.MAX_TO_KEEP)
        du.barrier()
        faults.reached(f"checkpoint {self.iteration}")

    def load_state(self, state):
        """Restore a checkpoint; returns the (epoch, step) to continue from."""
        trainer = state["trainer"]
        if trainer["iters_per_epoch"] != self.iters_per_epoch and trainer["steps_in_epoch"] not in (0, trainer["iters_per_epoch"]):
            raise ValueError(f"the checkpoint was taken mid-epoch with {trainer['iters_per_epoch']} iterations per "
                             f"epoch, this run has {self.iters_per_epoch}: resume with the same world size and batch")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.iteration = trainer["iteration"]
        if trainer["world_size"] == self.world:
            rng = trainer["rng"][self.rank]
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:
            logger.warning("checkpoint written by %d processes, resuming with %d: RNG streams restart",
                           trainer["world_size"], self.world)
        epoch, step = trainer["epoch"], trainer["steps_in_epoch"]
        if step >= trainer["iters_per_epoch"]:
            epoch, step = epoch + 1, 0
        return epoch, step

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self):
        """Metrics over the whole validation set (sharded over ranks, gathered, identical to one
        process). Returns (metrics dict, per-sample stats in sample order)."""
        # After a training step each rank's BatchNorm buffers hold its own batch's update (DDP
        # broadcasts rank 0's only at the next forward): evaluate, and save, rank 0's model.
        du.broadcast_buffers(self.model)
        was_training = self.model.training
        self.model.eval()
        # Empty to start with: a rank may have no validation sample (a set smaller than the world,
        # or every image of its shard skipped), and then gathers none.
        none = torch.zeros(0, dtype=torch.long, device=self.device)
        stats = [per_sample_stats(torch.zeros(0, self.cfg.MODEL.NUM_CLASSES, device=self.device), none)]
        indices = [none]
        for images, labels, idx, skipped in self.val_loader:
            for path in skipped:
                logger.warning("skipped unreadable validation image %s", path)
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                logits = self.model(images)
            stats.append(per_sample_stats(logits, labels.to(self.device)))
            indices.append(idx.to(self.device))
        self.model.train(was_training)
        stats = du.all_gather_cat(torch.cat(stats)).cpu()
        indices = du.all_gather_cat(torch.cat(indices)).cpu()
        stats = stats[torch.argsort(indices)]
        return summarize(stats), stats

    def evaluate_weights(self, path):
        """--eval-only: evaluate ``path``; write its metrics, reliability diagram and config under
        names of their own (``eval_only_outputs``), never over a training run's outputs."""
        outputs = eval_only_outputs(self.cfg.OUTPUT_DIR, path)
        load_weights(self.model, path, f"MODEL.ARCH {self.cfg.MODEL.ARCH} with MODEL.NUM_CLASSES {self.cfg.MODEL.NUM_CLASSES}")
        logger.info("evaluating %s on %d validation images", path, len(self.val_set))
        metrics, stats = self.evaluate()
        metrics["weights"] = os.path.abspath(path)
        if self.rank == 0:
            self.write_eval(metrics, stats, outputs["metrics"], outputs["reliability"])
            atomic_write_text(outputs["config"], self.cfg.dump())
            logger.info("wrote %s", ", ".join(outputs.values()))
        logger.info("eval: %s", _format_metrics(metrics))
        return metrics

    # -- outputs ----------------------------------------------------------------------------
    def write_eval(self, metrics, stats, metrics_path, reliability_path):
        atomic_write_json(metrics_path, metrics)
        plot_reliability_diagram(stats, reliability_path,
                                 title=self.cfg.METHOD.NAME + (" + CutMix" if self.cfg.AUG.CUTMIX.ENABLED else ""))

    def write_final(self, metrics, stats):
        if self.rank == 0:
            path = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
            atomic_torch_save({"model": self.model.state_dict()}, path)
            metrics = dict(metrics, epochs=self.cfg.SOLVER.EPOCHS, method=self.cfg.METHOD.NAME,
                           arch=self.cfg.MODEL.ARCH)
            self.write_eval(metrics, stats, os.path.join(self.cfg.OUTPUT_DIR, "eval_final.json"),
                            os.path.join(self.cfg.OUTPUT_DIR, "reliability_final.png"))
            logger.info("wrote %s and eval_final.json", path)
        du.barrier()

    def log_start(self):
        cfg = self.cfg
        logger.info("method: %s", self.method.describe())
        logger.info("model %s, %d classes, %s x %d process(es), batch %d per process (%d global), "
                    "%d epochs x %d iterations, AMP %s, channels_last %s, compile %s",
                    cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES, self.device.type, self.world, self.batch,
                    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.EPOCHS, self.iters_per_epoch,
                    cfg.SOLVER.AMP.DTYPE if self.amp else "off", cfg.MODEL.CHANNELS_LAST, cfg.MODEL.COMPILE)
        logger.info("data: %d training images, %d validation images (%s)",
                    len(self.train_set), len(self.val_set), cfg.DATA.ROOT)

    def log_train(self, epoch, step, lr, loss, sec_per_iter, data_per_iter):
        eta = datetime.timedelta(seconds=int(sec_per_iter * (self.total_iters - self.iteration)))
        imgs = self.cfg.SOLVER.IMS_PER_BATCH / sec_per_iter
        mem = (f"  max_mem {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f}M"
               if self.device.type == "cuda" else "")
        logger.info("eta %s  epoch %d/%d  iter %d/%d  loss %.4f  lr %.5g  %.3f s/it  data %.3f s/it  %.0f img/s%s",
                    eta, epoch + 1, self.cfg.SOLVER.EPOCHS, step, self.iters_per_epoch, loss, lr,
                    sec_per_iter, data_per_iter, imgs, mem)
        if self.writer:
            self.writer.write(self.iteration, epoch=epoch, loss=loss, lr=lr, time=sec_per_iter,
                              data_time=data_per_iter, img_per_s=imgs)

    def log_eval(self, epoch, metrics):
        logger.info("eval after epoch %d: %s", epoch + 1, _format_metrics(metrics))
        if self.writer:
            self.writer.write(self.iteration, epoch=epoch, **{f"val/{k}": v for k, v in metrics.items()})


def _format_metrics(metrics):
    keys = ("top1_err", "top5_err", "nll", "ece", "aurc", "eaurc")
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys)
