"""What the benchmarks (pretrain/benchmark/training.py, pretrain/benchmark/input_pipeline.py) record
besides their timings: the machine they ran on, memory growth within a timed window, the bytes of
the tensors a method holds, and a device synchronisation before reading a clock.

Memory growth (``MemoryProbe``): on CUDA measured with ``max_memory_allocated``; on CPU with the
process's resident-set high-water mark (VmHWM, reset at each start through
/proc/self/clear_refs), a lower bound since the allocator reuses memory freed before the window.
Units are decimal: 1 MB = 10^6 bytes, 1 GB = 10^9 bytes.
"""

import os
import platform

import torch

MB = 1e6  # decimal units, as the table-size targets in docs/benchmarks.md (2.6 GB, 60 MB)


def machine_info(device):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _proc_status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / MB  # the kernel counts kB of 1024 bytes
    raise KeyError(key)


class MemoryProbe:
    """Growth of memory within a window (``start``, then ``growth_mb``) on ``device``; see the
    module doc."""

    def __init__(self, device):
        self.device = device

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / MB
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = _proc_status_mb("VmRSS")

    def growth_mb(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MB - self.base
        return _proc_status_mb("VmHWM") - self.base


def tensor_bytes(*roots):
    """Bytes of the distinct tensor storages reachable from ``roots`` (modules with their
    gradients, optimizers with their state)."""
    storages, seen = {}, set()

    def visit(obj, depth):
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            for t in (obj, obj.grad):
                if t is not None:
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        elif isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                visit(t, depth + 1)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                visit(state, depth + 1)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v, depth + 1)

    for root in roots:
        visit(root, 0)
    return sum(storages.values())


def synchronize(device):
    """Wait for ``device``'s queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
