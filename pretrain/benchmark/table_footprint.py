"""The prediction table's memory and traffic, computed for every storage mode (the authors'
full float32 table, sharded dense, sharded top-k) at any scale (tools/benchmark.py --table-memory;
docs/benchmarks.md)."""

from pretrain.benchmark.probes import MB
from pretrain.methods.prediction_table import table_bytes


def table_memory(num_samples, num_classes, world, ranks_per_node, topk=(10,), per_rank_batch=32):
    """Bytes per node and in each checkpoint of every storage mode, for ``world`` processes of
    which ``ranks_per_node`` share a node; ``exchange_mb_per_step``: the size of the gathered and
    reduce-scattered buffers of one rank per step (read + write) with ``per_rank_batch`` samples."""
    rows = -(-num_samples // world) + 1  # a shard and its spare row
    rows_per_node = min(ranks_per_node, world) * rows

    def row(mode, dtype, k, per_node, ckpt, exchange):
        return {
            "mode": mode,
            "dtype": dtype,
            "topk": k,
            "num_samples": num_samples,
            "num_classes": num_classes,
            "world": world,
            "ranks_per_node": ranks_per_node,
            "per_node_mb": per_node / MB,
            "per_node_gb": per_node / 1e9,
            "checkpoint_gb": ckpt / 1e9,
            "exchange_mb_per_step": exchange / MB,
        }

    out = []
    fp32 = table_bytes(num_samples, num_classes, "float32")
    # The authors' code: a full float32 table in every process, all-gathered softmax each step.
    out.append(
        row(
            "authors: full fp32 table per process",
            "float32",
            0,
            fp32 * min(ranks_per_node, world),
            fp32,
            world * per_rank_batch * (8 + num_classes * 4),
        )
    )
    gathered_idx = world * per_rank_batch * 8
    for dtype in ("float32", "bfloat16"):
        item = 4 if dtype == "float32" else 2
        dense_exchange = 2 * (
            gathered_idx + world * per_rank_batch * num_classes * item
        )  # read + write
        out.append(
            row(
                "sharded dense",
                dtype,
                0,
                rows_per_node * num_classes * item,
                table_bytes(num_samples, num_classes, dtype),
                dense_exchange,
            )
        )
    for k in topk:
        per_row = table_bytes(1, num_classes, "bfloat16", topk=k)
        wire = world * per_rank_batch * k * (2 + 4)  # bf16 values and int32 ids
        exchange = 2 * (gathered_idx + wire)  # read and write both move (value, id) pairs
        out.append(
            row(
                f"sharded top-{k}",
                "bfloat16",
                k,
                rows_per_node * per_row,
                table_bytes(num_samples, num_classes, "bfloat16", topk=k),
                exchange,
            )
        )
    return out
