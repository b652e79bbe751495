"""NKD: the loss against the paper's equation on hand-computed values and against a
transcription of the authors' loss on identical logits (hard and CutMix targets); the method
with a real teacher network: eval mode, no gradients, fed the student's (mixed) images."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pretrain.methods.base import total_loss
from pretrain.methods.cutmix import Mix
from pretrain.methods.nkd import nkd_loss
from test_methods import make_method

LN = math.log


def authors_nkd(logit_s, logit_t, gt_label, temp, gamma):
    """Reference: ``NKDLoss.forward`` of yzd-v/cls_KD, mmcls/models/dis_losses/nkd.py at commit
    9466b3f3d8e06a1021d722bf3f4a7ebee99e3aed (the commit that makes the mask drop the target
    class), transcribed step by step: the target class is the argmax of a soft label."""
    if gt_label.dim() > 1:
        label = torch.max(gt_label, dim=1, keepdim=True)[1]
    else:
        label = gt_label.view(len(gt_label), 1)
    n, _ = logit_s.shape
    s_t = torch.gather(F.log_softmax(logit_s, dim=1), 1, label)
    t_t = torch.gather(F.softmax(logit_t, dim=1), 1, label).detach()
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
    logit_s, logit_t = logit_s[mask].reshape(n, -1), logit_t[mask].reshape(n, -1)
    s_i = F.log_softmax(logit_s / temp, dim=1)
    t_i = F.softmax(logit_t / temp, dim=1)
    return loss_t - gamma * temp**2 * (t_i * s_i).sum(dim=1).mean()


def random_logits(seed, batch=32, classes=1000):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=g) * 3, torch.randn(
        batch, classes, generator=g
    ) * 3


def cutmix_targets(labels, classes, lam, seed):
    """The area-mixed one-hot targets of one CutMix draw over the whole batch, and each sample's
    partner."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    mix = Mix(which=torch.arange(len(labels)), partner=perm, box=(0, 0, 0, 0), lam=lam)
    return mix.targets(F.one_hot(labels, classes).float()), perm


# -- the paper's equation on K = 3 --------------------------------------------------------------
def test_nkd_on_hand_computed_values():
    # Label 0. Student logits [ln 2, ln 1, ln 1] -> s = [1/2, 1/4, 1/4]; teacher [ln 6, ln 3, ln 1]
    # -> p = [3/5, 3/10, 1/10]. Non-targets renormalised: N(s) = [1/2, 1/2], N(p) = [3/4, 1/4].
    student, teacher = torch.tensor([[LN(2), 0.0, 0.0]]), torch.tensor([[LN(6), LN(3), 0.0]])
    target = -0.6 * LN(0.5)
    non = -(0.75 * LN(0.5) + 0.25 * LN(0.5))
    terms = nkd_loss(student, teacher, torch.tensor([0]), 1.0, 1.5)
    assert list(terms) == ["loss_target", "loss_non_target"]
    assert terms["loss_target"].item() == pytest.approx(target)
    assert terms["loss_non_target"].item() == pytest.approx(1.5 * non)  # gamma T^2 L_non
    # T = 2 on doubled logits: the same tempered distributions; the target term (no T) changes.
    target2 = -(36 / 46) * LN(4 / 6)  # s = [4, 1, 1] / 6, p = [36, 9, 1] / 46
    terms = nkd_loss(2 * student, 2 * teacher, torch.tensor([0]), 2.0, 1.5)
    assert terms["loss_target"].item() == pytest.approx(target2)
    assert terms["loss_non_target"].item() == pytest.approx(1.5 * 4 * non)


def test_nkd_non_target_term_ignores_the_target_logit():
    # Normalising removes the target: moving only the target logit leaves L_non unchanged.
    s, t = random_logits(0, batch=4, classes=10)
    labels = torch.tensor([1, 2, 3, 4])
    bumped = s.clone()
    bumped[torch.arange(4), labels] += 5.0
    non = nkd_loss(s, t, labels, 2.0, 1.0)["loss_non_target"]
    non_bumped = nkd_loss(bumped, t, labels, 2.0, 1.0)["loss_non_target"]
    assert non.item() == pytest.approx(non_bumped.item(), rel=1e-5)


def test_nkd_stays_finite_with_a_certain_target():
    # p_t rounds to 1 in float32: dividing by 1 - p_t would give inf; the non-target softmax does
    # not.
    s, t = torch.tensor([[60.0, 0.0, 1.0]]), torch.tensor([[80.0, 2.0, 0.0]])
    assert torch.isfinite(total_loss(nkd_loss(s, t, torch.tensor([0]), 1.0, 1.5)))


# -- against the authors' loss -------------------------------------------------------------------
@pytest.mark.parametrize("temp, gamma", [(1.0, 1.5), (4.0, 1.0), (0.5, 2.0)])
def test_nkd_matches_the_authors_loss_with_hard_labels(temp, gamma):
    s, t = random_logits(1)
    labels = torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(2))
    ours = total_loss(nkd_loss(s, t, labels, temp, gamma))
    theirs = authors_nkd(s, t, labels, temp, gamma)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - theirs.item()) <= 1e-6


