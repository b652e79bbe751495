"""Throughput and memory of the training methods side by side, of the prediction table, and of
the JPEG input paths (tools/benchmark.py is the command line; docs/benchmarks.md the figures).

Training: every method gets its own model, optimizer and method state, built as the engine
builds them, and runs ``engine.train_step`` (the engine's own step: autocast, channels_last,
optional torch.compile, SGD) on one synthetic in-memory batch; per-step (label, index) batches
are drawn beforehand so the PS-KD table is read and written at random rows as in an epoch. The
methods run in rounds, in a rotated order each round, so that drift (other processes, clock
changes) hits them alike; a method's figure is the median over rounds, and its ratio to the
baseline the median of the per-round ratios. Each round also records the process's CPU time:
on a CPU shared with other jobs, images per CPU-second (``img_per_cpu_s``, with ``--threads 1``)
measure a method's cost far more steadily than wall-clock img/s, which then mostly measures the
other jobs.

Memory (``peak_mem_mb``) is what one method would hold alone: its persistent tensors (model,
gradients, optimizer state, method state such as the table or a teacher; ``state_mb``) plus the
largest growth within one of its timed rounds. On CUDA the growth is measured with
``max_memory_allocated``; on CPU with the process's resident-set high-water mark (VmHWM, reset
per round through /proc/self/clear_refs), a lower bound since the allocator reuses memory freed
by the previous round. Units are decimal: 1 MB = 10^6 bytes, 1 GB = 10^9 bytes.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from .config import get_cfg
from .engine import AMP_DTYPES, configure_cudnn, train_step
from .host_syncs import HostSyncCheck
from .methods import METHODS, MethodContext, build_method
from .models import build_resnet
from .pskd import table_bytes

MB = 1e6  # decimal units throughout, as the table-size targets in docs/benchmarks.md (2.6 GB, 60 MB)


# -- machine and memory ------------------------------------------------------------------------
def machine_info(device):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
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
    gradients, optimizers, method objects and their attributes)."""
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
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, MethodContext)):
            for v in vars(obj).values():
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
        return {"mode": mode, "dtype": dtype, "topk": k, "num_samples": num_samples, "num_classes": num_classes,
                "world": world, "ranks_per_node": ranks_per_node, "per_node_mb": per_node / MB,
                "per_node_gb": per_node / 1e9, "checkpoint_gb": ckpt / 1e9, "exchange_mb_per_step": exchange / MB}

    out = []
    fp32 = table_bytes(num_samples, num_classes, "float32")
    # The authors' code: a full float32 table in every process, all-gathered softmax each step.
    out.append(row("authors: full fp32 table per process", "float32", 0, fp32 * min(ranks_per_node, world), fp32,
                   world * per_rank_batch * (8 + num_classes * 4)))
    gathered_idx = world * per_rank_batch * 8
    for dtype in ("float32", "bfloat16"):
        item = 4 if dtype == "float32" else 2
        dense_exchange = 2 * (gathered_idx + world * per_rank_batch * num_classes * item)  # read + write
        out.append(row("sharded dense", dtype, 0, rows_per_node * num_classes * item,
                       table_bytes(num_samples, num_classes, dtype), dense_exchange))
    for k in topk:
        per_row = table_bytes(1, num_classes, "bfloat16", topk=k)
        wire = world * per_rank_batch * k * (2 + 4)  # bf16 values and int32 ids
        exchange = 2 * (gathered_idx + wire)  # read and write both move (value, id) pairs
        out.append(row(f"sharded top-{k}", "bfloat16", k, rows_per_node * per_row,
                       table_bytes(num_samples, num_classes, "bfloat16", topk=k), exchange))
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


def method_specs(args):
    """The --methods specs; "all" (the default with --check-syncs) is every registered method."""
    methods = args.methods or ("all" if args.check_syncs else "baseline,pskd")
    if methods == "all":
        return ["baseline"] + sorted(name for name in METHODS if name != "baseline")
    return methods.split(",")


