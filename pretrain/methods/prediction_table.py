"""PS-KD's prediction table: each training sample's softmax from the last time it was trained on.

The table is sharded over the ranks: row ``i`` lives on rank ``i % world_size`` at local row
``i // world_size``, on the training device. Each step every rank

* ``read``s the rows of its batch: the ranks all-gather the requested indices, each owner
  fills in the rows it holds (zeros elsewhere) and a sum reduce-scatter hands every rank its
  own rows (adding zeros is exact, in any dtype); a top-k table sends its k (value, id) pairs,
  not dense rows, and the reader expands them;
* ``write``s its detached softmax: the ranks all-gather (index, prediction) and each owner
  stores the rows it holds.

So the whole job keeps one copy of the table (not one per process), every row a rank reads
holds the newest prediction whichever rank computed it, and no step waits on the host: batches
are padded to a fixed size with index -1, and padded or foreign rows are routed to a spare
"trash" row instead of being filtered out. With one process the collectives vanish.

Storage: ``bfloat16`` (default) or ``float32`` dense rows, or with ``topk > 0`` only each row's
k largest probabilities and their class ids. A top-k row is renormalised when read: the target
uses ``P_hat[c] = P[c] / sum_{j in topk} P[j]`` for the kept classes and 0 elsewhere, so its L1
distance to the dense row is ``2 * (1 - kept mass)``. Ids travel as int32 (NCCL and gloo have no
int16) and are stored as int16 when K fits.
"""

import torch
import torch.distributed as dist

from pretrain.runtime.distributed import get_rank, get_world_size

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def table_bytes(num_samples, num_classes, dtype="bfloat16", topk=0):
    """Bytes of the whole job's table (sum over ranks, spare rows aside)."""
    item = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    if topk:
        id_item = 2 if num_classes <= 32767 else 4
        return num_samples * topk * (item + id_item)
    return num_samples * num_classes * item


