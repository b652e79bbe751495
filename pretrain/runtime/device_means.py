"""Means of values a training step measures on the device, read on the host only when they are
logged: reading a device tensor every step would make the host wait for the GPU's queue
(tests/test_host_syncs.py), so steps only add to device sums and a log line reads them all at
once."""

import torch

from pretrain.runtime import distributed as du


class DeviceMeans:
    """Sums of named device scalars and the count they are means over.

    ``add`` sums on the device and counts on the host (no synchronisation); ``read`` (a
    collective: every rank calls it at the same step) all-reduces sums and counts in one call,
    returns the means over every rank and starts again.
    """

    def __init__(self, names, device):
        self.names = list(names)
        self.sums = torch.zeros(len(self.names), device=device)
        self.count = 0

    def add(self, values, count=1):
        """``values``: {name: device scalar} with exactly ``names``, in that order (each a sum
        over ``count`` steps or samples; a host number)."""
        if list(values) != self.names:
            raise ValueError(f"expected the values {self.names}, got {list(values)}")
        self.sums += torch.stack([v.detach().float() for v in values.values()])
        self.count += count

    def read(self):
        """{name: mean over every rank since the last read}; {} when no rank counted any."""
        totals = torch.cat([self.sums, self.sums.new_tensor([self.count])])
        *sums, count = du.all_reduce_sum(totals).tolist()
        self.sums.zero_()
        self.count = 0
        return dict(zip(self.names, (s / count for s in sums))) if count else {}
