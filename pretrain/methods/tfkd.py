"""TF-KD (teacher-free KD, Yuan et al., CVPR 2020), self-training variant: a fully trained model
of the same architecture teaches the student."""
import torch

from ..checkpoint import load_weights
from .base import Method, build_frozen_model, distillation_kl, soft_cross_entropy

REDUCTIONS = ("mean", "batchmean")


def tfkd_kl(logits, teacher_logits, temperature, reduction):
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    ``reduction`` "mean" divides the sum over the batch and classes by B * K, as the reference
    code's ``nn.KLDivLoss()`` does (its hyperparameters were tuned with it); "batchmean" divides
    by B, the true per-sample KL divergence (K times larger).
    """
    return distillation_kl(logits, teacher_logits, temperature) / (
        logits.numel() if reduction == "mean" else logits.shape[0])


class TeacherFreeKD(Method):
    """Loss = (1 - alpha) * CE(logits, y) + alpha * tfkd_kl(logits, teacher logits, T).

    The teacher (TEACHER.WEIGHTS: our model_final.pth or a torchvision state dict, MODEL.ARCH) is
    in eval mode without gradients and sees the same augmented (and CutMix-ed) batch; it is not
    part of the checkpoint: a resumed run reloads it from TEACHER.WEIGHTS.
    """

    name = "tfkd"
    needs_teacher = True

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.alpha, self.temperature = cfg.TFKD.ALPHA, cfg.TFKD.TEMPERATURE
        self.reduction = cfg.TFKD.KL_REDUCTION
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"TFKD.KL_REDUCTION must be one of {REDUCTIONS}, got {self.reduction!r}")
        self.weights = cfg.TEACHER.WEIGHTS
        if not self.weights:
            raise ValueError("METHOD.NAME tfkd needs TEACHER.WEIGHTS: a trained model of MODEL.ARCH "
                             "(our model_final.pth or a torchvision state dict)")
        self.teacher = build_frozen_model(cfg, ctx.device)
        load_weights(self.teacher, self.weights)

    def settings(self):
        return [f"teacher {self.weights} ({self.ctx.cfg.MODEL.ARCH}, eval mode, no grad)",
                f"alpha {self.alpha:g}, T {self.temperature:g}, KL reduction {self.reduction}"
                + (" (divides by B*K, as the reference code)" if self.reduction == "mean" else " (divides by B)")]

    def training_step(self, model, images, labels, indices):
        images, targets, _ = self.mix_batch(images, labels)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = model(images)
        loss = ((1.0 - self.alpha) * soft_cross_entropy(logits, targets)
                + self.alpha * tfkd_kl(logits, teacher_logits, self.temperature, self.reduction))
        return loss, logits
