"""Each method's loss against its definition (docs/methods.md, the papers' equations) on fixed
tensors with hand-computed values; PS-KD with CutMix and with the previous-epoch model; CS-KD's pair
sampler; USKD's head; config validation and describe()."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision

from helpers import ROOT
from pretrain.cli import setup_cfg
from pretrain.config.checks import validate_config
from pretrain.config.defaults import get_cfg
from pretrain.engine.step import train_step
from pretrain.engine.trainer import Trainer
from pretrain.methods import METHODS, MethodContext, build_method
from pretrain.methods.base import module_bytes, total_loss
from pretrain.methods.cskd import ClassPairSampler, cskd_loss
from pretrain.methods.cutmix import CutMix
from pretrain.methods.tfkd import tfkd_kl
from pretrain.methods.uskd import ResNetWithWeakHead, uskd_loss
from pretrain.models import build_resnet

LN = math.log


pytestmark = pytest.mark.usefixtures("one_thread")


def make_method(name, labels=(0, 1, 2, 0), num_classes=3, batch=4, epochs=4, **overrides):
    cfg = get_cfg()
    cfg.METHOD.NAME = name
    cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES, cfg.MODEL.DEVICE = "resnet18", num_classes, "cpu"
    for key, value in overrides.items():
        node, attr = key.rsplit("__", 1)
        target = cfg
        for part in node.split("__"):
            target = getattr(target, part)
        setattr(target, attr, value)
    validate_config(cfg)  # as every tool does when it assembles a config
    return build_method(
        MethodContext(
            cfg=cfg,
            num_classes=num_classes,
            train_labels=list(labels),
            device=torch.device("cpu"),
            per_rank_batch=batch,
            epochs=epochs,
        )
    )


def fixed(logits):
    """A stand-in network that returns ``logits`` whatever the input."""
    return lambda images: logits


# -- baseline and label smoothing -------------------------------------------------------------
# logits [0, ln 3] -> probabilities [1/4, 3/4]
TWO = torch.tensor([[0.0, LN(3)]])


def test_baseline_is_cross_entropy():
    m = make_method("baseline", labels=[1], num_classes=2, batch=1)
    losses, _ = m.training_step(
        fixed(TWO), torch.zeros(1, 3, 4, 4), torch.tensor([1]), torch.tensor([0])
    )
    assert list(losses) == ["loss_ce"]
    assert losses["loss_ce"].item() == pytest.approx(-LN(0.75))


def test_label_smoothing_puts_eps_over_k_on_every_class():
    m = make_method("ls", labels=[1], num_classes=2, batch=1, LS__EPSILON=0.1)
    losses, _ = m.training_step(
        fixed(TWO), torch.zeros(1, 3, 4, 4), torch.tensor([1]), torch.tensor([0])
    )
    assert list(losses) == ["loss_ce"]
    # target [0.05, 0.95] (torch's convention), not [0.1, 0.9] (eps / (K - 1) on non-targets)
    assert losses["loss_ce"].item() == pytest.approx(-(0.05 * LN(0.25) + 0.95 * LN(0.75)))


def test_label_smoothing_differs_from_the_tfkd_convention_by_1e4_on_the_label():
    # The target the method trains on, read off the gradient: d loss / d z = softmax(z) - target.
    k = 1000
    m = make_method("ls", labels=[7], num_classes=k, batch=1, LS__EPSILON=0.1)
    z = torch.randn(1, k, requires_grad=True)
    losses, _ = m.training_step(
        lambda images: z, torch.zeros(1, 3, 4, 4), torch.tensor([7]), torch.tensor([0])
    )
    total_loss(losses).backward()
    target = (z.softmax(1) - z.grad).detach().double()[0]
    tfkd = torch.full((k,), 0.1 / (k - 1), dtype=torch.float64)
    tfkd[7] = 0.9
    gap = target - tfkd
    assert gap[7].item() == pytest.approx(1e-4, abs=1e-6)
    others = gap[torch.arange(k) != 7]  # 0.1 / 1000 - 0.1 / 999, read through float32 rounding
    assert others.mean().item() == pytest.approx(-1.0e-7, abs=5e-9) and others.abs().max() < 2e-7


def test_baseline_with_cutmix_mixes_targets_by_area():
    m = make_method(
        "baseline",
        labels=[0, 1],
        num_classes=2,
        batch=2,
        AUG__CUTMIX__ENABLED=True,
        AUG__CUTMIX__PROB=1.0,
    )
    logits = torch.tensor([[0.0, LN(3)], [LN(3), 0.0]])
    torch.manual_seed(1)
    mix = m.cutmix.draw(2, 8, 8)
    torch.manual_seed(1)
    losses, _ = m.training_step(
        fixed(logits), torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 1])
    )
    loss = total_loss(losses)
    lam, swapped = mix.lam, mix.partner.tolist() == [1, 0]
    own = lam if swapped else 1.0  # identity partners leave the batch unchanged
    # sample 0 (label 0) holds (1 - lam) of sample 1 (label 1) when the partners are swapped
    expected = -(own * LN(0.25) + (1 - own) * LN(0.75)) - (own * LN(0.25) + (1 - own) * LN(0.75))
    assert loss.item() == pytest.approx(expected / 2)


# -- CS-KD ------------------------------------------------------------------------------------
def test_cskd_kl_term():
    # T = 2. Sample 0: anchor [0, 2 ln 3] / 2 -> [1/4, 3/4]; partner [0, 0] -> [1/2, 1/2]:
    # KL = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3), times T^2 = 4.
    # Sample 1: identical predictions, KL 0. Batch mean: ln(4/3).
    anchor = torch.tensor([[0.0, 2 * LN(3)], [1.0, 2.0]])
    partner = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert cskd_loss(anchor, partner, 2.0).item() == pytest.approx(LN(4 / 3))


def test_cskd_step_is_ce_plus_lambda_kl_and_no_gradient_through_the_partner():
    m = make_method(
        "cskd", labels=[1, 1], num_classes=2, batch=1, CSKD__TEMPERATURE=2.0, CSKD__LAMBDA=0.5
    )
    assert m.loader_batch_size(1) == 2
    # The "network" is the identity on (B, 2) inputs: anchor row, then partner row.
    images = torch.tensor([[0.0, 2 * LN(3)], [0.0, 0.0]], requires_grad=True)
    losses, logits = m.training_step(
        lambda x: x * 1.0, images, torch.tensor([1, 1]), torch.tensor([0, 1])
    )
    p1 = 9 / 10  # softmax([0, 2 ln 3])[1]
    assert list(losses) == ["loss_ce", "loss_kd"]
    assert losses["loss_ce"].item() == pytest.approx(-LN(p1))
    assert losses["loss_kd"].item() == pytest.approx(0.5 * 4 * 0.5 * LN(4 / 3))  # lambda T^2 KL
    total_loss(losses).backward()
    assert images.grad[1].abs().sum() == 0 and images.grad[0].abs().sum() > 0
    assert logits.shape == (1, 2)


def test_cskd_refuses_skipping_unreadable_images():
    with pytest.raises(ValueError, match="ON_BAD_IMAGE"):
        make_method("cskd", DATA__ON_BAD_IMAGE="skip")


# -- CS-KD pair sampler -------------------------------------------------------------------------
LABELS = [0] * 5 + [1] * 3 + [2] * 6 + [3] * 2  # 16 samples


def steps(sampler, batch):
    keys = list(sampler)
    out = []
    while keys:
        n = min(2 * batch, len(keys)) // 2
        out.append((keys[:n], keys[n : 2 * n]))
        keys = keys[2 * n :]
    return out


def test_pair_sampler_partners_share_the_anchor_class():
    sampler = ClassPairSampler(LABELS, batch_size=3, rank=0, world_size=1, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for anchors, partners in steps(sampler, 3):
            assert [LABELS[i] for i, _ in anchors] == [LABELS[i] for i, _ in partners]
            # a partner's augmentation seed is its own, even when it is the anchor itself
            assert not {s for _, s in anchors} & {s for _, s in partners}


def test_pair_sampler_shards_anchors_and_draws_partners_globally():
    ranks = [ClassPairSampler(LABELS, 3, rank=r, world_size=2, seed=1) for r in range(2)]
    single = ClassPairSampler(LABELS, 3, rank=0, world_size=1, seed=1)
    anchors = [[i for a, _ in steps(s, 3) for i, _ in a] for s in ranks]
    assert len(anchors[0]) == len(anchors[1]) == 8
    assert sorted(anchors[0] + anchors[1]) == list(range(16))  # disjoint, all covered
    # Each rank's (anchor, partner) pairs are those of the single-process draw at its positions:
    # partners come from the whole class, not from the rank's shard.
    pairs = [[(a[0], p[0]) for aa, pp in steps(s, 3) for a, p in zip(aa, pp)] for s in ranks]
    whole = [(a[0], p[0]) for aa, pp in steps(single, 3) for a, p in zip(aa, pp)]
    assert pairs[0] == whole[0::2] and pairs[1] == whole[1::2]
    foreign = set()
    for epoch in range(5):
        ranks[0].set_epoch(epoch)
        mine = {i for a, _ in steps(ranks[0], 3) for i, _ in a}
        foreign |= {i for _, p in steps(ranks[0], 3) for i, _ in p} - mine
    assert foreign  # rank 0 draws partners that only rank 1 holds as anchors


def test_pair_sampler_changes_with_epoch_and_resumes_with_set_start():
    sampler = ClassPairSampler(LABELS, 3, rank=1, world_size=2, seed=4)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and len(first) == len(sampler) == 16
    sampler.set_epoch(1)
    sampler.set_start(6)  # resume after one step (2 x 3 keys)
    assert len(sampler) == 10 and list(sampler) == second[6:]
    again = ClassPairSampler(LABELS, 3, rank=1, world_size=2, seed=4)
    again.set_epoch(1)
    assert list(again) == second  # deterministic per (seed, epoch)


def test_pair_sampler_draws_every_class_member():
    sampler = ClassPairSampler(LABELS, 4, seed=0)
    seen = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        seen |= {i for _, p in steps(sampler, 4) for i, _ in p}
    assert seen == set(range(16))  # uniform over the class, including the anchor itself


# -- TF-KD ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction, divisor", [("mean", 2), ("batchmean", 1)])
def test_tfkd_kl_reductions(reduction, divisor):
    # B = 1, K = 2: student [1/4, 3/4], teacher [1/2, 1/2]: KL = 1/2 ln(4/3); "mean" divides by B*K.
    student, teacher = torch.tensor([[0.0, LN(3)]]), torch.zeros(1, 2)
    assert tfkd_kl(student, teacher, 1.0, reduction).item() == pytest.approx(
        0.5 * LN(4 / 3) / divisor
    )
    # T = 2 on doubled logits: the same distributions, times T^2 = 4
    assert tfkd_kl(2 * student, teacher, 2.0, reduction).item() == pytest.approx(
        2 * LN(4 / 3) / divisor
    )


def test_tfkd_mean_reduction_weakens_the_imagenet_kd_term_to_004_kl():
    # K = 1000, alpha 0.1, T 20: "mean" makes the KD term 0.1 * 400 / 1000 = 0.04 x the per-sample
    # KL (at temperature T); "batchmean" (the TF-KD paper's equation) 40 x.
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 1000) * 5, torch.randn(8, 1000) * 5
    p_t = F.softmax(teacher / 20, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(student / 20, 1))).sum(1).mean()
    assert 0.1 * tfkd_kl(student, teacher, 20.0, "mean").item() == pytest.approx(
        0.04 * kl.item(), rel=1e-4
    )
    assert 0.1 * tfkd_kl(student, teacher, 20.0, "batchmean").item() == pytest.approx(
        40 * kl.item(), rel=1e-4
    )


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "model_final.pth")
    torch.save({"model": torchvision.models.resnet18(num_classes=2).state_dict()}, path)
    return path


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_tfkd_step(teacher_file, reduction):
    m = make_method(
        "tfkd",
        labels=[1],
        num_classes=2,
        batch=1,
        TEACHER__WEIGHTS=teacher_file,
        TFKD__ALPHA=0.1,
        TFKD__TEMPERATURE=1.0,
        TFKD__KL_REDUCTION=reduction,
    )
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())
    assert teacher_file in m.describe() and reduction in m.describe()
    m.teacher = fixed(torch.zeros(1, 2))
    losses, _ = m.training_step(
        fixed(TWO), torch.zeros(1, 3, 4, 4), torch.tensor([1]), torch.tensor([0])
    )
    kl = 0.5 * LN(4 / 3) / (2 if reduction == "mean" else 1)
    assert list(losses) == ["loss_ce", "loss_kd"]  # each with its weight
    assert losses["loss_ce"].item() == pytest.approx(0.9 * -LN(0.75))
    assert losses["loss_kd"].item() == pytest.approx(0.1 * kl)


def test_tfkd_loads_torchvision_weights_and_needs_a_teacher(tmp_path):
    net = torchvision.models.resnet18(num_classes=2)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    m = make_method("tfkd", num_classes=2, TEACHER__WEIGHTS=str(tmp_path / "tv.pth"))
    assert torch.equal(m.teacher.fc.weight, net.fc.weight)
    with pytest.raises(ValueError, match="TEACHER.WEIGHTS"):
        make_method("tfkd", num_classes=2)
    with pytest.raises(ValueError, match="KL_REDUCTION"):
        make_method(
            "tfkd",
            num_classes=2,
            TEACHER__WEIGHTS=str(tmp_path / "tv.pth"),
            TFKD__KL_REDUCTION="sum",
        )


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
@pytest.mark.parametrize("name", ["tfkd", "nkd"])
def test_the_teacher_is_made_on_the_training_device(teacher_file, name):
    cfg = get_cfg()
    cfg.METHOD.NAME, cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES = name, "resnet18", 2
    cfg.TEACHER.WEIGHTS = teacher_file
    # The meta device stands for a GPU: a teacher left on the CPU would show here.
    ctx = MethodContext(cfg, 2, [0, 1], torch.device("meta"), per_rank_batch=2, epochs=2)
    assert {p.device.type for p in build_method(ctx).teacher.parameters()} == {"meta"}


@pytest.mark.parametrize(
    "reduction, divides",
    [
        ("mean", "divides by B*K, as the reference CIFAR code"),
        ("batchmean", "divides by B: the per-sample KL"),
    ],
)
def test_tfkd_describes_its_kl_reduction(teacher_file, reduction, divides):
    m = make_method(
        "tfkd", num_classes=2, TEACHER__WEIGHTS=teacher_file, TFKD__KL_REDUCTION=reduction
    )
    assert m.settings()[1].endswith(f"KL reduction {reduction} ({divides})")


# -- USKD -----------------------------------------------------------------------------------
# K = 3, labels [0, 1].
# logits: row 0 [ln 4, ln 2, ln 2] -> s = [1/2, 1/4, 1/4]; row 1 [0, 0, ln 2] -> s = [1/4, 1/4, 1/2]
# weak:   row 0 [0, ln 2, 0] -> q = [1/4, 1/2, 1/4]; row 1 [ln 2, 0, ln 2] -> q = [2/5, 1/5, 2/5]
U_LOGITS = torch.tensor([[LN(4), LN(2), LN(2)], [0.0, 0.0, LN(2)]])
U_WEAK = torch.tensor([[0.0, LN(2), 0.0], [LN(2), 0.0, LN(2)]])
U_LABELS = torch.tensor([0, 1])


def test_uskd_target_term():
    # s_t = [1/2, 1/4]; s_t^2 = [1/4, 1/16], batch mean 5/32; w = s_t^2 + 1 - 5/32
    w0, w1 = 1 / 4 + 1 - 5 / 32, 1 / 16 + 1 - 5 / 32
    expected = -(w0 * LN(1 / 2) + w1 * LN(1 / 4)) / 2
    terms = uskd_loss(U_LOGITS, U_WEAK, U_LABELS, 2.0, 0.0, 0.0)
    assert terms["loss_target"].item() == pytest.approx(2 * expected)  # with its weight alpha


def test_uskd_weak_term_is_label_smoothed_ce_of_the_head():
    e = 0.1 / 3  # eps / K on every class
    row0 = -((0.9 + e) * LN(1 / 4) + e * LN(1 / 2) + e * LN(1 / 4))
    row1 = -(e * LN(2 / 5) + (0.9 + e) * LN(1 / 5) + e * LN(2 / 5))
    assert uskd_loss(U_LOGITS, U_WEAK, U_LABELS, 0.0, 0.0, 1.0)[
        "loss_weak"
    ].item() == pytest.approx((row0 + row1) / 2)
    assert uskd_loss(U_LOGITS, U_WEAK, U_LABELS, 0.0, 0.0, 0.005)[
        "loss_weak"
    ].item() == pytest.approx(0.005 * (row0 + row1) / 2)


def test_uskd_non_target_term_uses_zipf_over_the_rank():
    # Row 0: score = q / (1 - q_t) + log s / (1 - log s_t) = [1/3, 2/3, 1/3] + [ln 1/2, ln 1/4, ln
    # 1/4] / (1 + ln 2) -> order 0, 1, 2 -> Zipf [1, 1/2, 1/3]; non-targets {1, 2}: [1/2, 1/3] /
    # (5/6) = [3/5, 2/5]; their logits [ln 2, ln 2] -> [1/2, 1/2].
    row0 = -(3 / 5 * LN(1 / 2) + 2 / 5 * LN(1 / 2))
    # Row 1: score = [1/2, 1/4, 1/2] + [ln 1/4, ln 1/4, ln 1/2] / (1 + 2 ln 2) -> order 2, 0, 1
    #   -> Zipf class 2: 1, class 0: 1/2; non-targets {0, 2}: [1/2, 1] / (3/2) = [1/3, 2/3];
    #   their logits [0, ln 2] -> [1/3, 2/3].
    row1 = -(1 / 3 * LN(1 / 3) + 2 / 3 * LN(2 / 3))
    terms = uskd_loss(U_LOGITS, U_WEAK, U_LABELS, 0.0, 0.5, 0.0)
    assert terms["loss_non_target"].item() == pytest.approx(0.5 * (row0 + row1) / 2)  # x beta


def _uskd_non_target_by_indexing(logits, weak_logits, label):
    """L_non written with boolean-mask indexing, as the reference code does (one label a row)."""
    log_s, q = F.log_softmax(logits, 1), F.softmax(weak_logits, 1)
    log_s_t = log_s.gather(1, label)
    score = q / (1 - q.gather(1, label) + 1e-6) + log_s / (1 - log_s_t + 1e-6)
    zipf = 1.0 / (score.argsort(1, descending=True).argsort(1) + 1).float()
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, label, False)
    n = logits.shape[0]
    z = zipf[keep].view(n, -1)
    z = z / z.sum(1, keepdim=True)
    return -(z * F.log_softmax(logits[keep].view(n, -1), 1)).sum(1).mean()


def test_uskd_non_target_term_and_its_gradient_match_the_indexing_form():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=gen, requires_grad=True)
    weak = torch.randn(6, 7, generator=gen)
    labels = torch.randint(7, (6,), generator=gen)
    ours = uskd_loss(logits, weak, labels, 0.0, 1.0, 0.0)["loss_non_target"]
    (grad,) = torch.autograd.grad(ours, logits)
    reference = _uskd_non_target_by_indexing(logits, weak, labels.view(-1, 1))
    (ref_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(
        grad, ref_grad
    )  # finite, and zero where no softmax term depends on it


def test_uskd_mixed_labels_use_the_two_largest_with_their_weights():
    gt = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.6, 0.4]])
    # s_t: row 0 (labels 0, 1) [1/2, 1/4]; row 1 (labels 1, 2) [1/4, 1/2];
    # per-column batch means of s_t^2: 5/32 and 5/32
    w = [
        [1 / 4 + 0.7 - 5 / 32, 1 / 16 + 0.3 - 5 / 32],
        [1 / 16 + 0.6 - 5 / 32, 1 / 4 + 0.4 - 5 / 32],
    ]
    expected = (
        -((w[0][0] * LN(1 / 2) + w[0][1] * LN(1 / 4)) + (w[1][0] * LN(1 / 4) + w[1][1] * LN(1 / 2)))
        / 2
    )
    assert uskd_loss(U_LOGITS, U_WEAK, gt, 1.0, 0.0, 0.0)["loss_target"].item() == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    "arch, channels",
    [("resnet18", 256), ("resnet34", 256), ("resnet50", 1024), ("resnet152", 1024)],
)
def test_uskd_head_sits_on_layer3(arch, channels):
    with torch.device("meta"):  # shapes only
        net = ResNetWithWeakHead(build_resnet(arch, 5), 5)
    assert net.head.in_features == channels


def test_uskd_forward_keeps_the_resnet_logits_and_exports_a_plain_resnet():
    torch.manual_seed(0)
    model = build_resnet("resnet18", 5).eval()
    net = ResNetWithWeakHead(model, 5).eval()
    x = torch.randn(2, 3, 16, 16)
    logits, weak = net(x)
    assert torch.allclose(logits, model(x)) and weak.shape == (2, 5)
    assert set(model.state_dict()) == set(torchvision.models.resnet18(num_classes=5).state_dict())


def test_uskd_method_trains_the_head_and_checkpoints_it():
    m = make_method("uskd", labels=[0, 1, 2, 3], num_classes=4)
    model = build_resnet("resnet18", 4)
    module = m.wrap_model(model)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    losses, logits = m.training_step(module, images, labels, torch.arange(4))
    assert list(losses) == ["loss_target", "loss_non_target", "loss_weak", "loss_ce"]
    _, weak = module(images)
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, labels).item())
    expected = uskd_loss(logits, weak, labels, 1.0, 0.1, 0.005)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-6), name
    total_loss(losses).backward()
    assert module.head.weight.grad.abs().sum() > 0 and logits.shape == (4, 4)
    state = m.state_dict()
    other = make_method("uskd", labels=[0, 1, 2, 3], num_classes=4)
    other.wrap_model(build_resnet("resnet18", 4))
    other.load_state_dict(state)
    assert torch.equal(other.net.head.weight, module.head.weight)
    assert "Linear(256 -> 4)" in m.describe()
    assert make_method("uskd").describe() == (
        "uskd: alpha 1, beta 0.1, mu 0.005; weak head on layer3; no CutMix"
    )


@pytest.mark.parametrize("name", ["uskd", "lsskd"])
def test_the_trainer_optimizes_the_methods_own_parts(name, synthetic_root, tmp_path):
    """USKD's head and LSSKD's branches train with the network: the Trainer's optimizer holds
    every parameter of the module the method wraps, and one training step changes them."""
    trainer = Trainer(
        setup_cfg(
            os.path.join(ROOT, "configs", "pretrain", f"cpu_synthetic_R_18_{name}.yaml"),
            [
                "DATA.ROOT",
                synthetic_root,
                "OUTPUT_DIR",
                str(tmp_path),
                "SOLVER.IMS_PER_BATCH",
                "2",
                "INPUT.CROP_SIZE",
                "16",
            ],
        )
    )
    own = trainer.method.net.head if name == "uskd" else trainer.method.net.branches
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in trainer.method.net.parameters()}
    assert {id(p) for p in own.parameters()} < {id(p) for p in optimized}
    before = [p.detach().clone() for p in own.parameters()]
    images, labels, indices, _ = next(iter(trainer.train_loader))
    train_step(
        trainer.method, trainer.train_module, trainer.optimizer, None, images, labels, indices
    )
    assert all(not torch.equal(b, p) for b, p in zip(before, own.parameters()))


# -- PS-KD with CutMix and with the previous-epoch model ------------------------------------
def test_pskd_cutmix_half_rule_targets_and_mixed_predictions_not_stored():
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    m = make_method(
        "pskd",
        labels=labels,
        num_classes=3,
        batch=8,
        epochs=2,
        PSKD__ALPHA_T=0.5,
        PSKD__TABLE_DTYPE="float32",
        AUG__CUTMIX__ENABLED=True,
        AUG__CUTMIX__PSKD_MODE="half",
    )
    m.on_epoch_start(1, None)  # alpha = 0.5
    y = torch.tensor(labels)
    idx = torch.arange(8)
    # Past predictions: a known table.
    past = torch.softmax(torch.randn(8, 3), dim=1)
    m.source.table.write(idx, past, 8)
    logits = torch.randn(8, 3)
    torch.manual_seed(5)
    mix = m.cutmix.draw(8, 8, 8)
    torch.manual_seed(5)
    losses, _ = m.training_step(fixed(logits), torch.zeros(8, 3, 8, 8), y, idx)
    loss = losses["loss_ce"]

    mixed, own = mix.which.tolist(), mix.unmixed(8).tolist()
    assert len(mixed) == 4 and len(own) == 4
    onehot = F.one_hot(y, 3).float()
    targets = 0.5 * onehot + 0.5 * past  # PS-KD half
    targets[mix.which] = (
        mix.lam * onehot[mix.which] + (1 - mix.lam) * onehot[mix.partner]
    )  # CutMix half
    expected = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # What the log shows of the PS-KD half's targets (the CutMix half has none).
    past_label = past[own, y[own]]
    assert m.log_statistics() == pytest.approx(
        {
            "self_kd/target_label_prob": (0.5 + 0.5 * past_label).mean().item(),
            "self_kd/past_label_prob": past_label.mean().item(),
            "self_kd/past_top_prob": past[own].amax(1).mean().item(),
        }
    )
    assert m.log_statistics() == {}  # read once: the next window starts empty

    stored = m.source.table.read(idx, 8)
    assert torch.allclose(
        stored[own], torch.softmax(logits, 1)[own], atol=1e-6
    )  # PS-KD half: updated
    assert torch.allclose(stored[mixed], past[mixed], atol=1e-6)  # CutMix half: untouched


def test_pskd_cutmix_batch_rule_stores_nothing_from_a_mixed_batch():
    m = make_method(
        "pskd",
        labels=[0, 1, 2, 0],
        num_classes=3,
        batch=4,
        AUG__CUTMIX__ENABLED=True,
        AUG__CUTMIX__PROB=1.0,
        AUG__CUTMIX__PSKD_MODE="batch",
    )
    m.on_epoch_start(0, None)
    before = m.source.table.read(torch.arange(4), 4)
    m.training_step(
        fixed(torch.randn(4, 3)),
        torch.zeros(4, 3, 8, 8),
        torch.tensor([0, 1, 2, 0]),
        torch.arange(4),
    )
    assert torch.equal(m.source.table.read(torch.arange(4), 4), before)  # still the one-hot rows


def test_pskd_previous_model_source():
    torch.manual_seed(0)
    labels = [0, 1, 2, 3]
    m = make_method(
        "pskd",
        labels=labels,
        num_classes=4,
        batch=4,
        epochs=2,
        PSKD__SOURCE="previous_model",
        PSKD__ALPHA_T=0.5,
    )
    model = build_resnet("resnet18", 4)
    images, y = torch.randn(4, 3, 16, 16), torch.tensor(labels)

    m.on_epoch_start(0, model)  # no previous model yet: plain cross-entropy
    losses, logits = m.training_step(model, images, y, torch.arange(4))
    loss = losses["loss_ce"]
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)

    m.on_epoch_start(1, model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = build_resnet("resnet18", 4)
    teacher.load_state_dict(snapshot)
    teacher.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):  # the live model moves; the frozen copy must not
        losses, logits = m.training_step(model, images, y, torch.arange(4))
        loss = losses["loss_ce"]
        with torch.no_grad():
            past = teacher(images).softmax(1)
        targets = 0.5 * F.one_hot(y, 4).float() + 0.5 * past
        assert loss.item() == pytest.approx(
            -(targets * F.log_softmax(logits, 1)).sum(1).mean().item(), rel=1e-5
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(v, snapshot[k]) for k, v in m.source.model.state_dict().items())
    assert not torch.equal(model.fc.weight, snapshot["fc.weight"])
    assert m.source.model.fc.weight.grad is None

    # Resume mid-epoch: the copy travels in the method's state.
    other = make_method(
        "pskd", labels=labels, num_classes=4, batch=4, epochs=2, PSKD__SOURCE="previous_model"
    )
    other.load_state_dict(m.state_dict())
    assert other.source.ready and torch.equal(other.source.model.fc.weight, snapshot["fc.weight"])
    assert "previous epoch's model" in m.describe()


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_pskd_previous_model_batchnorm_mode(bn_mode):
    torch.manual_seed(0)
    labels = [0, 1, 2, 3]
    model = build_resnet("resnet18", 4)
    with torch.no_grad():  # running statistics far from any batch's, so the two modes differ
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    m = make_method(
        "pskd",
        labels=labels,
        num_classes=4,
        batch=4,
        epochs=2,
        PSKD__SOURCE="previous_model",
        PSKD__PREVIOUS_MODEL_BN=bn_mode,
    )
    m.on_epoch_start(1, model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(4, 3, 16, 16)
    reference = build_resnet("resnet18", 4)
    reference.load_state_dict(snapshot)
    with torch.no_grad():
        expected = {
            mode: reference.train(mode == "train")(images).softmax(1) for mode in ("eval", "train")
        }
    assert not torch.allclose(expected["eval"], expected["train"], atol=1e-3)
    for _ in range(2):
        past = m.source.read(images, torch.tensor(labels), torch.arange(4))
        torch.testing.assert_close(past, expected[bn_mode], rtol=1e-5, atol=1e-6)
    # The copy's running statistics are those of the epoch's start in either mode.
    assert all(torch.equal(v, snapshot[k]) for k, v in m.source.model.state_dict().items())
    assert f"BatchNorm {bn_mode} mode" in m.describe()


def test_pskd_previous_model_batchnorm_mode_is_checked():
    with pytest.raises(ValueError, match="PSKD.PREVIOUS_MODEL_BN"):
        make_method("pskd", PSKD__SOURCE="previous_model", PSKD__PREVIOUS_MODEL_BN="frozen")


def test_pskd_cutmix_with_the_table_warns_and_previous_model_does_not(caplog):
    with caplog.at_level("WARNING", logger="pretrain"):
        table = make_method("pskd", AUG__CUTMIX__ENABLED=True)
        make_method("pskd", AUG__CUTMIX__ENABLED=True, PSKD__SOURCE="previous_model")
        make_method("pskd")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [table.stale_table_warning()]
    assert "50% of PS-KD targets" in warnings[0] and "previous_model" in warnings[0]
    assert "stale past predictions" in table.describe()


def test_pskd_cutmix_table_staleness_on_a_toy_run():
    """Which epoch wrote the past prediction each PS-KD sample reads, with the table, CutMix's
    half rule, 512 samples, batch 32. The stand-in model predicts class e + 1 in epoch e, so a row
    read back names the epoch that wrote it (class 0, every sample's label: never written)."""
    n, batch, classes, epochs = 512, 32, 16, 6
    m = make_method(
        "pskd",
        labels=[0] * n,
        num_classes=classes,
        batch=batch,
        epochs=epochs,
        PSKD__TABLE_DTYPE="float32",
        AUG__CUTMIX__ENABLED=True,
        AUG__CUTMIX__PSKD_MODE="half",
    )
    read, ages = m.source.read, []

    def spy(images, labels, indices):
        past = read(images, labels, indices)
        ages[-1].append(m.epoch - (past.argmax(1) - 1))  # epoch e - writer; e + 1: the label
        return past

    m.source.read = spy
    torch.manual_seed(0)
    for epoch in range(epochs):
        m.on_epoch_start(epoch, None)
        ages.append([])
        logits = 20 * F.one_hot(torch.full((batch,), epoch + 1), classes).float()
        order = torch.randperm(n)
        for step in range(n // batch):
            m.training_step(
                fixed(logits),
                torch.zeros(batch, 3, 8, 8),
                torch.zeros(batch, dtype=torch.long),
                order[step * batch : (step + 1) * batch],
            )
    for epoch, age in enumerate(ages):
        age = torch.cat(age).float()
        assert age.numel() == n // 2  # the PS-KD half of every batch
        stale, label = (age >= 2).float().mean().item(), (age == epoch + 1).float().mean().item()
        print(f"epoch {epoch}: {stale:.1%} two or more epochs old, {label:.1%} the one-hot label")
        if epoch >= 1:
            assert stale == pytest.approx(
                0.5, abs=0.1
            )  # CutMix-ed in epoch e-1: no prediction from it
            assert label == pytest.approx(0.5**epoch, abs=0.1)


# -- registry, validation, describe -----------------------------------------------------------
def test_every_method_is_registered():
    assert set(METHODS) == {"baseline", "ls", "pskd", "cskd", "tfkd", "uskd", "nkd", "lsskd"}


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"PSKD__SOURCE": "disk"}, "PSKD.SOURCE"),
        ({"AUG__CUTMIX__ENABLED": True, "AUG__CUTMIX__PSKD_MODE": "quarter"}, "PSKD_MODE"),
    ],
)
def test_pskd_bad_settings_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_method("pskd", **overrides)


