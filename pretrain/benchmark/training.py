"""Throughput and memory of the training methods side by side (tools/benchmark.py is the command
line; docs/benchmarks.md the figures).

Every method gets its own model, optimizer, GradScaler and method state, built by the engine's
own functions (``models.build_model``, ``build.build_optimizer``, ...), and runs
``engine.step.train_step`` (the engine's own step: autocast, channels_last, optional torch.compile,
SGD) on one synthetic in-memory batch; per-step (label, index) batches are drawn beforehand so
the PS-KD table is read and written at random rows as in an epoch. The methods run in rounds, in
a rotated order each round, so that drift (other processes, clock changes) hits them alike; a
method's figure is the median over rounds, and its ratio to the baseline the median of the
per-round ratios. Each round also records the process's CPU time: on a CPU shared with other
jobs, images per CPU-second (``img_per_cpu_s``, with ``--threads 1``) measure a method's cost far
more steadily than wall-clock img/s, which then mostly measures the other jobs.

Memory (``peak_mem_mb``) is what one method would hold alone: its persistent tensors (model,
gradients, optimizer state, and what the method reports through ``Method.extra_memory``, such as
the table or a teacher; ``state_mb``) plus the largest growth within one of its timed rounds
(``probes.MemoryProbe``; on CPU a lower bound, since the allocator reuses memory freed
by the previous round). Units are decimal: 1 MB = 10^6 bytes, 1 GB = 10^9 bytes.
"""

import contextlib
import os
import statistics
import tempfile
import time

import torch

from pretrain.benchmark.host_syncs import HostSyncCheck
from pretrain.benchmark.probes import MB, MemoryProbe, synchronize, tensor_bytes
from pretrain.cli import merge_config
from pretrain.config.checks import validate_config
from pretrain.engine.build import amp_dtype, build_grad_scaler, build_optimizer, build_train_module
from pretrain.engine.step import train_step
from pretrain.methods import METHODS, MethodContext, build_method
from pretrain.models import build_model, build_resnet, memory_format


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


class EngineRun:
    """One run's model, method, optimizer and GradScaler, built as the Trainer builds them
    (``models.build_model``, ``build.build_optimizer``, ...) from ``cfg`` for a training set with
    ``labels``; ``step`` is the engine's ``train_step`` on them. The method starts at epoch 1:
    PS-KD's alpha is 0 in no epoch, but epoch 0 is the one with plain CE targets."""

    def __init__(self, cfg, device, labels):
        torch.manual_seed(0)
        self.model = build_model(cfg, device)
        self.batch = cfg.SOLVER.IMS_PER_BATCH
        self.method = build_method(
            MethodContext(
                cfg=cfg,
                num_classes=cfg.MODEL.NUM_CLASSES,
                train_labels=labels,
                device=device,
                per_rank_batch=self.batch,
                epochs=cfg.SOLVER.EPOCHS,
            )
        )
        self.wrapped = self.method.wrap_model(self.model)
        self.optimizer = build_optimizer(cfg, self.wrapped)
        self.amp_dtype = amp_dtype(cfg)
        self.scaler = build_grad_scaler(cfg, device)
        self.module = build_train_module(cfg, self.wrapped, device, world_size=1)
        self.method.on_epoch_start(1, self.model)

    def step(self, images, labels, indices):
        return train_step(
            self.method,
            self.module,
            self.optimizer,
            self.scaler,
            images,
            labels,
            indices,
            self.amp_dtype,
        )


class MethodRun:
    """One method's ``EngineRun`` and its pre-drawn synthetic steps: ``cfg``'s
    SOLVER.IMS_PER_BATCH images of INPUT.CROP_SIZE px, with (label, index) batches cycled through
    ``distinct_steps`` draws from ``labels``."""

    def __init__(self, spec, cfg, device, labels, teacher_path, distinct_steps):
        name, opts = parse_method(spec)
        cfg = cfg.clone()
        cfg.defrost()
        merge_config(cfg, None, opts)
        if name in METHODS and METHODS[name].needs_teacher and not cfg.TEACHER.WEIGHTS:
            cfg.TEACHER.WEIGHTS = teacher_path  # a random teacher costs what a trained one does
        validate_config(cfg)  # as setup_cfg: a typo in any spec stops before the first round
        self.spec, self.device = spec, device
        self.engine = EngineRun(cfg, device, labels)
        self.batch = self.engine.batch

        keys = self.engine.method.loader_batch_size(self.batch)  # CS-KD: anchors + partners
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
        self.step_count = 0
        self.img_per_s, self.img_per_cpu_s, self.growth = [], [], []

    def run(self, iters):
        for _ in range(iters):
            labels, indices = self.steps[self.step_count % len(self.steps)]
            self.step_count += 1
            self.engine.step(self.images, labels, indices)

    def state_mb(self):
        """The method's persistent tensors: the trained module with its gradients, the optimizer
        state, and what the method itself reports (``Method.extra_memory``)."""
        extra = sum(self.engine.method.extra_memory().values())
        return (tensor_bytes(self.engine.wrapped, self.engine.optimizer) + extra) / MB

    def table_mb(self):
        return self.engine.method.extra_memory().get("table", 0) / MB


def rotation(runs, r):
    """Round ``r``'s order: ``runs`` rotated by ``r``, so that drift (other processes, clock
    changes) hits every run alike over the rounds."""
    return runs[r % len(runs) :] + runs[: r % len(runs)]


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
    synchronize(device)
    for r in range(rounds):
        for run in rotation(runs, r):
            probe.start()
            t0, c0 = time.perf_counter(), time.process_time()
            with sync_check(device, check_syncs) as found:
                run.run(iters)
            if found:
                raise RuntimeError(
                    f"--check-syncs: {run.spec} synchronises the host in a training step: "
                    + ", ".join(sorted(set(found)))
                )
            synchronize(device)
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