def base_config(args, device):
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.ARCH", args.arch, "MODEL.NUM_CLASSES", str(args.num_classes), "MODEL.DEVICE", device.type,
        "MODEL.CHANNELS_LAST", str(args.channels_last), "MODEL.COMPILE", str(args.compile),
        "SOLVER.AMP.ENABLED", str(args.amp != "off"), "SOLVER.AMP.DTYPE", args.amp if args.amp != "off" else "bfloat16",
        "SOLVER.IMS_PER_BATCH", str(args.batch_size), "INPUT.CROP_SIZE", str(args.image_size),
    ] + list(args.opts))
    return cfg


class MethodRun:
    """One method's model, optimizer and state, and its pre-drawn synthetic steps."""

    def __init__(self, spec, cfg, device, args, labels, teacher_path):
        name, opts = parse_method(spec)
        cfg = cfg.clone()
        cfg.merge_from_list(opts)
        if name in METHODS and METHODS[name].needs_teacher and not cfg.TEACHER.WEIGHTS:
            cfg.TEACHER.WEIGHTS = teacher_path  # a random teacher costs what a trained one does
        self.spec, self.cfg, self.device = spec, cfg, device
        torch.manual_seed(0)
        self.model = build_resnet(cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CIFAR_STEM).to(device)
        memory_format = torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.contiguous_format
        self.model.to(memory_format=memory_format)
        batch = args.batch_size
        self.method = build_method(MethodContext(cfg=cfg, num_classes=cfg.MODEL.NUM_CLASSES, train_labels=labels,
                                                 device=device, per_rank_batch=batch, epochs=cfg.SOLVER.EPOCHS))
        module = self.method.wrap_model(self.model)
        self.optimizer = torch.optim.SGD(module.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                         nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        self.amp_dtype = AMP_DTYPES[cfg.SOLVER.AMP.DTYPE] if cfg.SOLVER.AMP.ENABLED else None
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.module = torch.compile(module) if cfg.MODEL.COMPILE else module
        self.wrapped = module
        # PS-KD's alpha is 0 in no epoch, but epoch 0 is the one with plain CE targets: use 1.
        self.method.on_epoch_start(1, self.model)

        keys = self.method.loader_batch_size(batch)  # CS-KD: anchors + partners
        gen = torch.Generator().manual_seed(1)
        self.images = torch.randn(keys, 3, args.image_size, args.image_size, generator=gen).to(
            device, memory_format=memory_format)
        labels = torch.as_tensor(labels)
        order = torch.randperm(len(labels), generator=gen)
        self.steps = []
        for s in range(args.distinct_steps):
            idx = order[(s * keys) % len(order):][:keys]
            self.steps.append((labels[idx].to(device), idx.to(device)))
        self.batch, self.step_count = batch, 0
        self.img_per_s, self.img_per_cpu_s, self.growth = [], [], []

    def run(self, iters):
        for _ in range(iters):
            labels, indices = self.steps[self.step_count % len(self.steps)]
            self.step_count += 1
            train_step(self.method, self.module, self.optimizer, self.scaler, self.images, labels, indices,
                       self.amp_dtype)

    def table_mb(self):
        table = getattr(getattr(self.method, "source", None), "table", None)
        if table is None:
            return 0.0
        return (table.values.nbytes + (table.ids.nbytes if table.ids is not None else 0)) / MB


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


def benchmark_training(args, device):
    cfg = base_config(args, device)
    specs = method_specs(args)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(cfg.MODEL.NUM_CLASSES, (args.num_samples,), generator=gen).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = os.path.join(tmp, "teacher.pth")
        torch.manual_seed(0)
        torch.save({"model": build_resnet(args.arch, args.num_classes, cfg.MODEL.CIFAR_STEM).state_dict()}, teacher)
        runs = [MethodRun(spec, cfg, device, args, labels, teacher) for spec in specs]
    probe = MemoryProbe(device)
    for run in runs:
        run.run(args.warmup)  # also compiles, and creates gradients and optimizer state
    _sync(device)
    for r in range(args.rounds):
        for run in runs[r % len(runs):] + runs[: r % len(runs)]:
            probe.start()
            t0, c0 = time.perf_counter(), time.process_time()
            with sync_check(device, args.check_syncs) as found:
                run.run(args.iters)
            if found:
                raise RuntimeError(f"--check-syncs: {run.spec} synchronises the host in a training step: "
                                   + ", ".join(sorted(set(found))))
            _sync(device)
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
            run.growth.append(probe.growth_mb())
            run.img_per_s.append(run.batch * args.iters / seconds)
            run.img_per_cpu_s.append(run.batch * args.iters / cpu_seconds)

    base = next((r for r in runs if r.spec == "baseline"), runs[0])
    results = []
    for run in runs:
        state = tensor_bytes(run.wrapped, run.optimizer, run.method) / MB
        ratios = [a / b for a, b in zip(run.img_per_s, base.img_per_s)]
        cpu_ratios = [a / b for a, b in zip(run.img_per_cpu_s, base.img_per_cpu_s)]
        results.append({
            "method": run.spec, "img_per_s": statistics.median(run.img_per_s),
            "ratio_to_baseline": statistics.median(ratios), "baseline": base.spec,
            "img_per_s_rounds": run.img_per_s, "img_per_cpu_s": statistics.median(run.img_per_cpu_s),
            "cpu_time_ratio_to_baseline": statistics.median(cpu_ratios), "peak_mem_mb": state + max(run.growth), "state_mb": state,
            "table_mb": run.table_mb(),
        })
    return results


# -- input pipeline -----------------------------------------------------------------------------
def benchmark_input(args, device):
    """img/s of DATALOADER.DECODE cpu and device on the JPEGs under ``args.data`` (generated
    when absent), each batch carried to ``device`` ready for the model."""
    from .data import ShardedSampler, build_dataset, build_loader
    from .synthetic import write_imagefolder

    root = args.data
    if not os.path.isdir(os.path.join(root, "train")):
        classes = 8
        write_imagefolder(root, classes, -(-args.gen_images // classes), 1, args.gen_size, seed=0)
    num_classes = len(os.listdir(os.path.join(root, "train")))
    results = []
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for decode in args.decode.split(","):
        cfg = get_cfg()
        cfg.merge_from_list(["DATA.ROOT", root, "MODEL.NUM_CLASSES", str(num_classes),
                             "INPUT.CROP_SIZE", str(args.image_size), "DATALOADER.DECODE", decode] + list(args.opts))
        data = build_dataset(cfg, cfg.DATA.TRAIN_SPLIT, train=True)
        sampler = ShardedSampler(len(data), seed=0)
        loader = build_loader(data, sampler, args.batch_size, args.workers, device.type == "cuda")
        rates, epoch, images = [], 0, 0
        batches = iter(())
        t0 = None
        while len(rates) < args.rounds:
            batch = next(batches, None)
            if batch is None:
                sampler.set_epoch(epoch)
                epoch, batches = epoch + 1, iter(loader)
                continue
            x = batch[0].to(device, non_blocking=True, memory_format=memory_format)
            _sync(device)
            if t0 is None:  # the first batch waits for the workers to start
                t0, images = time.perf_counter(), 0
                continue
            images += x.shape[0]
            if images >= args.iters * args.batch_size:
                rates.append(images / (time.perf_counter() - t0))
                t0, images = time.perf_counter(), 0
        results.append({"method": f"input:{decode}", "decode": decode, "img_per_s": statistics.median(rates),
                        "img_per_s_rounds": rates, "workers": args.workers, "images_in_set": len(data)})
    return results


# -- command line ---------------------------------------------------------------------------------
def build_parser(doc):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    p.add_argument("--arch", default="resnet152")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128, help="images per step (one process)")
    p.add_argument("--methods", default=None,
                   help="comma-separated METHOD.NAMEs, each optionally with config overrides: "
                        "pskd:PSKD.TOPK=10:PSKD.TABLE_DTYPE=float32, or 'all'; ratios are to 'baseline' (else "
                        "the first). Default: baseline,pskd; with --check-syncs, all")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--iters", type=int, default=10, help="timed steps (or batches) per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method before the rounds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--distinct-steps", type=int, default=16, help="distinct (label, index) batches cycled through")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=50_000, help="training-set size behind the PS-KD table")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", default="off", choices=["off"] + sorted(AMP_DTYPES))
    p.add_argument("--compile", action="store_true", help="torch.compile the training module")
    p.add_argument("--check-syncs", action="store_true",
                   help="fail on any host synchronisation inside the timed steps: on CUDA through "
                        "set_sync_debug_mode, elsewhere on what would synchronise on CUDA (pretrain/host_syncs.py)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--table-n", type=int, default=1_281_167, help="samples N for the table-memory figures")
    p.add_argument("--table-k", type=int, default=1000, help="classes K for the table-memory figures")
    p.add_argument("--table-topk", default="10", help="comma-separated k of the top-k modes")
    p.add_argument("--table-world", type=int, default=8, help="training processes of the job")
    p.add_argument("--table-ranks-per-node", type=int, default=8)
    p.add_argument("--table-batch", type=int, default=32, help="per-process batch for the exchange figure")
    p.add_argument("--table-only", action="store_true", help="only the table-memory figures (no measurement)")
    p.add_argument("--input-pipeline", action="store_true",
                   help="measure the JPEG input paths instead of training steps")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "pskd_bench_jpeg"),
                   help="ImageFolder root for --input-pipeline (generated there when it has no train/)")
    p.add_argument("--decode", default="cpu,device", help="DATALOADER.DECODE values to measure")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--gen-images", type=int, default=512)
    p.add_argument("--gen-size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config KEY VALUE pairs applied to every method (last on the line)")
    return p