def test_describe_names_the_method_its_options_and_cutmix():
    assert make_method("pskd", AUG__CUTMIX__ENABLED=True).describe() == "; ".join(
        [
            "pskd: alpha_T 0.8 (alpha_e = alpha_T * (e + 1) / 4)",
            "past predictions from a sharded dense bfloat16 table",
            "CutMix-ed samples get plain CutMix targets, never PS-KD ones, and their predictions "
            "are never stored",
            "stale past predictions for samples CutMix-ed in the previous epoch",
            "CutMix on 0.5 of every batch, lambda ~ Beta(1, 1), targets mixed by clipped box area",
        ]
    )
    m = make_method("pskd", PSKD__TOPK=2, PSKD__TABLE_DTYPE="float32")
    assert m.source.table.topk == 2
    assert "past predictions from a sharded top-2 float32 table; no CutMix" in m.describe()
    assert make_method("cskd").describe() == (
        "cskd: T 4, lambda 1; one partner per anchor drawn from the anchor's class over the "
        "whole training set (uniform, with replacement), partner forward under no_grad; no CutMix"
    )
    assert "epsilon 0.1" in make_method("ls").describe()
    assert CutMix.from_config(get_cfg()) is None  # off by default


def test_pskd_accepts_a_topk_of_every_class():
    cfg = get_cfg()
    cfg.METHOD.NAME, cfg.MODEL.NUM_CLASSES, cfg.PSKD.TOPK = "pskd", 3, 3
    assert METHODS["pskd"].config_problems(cfg) == []
    cfg.PSKD.TOPK = 4
    assert METHODS["pskd"].config_problems(cfg) == [
        "PSKD.TOPK is 4, must be at most MODEL.NUM_CLASSES (3)"
    ]


