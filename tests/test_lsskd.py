"""LSSKD: the rotated batch and its joint labels, each loss term against a hand-computed value,
the branches on every ResNet depth, the previous-epoch network, and the export."""

import math

import pytest
import torch
import torchvision
from torch import nn

from pretrain.methods.base import total_loss
from pretrain.methods.lsskd import (
    ROTATIONS,
    ResNetWithBranches,
    deep_to_shallow_kl,
    feature_alignment,
    joint_targets,
    rotate_batch,
)
from pretrain.models import build_resnet
from test_methods import make_method

LN = math.log


pytestmark = pytest.mark.usefixtures("one_thread")


def test_rotate_batch_follows_each_image_by_its_rotations():
    # One channel, 2x2: [[a, b], [c, d]] rotated by 90 degrees (rot90 over H, W) is [[b, d], [a,
    # c]].
    a, b, c, d = 1.0, 2.0, 3.0, 4.0
    x = torch.tensor([[[[a, b], [c, d]]], [[[5.0, 6.0], [7.0, 8.0]]]])
    out = rotate_batch(x)
    assert out.shape == (2 * ROTATIONS, 1, 2, 2)
    assert out[0, 0].tolist() == [[a, b], [c, d]]
    assert out[1, 0].tolist() == [[b, d], [a, c]]
    assert out[2, 0].tolist() == [[d, c], [b, a]]
    assert out[3, 0].tolist() == [[c, a], [d, b]]
    assert out[4, 0].tolist() == [[5.0, 6.0], [7.0, 8.0]]  # the second image starts at row M


def test_rotate_batch_keeps_channels_last_and_refuses_non_square_crops():
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert rotate_batch(x).is_contiguous(memory_format=torch.channels_last)
    # A plain batch, and one that is neither format (transposed), come out plain.
    for x in (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4).transpose(2, 3)):
        out = rotate_batch(x)
        assert out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.randn(1, 3, 4, 6))


def test_joint_targets_put_each_class_weight_on_class_times_m_plus_rotation():
    targets = torch.tensor([[0.7, 0.3, 0.0]])  # N = 3, e.g. a CutMix-ed sample
    out = joint_targets(targets)
    assert out.shape == (ROTATIONS, 3 * ROTATIONS)
    for j in range(ROTATIONS):
        expected = torch.zeros(3 * ROTATIONS)
        expected[0 * ROTATIONS + j], expected[1 * ROTATIONS + j] = 0.7, 0.3
        assert torch.equal(out[j], expected)
    # Hard labels: the joint label of image i at rotation j is y_i * M + j (HSAKD's).
    hard = joint_targets(torch.eye(3)[[2, 0]])
    assert hard.argmax(dim=1).tolist() == [2 * 4 + j for j in range(4)] + [
        0 * 4 + j for j in range(4)
    ]


def test_deep_to_shallow_kl_sums_neighbouring_pairs_with_the_deeper_as_constant():
    # T = 2. Logits / T: s1 [0, 0] -> [1/2, 1/2]; s2 [0, ln 3] -> [1/4, 3/4]; s3 [ln 3, 0] -> [3/4,
    # 1/4].
    s1 = torch.tensor([[0.0, 0.0]], requires_grad=True)
    s2 = torch.tensor([[0.0, 2 * LN(3)]], requires_grad=True)
    s3 = torch.tensor([[2 * LN(3), 0.0]], requires_grad=True)
    kl_21 = 1 / 4 * LN((1 / 4) / (1 / 2)) + 3 / 4 * LN((3 / 4) / (1 / 2))
    kl_32 = 3 / 4 * LN(3) + 1 / 4 * LN(1 / 3)  # not KL(p3 || p1): pairs are one-to-one
    loss = deep_to_shallow_kl([s1, s2, s3], temperature=2.0)
    assert loss.item() == pytest.approx(4 * (kl_21 + kl_32))
    loss.backward()
    assert s3.grad is None or s3.grad.abs().sum() == 0  # the deepest branch only teaches
    assert s1.grad.abs().sum() > 0


