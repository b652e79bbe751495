"""Throughput and memory of the training methods side by side, of the prediction table, and of
the JPEG input paths (tools/benchmark.py is the command line; docs/benchmarks.md the figures).

Training: every method gets its own model, optimizer, GradScaler and method state, built by the
engine's own functions (``models.build_model``, ``build.build_optimizer``, ...), and runs ``engine.train_step`` (the engine's own step: autocast, channels_last,
optional torch.compile, SGD) on one synthetic in-memory batch; per-step (label, index) batches
are drawn beforehand so the PS-KD table is read and written at random rows as in an epoch. The
methods run in rounds, in a rotated order each round, so that drift (other processes, clock
changes) hits them alike; a method's figure is the median over rounds, and its ratio to the
baseline the median of the per-round ratios. Each round also records the process's CPU time:
on a CPU shared with other jobs, images per CPU-second (``img_per_cpu_s``, with ``--threads 1``)
measure a method's cost far more steadily than wall-clock img/s, which then mostly measures the
other jobs.

Memory (``peak_mem_mb``) is what one method would hold alone: its persistent tensors (model,
gradients, optimizer state, and what the method reports through ``Method.extra_memory``, such as
the table or a teacher; ``state_mb``) plus the
largest growth within one of its timed rounds. On CUDA the growth is measured with
``max_memory_allocated``; on CPU with the process's resident-set high-water mark (VmHWM, reset
per round through /proc/self/clear_refs), a lower bound since the allocator reuses memory freed
by the previous round. Units are decimal: 1 MB = 10^6 bytes, 1 GB = 10^9 bytes.
"""

import contextlib
import os
import platform
import statistics
import tempfile
import time

import torch

from .build import amp_dtype, build_grad_scaler, build_optimizer, build_train_module
from .config import get_cfg
from .engine import train_step
from .host_syncs import HostSyncCheck
from .methods import METHODS, MethodContext, build_method
from .models import build_model, build_resnet, memory_format
from .prediction_table import table_bytes

MB = 1e6  # decimal units, as the table-size targets in docs/benchmarks.md (2.6 GB, 60 MB)


# -- machine and memory ------------------------------------------------------------------------
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
    """Growth of memory within a window (start/stop) on ``device``; see the module doc."""

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


# -- the prediction table's footprint ------------------------------------------------------------
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


# -- training throughput --------------------------------------------------------------------------
def parse_method(spec):
    """``name`` or ``name:KEY=VALUE:KEY=VALUE`` (config overrides for this method only)."""
    name, *pairs = spec.split(":")
    opts = ["METHOD.NAME", name]
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"method spec {spec!r}: expected KEY=VALUE after ':', got {pair!r}")
        opts += [key, value]
    return name, opts


class MethodRun:
    """One method's model, optimizer and state, built as the Trainer builds them, and its
    pre-drawn synthetic steps: ``cfg``'s SOLVER.IMS_PER_BATCH images of INPUT.CROP_SIZE px, with
    (label, index) batches cycled through ``distinct_steps`` draws from ``labels``."""

    def __init__(self, spec, cfg, device, labels, teacher_path, distinct_steps):
        name, opts = parse_method(spec)
        cfg = cfg.clone()
        cfg.merge_from_list(opts)
        if name in METHODS and METHODS[name].needs_teacher and not cfg.TEACHER.WEIGHTS:
            cfg.TEACHER.WEIGHTS = teacher_path  # a random teacher costs what a trained one does
        self.spec, self.cfg, self.device = spec, cfg, device
        torch.manual_seed(0)
        self.model = build_model(cfg, device)
        batch = cfg.SOLVER.IMS_PER_BATCH
        self.method = build_method(
            MethodContext(
                cfg=cfg,
                num_classes=cfg.MODEL.NUM_CLASSES,
                train_labels=labels,
                device=device,
                per_rank_batch=batch,
                epochs=cfg.SOLVER.EPOCHS,
            )
        )
        self.wrapped = self.method.wrap_model(self.model)
        self.optimizer = build_optimizer(cfg, self.wrapped)
        self.amp_dtype = amp_dtype(cfg)
        self.scaler = build_grad_scaler(cfg, device)
        self.module = build_train_module(cfg, self.wrapped, device, world_size=1)
        # PS-KD's alpha is 0 in no epoch, but epoch 0 is the one with plain CE targets: use 1.
        self.method.on_epoch_start(1, self.model)

        keys = self.method.loader_batch_size(batch)  # CS-KD: anchors + partners
        gen = torch.Generator().manual_seed(1)
        size = cfg.INPUT.CROP_SIZE
        self.images = torch.randn(keys, 3, size, size, generator=gen).to(
            device, memory_format=memory_format(cfg)
        )
        labels = torch.as_tensor(labels)
        order = torch.randperm(len(labels), generator=gen)
        self.steps = []
        for s in range(distinct_steps):
            idx = order[(s * keys) % len(order) :][:keys]
            self.steps.append((labels[idx].to(device), idx.to(device)))
        self.batch, self.step_count = batch, 0
        self.img_per_s, self.img_per_cpu_s, self.growth = [], [], []

    def run(self, iters):
        for _ in range(iters):
            labels, indices = self.steps[self.step_count % len(self.steps)]
            self.step_count += 1
            train_step(
                self.method,
                self.module,
                self.optimizer,
                self.scaler,
                self.images,
                labels,
                indices,
                self.amp_dtype,
            )

    def state_mb(self):
        """The method's persistent tensors: the trained module with its gradients, the optimizer
        state, and what the method itself reports (``Method.extra_memory``)."""
        extra = sum(self.method.extra_memory().values())
        return (tensor_bytes(self.wrapped, self.optimizer) + extra) / MB

    def table_mb(self):
        return self.method.extra_memory().get("table", 0) / MB


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def sync_check(device, enabled):
    """Yields a list that holds, after the block, what synchronised the host in it. On CUDA the
    first synchronising call raises instead (``set_sync_debug_mode("error")``); elsewhere
    ``host_syncs.HostSyncCheck`` records what would synchronise on CUDA."""
    found = []
    if not enabled:
        yield found
    elif device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    else:
        with HostSyncCheck() as check:
            yield found
        found += check.syncs


