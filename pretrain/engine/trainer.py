"""The training engine: build everything from the config, train with checkpoints and logs,
evaluate, and write the final outputs.

Outputs in OUTPUT_DIR: ``config.yaml``, ``log.txt``, ``metrics.json`` (one JSON object a line),
TensorBoard events, ``model_<iter>.pth`` checkpoints with ``last_checkpoint``, and at the end
``model_final.pth`` (``{"model": torchvision state dict}``), ``eval_final.json`` and
``reliability_final.png``. ``--eval-only`` writes ``eval_only_<weights name>.json``,
``..._reliability.png`` and ``..._config.yaml`` instead (pretrain/runtime/run_folder.py).
"""

import logging
import os
import random
import time

import torch

from pretrain.data.build import build_dataset, build_train_loader, build_val_loader
from pretrain.engine.build import (
    amp_dtype,
    build_grad_scaler,
    build_optimizer,
    build_train_module,
    configure_cudnn,
)
from pretrain.engine.events import TrainingEvents, format_metrics, setup_logging
from pretrain.engine.lr_schedule import build_lr_schedule
from pretrain.engine.step import train_step
from pretrain.methods import MethodContext, build_method, method_label
from pretrain.metrics import (
    per_image_path,
    per_sample_stats,
    plot_reliability_diagram,
    save_per_image,
    summarize,
)
from pretrain.models import build_model, memory_format
from pretrain.runtime import distributed as du
from pretrain.runtime import faults
from pretrain.runtime.checkpoint import TrainingCheckpointer, load_resume_checkpoint, load_weights
from pretrain.runtime.device_means import DeviceMeans
from pretrain.runtime.fileio import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from pretrain.runtime.run_folder import (
    CONFIG_FILE,
    check_same_run,
    check_same_started_run,
    check_unfinished,
    dataset_fingerprint,
    eval_only_outputs,
    started_config,
)

logger = logging.getLogger("pretrain")


def full_batches_per_epoch(samples_per_rank, batch, dataset_size):
    """Training steps per epoch: the loader drops each epoch's last, partial batch (at most
    ``batch - 1`` samples per process, other ones every epoch since the order is reshuffled), so
    every step has the same shape, which keeps a compiled model on one graph."""
    if samples_per_rank < batch:
        raise ValueError(
            f"the training set has {dataset_size} samples, {samples_per_rank} per process: fewer "
            f"than one batch of {batch} per process (lower SOLVER.IMS_PER_BATCH)"
        )
    return samples_per_rank // batch


