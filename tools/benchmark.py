#!/usr/bin/env python
"""Training throughput (img/s) and peak memory of methods side by side, prediction-table memory,
and the JPEG input paths (the measurements are pretrain/benchmark/training.py's,
pretrain/benchmark/table_footprint.py's and pretrain/benchmark/input_pipeline.py's;
docs/benchmarks.md).

    python tools/benchmark.py --device cpu --arch resnet18 --image-size 64 --batch-size 32 \\
        --methods baseline,ls,pskd,pskd:PSKD.TOPK=10 --json out/bench_cpu.json
    python tools/benchmark.py --device cuda --arch resnet152 --image-size 224 --batch-size 128 \\
        --amp bfloat16 --channels-last --compile --methods baseline,pskd --json out/bench_gpu.json
    python tools/benchmark.py --input-pipeline --device cuda --batch-size 256 --json out/input.json
    python tools/benchmark.py --reference-loops --device cpu --image-size 56 --batch-size 32 \\
        --threads 1 --data /tmp/jpeg64 --gen-size 64 --json out/bench_reference_loops.json
"""

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pretrain.benchmark.input_pipeline import benchmark_input, jpeg_folder  # noqa: E402
from pretrain.benchmark.probes import machine_info  # noqa: E402
from pretrain.benchmark.reference_loops import benchmark_reference_loops  # noqa: E402
from pretrain.benchmark.table_footprint import table_memory  # noqa: E402
from pretrain.benchmark.training import benchmark_training  # noqa: E402
from pretrain.cli import setup_cfg, tool  # noqa: E402
from pretrain.engine.build import AMP_DTYPES, configure_cudnn  # noqa: E402
from pretrain.methods import METHODS  # noqa: E402


def build_parser(doc):
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    p.add_argument("--arch", default="resnet152")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128, help="images per step (one process)")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated METHOD.NAMEs, each optionally with config overrides: "
        "pskd:PSKD.TOPK=10:PSKD.TABLE_DTYPE=float32, or 'all'; ratios are to 'baseline' (else "
        "the first). Default: baseline,pskd; with --check-syncs, all",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--iters", type=int, default=10, help="timed steps (or batches) per round")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per method before the rounds"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--distinct-steps",
        type=int,
        default=16,
        help="distinct (label, index) batches cycled through",
    )
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument(
        "--num-samples", type=int, default=50_000, help="training-set size behind the PS-KD table"
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", default="off", choices=["off"] + sorted(AMP_DTYPES))
    p.add_argument("--compile", action="store_true", help="torch.compile the training module")
    p.add_argument(
        "--check-syncs",
        action="store_true",
        help="fail on any host synchronisation inside the timed steps: on CUDA through "
        "set_sync_debug_mode, elsewhere on what would synchronise on CUDA "
        "(pretrain/benchmark/host_syncs.py)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--table-n", type=int, default=1_281_167, help="samples N for the table-memory figures"
    )
    p.add_argument(
        "--table-k", type=int, default=1000, help="classes K for the table-memory figures"
    )
    p.add_argument("--table-topk", default="10", help="comma-separated k of the top-k modes")
    p.add_argument("--table-world", type=int, default=8, help="training processes of the job")
    p.add_argument("--table-ranks-per-node", type=int, default=8)
    p.add_argument(
        "--table-batch", type=int, default=32, help="per-process batch for the exchange figure"
    )
    p.add_argument(
        "--table-only", action="store_true", help="only the table-memory figures (no measurement)"
    )
    p.add_argument(
        "--input-pipeline",
        action="store_true",
        help="measure the JPEG input paths instead of training steps",
    )
    p.add_argument(
        "--reference-loops",
        action="store_true",
        help="our CE and PS-KD loops against torchvision's classification reference and the "
        "authors' PS-KD loop, on the JPEGs under --data (pretrain/benchmark/reference_loops.py)",
    )
    p.add_argument(
        "--data",
        default=os.path.join(tempfile.gettempdir(), "pskd_bench_jpeg"),
        help="ImageFolder root for --input-pipeline and --reference-loops (generated there when "
        "it has no train/)",
    )
    p.add_argument("--decode", default="cpu,device", help="DATALOADER.DECODE values to measure")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--gen-images", type=int, default=512)
    p.add_argument("--gen-size", type=int, default=256, help="side of the generated JPEGs")
    p.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config KEY VALUE pairs applied to every method (last on the line)",
    )
    return p


def method_specs(args):
    """The --methods specs; "all" (the default with --check-syncs) is every registered method."""
    methods = args.methods or ("all" if args.check_syncs else "baseline,pskd")
    if methods == "all":
        return ["baseline"] + sorted(name for name in METHODS if name != "baseline")
    return methods.split(",")