class PredictionTable:
    """Each training sample's softmax from the last time it was trained on (see module doc)."""

    def __init__(self, labels, num_classes, device, dtype="bfloat16", topk=0):
        if dtype not in DTYPES:
            raise ValueError(f"PSKD.TABLE_DTYPE must be one of {sorted(DTYPES)}, got {dtype!r}")
        if topk < 0 or topk > num_classes:
            raise ValueError(f"PSKD.TOPK must be in [0, {num_classes}], got {topk}")
        self.num_samples, self.num_classes = len(labels), num_classes
        self.dtype, self.topk, self.device = DTYPES[dtype], topk, device
        self.rank, self.world = get_rank(), get_world_size()
        rows = -(-self.num_samples // self.world)
        self.trash = rows  # the spare row that absorbs padded and foreign writes
        labels = torch.as_tensor(labels, dtype=torch.long)
        mine = torch.arange(self.rank, rows * self.world, self.world)
        local_labels = torch.zeros(rows + 1, dtype=torch.long)
        valid = mine < self.num_samples
        local_labels[:rows][valid] = labels[mine[valid]]
        # Rows start as one-hot labels: epoch 0 is plain cross-entropy (a zero row would give
        # targets summing to 1 - alpha).
        if topk:
            id_dtype = torch.int16 if num_classes <= 32767 else torch.int32
            self.values = torch.zeros(rows + 1, topk, dtype=self.dtype, device=device)
            self.values[:, 0] = 1
            self.ids = torch.zeros(rows + 1, topk, dtype=id_dtype, device=device)
            self.ids[:, 0] = local_labels.to(device=device, dtype=id_dtype)
        else:
            # Built in place: F.one_hot would first make an int64 (rows, K) tensor on the host,
            # 4x a bf16 table (10 GB for ImageNet-1k in one process); scatter_ with a scalar
            # also allocates a full-size temporary. index_put_ writes only the ones.
            self.values = torch.zeros(rows + 1, num_classes, dtype=self.dtype, device=device)
            self.values[torch.arange(rows + 1, device=device), local_labels.to(device)] = 1
            self.ids = None

    def nbytes(self):
        """Bytes this rank holds: its shard and the spare row."""
        return self.values.nbytes + (self.ids.nbytes if self.ids is not None else 0)

    # -- per step ---------------------------------------------------------------------------
    def _local_rows(self, indices):
        """Local row of each global index this rank owns; the trash row for the rest."""
        owned = (indices >= 0) & (indices % self.world == self.rank)
        return torch.where(
            owned, indices // self.world, torch.full_like(indices, self.trash)
        ), owned

    def _gather(self, tensor, pad_to):
        """All ranks' ``tensor`` padded to ``pad_to`` rows, concatenated in rank order."""
        n = tensor.shape[0]
        if n > pad_to:
            raise ValueError(f"batch of {n} exceeds the table's pad size {pad_to}")
        fill = -1 if tensor.dtype == torch.long else 0
        padded = torch.full(
            (pad_to,) + tuple(tensor.shape[1:]), fill, dtype=tensor.dtype, device=tensor.device
        )
        padded[:n] = tensor
        if self.world == 1:
            return padded
        out = torch.empty(
            (self.world * pad_to,) + tuple(tensor.shape[1:]),
            dtype=tensor.dtype,
            device=tensor.device,
        )
        dist.all_gather_into_tensor(out, padded)
        return out

    def _reduce_scatter(self, contrib, pad_to):
        """Sum over ranks of ``contrib`` (world * pad_to rows); this rank's ``pad_to`` rows."""
        if self.world == 1:
            return contrib
        mine = torch.empty(
            (pad_to,) + tuple(contrib.shape[1:]), dtype=contrib.dtype, device=contrib.device
        )
        dist.reduce_scatter_tensor(mine, contrib)
        return mine

    def read(self, indices, pad_to):
        """Past predictions (float32, rows summing to 1) of the samples ``indices`` (B,).

        Collective under DDP: every rank calls it once per step with the same ``pad_to``.
        """
        n = indices.shape[0]
        wanted = self._gather(indices.to(self.device), pad_to)
        rows, owned = self._local_rows(wanted)
        owned = owned.unsqueeze(1)
        values = self._reduce_scatter(self.values[rows] * owned.to(self.dtype), pad_to)[:n]
        if self.topk:
            # Only the k (value, id) pairs travel, not dense rows: K / (1.5 k) times fewer bytes
            # (ids go as int32, which NCCL sums; adding the non-owners' zeros is exact).
            ids = self._reduce_scatter(self.ids[rows].int() * owned.int(), pad_to)[:n]
            # scatter_add_: an initial one-hot row stores (1, label) and (0, 0) pairs; for label
            # 0 a plain scatter_ could keep a 0 and make the row all zeros.
            values = torch.zeros(
                n, self.num_classes, dtype=self.dtype, device=self.device
            ).scatter_add_(1, ids.long(), values)
        probs = values.float()
        # Renormalise: top-k rows keep only part of the mass, and bf16 rounding shifts sums.
        return probs / probs.sum(dim=1, keepdim=True)

    @torch.no_grad()
    def write(self, indices, probs, pad_to):
        """Store ``probs`` (B, K) as the newest predictions of ``indices``. Collective."""
        probs = probs.detach()
        if self.topk:
            vals, ids = probs.topk(self.topk, dim=1)
            payload = [
                vals.to(self.dtype),
                ids.int(),
            ]  # int32 on the wire: NCCL and gloo have no int16
        else:
            payload = [probs.to(self.dtype)]
        indices = self._gather(indices.to(self.device), pad_to)
        payload = [self._gather(p, pad_to) for p in payload]
        rows, _ = self._local_rows(indices)
        self.values.index_copy_(0, rows, payload[0])
        if self.topk:
            self.ids.index_copy_(0, rows, payload[1].to(self.ids.dtype))

    # -- checkpoints ------------------------------------------------------------------------
    def _full(self, local):
        """The whole table (global row order) in rank 0's host memory; None on other ranks.

        The shards travel one at a time, each straight into its rows of the host buffer: the
        device holds one received shard at a time (1 / world of the table), not the whole table
        gathered and then stacked again (twice the table, kept afterwards by the caching
        allocator)."""
        local = local[: self.trash]
        if self.world == 1:
            return local.cpu()
        stored = local.dtype
        wire = (
            local.int() if stored == torch.int16 else local
        )  # top-k ids: NCCL and gloo carry no int16
        if self.rank != 0:
            dist.send(wire.contiguous(), dst=0)
            return None
        full = torch.empty((self.num_samples,) + tuple(local.shape[1:]), dtype=stored)
        received = torch.empty_like(wire)
        for src in range(self.world):
            rows = full[
                src :: self.world
            ]  # global row i lives on rank i % world, local row i // world
            if src == 0:
                rows.copy_(local[: len(rows)])
            else:
                dist.recv(received, src=src)
                rows.copy_(received[: len(rows)])
        return full

    def state_dict(self):
        """Collective. The whole table, once, in rank 0's host memory (None elsewhere): checkpoints
        hold it once."""
        values = self._full(self.values)
        ids = self._full(self.ids) if self.topk else None
        if self.rank != 0:
            return None
        return {"values": values, "ids": ids, "topk": self.topk, "num_classes": self.num_classes}

    def load_state_dict(self, state):
        if state["topk"] != self.topk or state["num_classes"] != self.num_classes:
            raise ValueError(
                f"checkpoint table has topk={state['topk']}, {state['num_classes']} classes; the "
                f"config asks for PSKD.TOPK {self.topk}, {self.num_classes} classes"
            )
        if state["values"].shape[0] != self.num_samples:
            raise ValueError(
                f"checkpoint table has {state['values'].shape[0]} rows; the training set has "
                f"{self.num_samples} samples"
            )
        mine = slice(self.rank, None, self.world)
        n = len(range(self.num_samples)[mine])
        self.values[:n] = state["values"][mine].to(self.device, self.dtype)
        if self.topk:
            self.ids[:n] = state["ids"][mine].to(self.device, self.ids.dtype)
