"""CS-KD units the loss tests leave open: the loader's pair batches, the anchor/partner split of a
4-D image batch, and the pair sampler's defaults, seed and first epoch."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.data.samplers import ShardedSampler
from pretrain.methods.cskd import ClassPairSampler, cskd_loss
from test_methods import make_method

LABELS = [0, 1, 1, 2, 0, 2, 1, 0, 2, 1]


def test_loader_batches_an_anchor_and_a_partner_per_sample():
    m = make_method("cskd")
    assert [m.loader_batch_size(b) for b in (1, 3, 64)] == [2, 6, 128]


def test_step_splits_a_batch_of_images_into_anchors_then_partners():
    """Two anchors then their two partners, each a distinct 3-channel image; the network averages
    each channel, so every image gives its own logits."""
    m = make_method(
        "cskd", labels=[0, 2], num_classes=3, batch=2, CSKD__TEMPERATURE=2.0, CSKD__LAMBDA=0.7
    )
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2).sin()

    def net(x):
        return x.mean(dim=(2, 3))

    labels = torch.tensor([0, 2, 0, 2])
    losses, logits = m.training_step(net, images, labels, torch.arange(4))
    anchors, partners = net(images[:2]), net(images[2:])
    ce = F.cross_entropy(anchors, labels[:2])
    assert losses["loss_ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    kd = 0.7 * cskd_loss(anchors, partners, 2.0)
    assert losses["loss_kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert torch.equal(logits, anchors)


def test_sampler_defaults_are_one_process_seed_0_epoch_0():
    explicit = ClassPairSampler(LABELS, 3, rank=0, world_size=1, seed=0)
    explicit.set_epoch(0)
    assert list(ClassPairSampler(LABELS, 3)) == list(explicit)


@pytest.mark.parametrize("seed", [1, 5])
def test_sampler_anchors_follow_the_sharded_order_of_its_seed(seed):
    """Anchors are the keys ShardedSampler(seed) gives this rank, partners drawn per position."""
    for rank in (0, 1):
        pairs = ClassPairSampler(
            LABELS, 5, rank=rank, world_size=2, seed=seed
        )  # one step per epoch
        anchors = ShardedSampler(len(LABELS), rank, 2, seed=seed)
        for epoch in (0, 3):
            pairs.set_epoch(epoch)
            anchors.set_epoch(epoch)
            assert list(pairs)[:5] == list(anchors)


def test_method_builds_the_pair_sampler_of_its_labels_batch_rank_and_seed():
    m = make_method("cskd", labels=LABELS, batch=3)
    built = m.build_train_sampler(len(LABELS), rank=1, world_size=2, seed=7)
    reference = ClassPairSampler(LABELS, 3, rank=1, world_size=2, seed=7)
    for epoch in (0, 2):
        built.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert list(built) == list(reference) and len(built) == len(reference)


@pytest.mark.parametrize("rank", [0, 1])
def test_every_step_is_its_anchors_then_a_partner_of_each_ones_class(rank):
    labels = [0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1]
    sampler = ClassPairSampler(labels, batch_size=3, rank=rank, world_size=2, seed=4)
    keys = [i for i, _ in sampler]
    # 6 anchors on this rank (11 padded to 12, dealt out by 2): steps of 3 anchors + 3 partners.
    assert len(keys) == len(sampler) == 12
    anchors = list(ShardedSampler(len(labels), rank, 2, seed=4))
    for step in range(2):
        chunk = keys[6 * step : 6 * step + 6]
        assert chunk[:3] == [i for i, _ in anchors[3 * step : 3 * step + 3]]
        assert [labels[i] for i in chunk[3:]] == [labels[i] for i in chunk[:3]]
