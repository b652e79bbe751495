"""CS-KD (class-wise self-knowledge distillation, Yun et al., CVPR 2020): the prediction on a
sample is pulled towards the prediction on another sample of the same class."""

import torch
from torch.utils.data import Sampler

from pretrain.config.types import CN, NON_NEGATIVE, POSITIVE
from pretrain.data.samplers import ShardedSampler, sample_seed
from pretrain.methods.base import Method, distillation_kl, soft_cross_entropy


class ClassPairSampler(Sampler):
    """Per step, ``batch_size`` anchors followed by one partner per anchor.

    Anchors are this rank's shard of the epoch's global order (``ShardedSampler``: every anchor
    once per epoch over all ranks). Each position of the global order gets a partner drawn
    uniformly, with replacement, from all training samples of the anchor's class (possibly the
    anchor itself, as the reference code): the draw uses the whole dataset's class index, not
    the rank's shard, and depends only on (seed, epoch), so every rank agrees and a resumed
    epoch draws the same partners. Partners get their own augmentation seeds, so an anchor drawn
    as its own partner is still a second, independently augmented view.

    Yields ``(index, sample_seed)`` keys: anchors 0..B-1 of a step, then their partners in the
    same order; the loader batches 2B keys per step. ``set_start(k)`` skips this rank's first
    k keys of the epoch.
    """

    def __init__(self, labels, batch_size, rank=0, world_size=1, seed=0):
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.anchors = ShardedSampler(len(self.labels), rank, world_size, seed=seed)
        # The class index: sample ids grouped by class, with each class's offset and size.
        self.by_class = torch.argsort(self.labels, stable=True)
        self.class_size = torch.bincount(self.labels)
        self.class_start = torch.cumsum(self.class_size, 0) - self.class_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch):
        self.anchors.set_epoch(epoch)
        self.epoch, self.start = epoch, 0

    def set_start(self, start):
        self.start = start

    def __len__(self):
        return 2 * len(self.anchors) - self.start  # the anchor sampler itself never skips

    def partners(self, order):
        """A partner of the same class for every position of the global order ``order``."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 2**40)
        u = torch.rand(len(order), generator=g, dtype=torch.float64)
        cls = self.labels[order]
        offset = (u * self.class_size[cls]).long().clamp_(max=self.class_size[cls] - 1)
        return self.by_class[self.class_start[cls] + offset]

    def __iter__(self):
        order = self.anchors.global_order(self.epoch)
        num = len(self.labels)
        positions = torch.arange(self.rank, len(order), self.world_size)
        anchors = order[positions].tolist()
        partners = self.partners(order)[positions].tolist()
        keys = []
        for s in range(0, len(anchors), self.batch_size):
            keys += [
                (i, sample_seed(self.seed, self.epoch, i)) for i in anchors[s : s + self.batch_size]
            ]
            # Partner seeds are keyed by the global position: distinct from every anchor seed.
            keys += [
                (i, sample_seed(self.seed, self.epoch, num + p))
                for i, p in zip(
                    partners[s : s + self.batch_size], positions[s : s + self.batch_size].tolist()
                )
            ]
        yield from keys[self.start :]


def cskd_loss(logits, partner_logits, temperature):
    """T^2 * KL(softmax(partner / T) || softmax(logits / T)), summed over classes and averaged
    over the batch; the partner side is a constant."""
    return distillation_kl(logits, partner_logits, temperature) / logits.shape[0]


class ClassWiseSelfKD(Method):
    """Loss = CE(anchor logits, y) + lambda * cskd_loss(anchor logits, partner logits, T), logged
    as ``loss_ce`` and ``loss_kd``.

    The partner forward runs under no_grad with the current weights, in train mode (so, as in
    the reference code, it also updates the BatchNorm running statistics). With CutMix the
    partners are mixed with the anchors' draw (same box, same partner positions): each mixed
    partner image holds the same two classes in the same proportions as its mixed anchor.
    """

    name = "cskd"
    label = "CS-KD"
    config_ranges = {"CSKD.TEMPERATURE": POSITIVE, "CSKD.LAMBDA": NON_NEGATIVE}

    @staticmethod
    def add_config(cfg):
        # CS-KD: CE + LAMBDA * TEMPERATURE^2 * KL(partner || anchor), partners of the anchor's
        # class.
        # Defaults: the CS-KD paper's CIFAR values (ImageNet values were never published).
        cfg.CSKD = CN()
        cfg.CSKD.TEMPERATURE = 4.0
        cfg.CSKD.LAMBDA = 1.0

    @classmethod
    def config_problems(cls, cfg):
        if cfg.METHOD.NAME == cls.name and cfg.DATA.ON_BAD_IMAGE != "error":
            return [
                "METHOD.NAME cskd pairs anchors and partners by their position in the batch; a "
                "skipped image would misalign the pairs: use DATA.ON_BAD_IMAGE error"
            ]
        return []

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.temperature, self.lam = cfg.CSKD.TEMPERATURE, cfg.CSKD.LAMBDA

    def settings(self):
        return [
            f"T {self.temperature:g}, lambda {self.lam:g}",
            "one partner per anchor drawn from the anchor's class over the whole training set "
            "(uniform, with replacement), partner forward under no_grad",
        ]

    def build_train_sampler(self, num_samples, rank, world_size, seed):
        return ClassPairSampler(
            self.ctx.train_labels, self.ctx.per_rank_batch, rank, world_size, seed
        )

    def loader_batch_size(self, per_rank_batch):
        return 2 * per_rank_batch

    def training_step(self, model, images, labels, indices):
        n = images.shape[0] // 2
        anchors, partners, labels = images[:n], images[n:], labels[:n]
        anchors, targets, mix = self.mix_batch(anchors, labels)
        if mix is not None:
            partners = mix.images(partners)
        logits = model(anchors)
        with torch.no_grad():
            partner_logits = model(partners)
        losses = {
            "loss_ce": soft_cross_entropy(logits, targets),
            "loss_kd": self.lam * cskd_loss(logits, partner_logits, self.temperature),
        }
        return losses, logits
