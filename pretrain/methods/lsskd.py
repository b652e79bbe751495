"""LSSKD (layered self-supervised self-distillation, "A Layered Self-Supervised Knowledge
Distillation Framework for Efficient Multimodal Learning on the Edge", Dahri et al., 2025).

Auxiliary branches on the output of every ResNet stage classify the self-supervised augmented
task (class x rotation, N * M joint classes, HSAKD's task); targets are softened with the
network's own previous-epoch predictions, the deeper branch teaches the shallower one
(one-to-one, deep to shallow) and every branch's pooled feature is pulled to the backbone's.
The branches are removed at export: ``model_final.pth`` is the plain torchvision ResNet.
docs/methods.md lists what the paper says and what we chose where it is silent.
"""

import copy
from itertools import pairwise

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.config.types import CN, FRACTION, NON_NEGATIVE, POSITIVE
from pretrain.methods.base import Method, distillation_kl, module_bytes, soft_cross_entropy
from pretrain.methods.pskd import TargetStatistics, alpha_at
from pretrain.runtime.distributed import get_world_size

# The self-supervised transformations: rotations by j * 90 degrees, j = 0..M-1 (HSAKD's).
ROTATIONS = 4
# torchvision's stage widths (``planes``; a Bottleneck stage outputs 4x as many channels).
STAGE_PLANES = (64, 128, 256, 512)


def rotate_batch(images):
    """(B, C, H, W) -> (B * M, C, H, W): each image followed by its rotations by 90, 180 and
    270 degrees (row ``i * M + j`` is image i rotated j times), in the input's memory format."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"LSSKD rotates the crops: they must be square, got {tuple(images.shape[-2:])}"
        )
    rotated = torch.stack([torch.rot90(images, j, (2, 3)) for j in range(ROTATIONS)], dim=1)
    channels_last = (
        images.dim() == 4
        and images.is_contiguous(memory_format=torch.channels_last)
        and not images.is_contiguous()
    )
    return rotated.flatten(0, 1).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def joint_targets(targets):
    """Class targets (B, N) -> joint class x rotation targets (B * M, N * M) in the order of
    ``rotate_batch``: row ``i * M + j`` puts ``targets[i, c]`` on joint class ``c * M + j``."""
    b, n = targets.shape
    out = targets.new_zeros(b, ROTATIONS, n, ROTATIONS)
    for j in range(ROTATIONS):
        out[:, j, :, j] = targets
    return out.view(b * ROTATIONS, n * ROTATIONS)


def deep_to_shallow_kl(sad_logits, temperature):
    """sum over l < L of T^2 KL(softmax(s_{l+1} / T) || softmax(s_l / T)) per sample (batch
    mean), the deeper branch's distribution a constant: the one-to-one transfer between
    neighbouring stages."""
    n = sad_logits[0].shape[0]
    return (
        sum(distillation_kl(shallow, deep, temperature) for shallow, deep in pairwise(sad_logits))
        / n
    )


def feature_alignment(branch_features, final_feature):
    """sum over branches of the mean squared error between the branch's pooled feature and the
    backbone's pooled layer4 feature (a constant)."""
    target = final_feature.detach().float()
    return sum(F.mse_loss(f.float(), target) for f in branch_features)


def _auxiliary_branch(block, first_stage, num_outputs):
    """HSAKD's branch shape on the output of stage ``first_stage`` (0-based): a feature
    extractor that walks the remaining stages down to layer4's width, global average pooling
    and a linear classifier. One residual block per remaining stage (HSAKD copies whole stages;
    one block keeps a ResNet-152's branches a fraction of its cost); the layer4 branch gets one
    stride-1 block."""
    expansion = block.expansion
    inplanes = STAGE_PLANES[first_stage] * expansion
    blocks = []
    for stage in range(first_stage + 1, len(STAGE_PLANES)) or [len(STAGE_PLANES) - 1]:
        planes, stride = STAGE_PLANES[stage], 2 if stage > first_stage else 1
        downsample = None
        if stride != 1 or inplanes != planes * expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * expansion),
            )
        blocks.append(block(inplanes, planes, stride, downsample))
        inplanes = planes * expansion
    extractor = nn.Sequential(*blocks)
    for m in extractor.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return nn.ModuleDict({"extractor": extractor, "fc": nn.Linear(inplanes, num_outputs)})


