"""Process-group set-up from the torchrun environment, and the few collectives we need."""

import datetime
import os
import socket

import torch
import torch.distributed as dist

# MODEL.DEVICE: under torchrun each process takes cuda:LOCAL_RANK or the CPU.
DEVICES = ("cuda", "cpu")


def init_distributed(device_type, timeout_s):
    """Join the process group when launched by torchrun (RANK / WORLD_SIZE set).

    Returns the torch.device this process trains on: cuda:LOCAL_RANK on GPU, cpu otherwise.
    gloo on CPU, NCCL on GPU; ``timeout_s`` bounds how long a collective waits for a dead rank.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "MODEL.DEVICE is 'cuda' but no CUDA device is available (use MODEL.DEVICE cpu)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return device


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier():
    if get_world_size() > 1:
        dist.barrier()


def all_gather_cat(tensor):
    """Concatenate every rank's tensor along dim 0 (rank order); sizes may differ by rank."""
    world = get_world_size()
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)])


def all_gather_object(obj):
    """Every rank's picklable ``obj``, in rank order."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def on_every_rank(fn, what):
    """Collective: ``fn()`` on every rank. If it raises on any rank, every rank raises a
    ValueError naming each failing rank, its host and its error, so that no rank is left waiting
    in a collective for one that stopped."""
    try:
        result, error = fn(), None
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        result, error = None, f"{type(exc).__name__}: {exc}"
    failures = [
        (rank, host, err)
        for rank, (host, err) in enumerate(all_gather_object((socket.gethostname(), error)))
        if err is not None
    ]
    if failures:
        raise ValueError(
            f"{what} failed on " + "; ".join(f"rank {r} (host {h}): {e}" for r, h, e in failures)
        )
    return result


def check_same_on_every_rank(value, what):
    """Collective: a ValueError on every rank unless all ranks hold the same ``value``."""
    values = all_gather_object((socket.gethostname(), value))
    if any(v != values[0][1] for _, v in values):
        raise ValueError(
            f"{what} differs between ranks: "
            + ", ".join(f"rank {r} (host {h}): {v}" for r, (h, v) in enumerate(values))
        )


def all_reduce_sum(tensor):
    if get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def destroy():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(module, src=0):
    """Make every rank's buffers (BatchNorm statistics) equal to rank ``src``'s."""
    if get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def rank_stopped_message(rank, world, exc, timeout_s):
    """The line a rank of a process group logs when it stops on an unexpected error (tools/
    pretrain.py, tools/train_net.py): most often another rank's failure, which it says."""
    return (
        f"rank {rank} of {world} stopped: {type(exc).__name__}: {exc}. A collective fails when "
        f"another rank died and waits at most DIST.TIMEOUT_S ({timeout_s} s) for one that is "
        "stuck; look for the first rank that failed."
    )
