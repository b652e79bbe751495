"""The demo: the whole pipeline on generated data, each step one of the project's tools run as a
subprocess (study/tool_step.py); tools/demo.py is its command line, docs/demo.md its guide.

The demo pretrains one ResNet-18 per run named in --methods: a METHOD.NAME, or
``<METHOD.NAME>_cutmix`` for the method with CutMix; each has its config in ``CONFIGS``. The
labels come from the method registry (pretrain.methods), as in every table of the project.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import time

from pretrain.methods import METHODS, method_label

from .tool_step import ROOT, Step, StepFailed, children_cpu, fmt_time, run_tool, shell_path

PRETRAIN_CONFIGS = os.path.join(ROOT, "configs", "pretrain")
DET_CONFIG = os.path.join(ROOT, "configs", "detection", "faster_rcnn_R_18_FPN_tiny_cpu.yaml")

# Each run the demo offers: its config file in configs/pretrain/. All share
# Base-CPU-synthetic.yaml (ResNet-18).
CONFIGS = {
    "baseline": "cpu_synthetic_R_18_baseline.yaml",
    "ls": "cpu_synthetic_R_18_ls.yaml",
    "cskd": "cpu_synthetic_R_18_cskd.yaml",
    "tfkd": "cpu_synthetic_R_18_tfkd.yaml",
    "pskd": "cpu_synthetic_R_18.yaml",
    "pskd_cutmix": "cpu_synthetic_R_18_pskd_cutmix.yaml",
    "uskd": "cpu_synthetic_R_18_uskd.yaml",
    "lsskd": "cpu_synthetic_R_18_lsskd.yaml",
    "nkd": "cpu_synthetic_R_18_nkd.yaml",
}
DEFAULT_METHODS = "baseline,pskd,pskd_cutmix"

# small: `make demo` (<= 10 min on 2 CPU cores); tiny: the test (about a minute).
SIZES = {
    "small": dict(
        classes=4,
        train_per_class=24,
        val_per_class=8,
        image=64,
        epochs=4,
        lr_steps=(3,),
        voc=(40, 20, 40),
        det_iters=200,
        det_warmup=50,
    ),
    "tiny": dict(
        classes=4,
        train_per_class=8,
        val_per_class=4,
        image=64,
        epochs=2,
        lr_steps=(1,),
        voc=(8, 20, 4),
        det_iters=4,
        det_warmup=1,
    ),
}

STAGES = ("data", "pretrain", "convert", "detection", "report")
# What the console shows of Detectron2's output (everything goes to the step's log file).
D2_SHOW = re.compile(
    r"eta: |Inference done|copypaste|Total inference time|Overall training|"
    r"Traceback|Error|error:|wrote"
)


def run_method(run):
    """(METHOD.NAME, CutMix) of a run of ``CONFIGS``."""
    return (run[: -len("_cutmix")], True) if run.endswith("_cutmix") else (run, False)


def run_label(run):
    return method_label(*run_method(run))


def taught_by_baseline(run):
    """Whether the run's method needs a teacher: in the demo, the baseline run."""
    return METHODS[run_method(run)[0]].needs_teacher


def detectron2_installed():
    return importlib.util.find_spec("detectron2") is not None


