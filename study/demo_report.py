"""What the demo writes of its own, beside its tools' outputs: pretraining.md (the classification
metrics of its backbones), demo_steps.json (each step's status and time) and the closing message
(where everything is, and how to finish a run whose detection steps did not run). Each function
takes the ``Demo`` (study/demo.py) whose run it describes."""

import json
import os
import shutil
import sys
import time

from .demo_choices import DEFAULT_METHODS, detectron2_missing_reason, parse_methods, run_label
from .tool_step import fmt_time, shell_path


def write_pretraining_summary(demo, step):
    """Copy each run's reliability diagram to OUT/reliability_<method>.png and tabulate the
    metrics of eval_final.json (which pretraining wrote after its final evaluation)."""
    rows = []
    for m in demo.methods:
        run = demo.pre_dir(m)
        with open(os.path.join(run, "eval_final.json")) as f:
            metrics = json.load(f)
        shutil.copyfile(
            os.path.join(run, "reliability_final.png"),
            os.path.join(demo.out, f"reliability_{m}.png"),
        )
        rows.append((m, metrics))
    keys = [
        ("top1_err", "top-1 err (%)"),
        ("top5_err", "top-5 err (%)"),
        ("nll", "NLL"),
        ("ece", "ECE (%)"),
        ("aurc", "AURC (x1000)"),
        ("eaurc", "E-AURC (x1000)"),
    ]
    lines = [
        "# Pretraining: ResNet-18 on the generated classification data",
        "",
        f"Validation metrics of the final models ({demo.size['epochs']} epochs; "
        "pretrain/<method>/eval_final.json). "
        "Generated data: the numbers only show the pipeline runs.",
        "",
        "| Method | " + " | ".join(k[1] for k in keys) + " | reliability diagram |",
        "|---|" + "---:|" * len(keys) + "---|",
    ]
    for m, metrics in rows:
        cells = [
            f"{metrics[k]:.3g}" if isinstance(metrics.get(k), (int, float)) else "" for k, _ in keys
        ]
        lines.append(
            f"| {run_label(m)} | "
            + " | ".join(cells)
            + f" | [reliability_{m}.png](reliability_{m}.png) |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(demo.out, "pretraining.md"), "w") as f:
        f.write(text)
    with open(step.log, "a") as log:
        log.write(text)
    for line in lines[4:]:
        print("      " + line, flush=True)
    diagrams = ", ".join(f"reliability_{m}.png" for m in demo.methods)
    print(f"      reliability diagrams: {diagrams}", flush=True)


def write_steps_json(demo):
    """OUT/demo_steps.json: the run's settings and each step's status, wall and CPU time, log."""
    data = {
        "size": demo.args.size,
        "device": demo.args.device,
        "methods": demo.methods,
        "detectron2": demo.has_d2,
        "detection_ran": demo.run_detection,
        "total_seconds": round(time.time() - demo.start, 1) if demo.start else None,
        "total_cpu_seconds": round(sum(s.cpu_seconds or 0.0 for s in demo.steps), 1),
        "cpu_count": os.cpu_count(),
        "steps": [
            {
                "n": i,
                "stage": s.stage,
                "title": s.title,
                "status": s.status,
                "seconds": None if s.seconds is None else round(s.seconds, 1),
                "cpu_seconds": None if s.cpu_seconds is None else round(s.cpu_seconds, 1),
                "log": s.log,
            }
            for i, s in enumerate(demo.steps, 1)
        ],
    }
    with open(os.path.join(demo.out, "demo_steps.json"), "w") as f:
        json.dump(data, f, indent=1)


def same_run_args(demo):
    """The non-default arguments of the run, for the command that finishes it."""
    a, args = demo.args, []
    out = shell_path(demo.out)
    if os.path.normpath(out) != "demo_output":
        args += ["--out", out]
    if a.size != "small":
        args += ["--size", a.size]
    if a.device != "cpu":
        args += ["--device", a.device]
    if demo.methods != parse_methods(DEFAULT_METHODS):
        args += ["--methods", ",".join(demo.methods)]
    if a.det_iters:
        args += ["--det-iters", str(a.det_iters)]
    return args


def print_closing_message(demo):
    total = time.time() - demo.start
    cpu = sum(s.cpu_seconds or 0.0 for s in demo.steps)
    print(
        f"\nDemo finished in {fmt_time(total)} (m:ss); the steps used {cpu:.0f} CPU seconds "
        f"({os.cpu_count()} cores here)."
    )
    print(f"Everything is in {demo.out}:")
    print(
        "  table5.md, table5.csv, table5.png    "
        "Table 5: VOC07 test AP50 per backbone beside the paper's"
    )
    print(
        "  pretraining.md                       "
        "classification metrics (top-1/5 err, NLL, ECE, AURC)"
    )
    print("  reliability_<method>.png             reliability diagrams of the pretrained backbones")
    print(
        "  pretrain/, d2/, detection/, logs/    "
        "the runs, converted weights, and each step's full log"
    )
    if not demo.run_detection:
        skipped = [
            f"[{i}/{len(demo.steps)}]" for i, s in enumerate(demo.steps, 1) if s.status == "skipped"
        ]
        again = " ".join(same_run_args(demo) + ["--from", "detection"])
        if not demo.has_d2:
            print(
                f"\nDetectron2 is not installed, so steps {', '.join(skipped)} (detection) "
                "did not run, and table5.* have no AP50 yet."
            )
            reason = detectron2_missing_reason()
            if reason:
                print(f"  ({reason})")
            print("To finish the demo:")
            print(
                "  1. install Detectron2 into this environment (`make venv` builds it at the "
                "pinned commit: needs a C/C++ compiler and a few minutes; "
                "DETECTRON2_SRC=<clone or archive> where GitHub is out of reach; "
                "README, section Install)"
            )
            print("  2. run only the remaining steps (reuses the data and backbones above):")
        else:
            print(
                f"\n--skip-detection: steps {', '.join(skipped)} did not run; table5.* have no "
                "AP50. To run them:"
            )
        print(f'       make demo DEMO_ARGS="{again}"')
        print(f"     or: {shell_path(sys.executable)} tools/demo.py {again}")
    print(f"\nOutput folder: {demo.out}", flush=True)