class ResNetWithBranches(nn.Module):
    """A torchvision ResNet plus an auxiliary self-supervised branch on each stage's output.

    ``forward`` returns ``(logits, sad_logits, branch_features, final_feature)``: the ResNet's
    logits, per branch the (N * M) joint logits and the pooled feature, and the ResNet's pooled
    layer4 feature. The branches train with the network but are no part of it: ``model`` stays a
    plain torchvision ResNet, which is what gets exported.
    """

    def __init__(self, model, num_classes):
        super().__init__()
        self.model = model
        block = type(model.layer1[0])  # BasicBlock (R18/34) or Bottleneck (R50+)
        self.branches = nn.ModuleList(
            _auxiliary_branch(block, stage, num_classes * ROTATIONS)
            for stage in range(len(STAGE_PLANES))
        )
        self.branches.to(model.fc.weight.device)

    def forward(self, x):
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        stages = []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            x = layer(x)
            stages.append(x)
        final_feature = torch.flatten(m.avgpool(x), 1)
        sad_logits, branch_features = [], []
        for branch, feature in zip(self.branches, stages):
            pooled = torch.flatten(m.avgpool(branch["extractor"](feature)), 1)
            branch_features.append(pooled)
            sad_logits.append(branch["fc"](pooled))
        return m.fc(final_feature), sad_logits, branch_features, final_feature


