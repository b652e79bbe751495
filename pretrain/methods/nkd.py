"""NKD (normalized knowledge distillation, "From Knowledge Distillation to Self-Knowledge
Distillation", Yang et al., ICCV 2023): the KD loss split into a target-class term and a
non-target term, the non-target probabilities of teacher and student each renormalised to sum to
one before they are matched."""

import torch
import torch.nn.functional as F

from pretrain.config.types import CN, NON_NEGATIVE, POSITIVE
from pretrain.methods.base import Method, build_teacher, describe_teacher, soft_cross_entropy


def nkd_loss(logits, teacher_logits, targets, temperature, gamma):
    """``{"loss_target": L_target, "loss_non_target": gamma * T^2 * L_non}``, in float32, with the
    teacher's side a constant.

    ``targets``: labels (B,) or (B, K) soft targets (CutMix), whose largest entry is taken as the
    target class t (the first one on a tie), as the reference code does for mixed labels.

    * L_target = -mean_i p_t log s_t: s and p the softmax of the student's and the teacher's
      logits (no temperature), p_t a constant weight.
    * L_non = -mean_i sum_{j != t} N(p^T)_j log N(s^T)_j, where N(x^T)_j = x^T_j / (1 - x^T_t)
      renormalises the tempered non-target probabilities. That equals a softmax over the K - 1
      non-target logits / T, which is how it is computed: it stays finite when x^T_t rounds to 1.
    """
    logits, teacher_logits = logits.float(), teacher_logits.detach().float()
    n, k = logits.shape
    target = (targets.argmax(dim=1) if targets.dim() > 1 else targets).view(n, 1)

    log_s_t = F.log_softmax(logits, dim=1).gather(1, target)
    p_t = F.softmax(teacher_logits, dim=1).gather(1, target)
    loss_target = -(p_t * log_s_t).mean()

    # The K - 1 non-target columns in order, gathered by a computed index: boolean indexing would
    # give the same values but has a data-dependent shape (forward) and index_put (backward),
    # each a host synchronisation per step.
    columns = torch.arange(k - 1, device=logits.device).expand(n, k - 1)
    non_target = columns + (columns >= target).long()
    log_n_s = F.log_softmax(logits.gather(1, non_target) / temperature, dim=1)
    n_p = F.softmax(teacher_logits.gather(1, non_target) / temperature, dim=1)
    loss_non = -(n_p * log_n_s).sum(dim=1).mean()
    return {"loss_target": loss_target, "loss_non_target": gamma * temperature**2 * loss_non}


class NormalizedKD(Method):
    """Loss = CE(logits, targets) + nkd_loss(logits, teacher logits, targets, NKD.TEMPERATURE,
    NKD.GAMMA), logged as ``loss_target``, ``loss_non_target`` and ``loss_ce``.

    The teacher is TF-KD's (``build_teacher``: TEACHER.WEIGHTS, MODEL.ARCH, eval mode, no
    gradients, reloaded on resume); it sees the same augmented (and CutMix-ed) batch. With CutMix
    the CE uses the mixed targets and NKD the class with the larger area.
    """

    name = "nkd"
    label = "NKD"
    needs_teacher = True
    config_ranges = {"NKD.TEMPERATURE": POSITIVE, "NKD.GAMMA": NON_NEGATIVE}

    @staticmethod
    def add_config(cfg):
        # NKD: CE + L_target + GAMMA * TEMPERATURE^2 * L_non (non-target probabilities
        # renormalised).
        # Defaults: the authors' ImageNet values for ResNet students (yzd-v/cls_KD configs).
        cfg.NKD = CN()
        cfg.NKD.TEMPERATURE = 1.0
        cfg.NKD.GAMMA = 1.5

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.temperature, self.gamma = cfg.NKD.TEMPERATURE, cfg.NKD.GAMMA
        if not self.temperature > 0:
            raise ValueError(f"NKD.TEMPERATURE must be positive, got {self.temperature}")
        self.teacher = build_teacher(cfg, ctx.device)

    def settings(self):
        return [describe_teacher(self.ctx.cfg), f"T {self.temperature:g}, gamma {self.gamma:g}"]

    def training_step(self, model, images, labels, indices):
        images, targets, _ = self.mix_batch(images, labels)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = model(images)
        loss_ce = soft_cross_entropy(logits, targets)
        losses = nkd_loss(logits, teacher_logits, targets, self.temperature, self.gamma)
        # CE last: (L_target + L_non) + CE is bit for bit the CE + (L_target + L_non) this method
        # trained on before its terms were named (addition commutes; it does not associate).
        return dict(losses, loss_ce=loss_ce), logits
