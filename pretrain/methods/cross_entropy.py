"""Baseline cross-entropy and label smoothing."""

import torch.nn.functional as F

from pretrain.config.types import CN, FRACTION
from pretrain.methods.base import Method, soft_cross_entropy


class CrossEntropy(Method):
    """Plain cross-entropy on the hard labels (the paper's baseline); with CutMix, on the
    area-mixed one-hot targets (= lam * CE(y_a) + (1 - lam) * CE(y_b), the CutMix reference)."""

    name = "baseline"
    label = "Baseline"

    def settings(self):
        return ["cross-entropy"]

    def training_step(self, model, images, labels, indices):
        images, targets, _ = self.mix_batch(images, labels)
        logits = model(images)
        return {"loss_ce": soft_cross_entropy(logits, targets)}, logits


class LabelSmoothing(Method):
    """Label smoothing in torch's convention: target (1 - eps) on the label plus eps / K on every
    class (so the label gets 1 - eps + eps / K). TF-KD's code instead puts eps / (K - 1) on the
    non-target classes only and 1 - eps on the label; with eps = 0.1 and K = 1000 the label
    entries differ by 1e-4 (eps / K) and the others by 1e-7.
    With CutMix the mixed target is smoothed (the same as mixing the smoothed targets)."""

    name = "ls"
    label = "LS"
    config_ranges = {"LS.EPSILON": FRACTION}

    @staticmethod
    def add_config(cfg):
        # Label smoothing: (1 - EPSILON) * onehot + EPSILON / K on every class (torch's convention).
        cfg.LS = CN()
        cfg.LS.EPSILON = 0.1

    def settings(self):
        return [f"epsilon {self.ctx.cfg.LS.EPSILON:g}, eps/K on every class (torch's convention)"]

    def training_step(self, model, images, labels, indices):
        images, targets, _ = self.mix_batch(images, labels)
        logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.ctx.cfg.LS.EPSILON)
        return {"loss_ce": loss}, logits
