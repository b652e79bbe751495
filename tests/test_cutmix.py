"""CutMix: the clipped box and its lambda, pasting, target mixing by area, the two rules, and
reproducibility from the global RNG."""

import pytest
import torch

from pretrain.methods.cutmix import CutMix, Mix, cutmix_box


def test_box_inside_the_image_keeps_nominal_area():
    # lam 0.75 on 8x8: side sqrt(0.25) * 8 = 4, centred at (4, 4): rows/cols 2..6.
    box, lam = cutmix_box(8, 8, 0.75, 4, 4)
    assert box == (2, 6, 2, 6) and lam == pytest.approx(1 - 16 / 64)


def test_box_clipped_at_the_border_recomputes_lambda():
    # Nominal 5x5 box (lam 0.75 on 10x10) centred at (1, 9): rows 0..3, cols 7..10 -> 3x3 = 9 px.
    box, lam = cutmix_box(10, 10, 0.75, 1, 9)
    assert box == (0, 3, 7, 10)
    assert lam == pytest.approx(1 - 9 / 100)  # not the nominal 0.75


@pytest.mark.parametrize("cy, cx, box", [(5, 0, (3, 7, 0, 2)), (0, 5, (0, 2, 3, 7))])
def test_box_clipped_at_the_first_row_or_column_starts_there(cy, cx, box):
    # Nominal 5x5 box (lam 0.75 on 10x10) centred on the first column (row): 4 x 2 pixels.
    assert cutmix_box(10, 10, 0.75, cy, cx) == (box, pytest.approx(1 - 8 / 100))


def test_mix_pastes_the_partner_box_and_mixes_targets_by_area():
    images = torch.stack([torch.full((1, 4, 4), float(v)) for v in (1, 2, 3)])
    targets = torch.eye(3)
    mix = Mix(which=torch.tensor([0, 2]), partner=torch.tensor([2, 0]), box=(0, 2, 0, 2), lam=0.75)
    out = mix.images(images)
    assert (
        out[0, 0, :2, :2].eq(3).all() and out[0, 0, 2:].eq(1).all() and out[0, 0, :, 2:].eq(1).all()
    )
    assert out[2, 0, :2, :2].eq(1).all() and out[2, 0, 2:].eq(3).all()
    assert torch.equal(out[1], images[1])  # not mixed
    assert torch.equal(images[0], torch.full((1, 4, 4), 1.0))  # the input is left alone
    mixed = mix.targets(targets)
    assert torch.allclose(mixed, torch.tensor([[0.75, 0, 0.25], [0, 1, 0], [0.25, 0, 0.75]]))
    assert mix.unmixed(3).tolist() == [1]


def test_drawn_lambda_is_the_pasted_fraction():
    torch.manual_seed(3)
    cutmix = CutMix(prob=1.0, beta=1.0)
    images = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 1, 12, 10)  # sample i is all i + 1
    for _ in range(20):
        mix = cutmix.draw(4, 12, 10)
        pasted = mix.images(images)
        for i, p in zip(mix.which.tolist(), mix.partner.tolist()):
            replaced = (pasted[i] == p + 1).float().mean().item() if p != i else 0.0
            assert replaced == pytest.approx(1 - mix.lam if p != i else 0.0)


def test_batch_rule_mixes_whole_batches_with_probability():
    assert CutMix(prob=0.0).draw(8, 4, 4) is None
    mix = CutMix(prob=1.0).draw(8, 4, 4)
    assert mix.which.tolist() == list(range(8)) and sorted(mix.partner.tolist()) == list(range(8))
    torch.manual_seed(0)
    hits = sum(CutMix(prob=0.3).draw(2, 4, 4) is not None for _ in range(2000))
    assert 500 < hits < 700


def test_half_rule_mixes_half_of_every_batch_among_themselves():
    torch.manual_seed(0)
    for _ in range(10):
        mix = CutMix(prob=0.5, mode="half").draw(8, 6, 6)
        assert len(mix.which) == 4 and len(set(mix.which.tolist())) == 4
        assert sorted(mix.partner.tolist()) == sorted(
            mix.which.tolist()
        )  # partners among the mixed
        assert len(mix.unmixed(8)) == 4


def test_draws_are_reproducible_from_the_global_rng():
    torch.manual_seed(7)
    a = CutMix(prob=0.5, mode="half").draw(16, 32, 32)
    torch.manual_seed(7)
    b = CutMix(prob=0.5, mode="half").draw(16, 32, 32)
    assert torch.equal(a.which, b.which) and torch.equal(a.partner, b.partner)
    assert (a.box, a.lam) == (b.box, b.lam)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"prob": 1.5}, "PROB"), ({"beta": 0.0}, "BETA"), ({"mode": "sample"}, "PSKD_MODE")],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CutMix(**kwargs)


def test_probability_zero_never_mixes_even_on_a_zero_draw(monkeypatch):
    # torch.rand draws from [0, 1): 0.0 itself is a possible draw.
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.zeros(()))
    assert CutMix(prob=0.0).draw(8, 4, 4) is None
    assert CutMix(prob=0.5).draw(8, 4, 4) is not None


def test_half_rule_mixes_a_single_sample_with_itself():
    # round(0.5 * 3) = 2 and round(0.5 * 2) = 1: a one-sample draw is still a draw (a no-op
    # paste), so that sample takes the CutMix side of the rule, not the other method's.
    torch.manual_seed(0)
    mix = CutMix(prob=0.5, mode="half").draw(2, 4, 4)
    assert mix is not None and mix.which.tolist() == mix.partner.tolist()
    assert mix.unmixed(2).tolist() == [1 - mix.which.item()]


def test_defaults_are_the_configs_and_the_description_names_the_rule():
    from pretrain.config.defaults import get_cfg

    c = get_cfg().AUG.CUTMIX
    cutmix = CutMix()
    assert (cutmix.prob, cutmix.beta, cutmix.mode) == (c.PROB, c.BETA, "batch")
    assert cutmix.describe() == (
        "CutMix on whole batches with probability 0.5, lambda ~ Beta(1, 1), targets mixed by "
        "clipped box area"
    )
    assert CutMix(prob=0.5, beta=2.0, mode="half").describe() == (
        "CutMix on 0.5 of every batch, lambda ~ Beta(2, 2), targets mixed by clipped box area"
    )
