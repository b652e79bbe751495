"""TF-KD (teacher-free KD, Yuan et al., CVPR 2020), self-training variant: a fully trained model
of the same architecture teaches the student."""

import torch

from pretrain.config.types import CN, FRACTION, POSITIVE, Choices
from pretrain.methods.base import (
    Method,
    build_teacher,
    describe_teacher,
    distillation_kl,
    soft_cross_entropy,
)

REDUCTIONS = ("mean", "batchmean")


def tfkd_kl(logits, teacher_logits, temperature, reduction):
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    ``reduction`` "batchmean" divides the sum over the batch and classes by B: the per-sample KL
    of the TF-KD paper's equation. "mean" divides by B * K, as the reference CIFAR code's
    ``nn.KLDivLoss()`` does (K times weaker; that code scales the term back up with a multiplier
    of 50 or 100 in 4 of its 6 self-teacher configs).
    """
    return distillation_kl(logits, teacher_logits, temperature) / (
        logits.numel() if reduction == "mean" else logits.shape[0]
    )


class TeacherFreeKD(Method):
    """Loss = (1 - alpha) * CE(logits, y) + alpha * tfkd_kl(logits, teacher logits, T), logged
    as ``loss_ce`` and ``loss_kd`` (each with its weight).

    The teacher (TEACHER.WEIGHTS: our model_final.pth or a torchvision state dict, MODEL.ARCH) is
    in eval mode without gradients and sees the same augmented (and CutMix-ed) batch; it is not
    part of the checkpoint: a resumed run reloads it from TEACHER.WEIGHTS.
    """

    name = "tfkd"
    label = "TF-KD"
    needs_teacher = True
    config_ranges = {"TFKD.ALPHA": FRACTION, "TFKD.TEMPERATURE": POSITIVE}
    config_choices = {"TFKD.KL_REDUCTION": Choices(REDUCTIONS)}

    @staticmethod
    def add_config(cfg):
        # TF-KD (self-training): (1 - ALPHA) * CE + ALPHA * TEMPERATURE^2 * KL(teacher || student).
        # Defaults: ALPHA and TEMPERATURE of the reference code's ImageNet argparse defaults.
        cfg.TFKD = CN()
        cfg.TFKD.ALPHA = 0.1
        cfg.TFKD.TEMPERATURE = 20.0
        # "batchmean": the KL of each sample, averaged over the batch (the TF-KD paper's equation).
        # "mean": divided by B*K as the reference CIFAR code's nn.KLDivLoss() does, K times weaker
        # (with K = 1000, ALPHA 0.1 and T 20 the KD term is 0.04 x KL).
        cfg.TFKD.KL_REDUCTION = "batchmean"

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.alpha, self.temperature = cfg.TFKD.ALPHA, cfg.TFKD.TEMPERATURE
        self.reduction = cfg.TFKD.KL_REDUCTION
        self.teacher = build_teacher(cfg, ctx.device)

    def settings(self):
        return [
            describe_teacher(self.ctx.cfg),
            f"alpha {self.alpha:g}, T {self.temperature:g}, KL reduction {self.reduction}"
            + (
                " (divides by B*K, as the reference CIFAR code)"
                if self.reduction == "mean"
                else " (divides by B: the per-sample KL)"
            ),
        ]

    def training_step(self, model, images, labels, indices):
        images, targets, _ = self.mix_batch(images, labels)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = model(images)
        losses = {
            "loss_ce": (1.0 - self.alpha) * soft_cross_entropy(logits, targets),
            "loss_kd": self.alpha
            * tfkd_kl(logits, teacher_logits, self.temperature, self.reduction),
        }
        return losses, logits