class Trainer:
    """Builds the run from ``cfg`` and trains it (``train``) or evaluates it (``evaluate``)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = du.init_distributed(cfg.MODEL.DEVICE, cfg.DIST.TIMEOUT_S)
        configure_cudnn()
        self.rank, self.world = du.get_rank(), du.get_world_size()
        setup_logging(cfg.OUTPUT_DIR, self.rank)
        if cfg.SOLVER.IMS_PER_BATCH % self.world or cfg.TEST.IMS_PER_BATCH % self.world:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) and TEST.IMS_PER_BATCH "
                f"({cfg.TEST.IMS_PER_BATCH}) must be multiples of the {self.world} processes"
            )
        self.batch = cfg.SOLVER.IMS_PER_BATCH // self.world
        self.amp_dtype = amp_dtype(cfg)

        self.train_set = build_dataset(cfg, cfg.DATA.TRAIN_SPLIT, train=True)
        self.val_set = build_dataset(cfg, cfg.DATA.VAL_SPLIT, train=False)
        if self.train_set.classes != self.val_set.classes:
            raise ValueError(
                f"the class folders of {cfg.DATA.TRAIN_SPLIT!r} and {cfg.DATA.VAL_SPLIT!r} "
                f"under DATA.ROOT {cfg.DATA.ROOT!r} differ"
            )
        data_fingerprint = dataset_fingerprint(self.train_set, cfg.DATA.ROOT)

        torch.manual_seed(cfg.SEED)  # the same initial weights on every rank
        self.model = build_model(cfg, self.device)
        self.memory_format = memory_format(cfg)
        self.method = build_method(
            MethodContext(
                cfg=cfg,
                num_classes=cfg.MODEL.NUM_CLASSES,
                train_labels=self.train_set.targets,
                device=self.device,
                per_rank_batch=self.batch,
                epochs=cfg.SOLVER.EPOCHS,
            )
        )
        self.sampler = self.method.build_train_sampler(
            len(self.train_set), self.rank, self.world, cfg.SEED
        )
        self.loader_batch = self.method.loader_batch_size(self.batch)
        self.iters_per_epoch = full_batches_per_epoch(
            len(self.sampler), self.loader_batch, len(self.train_set)
        )
        self.total_iters = cfg.SOLVER.EPOCHS * self.iters_per_epoch
        module = self.method.wrap_model(self.model)
        self.optimizer = build_optimizer(cfg, module)
        self.scaler = build_grad_scaler(cfg, self.device)
        self.train_module = build_train_module(cfg, module, self.device, self.world)
        self.schedule = build_lr_schedule(cfg, self.iters_per_epoch)
        self.train_loader = build_train_loader(
            cfg, self.train_set, self.sampler, self.loader_batch, self.device
        )
        self.val_loader = build_val_loader(cfg, self.val_set, self.rank, self.world, self.device)
        self.checkpointer = TrainingCheckpointer(
            cfg, self.model, self.optimizer, self.scaler, self.method, self.device, data_fingerprint
        )
        self.events = TrainingEvents(cfg, self.device, self.iters_per_epoch)
        # Per-rank RNG streams from here on (e.g. CutMix draws differ between ranks).
        torch.manual_seed(cfg.SEED * 1_000 + 1 + self.rank)
        random.seed(cfg.SEED * 1_000 + 1 + self.rank)

        self.iteration = 0
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    # -- training ---------------------------------------------------------------------------
    def train(self, resume=False):
        cfg = self.cfg
        start_epoch, start_step = self.resume() if resume else (0, 0)
        if self.rank == 0:
            config_path = os.path.join(cfg.OUTPUT_DIR, CONFIG_FILE)
            if not os.path.isfile(config_path):  # a resumed run keeps the config it started with
                atomic_write_text(config_path, cfg.dump())
            self.events.open(self.iteration if resume else None)
        self.events.start(
            self.method, self.world, self.batch, len(self.train_set), len(self.val_set)
        )
        for epoch in range(start_epoch, cfg.SOLVER.EPOCHS):
            first = start_step if epoch == start_epoch else 0
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(first * self.loader_batch)
            if first == 0:
                self.method.on_epoch_start(epoch, self.model)
            self.train_one_epoch(epoch, first)
            if (epoch + 1) % cfg.TEST.EVAL_PERIOD == 0 and epoch + 1 < cfg.SOLVER.EPOCHS:
                metrics, _, _ = self.evaluate()
                self.events.evaluation(self.iteration, epoch, metrics)
        metrics, stats, index = self.evaluate()
        self.events.evaluation(self.iteration, cfg.SOLVER.EPOCHS - 1, metrics)
        self.write_final(metrics, stats, index)
        self.events.close()
        return metrics

    def resume(self):
        """Restore OUTPUT_DIR's newest readable checkpoint, after checking that it is this run's;
        returns the (epoch, step) to continue from, (0, 0) when there is none."""
        cfg = self.cfg
        check_unfinished(cfg.OUTPUT_DIR)
        path, state = load_resume_checkpoint(cfg.OUTPUT_DIR)
        if state is None:
            logger.info("no readable checkpoint in %s: starting from scratch", cfg.OUTPUT_DIR)
            saved = du.broadcast_object(started_config(cfg.OUTPUT_DIR) if self.rank == 0 else None)
            check_same_started_run(cfg.OUTPUT_DIR, saved, cfg)
        else:
            check_same_run(path, state, cfg, self.checkpointer.data_fingerprint)
        du.barrier()  # every rank has checked before rank 0 removes or writes anything
        if self.rank == 0:  # nothing writes yet: any temporary file is a killed write's
            for stale in remove_stale_temporaries(cfg.OUTPUT_DIR):
                logger.info("removed %s, left by an interrupted write", stale)
        if state is None:
            return 0, 0
        self.iteration, epoch, step = du.on_every_rank(
            lambda: self.checkpointer.load(state, self.iters_per_epoch), f"resuming from {path}"
        )
        du.check_same_on_every_rank(self.iteration, f"the iteration resumed from {path}")
        logger.info(
            "resumed from %s: epoch %d, step %d of %d, iteration %d",
            path,
            epoch,
            step,
            self.iters_per_epoch,
            self.iteration,
        )
        return epoch, step

    def train_one_epoch(self, epoch, first_step):
        cfg, device = self.cfg, self.device
        self.train_module.train()
        losses_window = None  # DeviceMeans of the total and each term, once the names are known
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
            loss, losses = train_step(
                self.method,
                self.train_module,
                self.optimizer,
                self.scaler,
                images,
                labels,
                indices,
                self.amp_dtype,
            )
            self.iteration += 1
            faults.reached(f"step {self.iteration}", cfg.OUTPUT_DIR)
            window_iters += 1
            # Device-side bookkeeping only: the host looks at these at log/checkpoint time.
            loss = loss.detach()
            self.nonfinite |= ~torch.isfinite(loss)
            if losses_window is None:
                losses_window = DeviceMeans(["loss", *losses], device)
            losses_window.add({"loss": loss, **losses})

            last = step + 1 == self.iters_per_epoch
            if (step + 1) % cfg.LOG_PERIOD == 0 or last:
                self.check_finite()
                seconds = time.perf_counter() - window_start
                scalars = dict(
                    losses_window.read(),
                    **self.method.log_statistics(),
                    lr=lr,
                    time=seconds / window_iters,
                    data_time=data_time / window_iters,
                )
                self.events.train(self.iteration, epoch, step + 1, scalars)
                window_start, window_iters, data_time = time.perf_counter(), 0, 0.0
            if self.iteration % cfg.SOLVER.CHECKPOINT_PERIOD == 0 or last:
                self.check_finite(weights=True)
                self.checkpointer.save(self.iteration, epoch, step + 1, self.iters_per_epoch)
        # Every rank's skipped files, in rank 0's log.txt (rank > 0 logs to its stdout only).
        skipped_in_epoch = sorted(
            p for paths in du.all_gather_object(skipped_in_epoch) for p in paths
        )
        if skipped_in_epoch:
            logger.warning(
                "epoch %d: skipped %d unreadable training images (DATA.ON_BAD_IMAGE skip): %s",
                epoch + 1,
                len(skipped_in_epoch),
                ", ".join(skipped_in_epoch),
            )

    def check_finite(self, weights=False):
        """Stop on a non-finite loss (on any rank) before anything is logged or saved, so
        ``last_checkpoint`` keeps pointing at the last good checkpoint. Before saving
        (``weights``) the weights are checked too: the step after the last loss may have broken
        them."""
        flag = self.nonfinite.float()
        if weights:
            finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
            flag = flag + (~finite).float()
        flag = du.all_reduce_sum(flag)
        if flag.item() > 0:
            raise FloatingPointError(
                f"non-finite loss or weights at iteration {self.iteration}: training stopped; the "
                "last good checkpoint is the one named in "
                f"{os.path.join(self.cfg.OUTPUT_DIR, 'last_checkpoint')} (lower SOLVER.BASE_LR or "
                "check the data)"
            )

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self):
        """Metrics over the whole validation set (sharded over ranks, gathered, identical to one
        process). Returns (metrics dict, per-sample stats in sample order, their sample indices:
        an unreadable image that was skipped has none)."""
        # After a training step each rank's BatchNorm buffers hold its own batch's update (DDP
        # broadcasts rank 0's only at the next forward): evaluate, and save, rank 0's model.
        du.broadcast_buffers(self.model)
        was_training = self.model.training
        self.model.eval()
        # Empty to start with: a rank may have no validation sample (a set smaller than the world,
        # or every image of its shard skipped), and then gathers none.
        none = torch.zeros(0, dtype=torch.long, device=self.device)
        stats = [
            per_sample_stats(torch.zeros(0, self.cfg.MODEL.NUM_CLASSES, device=self.device), none)
        ]
        indices = [none]
        for images, labels, idx, skipped in self.val_loader:
            for path in skipped:
                logger.warning("skipped unreadable validation image %s", path)
            if images is None:
                continue
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                logits = self.model(images)
            stats.append(per_sample_stats(logits, labels.to(self.device)))
            indices.append(idx.to(self.device))
        self.model.train(was_training)
        stats = du.all_gather_cat(torch.cat(stats)).cpu()
        indices = du.all_gather_cat(torch.cat(indices)).cpu()
        order = torch.argsort(indices)
        return summarize(stats[order]), stats[order], indices[order]

    def evaluate_weights(self, path):
        """--eval-only: evaluate ``path``; write its metrics, reliability diagram and config under
        names of their own (``eval_only_outputs``), never over a training run's outputs."""
        outputs = eval_only_outputs(self.cfg.OUTPUT_DIR, path)
        load_weights(
            self.model,
            path,
            f"MODEL.ARCH {self.cfg.MODEL.ARCH} with MODEL.NUM_CLASSES {self.cfg.MODEL.NUM_CLASSES}",
        )
        logger.info("evaluating %s on %d validation images", path, len(self.val_set))
        metrics, stats, index = self.evaluate()
        metrics["weights"] = os.path.abspath(path)
        if self.rank == 0:
            self.write_eval(metrics, stats, index, outputs["metrics"], outputs["reliability"])
            atomic_write_text(outputs["config"], self.cfg.dump())
            logger.info("wrote %s", ", ".join(outputs.values()))
        logger.info("eval: %s", format_metrics(metrics))
        return metrics

    # -- outputs ----------------------------------------------------------------------------
    def write_eval(self, metrics, stats, index, metrics_path, reliability_path):
        # Each image's numbers first, so that a metrics file never lacks them (the study pairs
        # runs image by image from them: docs/study.md).
        save_per_image(per_image_path(metrics_path), stats, index, self.val_set.samples)
        atomic_write_json(metrics_path, metrics)
        title = method_label(self.cfg.METHOD.NAME, self.cfg.AUG.CUTMIX.ENABLED)
        plot_reliability_diagram(stats, reliability_path, title=title)

    def write_final(self, metrics, stats, index):
        if self.rank == 0:
            path = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
            atomic_torch_save({"model": self.model.state_dict()}, path)
            metrics = dict(
                metrics,
                epochs=self.cfg.SOLVER.EPOCHS,
                method=self.cfg.METHOD.NAME,
                arch=self.cfg.MODEL.ARCH,
            )
            self.write_eval(
                metrics,
                stats,
                index,
                os.path.join(self.cfg.OUTPUT_DIR, "eval_final.json"),
                os.path.join(self.cfg.OUTPUT_DIR, "reliability_final.png"),
            )
            logger.info("wrote %s and eval_final.json", path)
        du.barrier()
