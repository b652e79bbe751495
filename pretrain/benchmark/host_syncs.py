"""Find the calls in a training step that would make the host wait for the GPU, on any device.

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` stops at the first synchronising call; that
is the check ``tools/benchmark.py --check-syncs`` runs on a GPU. On the CPU nothing synchronises,
but the calls that would on CUDA are known, and ``HostSyncCheck`` records them as they run:

* reads of a tensor's value by the host: ``item``, ``tolist``, ``numpy``, ``cpu``, ``bool`` /
  ``float`` / ``int`` of a tensor, ``torch.equal``;
* operations whose output size depends on the data: ``nonzero`` and everything built on it
  (boolean-mask indexing and assignment, ``masked_select``, ``unique``, ``repeat_interleave``
  with a tensor of repeats, ``bincount``).

Only tensors that would live on the GPU count. A tensor made by a factory call without a
``device`` argument lives on the host (CutMix's draws, for example), and so does anything computed
from host tensors alone; reading those costs no synchronisation. What the check cannot see on the
CPU: a host tensor sent to the device with ``.to(device)`` stays a host tensor for it (on the CPU
the call returns the tensor itself), and a blocking host-to-device copy does not show.

``F.one_hot`` checks its labels' range with ``item`` on the CPU only (CUDA relies on the scatter's
device-side assert); its internal reads are not counted.
"""

import traceback
import weakref
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Tensor methods and torch functions that hand a tensor's value to the host.
_HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.equal,
}
# Factory functions: without a ``device`` argument their result lives on the host.
_FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.linspace,
}
# Aten operations that read a value on the host or whose output size depends on the data.
_SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.equal.default,
    aten.is_nonzero.default,
    aten.bincount.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
_INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
_FROM_PYTHON = {aten.lift_fresh.default, aten.lift_fresh_copy.default}
# Functions whose CUDA kernels check their input on the device, but whose CPU kernels read it.
_DEVICE_CHECKED = {F.one_hot}


def _dead():
    return None


def _tensors(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class HostSyncCheck:
    """Context manager; ``syncs`` lists what would have synchronised, as ``"name (at
    file:line)"``."""

    def __init__(self):
        self.syncs = []
        # Tensors known to live on the host, by id (a WeakSet would compare tensors with ==).
        self._host = {}
        self.inside_device_checked = 0
        self.inside_host_read = 0

    def is_host(self, tensors):
        return all(self._host.get(id(t), _dead)() is t for t in tensors)

    def mark(self, tensor, host):
        key = id(tensor)
        if host:
            self._host[key] = weakref.ref(tensor, lambda _, key=key: self._host.pop(key, None))
        else:
            self._host.pop(key, None)

    def record(self, name):
        frames = [
            f
            for f in traceback.extract_stack()
            if "/torch/" not in f.filename and f.filename != __file__
        ]
        where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
        self.syncs.append(f"{name} (at {where})")

    def __enter__(self):
        self._stack = ExitStack()
        self._stack.enter_context(_FunctionLevel(self))
        self._stack.enter_context(_DispatchLevel(self))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, check):
        super().__init__()
        self.check = check

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        check = self.check
        read = func in _HOST_READS
        if read and not check.inside_device_checked and not check.is_host(_tensors(args)):
            check.record(getattr(func, "__name__", str(func)))
        counter = (
            "inside_device_checked"
            if func in _DEVICE_CHECKED
            else "inside_host_read"
            if read
            else None
        )
        if counter:
            setattr(check, counter, getattr(check, counter) + 1)
        try:
            out = func(*args, **kwargs)
        finally:
            if counter:
                setattr(check, counter, getattr(check, counter) - 1)
        if func in _FACTORIES:
            for t in _tensors(out):
                check.mark(t, host="device" not in kwargs)
        return out


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, check):
        super().__init__()
        self.check = check

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        check = self.check
        inputs = _tensors((args, kwargs))
        # No tensor input (a factory, which the function level then marks by its device
        # argument) or lift_fresh (Python data or a scalar wrapped by torch): made on the host.
        host = not inputs or func in _FROM_PYTHON or check.is_host(inputs)
        sync = func in _SYNC_OPS or (
            func in _INDEX_OPS
            and any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])
        )
        if sync and not host and not (check.inside_device_checked or check.inside_host_read):
            check.record(str(func.overloadpacket.__name__))
        out = func(*args, **kwargs)
        for t in _tensors(out):  # in-place results included: host only if every input was
            check.mark(t, host)
        return out