@pytest.mark.parametrize("source", ["table", "previous_model"])
def test_pskd_keeps_its_past_predictions_on_the_training_device(source):
    cfg = get_cfg()
    cfg.METHOD.NAME, cfg.MODEL.ARCH, cfg.PSKD.SOURCE = "pskd", "resnet18", source
    # The meta device stands for a GPU: a table or model left on the CPU would show here.
    ctx = MethodContext(cfg, 3, [0, 1, 2], torch.device("meta"), per_rank_batch=3, epochs=2)
    held = build_method(ctx).source
    tensors = [held.table.values] if source == "table" else list(held.model.parameters())
    assert {t.device.type for t in tensors} == {"meta"}


def test_cutmix_draws_boxes_for_the_batchs_height_and_width():
    m = make_method("baseline", AUG__CUTMIX__ENABLED=True)
    draws = []
    m.cutmix.draw = lambda *args: draws.append(args)  # record, mix nothing
    m.mix_batch(torch.zeros(4, 3, 5, 7), torch.tensor([0, 1, 2, 0]))
    assert draws == [(4, 5, 7)]


def test_the_training_sampler_is_this_ranks_shard_of_the_seeded_order():
    from pretrain.data.samplers import ShardedSampler

    sampler = make_method("baseline").build_train_sampler(10, 1, 2, seed=5)
    assert list(sampler) == list(ShardedSampler(10, 1, 2, seed=5))
    other_rank = list(ShardedSampler(10, 0, 2, seed=5))
    other_seed = list(ShardedSampler(10, 1, 2, seed=0))
    assert len(list(sampler)) == 5 and list(sampler) not in (other_rank, other_seed)


