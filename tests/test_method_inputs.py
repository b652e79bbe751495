"""What every method feeds its networks and its loss when CutMix is on.

The model (and CS-KD's partner forward, TF-KD's and NKD's teacher, PS-KD's previous-epoch model)
must see exactly the batch the step's CutMix draw produced: the draw's box pasted from the draw's
partners into the draw's samples. The loss must use the area-mixed targets
``lam * y_own + (1 - lam) * y_partner`` with the same draw's lambda. The stand-in networks are
linear maps of the pixels that record every batch they are given, and every sample's image is
different, so feeding the unmixed batch, another draw or other images changes what they record
and the loss. The expected batch and targets are built here from the draw's fields, not with
``Mix.images`` / ``Mix.targets``.
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pretrain.methods.base import total_loss
from pretrain.methods.lsskd import (
    ROTATIONS,
    deep_to_shallow_kl,
    feature_alignment,
    joint_targets,
    rotate_batch,
)
from pretrain.methods.uskd import uskd_loss
from test_methods import make_method

pytestmark = pytest.mark.usefixtures("one_thread")

C, H, W, K = 3, 8, 8, 4
LABELS = torch.tensor([0, 1, 2, 3, 0, 1])
B = len(LABELS)


def distinct_images(n=B, seed=0):
    """``n`` images, no two alike (drawn from their own generator: the global one is CutMix's)."""
    return torch.randn(n, C, H, W, generator=torch.Generator().manual_seed(seed))


class Probe(torch.nn.Module):
    """Logits that are a fixed linear map of the flattened pixels; remembers every batch given."""

    def __init__(self, outputs=K, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(1000 + seed)
        self.weight = torch.nn.Parameter(torch.randn(outputs, C * H * W, generator=gen) / 8)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.flatten(1) @ self.weight.t()


def mixing_draw(method, labels=LABELS):
    """A seed of the global RNG whose CutMix draw for this batch, made as the step makes it,
    pastes a box of less than the whole image into every mixed sample from a partner of
    another class, with lam < 1/2 (the partner's class takes the larger area); and that draw."""
    for seed in range(1000):
        torch.manual_seed(seed)
        mix = method.cutmix.draw(len(labels), H, W)
        if (
            mix is not None
            and 0.1 < mix.lam < 0.45
            and (labels[mix.which] != labels[mix.partner]).all()
        ):
            y0, y1, x0, x1 = mix.box
            assert mix.lam == pytest.approx(
                1 - (y1 - y0) * (x1 - x0) / (H * W)
            )  # lambda is the box's
            return seed, mix
    raise AssertionError("no seed below 1000 gives a mixing draw")


def pasted(images, mix):
    """``images`` with the draw's box of each mixed sample taken from its partner."""
    y0, y1, x0, x1 = mix.box
    out = images.clone()
    for i, j in zip(mix.which.tolist(), mix.partner.tolist()):
        out[i, :, y0:y1, x0:x1] = images[j, :, y0:y1, x0:x1]
    return out


def mixed_targets(labels, mix):
    """One-hot targets with each mixed sample's row ``lam * own + (1 - lam) * partner``."""
    onehot = F.one_hot(labels, K).float()
    out = onehot.clone()
    for i, j in zip(mix.which.tolist(), mix.partner.tolist()):
        out[i] = mix.lam * onehot[i] + (1 - mix.lam) * onehot[j]
    return out


def step(method, model, images=None, labels=LABELS):
    """One training step on distinct images with a mixing draw; returns the total loss, the logits,
    the draw, the batch the draw makes of the images, and its targets."""
    images = distinct_images() if images is None else images
    seed, mix = mixing_draw(method, labels[:B])
    torch.manual_seed(seed)  # the step draws the same box
    losses, logits = method.training_step(model, images, labels, torch.arange(len(labels)))
    loss = total_loss(losses)
    expected = pasted(images[:B], mix)
    assert not torch.equal(expected, images[:B])
    return loss, logits, mix, expected, mixed_targets(labels[:B], mix)


def soft_ce(logits, targets):
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def kl_sum(student, teacher, temperature):
    """sum over the batch and classes of T^2 KL(softmax(teacher / T) || softmax(student / T))."""
    p = F.softmax(teacher / temperature, dim=1)
    return (p * (p.log() - F.log_softmax(student / temperature, dim=1))).sum() * temperature**2


def cutmix(name, **overrides):
    """The method with CutMix on every batch (PS-KD's rules are chosen by the caller)."""
    options = {
        "AUG__CUTMIX__ENABLED": True,
        "AUG__CUTMIX__PROB": 1.0,
        "AUG__CUTMIX__PSKD_MODE": "batch",
    }
    return make_method(
        name, labels=LABELS.tolist(), num_classes=K, batch=B, epochs=2, **{**options, **overrides}
    )


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "model_final.pth")
    torch.save({"model": torchvision.models.resnet18(num_classes=K).state_dict()}, path)
    return path


# -- cross-entropy and label smoothing -----------------------------------------------------------
def test_baseline_trains_on_the_mixed_batch_and_targets():
    model = Probe()
    loss, logits, _, images, targets = step(cutmix("baseline"), model)
    assert len(model.seen) == 1 and torch.equal(model.seen[0], images)
    assert torch.equal(logits, model(images))
    assert loss.item() == pytest.approx(soft_ce(logits, targets).item(), rel=1e-6)


def test_label_smoothing_smooths_the_mixed_targets():
    model = Probe()
    loss, logits, _, images, targets = step(cutmix("ls", LS__EPSILON=0.2), model)
    assert torch.equal(model.seen[0], images)
    assert loss.item() == pytest.approx(soft_ce(logits, 0.8 * targets + 0.2 / K).item(), rel=1e-6)


# -- PS-KD ---------------------------------------------------------------------------------------
def test_pskd_batch_rule_trains_on_the_mixed_batch_with_plain_cutmix_targets():
    m = cutmix("pskd", PSKD__TABLE_DTYPE="float32")
    m.on_epoch_start(1, None)
    past = torch.softmax(torch.randn(B, K), dim=1)
    m.source.table.write(torch.arange(B), past, B)
    model = Probe()
    loss, logits, _, images, targets = step(m, model)
    assert len(model.seen) == 1 and torch.equal(model.seen[0], images)
    assert loss.item() == pytest.approx(
        soft_ce(logits, targets).item(), rel=1e-6
    )  # no PS-KD target
    torch.testing.assert_close(
        m.source.table.read(torch.arange(B), B), past
    )  # nothing stored from it


@pytest.mark.parametrize("source", ["table", "previous_model"])
def test_pskd_half_rule_mixes_half_and_softens_the_other_half(source):
    m = cutmix(
        "pskd",
        AUG__CUTMIX__PSKD_MODE="half",
        AUG__CUTMIX__PROB=0.5,
        PSKD__ALPHA_T=0.5,
        PSKD__SOURCE=source,
        PSKD__TABLE_DTYPE="float32",
    )
    m.epoch = 1  # alpha 0.5 * 2 / 2
    previous = Probe(seed=1)
    if source == "table":
        past_table = torch.softmax(torch.randn(B, K), dim=1)
        m.source.table.write(torch.arange(B), past_table, B)
    else:
        m.source.ready, m.source.model = True, previous
    model = Probe()
    loss, logits, mix, images, targets = step(m, model)
    own = mix.unmixed(B)
    assert mix.which.numel() == own.numel() == B // 2
    assert len(model.seen) == 1 and torch.equal(model.seen[0], images)
    if source == "table":
        past = past_table[own]
        stored = m.source.table.read(torch.arange(B), B)
        torch.testing.assert_close(stored[own], logits[own].detach().softmax(dim=1))
        torch.testing.assert_close(stored[mix.which], past_table[mix.which])
    else:
        assert len(previous.seen) == 1 and torch.equal(previous.seen[0], images[own])
        past = previous(images[own]).detach().softmax(dim=1)
    targets[own] = 0.5 * targets[own] + 0.5 * past
    assert loss.item() == pytest.approx(soft_ce(logits, targets).item(), rel=1e-6)


# -- CS-KD ---------------------------------------------------------------------------------------
def test_cskd_mixes_anchors_and_partners_with_one_draw():
    m = cutmix("cskd", CSKD__TEMPERATURE=2.0, CSKD__LAMBDA=0.5)
    anchors, partners = distinct_images(), distinct_images(seed=1)
    model = Probe()
    loss, logits, mix, images, targets = step(
        m, model, torch.cat([anchors, partners]), LABELS.repeat(2)
    )
    assert len(model.seen) == 2
    assert torch.equal(model.seen[0], images)  # the mixed anchors
    assert torch.equal(model.seen[1], pasted(partners, mix))  # the partners: same box, same pairs
    partner_logits = model(pasted(partners, mix))
    expected = soft_ce(logits, targets) + 0.5 * kl_sum(logits, partner_logits, 2.0) / B
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# -- teachers ------------------------------------------------------------------------------------
def test_tfkd_teacher_and_student_see_the_same_mixed_batch(teacher_file):
    m = cutmix(
        "tfkd",
        TEACHER__WEIGHTS=teacher_file,
        TFKD__ALPHA=0.5,
        TFKD__TEMPERATURE=2.0,
        TFKD__KL_REDUCTION="batchmean",
    )
    m.teacher = teacher = Probe(seed=1)
    model = Probe()
    loss, logits, _, images, targets = step(m, model)
    assert len(teacher.seen) == 1 and torch.equal(teacher.seen[0], images)
    assert len(model.seen) == 1 and torch.equal(model.seen[0], images)
    expected = 0.5 * soft_ce(logits, targets) + 0.5 * kl_sum(logits, teacher(images), 2.0) / B
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def nkd_reference(logits, teacher_logits, target, temperature, gamma):
    """NKD with a boolean mask for the non-target classes (the definition as written)."""
    s, p = F.log_softmax(logits, dim=1), F.softmax(teacher_logits, dim=1)
    rows = torch.arange(len(target))
    loss_target = -(p[rows, target] * s[rows, target]).mean()
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[rows, target] = False
    n = len(target)
    log_n_s = F.log_softmax(logits[keep].view(n, -1) / temperature, dim=1)
    n_p = F.softmax(teacher_logits[keep].view(n, -1) / temperature, dim=1)
    return loss_target - gamma * temperature**2 * (n_p * log_n_s).sum(dim=1).mean()


def test_nkd_teacher_sees_the_mixed_batch_and_the_loss_the_larger_area_class(teacher_file):
    m = cutmix("nkd", TEACHER__WEIGHTS=teacher_file, NKD__TEMPERATURE=2.0, NKD__GAMMA=1.5)
    m.teacher = teacher = Probe(seed=1)
    model = Probe()
    loss, logits, mix, images, targets = step(m, model)
    assert len(teacher.seen) == 1 and torch.equal(teacher.seen[0], images)
    assert len(model.seen) == 1 and torch.equal(model.seen[0], images)
    target = targets.argmax(dim=1)
    assert torch.equal(target[mix.which], LABELS[mix.partner])  # lam < 1/2: the partner's class
    expected = soft_ce(logits, targets) + nkd_reference(logits, teacher(images), target, 2.0, 1.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# -- USKD and LSSKD: networks with extra outputs ---------------------------------------------------
class WeakHeadProbe(torch.nn.Module):
    """USKD's (logits, weak logits), both linear in the pixels."""

    def __init__(self):
        super().__init__()
        self.main, self.weak = Probe(), Probe(seed=1)

    def forward(self, x):
        return self.main(x), self.weak(x)


def test_uskd_gets_the_mixed_batch_and_the_mixed_targets():
    m = cutmix("uskd", USKD__ALPHA=1.0, USKD__BETA=0.5, USKD__MU=0.5)
    model = WeakHeadProbe()
    loss, logits, _, images, targets = step(m, model)
    assert len(model.main.seen) == 1 and torch.equal(model.main.seen[0], images)
    weak = model.weak(images)
    expected = soft_ce(logits, targets) + total_loss(
        uskd_loss(logits, weak, targets, 1.0, 0.5, 0.5)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # With the hard labels instead the loss differs: the mixed samples' two classes both count.
    assert expected.item() != pytest.approx(
        (
            soft_ce(logits, targets) + total_loss(uskd_loss(logits, weak, LABELS, 1.0, 0.5, 0.5))
        ).item(),
        rel=1e-4,
    )


def test_uskd_without_cutmix_uses_the_hard_labels():
    m = make_method(
        "uskd",
        labels=LABELS.tolist(),
        num_classes=K,
        batch=B,
        AUG__CUTMIX__ENABLED=False,
        USKD__ALPHA=1.0,
        USKD__BETA=0.5,
        USKD__MU=0.5,
    )
    model, images = WeakHeadProbe(), distinct_images()
    losses, logits = m.training_step(model, images, LABELS, torch.arange(B))
    loss = total_loss(losses)
    assert torch.equal(model.main.seen[0], images)
    weak = model.weak(images)
    expected = F.cross_entropy(logits, LABELS) + total_loss(
        uskd_loss(logits, weak, LABELS, 1.0, 0.5, 0.5)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # One-hot targets would differ: their second-largest entry (a 0) would count as a label.
    one_hot = F.one_hot(LABELS, K).float()
    assert expected.item() != pytest.approx(
        (
            F.cross_entropy(logits, LABELS)
            + total_loss(uskd_loss(logits, weak, one_hot, 1.0, 0.5, 0.5))
        ).item(),
        rel=1e-4,
    )


class BranchesProbe(torch.nn.Module):
    """LSSKD's (logits, branch joint logits, branch features, backbone feature), all linear in
    the pixels."""

    def __init__(self):
        super().__init__()
        self.main = Probe()
        self.branches = torch.nn.ModuleList(Probe(K * ROTATIONS, seed=1 + i) for i in range(4))
        self.features = torch.nn.ModuleList(Probe(5, seed=10 + i) for i in range(5))

    def forward(self, x):
        features = [f(x) for f in self.features]
        return self.main(x), [b(x) for b in self.branches], features[:4], features[4]


def test_lsskd_rotates_the_mixed_batch_and_trains_on_unsoftened_mixed_targets():
    m = cutmix("lsskd", LSSKD__TEMPERATURE=2.0, LSSKD__KD_WEIGHT=0.5, LSSKD__FEAT_WEIGHT=0.25)
    previous = BranchesProbe()
    m.epoch, m.previous = 1, previous  # a previous network exists ...
    model = BranchesProbe()
    loss, logits, _, images, targets = step(m, model)
    assert previous.main.seen == []  # ... but a mixed batch is not softened
    rotated = rotate_batch(images)
    assert len(model.main.seen) == 1 and torch.equal(model.main.seen[0], rotated)
    full, sad, feats, final = model(rotated)
    assert torch.equal(logits, full[::ROTATIONS])
    expected = (
        soft_ce(logits, targets)
        + sum(soft_ce(s, joint_targets(targets)) for s in sad)
        + 0.5 * deep_to_shallow_kl(sad, 2.0)
        + 0.25 * feature_alignment(feats, final)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