@pytest.mark.parametrize("lam", [0.3, 0.5, 0.8])
def test_nkd_matches_the_authors_loss_with_cutmix_targets(lam):
    s, t = random_logits(3)
    labels = torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(4))
    labels[1] = labels[0]  # some pairs share a class: a one-hot row after mixing
    targets, partner = cutmix_targets(labels, 1000, lam, seed=5)
    ours = total_loss(nkd_loss(s, t, targets, 1.0, 1.5))
    theirs = authors_nkd(s, t, targets, 1.0, 1.5)
    assert abs(ours.item() - theirs.item()) <= 1e-6
    # The target class is the label with the larger area; on a tie the smaller class index.
    own, other = labels, labels[partner]
    larger = own if lam > 0.5 else other if lam < 0.5 else torch.minimum(own, other)
    assert (larger != own).any() == (lam <= 0.5)
    assert total_loss(nkd_loss(s, t, larger, 1.0, 1.5)).item() == ours.item()


def test_nkd_gradient_reaches_the_student_only():
    s, t = random_logits(6, batch=4, classes=10)
    s.requires_grad_(True)
    t.requires_grad_(True)
    total_loss(nkd_loss(s, t, torch.tensor([0, 1, 2, 3]), 1.0, 1.5)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


# -- the method ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "model_final.pth")
    torch.manual_seed(7)
    torch.save({"model": torchvision.models.resnet18(num_classes=4).state_dict()}, path)
    return path


class Recorder(torch.nn.Module):
    """A real network that remembers the images it was given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, images):
        self.seen.append(images.clone())
        return self.net(images)


def test_nkd_step_with_cutmix_teacher_frozen_and_fed_the_mixed_images(teacher_file):
    m = make_method(
        "nkd",
        labels=[0, 1, 2, 3],
        num_classes=4,
        TEACHER__WEIGHTS=teacher_file,
        AUG__CUTMIX__ENABLED=True,
        AUG__CUTMIX__PROB=1.0,
    )
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())
    teacher_net, buffers = m.teacher, {k: v.clone() for k, v in m.teacher.state_dict().items()}
    m.teacher = Recorder(teacher_net)
    torch.manual_seed(8)
    student = Recorder(torchvision.models.resnet18(num_classes=4))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    torch.manual_seed(15)  # a draw that mixes every sample, each less than half its own
    mixed, targets, _ = m.mix_batch(images, labels)
    assert not torch.equal(mixed, images) and (targets.argmax(dim=1) != labels).all()
    torch.manual_seed(15)  # the step draws the same box
    losses, logits = m.training_step(student, images, labels, torch.arange(4))
    loss = total_loss(losses)

    assert torch.equal(m.teacher.seen[0], mixed) and torch.equal(student.seen[0], mixed)
    with torch.no_grad():
        teacher_logits = teacher_net(mixed)
    expected = F.cross_entropy(logits, targets) + authors_nkd(
        logits, teacher_logits, targets, 1.0, 1.5
    )
    assert abs(loss.item() - expected.item()) <= 1e-6
    assert list(losses) == ["loss_target", "loss_non_target", "loss_ce"]
    assert losses["loss_ce"].item() == pytest.approx(F.cross_entropy(logits, targets).item())
    loss.backward()
    assert all(p.grad is None for p in teacher_net.parameters())
    # Eval mode: BatchNorm's running statistics did not move.
    assert all(torch.equal(v, buffers[k]) for k, v in teacher_net.state_dict().items())


def test_nkd_loads_torchvision_weights_needs_a_teacher_and_describes_itself(tmp_path, teacher_file):
    net = torchvision.models.resnet18(num_classes=2)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    m = make_method("nkd", num_classes=2, TEACHER__WEIGHTS=str(tmp_path / "tv.pth"))
    assert torch.equal(m.teacher.fc.weight, net.fc.weight)
    assert m.describe().startswith(
        f"nkd: teacher {tmp_path / 'tv.pth'} (resnet18, eval mode, no grad); T 1, gamma 1.5"
    )
    with pytest.raises(ValueError, match="METHOD.NAME nkd needs TEACHER.WEIGHTS"):
        make_method("nkd", num_classes=2)
    with pytest.raises(ValueError, match="does not fit"):  # a 4-class teacher for a 2-class run
        make_method("nkd", num_classes=2, TEACHER__WEIGHTS=teacher_file)
    with pytest.raises(ValueError, match="NKD.TEMPERATURE"):
        make_method(
            "nkd", num_classes=2, TEACHER__WEIGHTS=str(tmp_path / "tv.pth"), NKD__TEMPERATURE=0.0
        )


@pytest.mark.parametrize("soft", [False, True])
def test_nkd_loss_keeps_every_tensor_on_the_logits_device(soft):
    # On the meta device, a tensor made on the CPU instead is an error, as it is on a GPU.
    logits = torch.randn(4, 5, device="meta")
    targets = (
        torch.rand(4, 5, device="meta") if soft else torch.zeros(4, dtype=torch.long, device="meta")
    )
    assert total_loss(nkd_loss(logits, logits.clone(), targets, 1.0, 1.5)).device.type == "meta"
