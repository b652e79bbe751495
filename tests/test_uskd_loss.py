"""USKD's loss worked out by hand: the target term with mixed labels whose label columns have
different batch means and a sample mixed with its own class (its second label weighs 0), the
non-target ranking when the weak head is certain, and the device every tensor lives on."""

import math

import pytest
import torch

from pretrain.methods.base import total_loss
from pretrain.methods.uskd import ResNetWithWeakHead, uskd_loss
from pretrain.models import build_resnet
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
    assert uskd_loss(U_LOGITS, U_WEAK, gt, 1.0, 0.0, 0.0)["loss_target"].item() == pytest.approx(
        expected
    )
    # Both rows mixed: the per-column means (1/4, 1/16) cancel each row's own s_t^2.
    gt = torch.tensor([[0.8, 0.2, 0.0], [0.0, 0.4, 0.6]])
    expected = (
        -(
            (0.8 * math.log(1 / 2) + 0.2 * math.log(1 / 4))
            + (0.6 * math.log(1 / 2) + 0.4 * math.log(1 / 4))
        )
        / 2
    )
    assert uskd_loss(U_LOGITS, U_WEAK, gt, 1.0, 0.0, 0.0)["loss_target"].item() == pytest.approx(
        expected
    )


def test_a_certain_weak_head_still_ranks_the_non_targets_by_its_probabilities():
    # The weak head gives the label all but 2.5e-8 of its mass: 1 - q_t rounds to 0 in float32,
    # and the +1e-6 in the denominator keeps the q term's sign (the ranking's order).
    weak = torch.tensor([[0.0, math.log(0.5e-8), math.log(2e-8), -60.0]])
    assert torch.softmax(weak, dim=1)[0, 0] == 1.0
    # Non-target logits nearly equal: q (x 1e6: 0.005, 0.02, 0) decides the ranks.
    logits = torch.tensor([[0.0, 0.0, -0.003, 0.003]])
    # Ranks over all classes: label 1, class 2 second, class 1 third, class 3 fourth: Zipf weights
    # 1/3, 1/2, 1/4 for classes 1, 2, 3, renormalised to 4/13, 6/13, 3/13.
    log_ns = torch.log_softmax(torch.tensor([0.0, -0.003, 0.003], dtype=torch.float64), dim=0)
    expected = -(torch.tensor([4 / 13, 6 / 13, 3 / 13], dtype=torch.float64) * log_ns).sum()
    loss = uskd_loss(logits, weak, torch.tensor([0]), 0.0, 1.0, 0.0)["loss_non_target"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("soft", [False, True])
def test_the_loss_keeps_every_tensor_on_the_logits_device(soft):
    # On the meta device, any tensor the loss makes on the CPU instead is an error, as it is on a
    # GPU.
    logits = torch.randn(4, 5, device="meta")
    gt = (
        torch.rand(4, 5, device="meta") if soft else torch.zeros(4, dtype=torch.long, device="meta")
    )
    assert total_loss(uskd_loss(logits, logits.clone(), gt, 1.0, 1.0, 1.0)).device.type == "meta"


def test_the_weak_head_is_made_on_the_model_device():
    with torch.device("meta"):
        model = build_resnet("resnet18", 5)
    assert ResNetWithWeakHead(model, 5).head.weight.device.type == "meta"