def test_deep_to_shallow_kl_is_a_batch_mean():
    s1 = torch.zeros(2, 2)
    s2 = torch.tensor([[0.0, LN(3)], [0.0, LN(3)]])
    one = deep_to_shallow_kl([s1[:1], s2[:1]], 1.0)
    assert deep_to_shallow_kl([s1, s2], 1.0).item() == pytest.approx(one.item())


def test_feature_alignment_is_the_mse_to_the_backbone_feature():
    final = torch.tensor([[1.0, 0.0]], requires_grad=True)
    feats = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])]
    loss = feature_alignment(feats, final)
    assert loss.item() == pytest.approx((0 + 4) / 2 + (1 + 0) / 2)
    assert not loss.requires_grad  # the backbone's feature is the constant target


class Fixed(torch.nn.Module):
    """Returns fixed (logits, sad_logits, features, final feature) for the 4 rotated rows of
    one image: the arithmetic of training_step on known numbers."""

    def __init__(self, logits, sad, features=None):
        super().__init__()
        sad = sad if isinstance(sad, list) else [sad]
        features = [torch.zeros(ROTATIONS, 2)] if features is None else features
        self.out = logits, sad, features, torch.zeros(ROTATIONS, 2)

    def forward(self, x):
        assert x.shape[0] == ROTATIONS  # the step feeds the rotated batch
        return self.out


# N = 2, label 1. Current network: logits [ln 3, 0] -> [3/4, 1/4] on the unrotated image (row 0);
# its branch gives ln 2 to the true joint class 1 * M + j of row j -> 2/9 there, 1/9 elsewhere.
CUR_LOGITS = torch.tensor([[LN(3), 0.0]] + [[0.0, 0.0]] * 3)
CUR_SAD = torch.zeros(ROTATIONS, 2 * ROTATIONS)
for _j in range(ROTATIONS):
    CUR_SAD[_j, 1 * ROTATIONS + _j] = LN(2)


def step(m, net=None):
    """The step's loss terms, as numbers."""
    net = net or Fixed(CUR_LOGITS, CUR_SAD)
    losses, logits = m.training_step(
        net, torch.zeros(1, 3, 4, 4), torch.tensor([1]), torch.tensor([0])
    )
    assert torch.equal(logits, CUR_LOGITS[:1])
    return {name: value.item() for name, value in losses.items()}


def lsskd(**overrides):
    """A one-image method with the KL and feature terms off unless ``overrides`` set them."""
    return make_method(
        "lsskd",
        labels=[1],
        num_classes=2,
        batch=1,
        epochs=2,
        **{"LSSKD__KD_WEIGHT": 0.0, "LSSKD__FEAT_WEIGHT": 0.0, **overrides},
    )


def test_first_epoch_trains_on_hard_labels_and_joint_labels():
    m = lsskd()
    m.on_epoch_start(0, None)
    # CE of the unrotated image on label 1, plus the branch's CE on joint label 1 * M + j.
    assert step(m) == pytest.approx({"loss_ce": -LN(1 / 4), "loss_branch_ce": -LN(2 / 9)})
    assert m.log_statistics() == {}  # no past prediction in epoch 0


def test_later_epochs_soften_both_targets_with_the_previous_network():
    m = lsskd(LSSKD__ALPHA_T=0.5)
    m.epoch = 1  # alpha_1 = 0.5 * 2 / 2 = 0.5
    # Previous network: [0, ln 3] -> [1/4, 3/4] on the unrotated image; uniform joint distribution.
    m.previous = Fixed(
        torch.tensor([[0.0, LN(3)]] * ROTATIONS), torch.zeros(ROTATIONS, 2 * ROTATIONS)
    )
    y_s = [0.5 * 0 + 0.5 / 4, 0.5 * 1 + 0.5 * 3 / 4]  # [1/8, 7/8]
    main = -(y_s[0] * LN(3 / 4) + y_s[1] * LN(1 / 4))
    # Joint target: 0.5 on class M + j plus 0.5 / 8 everywhere -> 9/16 there, 1/16 on the 7 others.
    sad = -(9 / 16 * LN(2 / 9) + 7 / 16 * LN(1 / 9))
    assert step(m) == pytest.approx({"loss_ce": main, "loss_branch_ce": sad})
    # y_S puts 7/8 on the label; the previous network 3/4, also its top probability.
    assert m.log_statistics() == pytest.approx(
        {
            "self_kd/target_label_prob": 7 / 8,
            "self_kd/past_label_prob": 3 / 4,
            "self_kd/past_top_prob": 3 / 4,
        }
    )


