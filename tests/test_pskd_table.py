"""PS-KD prediction table: memory accounting at its defaults, at the int16/int32 id boundary and
per rank, and the checkpoint of a top-k table (values and class ids) in one process."""

import pytest
import torch

from pretrain.methods.prediction_table import PredictionTable, table_bytes


def test_table_bytes_default_to_a_dense_bfloat16_table():
    assert table_bytes(10, 7) == 10 * 7 * 2


def test_topk_ids_take_two_bytes_up_to_32767_classes_and_four_above():
    assert table_bytes(10, 32767, "float32", topk=3) == 10 * 3 * (4 + 2)
    assert table_bytes(10, 32768, "float32", topk=3) == 10 * 3 * (4 + 4)
    assert table_bytes(10, 32768, "bfloat16", topk=3) == 10 * 3 * (2 + 4)


def test_a_rank_holds_its_rows_and_the_spare_row():
    # Dense: 10 rows + the spare row, 5 classes, bfloat16 (2 bytes).
    assert PredictionTable(list(range(5)) * 2, 5, torch.device("cpu")).nbytes() == 11 * 5 * 2
    # Top-2, float32: 11 rows of 2 values (4 bytes) and 2 int16 class ids (2 bytes).
    table = PredictionTable(list(range(5)) * 2, 5, torch.device("cpu"), "float32", topk=2)
    assert table.nbytes() == 11 * 2 * (4 + 2)


def test_topk_table_checkpoint_keeps_values_and_class_ids():
    labels = [0, 3, 1]
    table = PredictionTable(labels, 5, torch.device("cpu"), dtype="float32", topk=2)
    table.write(
        torch.tensor([2, 0]),
        torch.tensor([[0.1, 0.2, 0.05, 0.6, 0.05], [0.5, 0.1, 0.1, 0.1, 0.2]]),
        2,
    )
    state = table.state_dict()
    assert state["ids"].shape == (3, 2) and state["topk"] == 2
    fresh = PredictionTable(labels, 5, torch.device("cpu"), dtype="float32", topk=2)
    fresh.load_state_dict(state)
    expected = torch.tensor([[5 / 7, 0, 0, 0, 2 / 7], [0, 0, 0, 1, 0], [0, 0.25, 0, 0.75, 0]])
    torch.testing.assert_close(fresh.read(torch.arange(3), 3), expected)


NUM_SAMPLES, K = 7, 5