def main(argv=None, doc=None):
    args = build_parser(doc).parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_cudnn()  # the engine's setting: the figures are training's
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.table_only:
        results = []
    elif args.input_pipeline:
        results = benchmark_input(args, device)
    else:
        results = benchmark_training(args, device)
    table = table_memory(args.table_n, args.table_k, args.table_world, args.table_ranks_per_node,
                         topk=[int(k) for k in args.table_topk.split(",") if k], per_rank_batch=args.table_batch)
    mode = "table" if args.table_only else "input_pipeline" if args.input_pipeline else "training"
    report = {"mode": mode,
              "machine": machine_info(device), "settings": vars(args), "results": results, "table_memory": table}
    print_report(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


def print_report(report):
    m, s = report["machine"], report["settings"]
    print(f"# {m.get('gpu', m['cpu'])}, {m['cpus_usable']} CPUs, torch {m['torch']}, load {m['load_avg_1m']:.2f}")
    if report["mode"] == "input_pipeline":
        print(f"# input pipeline: {s['image_size']} px crops, batch {s['batch_size']}, {s['workers']} workers, "
              f"device {s['device']}, data {s['data']}")
    elif report["mode"] == "training":
        print(f"# {s['arch']} {s['image_size']} px, batch {s['batch_size']}, device {s['device']}, amp {s['amp']}, "
              f"channels_last {s['channels_last']}, compile {s['compile']}")
    for r in report["results"]:
        extra = (f"  x{r['ratio_to_baseline']:.3f} vs {r['baseline']} (CPU time x{r['cpu_time_ratio_to_baseline']:.3f})  peak {r['peak_mem_mb']:.0f} MB "
                 f"(state {r['state_mb']:.0f}, table {r['table_mb']:.2f})" if "ratio_to_baseline" in r else "")
        print(f"{r['method']:40s} {r['img_per_s']:9.1f} img/s{extra}")
    for t in report["table_memory"]:
        print(f"table N={t['num_samples']} K={t['num_classes']} {t['mode']:38s} {t['dtype']:8s} "
              f"{t['per_node_gb']:8.3f} GB/node  checkpoint {t['checkpoint_gb']:7.3f} GB  "
              f"exchange {t['exchange_mb_per_step']:.2f} MB/step/rank")
    sys.stdout.flush()
