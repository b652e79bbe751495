"""USKD's target term with mixed labels whose label columns have different batch means, and a
sample mixed with its own class (its second label weighs 0). Worked out by hand."""

import math

import pytest
import torch

from pretrain.methods.uskd import uskd_loss
from test_methods import U_LOGITS, U_WEAK


def test_uskd_target_weights_use_per_column_means_and_skip_zero_weights():
    # s: row 0 [1/2, 1/4, 1/4], row 1 [1/4, 1/4, 1/2].
    # Row 0 (one class): labels 0 and a zero-weight class (s 1/4 either way); row 1: labels 2, 1.
    gt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.4, 0.6]])
    # s_t^2: row 0 [1/4, 1/16], row 1 [1/4, 1/16] -> column means 1/4 and 1/16.
    w = [[1 / 4 + 1.0 - 1 / 4, 0.0], [1 / 4 + 0.6 - 1 / 4, 1 / 16 + 0.4 - 1 / 16]]
    expected = (
        -((w[0][0] * math.log(1 / 2)) + (w[1][0] * math.log(1 / 2) + w[1][1] * math.log(1 / 4))) / 2
    )
    assert uskd_loss(U_LOGITS, U_WEAK, gt, 1.0, 0.0, 0.0).item() == pytest.approx(expected)
    # Both rows mixed: the per-column means (1/4, 1/16) cancel each row's own s_t^2.
    gt = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.4, 0.6]])
    expected = (
        -(
            (0.8 * math.log(1 / 2) + 0.2 * math.log(1 / 4))
            + (0.6 * math.log(1 / 2) + 0.4 * math.log(1 / 4))
        )
        / 2
    )
    assert uskd_loss(U_LOGITS, U_WEAK, gt, 1.0, 0.0, 0.0).item() == pytest.approx(expected)