def _shard(rank, world, what):
    """Rank ``rank``'s local rows (global row g = rank + world * local row): values [g, g + 0.5],
    ids [g % K, (g + 1) % K]; a padding row past the 7 samples holds -1."""
    g = torch.arange(rank, -(-NUM_SAMPLES // world) * world, world)
    rows = (
        torch.stack([g + 0.0, g + 0.5], 1)
        if what == "values"
        else torch.stack([g % K, (g + 1) % K], 1)
    )
    rows[g >= NUM_SAMPLES] = -1
    return rows


def _table_on_rank(rank, world, monkeypatch, calls):
    """A top-k table built as rank ``rank`` of ``world``, its shard set, point-to-point calls
    recorded."""
    import pretrain.methods.prediction_table as pt

    monkeypatch.setattr(pt, "get_rank", lambda: rank)
    monkeypatch.setattr(pt, "get_world_size", lambda: world)
    shards = {
        src: iter([_shard(src, world, "values"), _shard(src, world, "ids").int()])
        for src in range(1, world)
    }

    def recv(tensor, src):
        calls.append(("recv", src, tensor.dtype, tuple(tensor.shape)))
        tensor.copy_(next(shards[src]))

    def send(tensor, dst):
        calls.append(("send", dst, tensor.clone()))

    monkeypatch.setattr(
        pt, "dist", type("FakeDist", (), {"recv": staticmethod(recv), "send": staticmethod(send)})
    )
    table = PredictionTable(
        list(range(NUM_SAMPLES)), K, torch.device("cpu"), dtype="float32", topk=2
    )
    shard = _shard(rank, world, "values")
    table.values[: len(shard)], table.ids[: len(shard)] = (
        shard,
        _shard(rank, world, "ids").to(table.ids.dtype),
    )
    return table


@pytest.mark.parametrize("world", [2, 3])
def test_rank_0_assembles_the_checkpoint_table_shard_by_shard(world, monkeypatch):
    calls = []
    state = _table_on_rank(0, world, monkeypatch, calls).state_dict()
    g = torch.arange(NUM_SAMPLES)
    torch.testing.assert_close(state["values"], torch.stack([g + 0.0, g + 0.5], 1))
    assert state["ids"].dtype == torch.int16
    assert torch.equal(state["ids"], torch.stack([g % K, (g + 1) % K], 1).short())
    # One shard at a time from each other rank, values then ids; ids travel as int32.
    shape = (-(-NUM_SAMPLES // world), 2)
    assert calls == (
        [("recv", src, torch.float32, shape) for src in range(1, world)]
        + [("recv", src, torch.int32, shape) for src in range(1, world)]
    )


def test_other_ranks_send_their_shard_to_rank_0(monkeypatch):
    calls = []
    assert _table_on_rank(2, 3, monkeypatch, calls).state_dict() is None
    (_, dst_values, values), (_, dst_ids, ids) = calls
    assert (dst_values, dst_ids) == (0, 0)
    torch.testing.assert_close(values, _shard(2, 3, "values"))  # the spare row stays home
    assert ids.dtype == torch.int32 and torch.equal(ids, _shard(2, 3, "ids").int())


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_loads_its_own_rows_of_the_checkpoint_table(world, monkeypatch):
    # The full table's row g holds [g, g + 0.5] with ids [g % K, (g + 1) % K]: rank r keeps rows
    # r, r + world, ... (the rows it writes and reads in training).
    g = torch.arange(NUM_SAMPLES)
    state = {
        "values": torch.stack([g + 0.0, g + 0.5], 1),
        "ids": torch.stack([g % K, (g + 1) % K], 1).short(),
        "topk": 2,
        "num_classes": K,
    }
    for rank in range(world):
        table = _table_on_rank(rank, world, monkeypatch, [])
        table.values.zero_()
        table.ids.zero_()
        table.load_state_dict(state)
        mine = torch.arange(rank, NUM_SAMPLES, world)
        torch.testing.assert_close(table.values[: len(mine)], state["values"][mine])
        assert torch.equal(table.ids[: len(mine)], state["ids"][mine].to(table.ids.dtype))


def test_topk_must_be_between_zero_and_the_number_of_classes():
    PredictionTable([0, 1], 3, torch.device("cpu"), topk=3)  # every class kept: allowed
    for topk in (-1, 4):
        with pytest.raises(ValueError, match=r"PSKD.TOPK must be in \[0, 3\]"):
            PredictionTable([0, 1], 3, torch.device("cpu"), topk=topk)


@pytest.mark.parametrize("topk", [0, 2])
def test_the_table_reads_on_its_own_device_whatever_the_indices_device(topk):
    # The meta device stands for a GPU: indices arrive from the CPU sampler, and any tensor the
    # read makes on the CPU would show here.
    table = PredictionTable([0, 1, 2], 3, torch.device("meta"), topk=topk)
    assert table.read(torch.arange(3), 3).device.type == "meta"


@pytest.mark.parametrize("classes, id_dtype", [(32767, torch.int16), (32768, torch.int32)])
def test_topk_class_ids_fit_the_largest_class(classes, id_dtype):
    table = PredictionTable([classes - 1, 0], classes, torch.device("cpu"), topk=2)
    assert table.ids.dtype == id_dtype
    assert table.read(torch.tensor([0]), 1)[0, classes - 1] == 1  # the last class, not wrapped
