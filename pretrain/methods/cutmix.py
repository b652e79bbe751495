"""CutMix (Yun et al., ICCV 2019), shared by every training method.

A draw picks which samples of the batch are mixed and, for each of them, a partner among them
(a permutation of the mixed samples); one box, cut from the partner and pasted into the sample,
is shared by the whole draw, as in the CutMix reference code. lambda ~ Beta(beta, beta) sets the
box's nominal area (1 - lambda of the image); the box is clipped at the image border and lambda
is then recomputed from the clipped area, so targets are mixed by the area actually pasted:
``lam * t_sample + (1 - lam) * t_partner``.

All randomness comes from torch's global CPU generator, which the engine checkpoints per rank:
a resumed run draws the same boxes.
"""

from dataclasses import dataclass

import torch

MODES = ("batch", "half")


def cutmix_box(height, width, lam, cy, cx):
    """The box of nominal area ``(1 - lam) * height * width`` centred at (cy, cx), clipped at
    the image border, as ``(y0, y1, x0, x1)``, and the lambda of the clipped box (the fraction
    of the image left untouched)."""
    cut = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * cut), int(width * cut)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


@dataclass
class Mix:
    """One CutMix draw: sample ``which[j]`` of the batch gets ``box`` cut from sample
    ``partner[j]``; ``lam`` is the fraction of each mixed image that is its own."""

    which: torch.Tensor  # (n,) batch positions of the mixed samples
    partner: torch.Tensor  # (n,) a permutation of ``which``
    box: tuple  # (y0, y1, x0, x1)
    lam: float

    def _on(self, device):
        # Asynchronous: a blocking host-to-device copy would stall every step on the GPU queue.
        return self.which.to(device, non_blocking=True), self.partner.to(device, non_blocking=True)

    def images(self, images):
        """The batch with the box pasted into the mixed samples (a new tensor)."""
        y0, y1, x0, x1 = self.box
        which, partner = self._on(images.device)
        out = images.clone()
        out[which, :, y0:y1, x0:x1] = images[partner, :, y0:y1, x0:x1]
        return out

    def targets(self, targets):
        """(B, K) targets with the mixed samples' rows replaced by ``lam * own + (1 - lam) *
        partner``."""
        which, partner = self._on(targets.device)
        out = targets.clone()
        out[which] = self.lam * targets[which] + (1.0 - self.lam) * targets[partner]
        return out

    def unmixed(self, batch_size):
        """Batch positions this draw left alone (on the CPU)."""
        keep = torch.ones(batch_size, dtype=torch.bool)
        keep[self.which] = False
        return keep.nonzero().flatten()


class CutMix:
    """When and how much to mix (AUG.CUTMIX).

    ``mode`` "batch": the whole batch is mixed with probability ``prob`` (the CutMix reference
    code); "half": every batch mixes ``round(prob * B)`` samples chosen at random and leaves the
    rest alone (the PS-KD paper's rule with prob 0.5: half PS-KD, half CutMix).
    """

    def __init__(self, prob=0.5, beta=1.0, mode="batch"):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"AUG.CUTMIX.PROB must be in [0, 1], got {prob}")
        if beta <= 0:
            raise ValueError(f"AUG.CUTMIX.BETA must be > 0, got {beta}")
        if mode not in MODES:
            raise ValueError(f"AUG.CUTMIX.PSKD_MODE must be one of {MODES}, got {mode!r}")
        self.prob, self.beta, self.mode = prob, beta, mode

    @classmethod
    def from_config(cls, cfg, mode="batch"):
        """The configured CutMix, or None when AUG.CUTMIX.ENABLED is off."""
        c = cfg.AUG.CUTMIX
        return cls(c.PROB, c.BETA, mode) if c.ENABLED else None

    def describe(self):
        if self.mode == "half":
            when = f"on {self.prob:g} of every batch"
        else:
            when = f"on whole batches with probability {self.prob:g}"
        return (
            f"CutMix {when}, lambda ~ Beta({self.beta:g}, {self.beta:g}), "
            "targets mixed by clipped box area"
        )

    def draw(self, batch_size, height, width):
        """A Mix for a batch of this size, or None when nothing is mixed this time."""
        if self.mode == "half":
            which = torch.randperm(batch_size)[: round(self.prob * batch_size)]
        elif float(torch.rand(())) < self.prob:
            which = torch.arange(batch_size)
        else:
            return None
        if which.numel() == 0:
            return None
        lam = float(
            torch.distributions.Beta(torch.tensor(self.beta), torch.tensor(self.beta)).sample()
        )
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        box, lam = cutmix_box(height, width, lam, cy, cx)
        partner = which[torch.randperm(which.numel())]
        return Mix(which, partner, box, lam)