def detectron2_missing_reason():
    """Why `make venv` could not build Detectron2 (tools/install_detectron2.sh records it), if known."""
    path = os.path.join(sys.prefix, "detectron2-unavailable.txt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.readline().strip()


class Demo:
    def __init__(self, args):
        self.args = args
        self.size = dict(SIZES[args.size])
        if args.epochs:
            self.size["epochs"] = args.epochs
            self.size["lr_steps"] = (max(1, args.epochs * 2 // 3),) if args.epochs > 1 else ()
        if args.det_iters:
            self.size["det_iters"] = args.det_iters
            self.size["det_warmup"] = min(self.size["det_warmup"], max(1, args.det_iters // 4))
        self.out = os.path.abspath(args.out)
        self.methods = args.methods
        self.has_d2 = detectron2_installed()
        self.run_detection = self.has_d2 and not args.skip_detection
        self.start = None
        self.logs = os.path.join(self.out, "logs")
        self.cls_root = os.path.join(self.out, "data", "classification")
        self.voc_root = os.path.join(self.out, "data", "voc")
        self.steps = self.plan()

    # -- paths ------------------------------------------------------------------------------
    def pre_dir(self, m):
        return os.path.join(self.out, "pretrain", m)

    def pkl(self, m):
        return os.path.join(self.out, "d2", f"r18_{m}.pkl")

    def det_dir(self, m):
        return os.path.join(self.out, "detection", m)

    # -- the plan ---------------------------------------------------------------------------
    def plan(self):
        s, steps = self.size, []
        steps.append(
            Step(
                "data",
                f"generating classification data ({s['classes']} classes, "
                f"{s['train_per_class']} train / {s['val_per_class']} val images each)",
                self.gen_classification,
            )
        )
        tv07, te07, tv12 = s["voc"]
        steps.append(
            Step(
                "data",
                f"generating PASCAL VOC data (VOC2007 trainval {tv07} / test {te07}, "
                f"VOC2012 trainval {tv12} images)",
                self.gen_voc,
            )
        )
        for m in self.methods:
            steps.append(
                Step(
                    "pretrain",
                    f"pretraining {run_label(m)} backbone (resnet18, {s['epochs']} epochs)",
                    lambda step, m=m: self.pretrain(step, m),
                )
            )
        steps.append(
            Step(
                "pretrain",
                "evaluation: classification metrics and reliability diagrams",
                self.summarize_pretraining,
            )
        )
        steps.append(
            Step("convert", f"converting {len(self.methods)} backbones to Detectron2", self.convert)
        )
        for m in self.methods:
            steps.append(
                Step(
                    "detection",
                    f"fine-tuning Faster R-CNN R-18 FPN from the {run_label(m)} backbone "
                    f"({s['det_iters']} iterations) and evaluating on VOC07 test",
                    lambda step, m=m: self.detect(step, m),
                    needs_d2=True,
                )
            )
        steps.append(
            Step("report", "writing Table 5 (table5.md, table5.csv, table5.png)", self.report)
        )
        return steps

    # -- running ----------------------------------------------------------------------------
    def fresh(self, path):
        """Remove a folder this demo writes (never anything outside OUT), so runs do not mix."""
        assert os.path.abspath(path).startswith(self.out + os.sep)
        if os.path.isdir(path):
            shutil.rmtree(path)

    def gen_classification(self, step):
        s = self.size
        self.fresh(self.cls_root)
        run_tool(
            step,
            "make_synthetic_data.py",
            [
                "classification",
                self.cls_root,
                "--classes",
                s["classes"],
                "--train-per-class",
                s["train_per_class"],
                "--val-per-class",
                s["val_per_class"],
                "--size",
                s["image"],
            ],
        )

    def gen_voc(self, step):
        tv07, te07, tv12 = self.size["voc"]
        self.fresh(self.voc_root)
        run_tool(
            step,
            "make_synthetic_data.py",
            ["voc", self.voc_root, "--trainval07", tv07, "--test07", te07, "--trainval12", tv12],
        )

    def pretrain(self, step, m):
        s, out = self.size, self.pre_dir(m)
        self.fresh(out)
        config = os.path.join(PRETRAIN_CONFIGS, CONFIGS[m])
        opts = [
            "DATA.ROOT",
            self.cls_root,
            "OUTPUT_DIR",
            out,
            "MODEL.DEVICE",
            self.args.device,
            "MODEL.NUM_CLASSES",
            s["classes"],
            "SOLVER.EPOCHS",
            s["epochs"],
            "SOLVER.STEPS",
            repr(tuple(s["lr_steps"])),
            "SOLVER.WARMUP_EPOCHS",
            min(1.0, s["epochs"] / 2),
            # Evaluate once, at the end; checkpoints only at epoch ends, the newest one kept.
            "TEST.EVAL_PERIOD",
            s["epochs"],
            "SOLVER.CHECKPOINT_PERIOD",
            1_000_000,
            "SOLVER.MAX_TO_KEEP",
            1,
        ]
        if taught_by_baseline(m):
            opts += ["TEACHER.WEIGHTS", os.path.join(self.pre_dir("baseline"), "model_final.pth")]
        run_tool(step, "pretrain.py", ["--config-file", config] + opts)

    def summarize_pretraining(self, step):
        """Copy each run's reliability diagram to OUT/reliability_<method>.png and tabulate the
        metrics of eval_final.json (which pretraining wrote after its final evaluation)."""
        rows = []
        for m in self.methods:
            run = self.pre_dir(m)
            with open(os.path.join(run, "eval_final.json")) as f:
                metrics = json.load(f)
            shutil.copyfile(
                os.path.join(run, "reliability_final.png"),
                os.path.join(self.out, f"reliability_{m}.png"),
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
            f"Validation metrics of the final models ({self.size['epochs']} epochs; "
            "pretrain/<method>/eval_final.json). Generated data: the numbers only show the pipeline runs.",
            "",
            "| Method | " + " | ".join(k[1] for k in keys) + " | reliability diagram |",
            "|---|" + "---:|" * len(keys) + "---|",
        ]
        for m, metrics in rows:
            cells = [
                f"{metrics[k]:.3g}" if isinstance(metrics.get(k), (int, float)) else ""
                for k, _ in keys
            ]
            lines.append(
                f"| {run_label(m)} | "
                + " | ".join(cells)
                + f" | [reliability_{m}.png](reliability_{m}.png) |"
            )
        text = "\n".join(lines) + "\n"
        with open(os.path.join(self.out, "pretraining.md"), "w") as f:
            f.write(text)
        with open(step.log, "a") as log:
            log.write(text)
        for line in lines[4:]:
            print("      " + line, flush=True)
        print(
            f"      reliability diagrams: {', '.join(f'reliability_{m}.png' for m in self.methods)}",
            flush=True,
        )

    def convert(self, step):
        os.makedirs(os.path.join(self.out, "d2"), exist_ok=True)
        for m in self.methods:
            run_tool(
                step,
                "convert_to_d2.py",
                [os.path.join(self.pre_dir(m), "model_final.pth"), self.pkl(m)],
            )

    def detect(self, step, m):
        s, out = self.size, self.det_dir(m)
        self.fresh(out)
        iters = s["det_iters"]
        run_tool(
            step,
            "train_net.py",
            [
                "--config-file",
                DET_CONFIG,
                "MODEL.WEIGHTS",
                self.pkl(m),
                "MODEL.DEVICE",
                self.args.device,
                "DATASETS.VOC_ROOT",
                self.voc_root,
                "OUTPUT_DIR",
                out,
                "SOLVER.MAX_ITER",
                iters,
                "SOLVER.STEPS",
                f"({max(1, iters * 3 // 4)},)",
                "SOLVER.WARMUP_ITERS",
                s["det_warmup"],
            ],
            show=D2_SHOW,
        )

    def report(self, step):
        runs = [self.det_dir(m) for m in self.methods]
        if not (
            self.run_detection
            or all(os.path.isfile(os.path.join(r, "voc_eval.json")) for r in runs)
        ):
            # No detection results: the report takes the pretraining runs (AP columns empty).
            runs = [self.pre_dir(m) for m in self.methods]
        run_tool(step, "report.py", runs + ["--out", self.out])

    # -- the whole run ----------------------------------------------------------------------
    def check_reused(self, first):
        """With --from: what the skipped stages would have made must be there."""
        needs = []
        if STAGES.index(first) > STAGES.index("data"):
            needs += [self.cls_root, os.path.join(self.voc_root, "VOC2007")]
        if STAGES.index(first) > STAGES.index("pretrain"):
            needs += [os.path.join(self.pre_dir(m), "eval_final.json") for m in self.methods]
        if STAGES.index(first) > STAGES.index("convert"):
            needs += [self.pkl(m) for m in self.methods]
        if STAGES.index(first) > STAGES.index("detection") and self.run_detection:
            needs += [os.path.join(self.det_dir(m), "voc_eval.json") for m in self.methods]
        missing = [p for p in needs if not os.path.exists(p)]
        if missing:
            sys.exit(
                f"error: --from {first} reuses earlier steps' outputs in {self.out}, but these are missing:\n  "
                + "\n  ".join(missing)
                + "\nRun the demo without --from (or with an earlier stage)."
            )

    def main(self):
        args, n = self.args, len(self.steps)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                sys.exit(
                    "error: --device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)"
                )
        first = args.from_stage or "data"
        if first != "data":
            self.check_reused(first)
        os.makedirs(self.logs, exist_ok=True)
        print(
            f"PS-KD demo: the whole pipeline on generated data (size {args.size}, device {args.device}, "
            f"methods {', '.join(self.methods)})"
        )
        print(f"output folder: {self.out}")
        if not self.has_d2:
            print(
                "Detectron2 is not installed: the detection steps will be skipped (how to add them: at the end)."
            )
        for i, step in enumerate(self.steps, 1):
            if STAGES.index(step.stage) < STAGES.index(first):
                step.status = "reused"
            elif step.needs_d2 and not self.run_detection:
                step.status = "skipped"
            note = {
                "reused": "  (reused from an earlier run)",
                "skipped": "  (skipped: "
                + ("Detectron2 not installed)" if not self.has_d2 else "--skip-detection)"),
            }.get(step.status, "")
            print(f"  [{i}/{n}] {step.title}{note}")
        print(flush=True)

        self.start = time.time()
        for i, step in enumerate(self.steps, 1):
            if step.status != "pending":
                continue
            step.log = os.path.join(self.logs, f"{i:02d}_{step.stage}.log")
            if os.path.exists(step.log):
                os.remove(step.log)
            print(
                f"[{i}/{n}] {step.title}  (elapsed {fmt_time(time.time() - self.start)})",
                flush=True,
            )
            t0, cpu0 = time.time(), children_cpu()
            try:
                step.run(step)
            except (StepFailed, OSError, KeyError, ValueError) as e:
                step.status, step.seconds = "failed", time.time() - t0
                self.write_summary()
                print(f"\nDEMO FAILED at step [{i}/{n}] {step.title}: {e}", file=sys.stderr)
                print(f"Full log of the step: {step.log}", file=sys.stderr)
                if os.path.isfile(step.log):
                    with open(step.log) as f:
                        tail = f.readlines()[-25:]
                    print(
                        "Its last lines:\n" + "".join("    " + line for line in tail),
                        file=sys.stderr,
                    )
                return 1
            step.status, step.seconds, step.cpu_seconds = (
                "done",
                time.time() - t0,
                children_cpu() - cpu0,
            )
            # CPU time of the step's processes: far below 2 x wall time on 2 cores = a busy machine.
            print(f"      done in {step.seconds:.1f} s (CPU {step.cpu_seconds:.1f} s)", flush=True)
        self.write_summary()
        self.finish()
        return 0

    def write_summary(self):
        data = {
            "size": self.args.size,
            "device": self.args.device,
            "methods": self.methods,
            "detectron2": self.has_d2,
            "detection_ran": self.run_detection,
            "total_seconds": round(time.time() - self.start, 1) if self.start else None,
            "total_cpu_seconds": round(sum(s.cpu_seconds or 0.0 for s in self.steps), 1),
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
                for i, s in enumerate(self.steps, 1)
            ],
        }
        with open(os.path.join(self.out, "demo_steps.json"), "w") as f:
            json.dump(data, f, indent=1)

    def same_run_args(self):
        """The non-default arguments of this run, for the command that finishes it."""
        a, args = self.args, []
        out = shell_path(self.out)
        if os.path.normpath(out) != "demo_output":
            args += ["--out", out]
        if a.size != "small":
            args += ["--size", a.size]
        if a.device != "cpu":
            args += ["--device", a.device]
        if self.methods != parse_methods(DEFAULT_METHODS):
            args += ["--methods", ",".join(self.methods)]
        if a.det_iters:
            args += ["--det-iters", str(a.det_iters)]
        return args

    def finish(self):
        total = time.time() - self.start
        cpu = sum(s.cpu_seconds or 0.0 for s in self.steps)
        print(
            f"\nDemo finished in {fmt_time(total)} (m:ss); the steps used {cpu:.0f} CPU seconds "
            f"({os.cpu_count()} cores here)."
        )
        print(f"Everything is in {self.out}:")
        print(
            "  table5.md, table5.csv, table5.png    Table 5: VOC07 test AP50 per backbone beside the paper's"
        )
        print(
            "  pretraining.md                       classification metrics (top-1/5 err, NLL, ECE, AURC)"
        )
        print(
            "  reliability_<method>.png             reliability diagrams of the pretrained backbones"
        )
        print(
            "  pretrain/, d2/, detection/, logs/    the runs, converted weights, and each step's full log"
        )
        if not self.run_detection:
            skipped = [
                f"[{i}/{len(self.steps)}]"
                for i, s in enumerate(self.steps, 1)
                if s.status == "skipped"
            ]
            again = " ".join(self.same_run_args() + ["--from", "detection"])
            if not self.has_d2:
                print(
                    f"\nDetectron2 is not installed, so steps {', '.join(skipped)} (detection) did not run, and "
                    "table5.* have no AP50 yet."
                )
                reason = detectron2_missing_reason()
                if reason:
                    print(f"  ({reason})")
                print("To finish the demo:")
                print(
                    "  1. install Detectron2 into this environment (`make venv` builds it at the pinned commit: "
                    "needs a C/C++ compiler and a few minutes; DETECTRON2_SRC=<clone or archive> where "
                    "GitHub is out of reach; README, section Install)"
                )
                print("  2. run only the remaining steps (reuses the data and backbones above):")
            else:
                print(
                    f"\n--skip-detection: steps {', '.join(skipped)} did not run; table5.* have no AP50. "
                    "To run them:"
                )
            print(f'       make demo DEMO_ARGS="{again}"')
            print(f"     or: {shell_path(sys.executable)} tools/demo.py {again}")
        print(f"\nOutput folder: {self.out}", flush=True)


def parse_methods(text):
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CONFIGS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown}; choose from {', '.join(CONFIGS)}"
        )
    if len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError("a method is listed twice")
    for m in filter(taught_by_baseline, methods):
        if "baseline" not in methods or methods.index("baseline") > methods.index(m):
            raise argparse.ArgumentTypeError(
                f"{m}'s teacher is the baseline: list baseline before {m}"
            )
    return methods