def benchmark_training(
    cfg, specs, device, num_samples, iters, warmup, rounds, distinct_steps=16, check_syncs=False
):
    """One result dict per method spec (``parse_method``), each method's run built from ``cfg``
    with the spec's overrides: ``warmup`` untimed steps, then ``rounds`` rounds of ``iters``
    timed steps (see the module doc); a random training set of ``num_samples`` labels. With
    ``check_syncs`` a step that synchronises the host is a RuntimeError naming the method."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(cfg.MODEL.NUM_CLASSES, (num_samples,), generator=gen).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = os.path.join(tmp, "teacher.pth")
        torch.manual_seed(0)
        model = build_resnet(cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CIFAR_STEM)
        torch.save({"model": model.state_dict()}, teacher)
        runs = [MethodRun(spec, cfg, device, labels, teacher, distinct_steps) for spec in specs]
    probe = MemoryProbe(device)
    for run in runs:
        run.run(warmup)  # also compiles, and creates gradients and optimizer state
    _sync(device)
    for r in range(rounds):
        for run in runs[r % len(runs) :] + runs[: r % len(runs)]:
            probe.start()
            t0, c0 = time.perf_counter(), time.process_time()
            with sync_check(device, check_syncs) as found:
                run.run(iters)
            if found:
                raise RuntimeError(
                    f"--check-syncs: {run.spec} synchronises the host in a training step: "
                    + ", ".join(sorted(set(found)))
                )
            _sync(device)
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
            run.growth.append(probe.growth_mb())
            run.img_per_s.append(run.batch * iters / seconds)
            run.img_per_cpu_s.append(run.batch * iters / cpu_seconds)

    base = next((r for r in runs if r.spec == "baseline"), runs[0])
    results = []
    for run in runs:
        state = run.state_mb()
        ratios = [a / b for a, b in zip(run.img_per_s, base.img_per_s)]
        cpu_ratios = [a / b for a, b in zip(run.img_per_cpu_s, base.img_per_cpu_s)]
        results.append(
            {
                "method": run.spec,
                "img_per_s": statistics.median(run.img_per_s),
                "ratio_to_baseline": statistics.median(ratios),
                "baseline": base.spec,
                "img_per_s_rounds": run.img_per_s,
                "img_per_cpu_s": statistics.median(run.img_per_cpu_s),
                "cpu_time_ratio_to_baseline": statistics.median(cpu_ratios),
                "peak_mem_mb": state + max(run.growth),
                "state_mb": state,
                "table_mb": run.table_mb(),
            }
        )
    return results


# -- input pipeline -----------------------------------------------------------------------------
def benchmark_input(
    root, decodes, device, batch_size, workers, iters, rounds, opts=(), gen_images=512, gen_size=256
):
    """img/s of each DATALOADER.DECODE of ``decodes`` on the JPEGs under ``root`` (``gen_images``
    of ``gen_size`` px generated there when it has no train/), each batch carried to ``device``
    ready for the model; ``opts`` are config overrides (INPUT.CROP_SIZE, MODEL.CHANNELS_LAST, ...)."""
    from .data import build_dataset, build_loader
    from .samplers import ShardedSampler
    from .synthetic import write_imagefolder

    if not os.path.isdir(os.path.join(root, "train")):
        classes = 8
        write_imagefolder(root, classes, -(-gen_images // classes), 1, gen_size, seed=0)
    num_classes = len(os.listdir(os.path.join(root, "train")))
    results = []
    for decode in decodes:
        cfg = get_cfg()
        cfg.merge_from_list(
            ["DATA.ROOT", root, "MODEL.NUM_CLASSES", str(num_classes), "DATALOADER.DECODE", decode]
            + list(opts)
        )
        data = build_dataset(cfg, cfg.DATA.TRAIN_SPLIT, train=True)
        sampler = ShardedSampler(len(data), seed=0)
        loader = build_loader(data, sampler, batch_size, workers, device.type == "cuda")
        rates, epoch, images = [], 0, 0
        batches = iter(())
        t0 = None
        while len(rates) < rounds:
            batch = next(batches, None)
            if batch is None:
                sampler.set_epoch(epoch)
                epoch, batches = epoch + 1, iter(loader)
                continue
            x = batch[0].to(device, non_blocking=True, memory_format=memory_format(cfg))
            _sync(device)
            if t0 is None:  # the first batch waits for the workers to start
                t0, images = time.perf_counter(), 0
                continue
            images += x.shape[0]
            if images >= iters * batch_size:
                rates.append(images / (time.perf_counter() - t0))
                t0, images = time.perf_counter(), 0
        results.append(
            {
                "method": f"input:{decode}",
                "decode": decode,
                "img_per_s": statistics.median(rates),
                "img_per_s_rounds": rates,
                "workers": workers,
                "images_in_set": len(data),
            }
        )
    return results
