"""PS-KD: alpha schedule, soft targets, the gradient identity of the paper's eq. 7, and the
prediction table (one-hot start, updates, top-k, checkpoints, and DDP with 2 CPU processes)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from helpers import file_rendezvous
from pretrain.methods.prediction_table import PredictionTable, table_bytes
from pretrain.methods.pskd import alpha_at, soft_targets
from test_methods import LN, fixed, make_method


def test_alpha_schedule_grows_linearly_and_ends_at_alpha_T():
    assert alpha_at(0, 90, 0.3) == pytest.approx(0.3 / 90)
    assert alpha_at(44, 90, 0.3) == pytest.approx(0.15)
    assert alpha_at(89, 90, 0.3) == 0.3
    assert [alpha_at(e, 4, 0.8) for e in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ValueError):
        alpha_at(90, 90, 0.3)


def test_soft_targets_hand_computed():
    labels = torch.tensor([0, 2])
    past = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    q = soft_targets(labels, past, 0.25, 3)
    expected = torch.tensor([[0.75 + 0.125, 0.075, 0.05], [0.025, 0.025, 0.75 + 0.2]])
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(q.sum(1), torch.ones(2))


def test_soft_targets_are_constants():
    past = torch.rand(2, 3, requires_grad=True)
    assert not soft_targets(torch.tensor([0, 1]), past, 0.5, 3).requires_grad


def test_gradient_identity_of_eq7():
    """d loss / d z = (1 - alpha)(p_t - y) + alpha (p_t - p_{t-1})  (paper, sec. 3.2)."""
    torch.manual_seed(0)
    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (5,))
    past = torch.randn(5, 7, dtype=torch.float64).softmax(1)
    alpha = 0.35
    loss = F.cross_entropy(z, soft_targets(labels, past, alpha, 7), reduction="sum")
    loss.backward()
    p = z.detach().softmax(1)
    y = F.one_hot(labels, 7).double()
    torch.testing.assert_close(z.grad, (1 - alpha) * (p - y) + alpha * (p - past))


def test_table_starts_one_hot_and_stores_updates():
    labels = [3, 1, 0, 2, 1]
    table = PredictionTable(labels, 4, torch.device("cpu"), dtype="float32")
    idx = torch.arange(5)
    torch.testing.assert_close(table.read(idx, 8), F.one_hot(torch.tensor(labels), 4).float())
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    table.write(torch.tensor([4, 0]), probs, 8)
    out = table.read(torch.tensor([0, 1, 4]), 8)
    torch.testing.assert_close(out[0], probs[1])
    torch.testing.assert_close(out[1], F.one_hot(torch.tensor(1), 4).float())  # untouched row
    torch.testing.assert_close(out[2], probs[0])


def test_table_bfloat16_rows_sum_to_one():
    table = PredictionTable([0, 1], 1000, torch.device("cpu"))  # bfloat16 by default
    probs = torch.randn(2, 1000).softmax(1)
    table.write(torch.tensor([0, 1]), probs, 2)
    out = table.read(torch.tensor([0, 1]), 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.sum(1), torch.ones(2))
    assert (out - probs).abs().max() < 1e-3


@pytest.mark.parametrize("dtype, worst", [("bfloat16", 6e-4), ("float32", 1e-6)])
def test_table_target_error_per_storage(dtype, worst):
    """PS-KD targets at alpha 0.3 from 1000-class rows read back from the table, against the exact
    ones. bfloat16 rounds a probability p in [2^-k, 2^(1-k)) to within 2^-(k+8): at most
    0.3 * 2^-9 = 5.9e-4 of the target (docs/methods.md: measured up to 4e-4 on random rows)."""
    torch.manual_seed(0)
    n, k = 256, 1000
    labels = torch.randint(0, k, (n,))
    table = PredictionTable(labels.tolist(), k, torch.device("cpu"), dtype=dtype)
    probs = (torch.randn(n, k) * torch.logspace(0, 1.7, n)[:, None]).softmax(
        1
    )  # flat to peaked rows
    table.write(torch.arange(n), probs, n)
    stored = table.read(torch.arange(n), n)
    error = (soft_targets(labels, stored, 0.3, k) - soft_targets(labels, probs, 0.3, k)).abs().max()
    assert error < worst
    if dtype == "bfloat16":
        assert error > 1e-4  # bf16 does round: the figure in the docs is not that of float32


def test_topk_table_renormalises_kept_mass():
    table = PredictionTable([0, 1], 5, torch.device("cpu"), dtype="float32", topk=2)
    assert table.read(torch.tensor([1]), 1).tolist() == [[0, 1, 0, 0, 0]]  # one-hot start
    probs = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])
    table.write(torch.tensor([1]), probs, 1)
    torch.testing.assert_close(
        table.read(torch.tensor([1]), 1), torch.tensor([[0, 4 / 7, 0, 3 / 7, 0]])
    )


def test_table_memory_accounting():
    # ImageNet-1k: dense bf16 2.56 GB, top-10 (bf16 value + int16 id) 51 MB.
    assert table_bytes(1_281_167, 1000, "float32") == 1_281_167 * 4000
    assert table_bytes(1_281_167, 1000, "bfloat16") == 1_281_167 * 2000
    assert table_bytes(1_281_167, 1000, "bfloat16", topk=10) == 1_281_167 * 40


def test_table_checkpoint_round_trip():
    table = PredictionTable([0, 1, 2], 3, torch.device("cpu"), dtype="float32")
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    table.write(torch.tensor([2]), probs, 1)
    state = table.state_dict()
    assert state["values"].shape == (3, 3)
    fresh = PredictionTable([0, 1, 2], 3, torch.device("cpu"), dtype="float32")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.read(torch.arange(3), 3), table.read(torch.arange(3), 3))
    with pytest.raises(ValueError, match="PSKD.TOPK"):
        PredictionTable([0, 1, 2], 3, torch.device("cpu"), topk=2).load_state_dict(state)


def test_the_methods_checkpoint_carries_its_epoch_and_table():
    m = make_method("pskd", PSKD__TABLE_DTYPE="float32")  # labels 0, 1, 2, 0; 3 classes
    m.on_epoch_start(1, None)
    logits = torch.tensor([[0.0, LN(3), 0.0]] * 4)  # softmax [1/5, 3/5, 1/5]
    m.training_step(
        fixed(logits), torch.zeros(4, 3, 4, 4), torch.tensor([0, 1, 2, 0]), torch.arange(4)
    )
    restored = make_method("pskd", PSKD__TABLE_DTYPE="float32")
    restored.load_state_dict(m.state_dict())
    assert restored.epoch == 1
    stored = restored.source.read(None, None, torch.arange(4))
    torch.testing.assert_close(stored, torch.tensor([[0.2, 0.6, 0.2]] * 4))


def _rank_probs(rank):
    """The distinct prediction rank ``rank`` writes: its largest entry on class ``rank``."""
    return torch.tensor([0.6, 0.05, 0.15, 0.2]).roll(rank)


TABLE_LABELS = [0, 1, 2, 3, 0, 1, 2]


def _sharded_table(rank, world, topk):
    """Rank ``rank``'s shard of a 2-process table, written by both ranks and read back whole:
    (every row as this rank reads it, the checkpoint's table)."""
    num = len(TABLE_LABELS)
    table = PredictionTable(TABLE_LABELS, 4, torch.device("cpu"), dtype="float32", topk=topk)
    # Shards hold ~N/world rows (+1 spare): one copy of the table over the job.
    assert table.values.shape[0] == -(-num // world) + 1
    # Step 1: rank r trains on samples [r, r+2, r+4] (rank 1 has one fewer: padding).
    mine = torch.arange(rank, num, world)[: 3 - rank]
    table.write(mine, _rank_probs(rank).repeat(len(mine), 1), pad_to=3)
    # Step 2: every rank reads rows the *other* rank (or itself) wrote, via any shard.
    everyone = table.read(torch.arange(num), pad_to=num)
    return {"read": everyone, "state": table.state_dict()}


def _ddp_worker(rank, world, rendezvous, result_path):
    """Every 2-process table check of this file in one process group (one spawn of two
    interpreters for all): each result into ``result_path.<rank>``."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        results = {topk: _sharded_table(rank, world, topk) for topk in (0, 2)}
        results["checkpoint"] = _checkpoint_memory(rank, world)
        torch.save(results, f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """The results of ``_ddp_worker`` on each of 2 spawned processes: (rank 0's, rank 1's)."""
    folder = tmp_path_factory.mktemp("ddp")
    world = 2
    mp.start_processes(
        _ddp_worker,
        args=(world, file_rendezvous(folder), str(folder / "r")),
        nprocs=world,
        start_method="spawn",
    )
    return tuple(torch.load(folder / f"r.{r}") for r in range(world))


@pytest.mark.integration
@pytest.mark.parametrize("topk", [0, 2], ids=["dense", "top2"])
def test_table_under_ddp_with_two_cpu_processes(ddp_results, topk):
    r0, r1 = (results[topk] for results in ddp_results)
    expected = F.one_hot(torch.tensor(TABLE_LABELS), 4).float()
    for rank, rows in ((0, [0, 2, 4]), (1, [1, 3])):
        probs = _rank_probs(rank)
        if topk:  # the kept mass, renormalised
            kept = torch.zeros(4).scatter(0, probs.topk(topk).indices, probs.topk(topk).values)
            probs = kept / kept.sum()
        expected[rows] = probs
    torch.testing.assert_close(r0["read"], expected)
    torch.testing.assert_close(r1["read"], expected)
    # The checkpoint holds the table once, on rank 0, in global row order ...
    assert r1["state"] is None
    assert r0["state"]["values"].shape == ((7, topk) if topk else (7, 4))
    # ... and loads into a single-process table (another world size).
    single = PredictionTable(TABLE_LABELS, 4, torch.device("cpu"), dtype="float32", topk=topk)
    single.load_state_dict(r0["state"])
    torch.testing.assert_close(single.read(torch.arange(7), 7), expected)


class _AllocatedBytes(TorchDispatchMode):
    """Sums the bytes of every new storage an operation returns (views and in-place results
    aside)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.total += t.untyped_storage().nbytes()
                seen.add(t.untyped_storage().data_ptr())
        return out


def _checkpoint_memory(rank, world):
    """The bytes rank ``rank`` allocates to take a 1000 x 500 table's checkpoint, and the
    checkpoint's table."""
    num, classes = 1000, 500
    labels = torch.arange(num) % classes
    table = PredictionTable(labels.tolist(), classes, torch.device("cpu"), dtype="float32")
    table.write(
        torch.arange(rank, num, world),
        torch.full((num // world, classes), float(rank + 1)),
        num // world,
    )
    with _AllocatedBytes() as allocated:
        state = table.state_dict()
    return {"allocated": allocated.total, "state": state}


@pytest.mark.integration
def test_table_checkpoint_gathers_shard_by_shard(ddp_results):
    r0 = ddp_results[0]["checkpoint"]
    values = r0["state"]["values"]
    table, shard = 1000 * 500 * 4, 500 * 500 * 4
    assert values.shape == (1000, 500) and values.untyped_storage().nbytes() == table
    torch.testing.assert_close(values[0::2], torch.ones(500, 500))  # rank 0's rows
    torch.testing.assert_close(values[1::2], torch.full((500, 500), 2.0))  # rank 1's rows
    # Rank 0 allocates the host table and one received shard (plus its spare row); gathering every
    # shard and stacking them would take twice the table.
    assert r0["allocated"] <= table + shard + 2 * 500 * 4


def test_topk_table_starts_one_hot_for_class_zero():
    # Regression: a top-k row of a class-0 sample once read back as NaN.
    table = PredictionTable([0, 3], 4, torch.device("cpu"), topk=2)
    torch.testing.assert_close(
        table.read(torch.arange(2), 2), F.one_hot(torch.tensor([0, 3]), 4).float()
    )