def training_config(args, device):
    """The config every method's run starts from: the command line's model, batch and AMP
    settings, then --opts, validated as every tool's config is."""
    return setup_cfg(
        None,
        [
            "MODEL.ARCH",
            args.arch,
            "MODEL.NUM_CLASSES",
            str(args.num_classes),
            "MODEL.DEVICE",
            device.type,
            "MODEL.CHANNELS_LAST",
            str(args.channels_last),
            "MODEL.COMPILE",
            str(args.compile),
            "SOLVER.AMP.ENABLED",
            str(args.amp != "off"),
            "SOLVER.AMP.DTYPE",
            args.amp if args.amp != "off" else "bfloat16",
            "SOLVER.IMS_PER_BATCH",
            str(args.batch_size),
            "INPUT.CROP_SIZE",
            str(args.image_size),
        ]
        + list(args.opts),
    )


@tool
def main(argv=None):
    args = build_parser(__doc__).parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_cudnn()  # the engine's setting: the figures are training's
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.table_only:
        results = []
    elif args.input_pipeline:
        results = benchmark_input(
            args.data,
            args.decode.split(","),
            device,
            args.batch_size,
            args.workers,
            args.iters,
            args.rounds,
            opts=[
                "INPUT.CROP_SIZE",
                str(args.image_size),
                "MODEL.CHANNELS_LAST",
                str(args.channels_last),
            ]
            + list(args.opts),
            gen_images=args.gen_images,
            gen_size=args.gen_size,
        )
    elif args.reference_loops:
        jpeg_folder(args.data, args.gen_images, args.gen_size)
        results = benchmark_reference_loops(
            args.data,
            args.image_size,
            args.batch_size,
            device,
            args.iters,
            args.warmup,
            args.rounds,
            opts=args.opts,
        )
    else:
        results = benchmark_training(
            training_config(args, device),
            method_specs(args),
            device,
            args.num_samples,
            args.iters,
            args.warmup,
            args.rounds,
            args.distinct_steps,
            args.check_syncs,
        )
    table = table_memory(
        args.table_n,
        args.table_k,
        args.table_world,
        args.table_ranks_per_node,
        topk=[int(k) for k in args.table_topk.split(",") if k],
        per_rank_batch=args.table_batch,
    )
    mode = (
        "table"
        if args.table_only
        else "input_pipeline"
        if args.input_pipeline
        else "reference_loops"
        if args.reference_loops
        else "training"
    )
    report = {
        "mode": mode,
        "machine": machine_info(device),
        "settings": vars(args),
        "results": results,
        "table_memory": table,
    }
    print_report(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


def print_report(report):
    m, s = report["machine"], report["settings"]
    print(
        f"# {m.get('gpu', m['cpu'])}, {m['cpus_usable']} CPUs, torch {m['torch']}, "
        f"load {m['load_avg_1m']:.2f}"
    )
    if report["mode"] == "input_pipeline":
        print(
            f"# input pipeline: {s['image_size']} px crops, batch {s['batch_size']}, "
            f"{s['workers']} workers, "
            f"device {s['device']}, data {s['data']}"
        )
    elif report["mode"] == "reference_loops":
        print(
            f"# reference loops: resnet18 {s['image_size']} px, batch {s['batch_size']}, "
            f"data loaded in the training process, device {s['device']}, data {s['data']}"
        )
    elif report["mode"] == "training":
        print(
            f"# {s['arch']} {s['image_size']} px, batch {s['batch_size']}, device {s['device']}, "
            f"amp {s['amp']}, "
            f"channels_last {s['channels_last']}, compile {s['compile']}"
        )
    for r in report["results"]:
        if "reference" in r:
            print(
                f"{r['method']:40s} {r['img_per_s']:9.1f} img/s  x{r['speed_ratio']:.3f} img/s of "
                f"{r['reference']}, x{r['cpu_per_image_ratio']:.3f} its CPU time per image"
            )
            continue
        extra = (
            f"  x{r['ratio_to_baseline']:.3f} vs {r['baseline']} "
            f"(CPU time x{r['cpu_time_ratio_to_baseline']:.3f})  peak {r['peak_mem_mb']:.0f} MB "
            f"(state {r['state_mb']:.0f}, table {r['table_mb']:.2f})"
            if "ratio_to_baseline" in r
            else ""
        )
        print(f"{r['method']:40s} {r['img_per_s']:9.1f} img/s{extra}")
    for t in report["table_memory"]:
        print(
            f"table N={t['num_samples']} K={t['num_classes']} {t['mode']:38s} {t['dtype']:8s} "
            f"{t['per_node_gb']:8.3f} GB/node  checkpoint {t['checkpoint_gb']:7.3f} GB  "
            f"exchange {t['exchange_mb_per_step']:.2f} MB/step/rank"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
