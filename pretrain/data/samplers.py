"""Training and evaluation samplers: they yield ``(index, sample_seed)`` keys.

Every sample is keyed by its stable index (its position in the dataset's sample list, the same
on every rank): PS-KD's prediction table is addressed by it. Augmentation randomness is seeded
per sample from (SEED, epoch, index), so a batch's pixels do not depend on the number of
loader workers or on where a resumed run restarted.
"""

import contextlib

import torch
from torch.utils.data import Sampler


def sample_seed(seed, epoch, index):
    """Seed of one sample's augmentation: distinct for every (run seed, epoch, index)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 2_654_435_761) % (2**63 - 1)


@contextlib.contextmanager
def seeded_rng(seed):
    """Inside the block torch's global CPU generator starts from ``seed`` (what the torchvision
    transforms draw from); after it, the generator is back where it was, so loading in the
    main process leaves the training's stream (CutMix, checkpointed) untouched. The same as
    ``torch.random.fork_rng(devices=[])`` with ``manual_seed``, without its device bookkeeping,
    which runs once per sample."""
    generator = torch.random.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


class ShardedSampler(Sampler):
    """One global order per epoch (a permutation seeded by (seed, epoch) when shuffling),
    padded to a multiple of the world size when ``pad`` (training, as DistributedSampler does),
    and dealt out rank::world_size. Yields ``(index, sample_seed)``.

    ``set_epoch`` selects the epoch; ``set_start(k)`` skips this rank's first k samples of it
    (resuming mid-epoch). Without padding (evaluation) every index is seen exactly once overall.
    """

    def __init__(self, num_samples, rank=0, world_size=1, seed=0, shuffle=True, pad=True):
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle, self.pad = seed, shuffle, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch):
        self.epoch, self.start = epoch, 0

    def set_start(self, start):
        self.start = start

    def global_order(self, epoch):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.pad:
            total = -(-self.num_samples // self.world_size) * self.world_size
            order = torch.cat([order, order[: total - self.num_samples]])
        return order

    def local_order(self):
        return self.global_order(self.epoch)[self.rank :: self.world_size]

    def __len__(self):
        if self.pad:
            return -(-self.num_samples // self.world_size) - self.start
        return len(range(self.rank, self.num_samples, self.world_size)) - self.start

    def __iter__(self):
        for index in self.local_order()[self.start :].tolist():
            yield index, sample_seed(self.seed, self.epoch, index)