def test_kd_and_feature_weights_add_their_terms():
    shallow = torch.zeros(ROTATIONS, 2 * ROTATIONS)
    net = Fixed(
        CUR_LOGITS,
        [shallow, CUR_SAD],
        features=[torch.ones(ROTATIONS, 2), torch.zeros(ROTATIONS, 2)],
    )
    plain = step(lsskd(), net)
    kl = deep_to_shallow_kl([shallow, CUR_SAD], 3.0).item()
    assert kl > 0
    assert list(plain) == ["loss_ce", "loss_branch_ce"]  # weights 0: the terms are not computed
    assert step(lsskd(LSSKD__KD_WEIGHT=0.25), net) == pytest.approx(dict(plain, loss_kd=0.25 * kl))
    # Features: ones against the backbone's zeros -> MSE 1 for the first branch, 0 for the second.
    assert step(lsskd(LSSKD__FEAT_WEIGHT=0.5), net) == pytest.approx(dict(plain, loss_feat=0.5))


@pytest.mark.parametrize(
    "arch, width",
    [
        ("resnet18", 512),
        ("resnet34", 512),
        ("resnet50", 2048),
        ("resnet101", 2048),
        ("resnet152", 2048),
    ],
)
def test_a_branch_on_every_stage_of_every_depth(arch, width):
    with torch.device("meta"):  # shapes only
        net = ResNetWithBranches(build_resnet(arch, 5), 5)
    assert len(net.branches) == 4
    assert all(
        b["fc"].in_features == width and b["fc"].out_features == 5 * ROTATIONS for b in net.branches
    )


def test_branches_leave_the_logits_alone_and_the_export_is_a_plain_resnet():
    torch.manual_seed(0)
    model = build_resnet("resnet18", 5, cifar_stem=True).eval()
    net = ResNetWithBranches(model, 5).eval()
    x = torch.randn(2, 3, 16, 16)
    logits, sad, feats, _ = net(x)
    assert torch.allclose(logits, model(x))
    assert [s.shape for s in sad] == [(2, 20)] * 4 and [f.shape for f in feats] == [(2, 512)] * 4
    plain = build_resnet("resnet18", 5, cifar_stem=True).state_dict()
    assert set(model.state_dict()) == set(plain)
    assert not any(k.startswith("branches") for k in model.state_dict())
    tv = torchvision.models.resnet18(num_classes=5).state_dict()
    assert set(build_resnet("resnet18", 5).state_dict()) == set(tv)


def test_branches_and_previous_network_are_trained_checkpointed_and_restored():
    m = make_method("lsskd", labels=[0, 1, 2, 3], num_classes=4, epochs=2)
    module = m.wrap_model(build_resnet("resnet18", 4))
    m.on_epoch_start(0, module.model)
    assert m.previous is None
    losses, logits = m.training_step(
        module, torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), torch.arange(4)
    )
    total_loss(losses).backward()
    assert logits.shape == (4, 4)
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in module.branches[0]["fc"].parameters()
    )
    m.on_epoch_start(1, module.model)
    snapshot = m.previous.branches[0]["fc"].weight.clone()
    assert torch.equal(snapshot, module.branches[0]["fc"].weight)
    assert not any(p.requires_grad or p.grad is not None for p in m.previous.parameters())
    with torch.no_grad():
        module.branches[0]["fc"].weight.add_(1.0)  # the copy is frozen, not shared
    assert torch.equal(m.previous.branches[0]["fc"].weight, snapshot)

    other = make_method("lsskd", labels=[0, 1, 2, 3], num_classes=4, epochs=2)
    other.wrap_model(build_resnet("resnet18", 4))
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.net.branches[0]["fc"].weight, module.branches[0]["fc"].weight)
    assert (
        torch.equal(other.previous.branches[0]["fc"].weight, snapshot)
        and not other.previous.training
    )
    assert "branches on layer1-4" in m.describe()


