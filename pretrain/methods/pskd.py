"""PS-KD: targets soften the label with the sample's own past prediction.

Two sources of past predictions (PSKD.SOURCE), both described in the paper (sec. 3.3):

* ``table``: the prediction table keeps the detached softmax of each sample's last training
  pass (the authors' public code: the same forward pass, augmented crop, BatchNorm in train
  mode; no extra evaluation pass);
* ``previous_model``: a frozen copy of the model as it was at the end of the previous epoch is
  run on the current batch (what the paper says it did on ImageNet): one extra forward per step
  and a second model in memory, but no table.

With CutMix only the ``previous_model`` source keeps the paper's rule (the prediction of epoch
t-1) for every PS-KD sample: the table holds no prediction from an epoch in which the sample was
CutMix-ed, so it hands out an older one. That combination is allowed, with a warning.
"""

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pretrain.config.types import CN, FRACTION, NON_NEGATIVE, Choices
from pretrain.methods.base import Method, build_frozen_model, module_bytes, soft_cross_entropy
from pretrain.methods.cutmix import MODES as CUTMIX_MODES
from pretrain.methods.cutmix import CutMix
from pretrain.methods.prediction_table import DTYPES as TABLE_DTYPES
from pretrain.methods.prediction_table import PredictionTable
from pretrain.runtime.device_means import DeviceMeans
from pretrain.runtime.distributed import get_world_size

logger = logging.getLogger(__name__)
BN_MODES = ("eval", "train")


def alpha_at(epoch, total_epochs, alpha_T):
    """alpha of epoch ``epoch`` (counted from 0): ``alpha_T * (epoch + 1) / total_epochs``.

    Per epoch, not per step; the last epoch (``total_epochs - 1``) uses exactly ``alpha_T``.
    """
    if not 0 <= epoch < total_epochs:
        raise ValueError(f"epoch {epoch} outside [0, {total_epochs})")
    return alpha_T * (epoch + 1) / total_epochs


def soft_targets(labels, past_probs, alpha, num_classes):
    """``(1 - alpha) * onehot(labels) + alpha * past_probs``: the PS-KD target of each sample.

    ``past_probs`` (B, K) are the sample's past softmax; they are detached here, since the past
    predictions are constants of the current step.
    """
    onehot = F.one_hot(labels, num_classes).to(past_probs.dtype)
    return (1.0 - alpha) * onehot + alpha * past_probs.detach()


class TargetStatistics:
    """What a self-distillation method's targets are made of, logged at each log period (means
    over the samples trained on a past prediction since the last log line, over every rank):

    * ``self_kd/target_label_prob``: the target's probability at the label,
      ``1 - alpha_e + alpha_e * past_label_prob`` for a sample;
    * ``self_kd/past_label_prob``: the past prediction's probability at the label;
    * ``self_kd/past_top_prob``: the past prediction's largest probability, its confidence.

    A past prediction that drifts from the label shows as a falling ``past_label_prob``; one that
    stays confident meanwhile as a ``past_top_prob`` above it (docs/methods.md).
    """

    NAMES = ("self_kd/target_label_prob", "self_kd/past_label_prob", "self_kd/past_top_prob")

    def __init__(self, device):
        self.means = DeviceMeans(self.NAMES, device)

    def add(self, targets, past_probs, labels):
        """The samples' (B, K) targets, the (B, K) past predictions they were made from, their
        labels (B,)."""
        label = labels.view(-1, 1)
        past = past_probs.detach().float()
        sums = (targets.detach().float().gather(1, label), past.gather(1, label), past.amax(dim=1))
        self.means.add({k: v.sum() for k, v in zip(self.NAMES, sums)}, count=labels.shape[0])

    def read(self):
        """The means since the last read (collective); {} when no sample had a past target."""
        return self.means.read()


class TableSource:
    """Past predictions read from, and stored into, the sharded prediction table."""

    def __init__(self, ctx):
        cfg = ctx.cfg.PSKD
        self.table = PredictionTable(
            ctx.train_labels, ctx.num_classes, ctx.device, dtype=cfg.TABLE_DTYPE, topk=cfg.TOPK
        )
        self.pad = ctx.per_rank_batch
        storage = f"top-{cfg.TOPK}" if cfg.TOPK else "dense"
        self.description = f"past predictions from a sharded {storage} {cfg.TABLE_DTYPE} table"

    def start_epoch(self, epoch, model):
        pass

    def read(self, images, labels, indices):
        # Collective: every rank reads once per step, however many rows it asks for.
        return self.table.read(indices, self.pad)

    def write(self, indices, probs):
        self.table.write(indices, probs, self.pad)

    def memory(self):
        return {"table": self.table.nbytes()}

    def state_dict(self):
        return self.table.state_dict()

    def load_state_dict(self, state):
        self.table.load_state_dict(state)