def test_the_baseline_describes_its_loss_and_cutmix():
    assert make_method("baseline").describe() == "baseline: cross-entropy; no CutMix"


# -- memory estimates (the start-of-run log and tools/benchmark.py) ----------------------------
# resnet18 with 2 classes: 11,177,538 float32 parameters, the running mean and variance of 4,800
# BatchNorm channels (float32) and 20 num_batches_tracked counters (int64).
RESNET18_2_BYTES = 11_177_538 * 4 + 2 * 4_800 * 4 + 20 * 8


def test_memory_estimates_count_the_tensors_each_method_keeps(teacher_file):
    assert module_bytes(torchvision.models.resnet18(num_classes=2)) == RESNET18_2_BYTES
    assert make_method("baseline").extra_memory() == {}
    for name in ("tfkd", "nkd"):
        m = make_method(name, num_classes=2, TEACHER__WEIGHTS=teacher_file)
        assert m.extra_memory() == {"teacher": RESNET18_2_BYTES}
    # The default table: 4 samples and the spare row, 3 classes, bfloat16.
    assert make_method("pskd").extra_memory() == {"table": 5 * 3 * 2}
    m = make_method("pskd", num_classes=2, PSKD__SOURCE="previous_model")
    assert m.extra_memory() == {"previous_model": RESNET18_2_BYTES}
    m = make_method("lsskd", labels=[0, 1], num_classes=2)
    net = m.wrap_model(build_resnet("resnet18", 2))
    assert m.extra_memory() == {}  # no previous network before the second epoch
    m.on_epoch_start(1, net.model)
    branches = module_bytes(net.branches)
    assert m.extra_memory() == {"previous_model": RESNET18_2_BYTES + branches}