def test_a_checkpoint_written_in_the_first_epoch_restores_without_a_previous_network():
    # A run interrupted during its first epoch: no previous network exists yet, and the restored
    # method must train that epoch on the hard labels, as the uninterrupted run does.
    m = make_method("lsskd", labels=[0, 1, 2, 3], num_classes=4, epochs=2)
    m.wrap_model(build_resnet("resnet18", 4))
    m.on_epoch_start(0, m.net.model)
    state = m.state_dict()
    assert state["previous"] is None
    other = make_method("lsskd", labels=[0, 1, 2, 3], num_classes=4, epochs=2)
    other.wrap_model(build_resnet("resnet18", 4))
    other.load_state_dict(state)
    assert other.previous is None
    assert other.state_dict()["previous"] is None


def _block(block):
    """(output channels, stride, downsample) of a torchvision BasicBlock or Bottleneck."""
    convs = [
        m
        for name, m in block.named_modules()
        if isinstance(m, nn.Conv2d) and not name.startswith("downsample")
    ]
    ds = block.downsample
    if ds is not None:
        assert [type(m) for m in ds] == [nn.Conv2d, nn.BatchNorm2d]
        assert ds[0].kernel_size == (1, 1) and ds[0].bias is None
        ds = (ds[0].in_channels, ds[0].out_channels, ds[0].stride[0])
    return convs[-1].out_channels, max(c.stride[0] for c in convs), ds


@pytest.mark.parametrize("arch, e", [("resnet18", 1), ("resnet50", 4)])
def test_each_branch_walks_the_remaining_stages_one_block_each(arch, e):
    with torch.device("meta"):  # shapes only
        net = ResNetWithBranches(build_resnet(arch, 5), 5)
    # Per branch (on layer1..layer4): per block (out channels, stride, downsample (in, out,
    # stride)). The layer4 branch: one stride-1 block of layer4's width, no downsample.
    expected = [
        [(128 * e, 2, (64 * e, 128 * e, 2)), (256 * e, 2, (128 * e, 256 * e, 2))]
        + [(512 * e, 2, (256 * e, 512 * e, 2))],
        [(256 * e, 2, (128 * e, 256 * e, 2)), (512 * e, 2, (256 * e, 512 * e, 2))],
        [(512 * e, 2, (256 * e, 512 * e, 2))],
        [(512 * e, 1, None)],
    ]
    assert [[_block(b) for b in branch["extractor"]] for branch in net.branches] == expected


def test_branch_convolutions_get_torchvisions_initialisation():
    torch.manual_seed(0)
    net = ResNetWithBranches(build_resnet("resnet18", 5), 5)
    conv = net.branches[0]["extractor"][0].conv1  # 64 -> 128, 3x3
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std sqrt(2 / (128 * 9)) (fan_in:
    # sqrt(2 / (64 * 9)), 41% more).
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)


def test_branches_are_made_on_the_model_device():
    with torch.device("meta"):
        model = build_resnet("resnet18", 5)
    net = ResNetWithBranches(model, 5)  # outside the meta context: only .to() moves them
    assert {p.device.type for p in net.branches.parameters()} == {"meta"}


def test_lsskd_describes_its_task_targets_and_terms():
    assert make_method("lsskd", epochs=4).describe() == "; ".join(
        [
            "lsskd: 4 rotations, joint labels c * 4 + j; branches on layer1-4, trained, not "
            "exported",
            "alpha_T 0.8 (alpha_e = alpha_T * (e + 1) / 4), past predictions from the previous "
            "epoch's network (frozen copy, eval mode, extra forward)",
            "deep-to-shallow KL weight 1 at T 3, feature alignment weight 1",
            "a CutMix-ed batch trains on unsoftened mixed targets",
            "no CutMix",
        ]
    )