class PreviousModelSource:
    """Past predictions from the previous epoch's model, frozen. It does not change during an
    epoch. In epoch 0 there is no previous model: the past prediction is the one-hot label, as the
    table's initial rows.

    PSKD.PREVIOUS_MODEL_BN "eval" (default) normalises with the copy's running statistics, as a
    teacher is used; "train" with the statistics of the batch the copy sees (the PS-KD samples of
    the step), as the training forward that fills the table, without updating the copy's
    running statistics (so what a checkpoint holds is the copy as it was taken)."""

    def __init__(self, ctx):
        self.num_classes = ctx.num_classes
        self.bn_mode = ctx.cfg.PSKD.PREVIOUS_MODEL_BN
        self.model = build_frozen_model(ctx.cfg, ctx.device)
        if self.bn_mode == "train":
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    # Training mode without running statistics: batch statistics, buffers untouched.
                    module.train()
                    module.track_running_stats = False
        self.description = (
            f"past predictions from the previous epoch's model (frozen copy, BatchNorm "
            f"{self.bn_mode} mode, extra forward)"
        )
        self.ready = False  # False in epoch 0

    @torch.no_grad()
    def start_epoch(self, epoch, model):
        self.ready = epoch > 0
        if not self.ready:
            return
        self.model.load_state_dict(model.state_dict())
        # Every rank holds rank 0's copy, which is also what a checkpoint stores: after the
        # epoch's last step each rank's BatchNorm buffers still carry its own last update.
        if get_world_size() > 1:
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, 0)

    @torch.no_grad()
    def read(self, images, labels, indices):
        if not self.ready:
            return F.one_hot(labels, self.num_classes).float()
        return self.model(images).float().softmax(dim=1)

    def write(self, indices, probs):
        pass

    def memory(self):
        return {"previous_model": module_bytes(self.model)}

    def state_dict(self):
        return {"ready": self.ready, "model": self.model.state_dict() if self.ready else None}

    def load_state_dict(self, state):
        self.ready = state["ready"]
        if self.ready:
            self.model.load_state_dict(state["model"])


SOURCES = {"table": TableSource, "previous_model": PreviousModelSource}


