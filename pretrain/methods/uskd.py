"""USKD (universal self-knowledge distillation, "From Knowledge Distillation to
Self-Knowledge Distillation", Yang et al., ICCV 2023): customised soft labels for the target
class (the squared, batch-centred target probability) and for the non-target classes (Zipf's
law over a rank taken from an extra weak classifier on an intermediate feature)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain.config.types import CN, NON_NEGATIVE
from pretrain.methods.base import Method, soft_cross_entropy

# The weak head's label smoothing, fixed in the reference code.
WEAK_SMOOTHING = 0.1


class ResNetWithWeakHead(nn.Module):
    """A torchvision ResNet plus USKD's weak classifier on its pooled stage-3 (layer3) feature.

    ``forward`` returns ``(logits, weak_logits)``. The head is trained with the network but is no
    part of it: ``model`` stays a plain torchvision ResNet, which is what gets exported.
    """

    def __init__(self, model, num_classes):
        super().__init__()
        self.model = model
        channels = model.layer4[0].conv1.in_channels  # layer3's output: 256 (R18/34), 1024 (R50+)
        self.head = nn.Linear(channels, num_classes).to(model.fc.weight.device)

    def forward(self, x):
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        mid = m.layer3(m.layer2(m.layer1(x)))
        logits = m.fc(torch.flatten(m.avgpool(m.layer4(mid)), 1))
        weak_logits = self.head(torch.flatten(m.avgpool(mid), 1))
        return logits, weak_logits


def uskd_loss(logits, weak_logits, gt, alpha, beta, mu):
    """alpha * L_target + beta * L_non + L_weak, as the reference code (without the CE term), as
    the terms ``{"loss_target", "loss_non_target", "loss_weak"}``, each with its weight.

    ``gt``: labels (B,), or (B, K) soft targets (CutMix), whose two largest entries are taken as
    the labels with their weights, as the reference code does for mixed labels.

    * L_target = -mean_i sum_t w_t log s_t with w = s_t^2 + v_t - mean_batch(s_t^2) (detached),
      s_t the softmax probability of label t, v_t its weight (1 for hard labels); w = 0 where
      v_t = 0.
    * L_weak = mu * CE of the weak head against the label smoothed by 0.1 (eps / K on every class).
    * L_non: the non-target classes are ranked by ``q / (1 - sum_t q_t) + log s / (1 - sum_t log
    s_t)``
      (q the weak head's softmax; the second term mixes in the log-probabilities, a quirk of the
      reference code kept as is); the class at rank r (from 1, over all K classes) gets 1 / r,
      the labels are removed, the rest renormalised and detached; L_non = -mean_i sum_j z_j *
      log_softmax(non-target logits)_j.
    """
    logits, weak_logits = logits.float(), weak_logits.float()
    n, k = logits.shape
    if gt.dim() > 1:
        value, label = gt.topk(2, dim=1)
    else:
        label, value = gt.view(n, 1), torch.ones(n, 1, device=logits.device)

    log_s = F.log_softmax(logits, dim=1)
    log_s_t = log_s.gather(1, label)
    s_t2 = log_s_t.detach().exp() ** 2
    w = (s_t2 + value - s_t2.mean(dim=0, keepdim=True)) * (value != 0)
    loss_target = -(w * log_s_t).sum(dim=1).mean()

    smooth = gt if gt.dim() > 1 else F.one_hot(gt, k).float()
    smooth = smooth * (1.0 - WEAK_SMOOTHING) + WEAK_SMOOTHING / k
    log_q = F.log_softmax(weak_logits, dim=1)
    loss_weak = mu * -(smooth * log_q).sum(dim=1).mean()

    with torch.no_grad():
        q = log_q.exp()
        score = q / (1 - q.gather(1, label).sum(1, keepdim=True) + 1e-6) + log_s / (
            1 - log_s_t.sum(1, keepdim=True) + 1e-6
        )
        # rank_of[i, c]: c's place (0 = first) in row i sorted by descending score.
        rank_of = score.argsort(dim=1, descending=True).argsort(dim=1)
        zipf = 1.0 / (rank_of + 1).float()
        # The labels are masked out rather than indexed away: boolean-mask indexing calls
        # nonzero, which makes the host wait for the device every step.
        is_target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, label, True)
        z = zipf.masked_fill(is_target, 0)
        z = z / z.sum(dim=1, keepdim=True)
    # -inf drops the labels from the softmax; their log-probabilities (weight z = 0) are then
    # zeroed, since 0 * -inf would be NaN.
    log_ns = F.log_softmax(logits.masked_fill(is_target, float("-inf")), dim=1).masked_fill(
        is_target, 0
    )
    loss_non = -(z * log_ns).sum(dim=1).mean()

    return {
        "loss_target": alpha * loss_target,
        "loss_non_target": beta * loss_non,
        "loss_weak": loss_weak,
    }


class UniversalSelfKD(Method):
    """Loss = CE(logits, y) + uskd_loss(...) (USKD.ALPHA, BETA, MU), logged as its terms and
    ``loss_ce``; with CutMix the CE uses the mixed targets and uskd_loss their two labels with
    weights lam, 1 - lam (the reference code's handling of mixed labels)."""

    name = "uskd"
    label = "USKD"
    config_ranges = {"USKD.ALPHA": NON_NEGATIVE, "USKD.BETA": NON_NEGATIVE, "USKD.MU": NON_NEGATIVE}

    @staticmethod
    def add_config(cfg):
        # USKD: CE + ALPHA * L_target + BETA * L_non + MU * (weak head's label-smoothed CE).
        # Defaults: the USKD paper's ImageNet values.
        cfg.USKD = CN()
        cfg.USKD.ALPHA = 1.0
        cfg.USKD.BETA = 0.1
        cfg.USKD.MU = 0.005

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg.USKD
        self.alpha, self.beta, self.mu = cfg.ALPHA, cfg.BETA, cfg.MU
        self.net = None

    def settings(self):
        head = (
            (
                f"weak head Linear({self.net.head.in_features} -> {self.net.head.out_features}) on "
                f"the pooled layer3 feature, trained, not exported"
            )
            if self.net
            else "weak head on layer3"
        )
        return [f"alpha {self.alpha:g}, beta {self.beta:g}, mu {self.mu:g}", head]

    def wrap_model(self, model):
        self.net = ResNetWithWeakHead(model, self.ctx.num_classes)
        return self.net

    def training_step(self, model, images, labels, indices):
        images, targets, mix = self.mix_batch(images, labels)
        logits, weak_logits = model(images)
        gt = labels if mix is None else targets
        loss_ce = soft_cross_entropy(logits, targets)
        losses = uskd_loss(logits, weak_logits, gt, self.alpha, self.beta, self.mu)
        # CE last: the USKD terms' sum + CE is bit for bit the CE + their sum this method trained
        # on before its terms were named (addition commutes; it does not associate).
        return dict(losses, loss_ce=loss_ce), logits

    def state_dict(self):
        # The engine saves the plain model; the head's weights travel with the method.
        return dict(super().state_dict(), head=self.net.head.state_dict())

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.net.head.load_state_dict(state["head"])
