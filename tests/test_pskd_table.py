"""PS-KD prediction table: memory accounting at its defaults and at the int16/int32 id boundary,
and the checkpoint of a top-k table (values and class ids) in one process."""

import torch

from pretrain.prediction_table import PredictionTable, table_bytes


def test_table_bytes_default_to_a_dense_bfloat16_table():
    assert table_bytes(10, 7) == 10 * 7 * 2


def test_topk_ids_take_two_bytes_up_to_32767_classes_and_four_above():
    assert table_bytes(10, 32767, "float32", topk=3) == 10 * 3 * (4 + 2)
    assert table_bytes(10, 32768, "float32", topk=3) == 10 * 3 * (4 + 4)
    assert table_bytes(10, 32768, "bfloat16", topk=3) == 10 * 3 * (2 + 4)


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