class ProgressiveSelfKD(Method):
    """Loss = CE(logits, (1 - alpha_e) * onehot + alpha_e * P_past), P_past from PSKD.SOURCE,
    logged as ``loss_ce``, with the targets' ``TargetStatistics``.

    With CutMix (AUG.CUTMIX.PSKD_MODE "half", the paper's rule) half of each batch is CutMix-ed
    and trained on plain CutMix targets, the other half on PS-KD targets; with "batch" a whole
    batch is CutMix-ed with probability AUG.CUTMIX.PROB. Either way a CutMix-ed sample gets no
    PS-KD target (each sample picks one of the two regularisers, as in the paper) and the
    prediction made on its mixed image is never stored: it is a prediction of neither source
    image.
    """

    name = "pskd"
    label = "PS-KD"
    config_ranges = {"PSKD.ALPHA_T": FRACTION, "PSKD.TOPK": NON_NEGATIVE}
    config_choices = {
        "PSKD.SOURCE": Choices(SOURCES),
        "PSKD.PREVIOUS_MODEL_BN": Choices(BN_MODES),
        "PSKD.TABLE_DTYPE": Choices(TABLE_DTYPES),
        "AUG.CUTMIX.PSKD_MODE": Choices(CUTMIX_MODES),
    }

    @staticmethod
    def add_config(cfg):
        cfg.PSKD = CN()
        # alpha at the last epoch; alpha_e = ALPHA_T * (e + 1) / EPOCHS.
        cfg.PSKD.ALPHA_T = 0.8
        # Where past predictions come from: "table" (stored softmax of the last training pass, the
        # authors' code, the CIFAR set-up) or "previous_model" (a frozen copy of the model at the
        # end of the previous epoch run on the current batch: what the paper says it did on
        # ImageNet).
        cfg.PSKD.SOURCE = "table"
        # BatchNorm of the previous_model copy (the paper does not say): "eval" (running
        # statistics, as a teacher is used) or "train" (the batch's statistics, as the training
        # forward that fills the table; the copy's running statistics are left unchanged).
        cfg.PSKD.PREVIOUS_MODEL_BN = "eval"
        # Storage of the prediction table: "bfloat16" (half the memory; targets off by up to 4e-4
        # per entry for 1000-class rows at alpha 0.3) or "float32" (exact).
        cfg.PSKD.TABLE_DTYPE = "bfloat16"
        # Keep only the top-k probabilities of each row (0 = dense).
        cfg.PSKD.TOPK = 0
        # With CutMix (AUG.CUTMIX.ENABLED): "half" (the paper: half of each shuffled mini-batch
        # PS-KD, half CutMix) or "batch" (a whole batch is CutMix-ed with probability
        # AUG.CUTMIX.PROB). CutMix-ed samples get plain CutMix targets and their predictions are
        # never stored. Other methods always use "batch".
        cfg.AUG.CUTMIX.PSKD_MODE = "half"

    @classmethod
    def config_problems(cls, cfg):
        if cfg.PSKD.TOPK > cfg.MODEL.NUM_CLASSES:
            return [
                f"PSKD.TOPK is {cfg.PSKD.TOPK}, must be at most MODEL.NUM_CLASSES "
                f"({cfg.MODEL.NUM_CLASSES})"
            ]
        return []

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.cutmix = CutMix.from_config(cfg, mode=cfg.AUG.CUTMIX.PSKD_MODE)
        self.alpha_T = cfg.PSKD.ALPHA_T
        self.source = SOURCES[cfg.PSKD.SOURCE](ctx)
        self.target_statistics = TargetStatistics(ctx.device)
        if self.cutmix and isinstance(self.source, TableSource):
            logger.warning("%s", self.stale_table_warning())

    def stale_table_warning(self):
        """What the table source does to the paper's rule with CutMix (see the module doc)."""
        p = self.cutmix.prob  # the chance that a sample is CutMix-ed in an epoch, either rule
        return (
            f"PS-KD with CutMix and PSKD.SOURCE table: a sample CutMix-ed in epoch t-1 has no "
            f"prediction from epoch t-1, so its PS-KD target uses an older one. Expected in epoch "
            f"t >= 1: {p:.0%} of PS-KD targets from a prediction two or more epochs old, {p:g}^t "
            f"of them still the one-hot label. PSKD.SOURCE previous_model keeps the paper's rule "
            f"(always the model of epoch t-1)."
        )

    def settings(self):
        out = [
            f"alpha_T {self.alpha_T:g} (alpha_e = alpha_T * (e + 1) / {self.ctx.epochs})",
            self.source.description,
        ]
        if self.cutmix:
            out.append(
                "CutMix-ed samples get plain CutMix targets, never PS-KD ones, and their "
                "predictions are never stored"
            )
            if isinstance(self.source, TableSource):
                out.append("stale past predictions for samples CutMix-ed in the previous epoch")
        return out

    def alpha(self):
        return alpha_at(self.epoch, self.ctx.epochs, self.alpha_T)

    def on_epoch_start(self, epoch, model):
        super().on_epoch_start(epoch, model)
        self.source.start_epoch(epoch, model)

    def training_step(self, model, images, labels, indices):
        images, targets, mix = self.mix_batch(images, labels)
        # The samples trained with PS-KD. All of them when nothing was mixed: a slice, so that
        # images[own] and the rest are views, not copies of the batch. Otherwise their positions,
        # sent asynchronously to the device, since a blocking host-to-device copy would make
        # every step wait for the GPU's queue.
        if mix is None:
            own = slice(None)
        else:
            own = mix.unmixed(len(labels)).to(labels.device, non_blocking=True)
        past = self.source.read(images[own], labels[own], indices[own])
        own_targets = soft_targets(labels[own], past, self.alpha(), self.ctx.num_classes)
        targets[own] = own_targets
        self.target_statistics.add(own_targets, past, labels[own])
        logits = model(images)
        self.source.write(indices[own], logits[own].detach().float().softmax(dim=1))
        return {"loss_ce": soft_cross_entropy(logits, targets)}, logits

    def log_statistics(self):
        return self.target_statistics.read()

    def extra_memory(self):
        return dict(super().extra_memory(), **self.source.memory())

    def state_dict(self):
        return dict(super().state_dict(), source=self.source.state_dict())

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.source.load_state_dict(state["source"])