class LayeredSelfSupervisedKD(Method):
    """Loss on the rotated batch (every image at 0, 90, 180, 270 degrees, HSAKD's task):

    CE(logits of the unrotated images, y_S) + sum_l CE(s_l, y_S,l)
    + KD_WEIGHT * deep_to_shallow_kl(s, TEMPERATURE) + FEAT_WEIGHT * feature_alignment,

    y_S = (1 - alpha_e) y + alpha_e p_{e-1}(x), y_S,l = (1 - alpha_e) y~ + alpha_e
    q_{e-1,l}(t_j(x)), with alpha_e = ALPHA_T (e + 1) / EPOCHS and the past predictions p, q from a
    frozen copy of the network and its branches as it was at the end of the previous epoch (eval
    mode; one-hot in epoch 0). A CutMix-ed batch trains on the area-mixed targets, unsoftened.

    Logged as ``loss_ce``, ``loss_branch_ce`` (the sum over the branches), ``loss_kd`` and
    ``loss_feat`` (each with its weight; a term whose weight is 0 is not computed), with the
    ``TargetStatistics`` of y_S (the backbone's targets; from epoch 1, unmixed batches).
    """

    name = "lsskd"
    label = "LSSKD"
    config_ranges = {
        "LSSKD.ALPHA_T": FRACTION,
        "LSSKD.TEMPERATURE": POSITIVE,
        "LSSKD.KD_WEIGHT": NON_NEGATIVE,
        "LSSKD.FEAT_WEIGHT": NON_NEGATIVE,
    }

    @staticmethod
    def add_config(cfg):
        # LSSKD: CE(y_S) + sum_l CE(branch l, y_S,l) + KD_WEIGHT * deep-to-shallow KL at TEMPERATURE
        # + FEAT_WEIGHT * branch-to-backbone feature MSE, on the batch rotated by 0/90/180/270
        # degrees; targets softened with the previous epoch's predictions,
        # alpha_e = ALPHA_T * (e + 1) / EPOCHS. The paper gives no values: PS-KD's alpha_T,
        # HSAKD's temperature, unit weights (docs/methods.md).
        cfg.LSSKD = CN()
        cfg.LSSKD.ALPHA_T = 0.8
        cfg.LSSKD.TEMPERATURE = 3.0
        cfg.LSSKD.KD_WEIGHT = 1.0
        cfg.LSSKD.FEAT_WEIGHT = 1.0

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg.LSSKD
        self.alpha_T, self.temperature = cfg.ALPHA_T, cfg.TEMPERATURE
        self.kd_weight, self.feat_weight = cfg.KD_WEIGHT, cfg.FEAT_WEIGHT
        self.net = None
        self.previous = None  # the previous epoch's network and branches, frozen; None in epoch 0
        self.target_statistics = TargetStatistics(ctx.device)

    def settings(self):
        return [
            f"{ROTATIONS} rotations, joint labels c * {ROTATIONS} + j; branches on layer1-4, "
            "trained, not exported",
            (
                f"alpha_T {self.alpha_T:g} (alpha_e = alpha_T * (e + 1) / {self.ctx.epochs}), past "
                "predictions from the previous epoch's network (frozen copy, eval mode, extra "
                "forward)"
            ),
            (
                f"deep-to-shallow KL weight {self.kd_weight:g} at T {self.temperature:g}, "
                f"feature alignment weight {self.feat_weight:g}"
            ),
            "a CutMix-ed batch trains on unsoftened mixed targets",
        ]

    def wrap_model(self, model):
        self.net = ResNetWithBranches(model, self.ctx.num_classes)
        return self.net

    def frozen_copy(self):
        """The network and its branches as they are now: eval mode, no gradients."""
        previous = copy.deepcopy(self.net).eval().requires_grad_(False)
        for p in previous.parameters():
            p.grad = None
        return previous

    def alpha(self):
        return alpha_at(self.epoch, self.ctx.epochs, self.alpha_T)

    @torch.no_grad()
    def on_epoch_start(self, epoch, model):
        super().on_epoch_start(epoch, model)
        if epoch == 0:
            self.previous = None
            return
        self.previous = self.frozen_copy()
        # Rank 0's copy everywhere, as a checkpoint stores it: after an epoch's last step each
        # rank's BatchNorm buffers still hold its own last update.
        if get_world_size() > 1:
            for tensor in self.previous.state_dict().values():
                dist.broadcast(tensor, 0)

    def extra_memory(self):
        return {} if self.previous is None else {"previous_model": module_bytes(self.previous)}

    def training_step(self, model, images, labels, indices):
        images, targets, mix = self.mix_batch(images, labels)
        rotated = rotate_batch(images)
        past = None
        if mix is None and self.previous is not None:
            with torch.no_grad():
                past_logits, past_sad, _, _ = self.previous(rotated)
            past = past_logits[::ROTATIONS], past_sad
        logits, sad_logits, branch_features, final_feature = model(rotated)
        sad_targets = [joint_targets(targets)] * len(sad_logits)
        if past is not None:
            alpha = self.alpha()
            past_probs = past[0].float().softmax(dim=1)
            targets = (1 - alpha) * targets + alpha * past_probs
            self.target_statistics.add(targets, past_probs, labels)
            sad_targets = [
                (1 - alpha) * t + alpha * s.float().softmax(dim=1)
                for t, s in zip(sad_targets, past[1])
            ]
        losses = {
            "loss_ce": soft_cross_entropy(logits[::ROTATIONS], targets),
            "loss_branch_ce": sum(
                soft_cross_entropy(s, t) for s, t in zip(sad_logits, sad_targets)
            ),
        }
        if self.kd_weight:
            losses["loss_kd"] = self.kd_weight * deep_to_shallow_kl(sad_logits, self.temperature)
        if self.feat_weight:
            losses["loss_feat"] = self.feat_weight * feature_alignment(
                branch_features, final_feature
            )
        return losses, logits[::ROTATIONS]

    def log_statistics(self):
        return self.target_statistics.read()

    def state_dict(self):
        # The engine saves the plain model; the branches (and the frozen previous network) travel
        # with the method.
        return dict(
            super().state_dict(),
            branches=self.net.branches.state_dict(),
            previous=None if self.previous is None else self.previous.state_dict(),
        )

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.net.branches.load_state_dict(state["branches"])
        self.previous = None
        if state["previous"] is not None:
            self.previous = self.frozen_copy()
            self.previous.load_state_dict(state["previous"])
