"""The demo: the whole pipeline on generated data, each step one of the project's tools run as a
subprocess (study/tool_step.py); tools/demo.py is its command line, docs/demo.md its guide. What
a run can be (its pretraining runs, sizes, stages) is in study/demo_choices.py; what the demo
writes of its own (pretraining.md, demo_steps.json, the closing message) in study/demo_report.py.
"""

import os
import re
import shutil
import sys
import time

from .demo_choices import (
    CONFIGS,
    PRETRAIN_CONFIGS,
    SIZES,
    STAGES,
    detectron2_installed,
    run_label,
    taught_by_baseline,
)
from .demo_report import print_closing_message, write_pretraining_summary, write_steps_json
from .tool_step import ROOT, Step, StepFailed, children_cpu, fmt_time, run_tool

DET_CONFIG = os.path.join(ROOT, "configs", "detection", "faster_rcnn_R_18_FPN_tiny_cpu.yaml")

# What the console shows of Detectron2's output (everything goes to the step's log file).
D2_SHOW = re.compile(
    r"eta: |Inference done|copypaste|Total inference time|Overall training|"
    r"Traceback|Error|error:|wrote"
)


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
                lambda step: write_pretraining_summary(self, step),
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
            raise FileNotFoundError(
                f"--from {first} reuses earlier steps' outputs in {self.out}, but "
                f"{len(missing)} are missing ({', '.join(missing)}): run the demo without --from "
                "(or with an earlier stage)"
            )

    def main(self):
        args, n = self.args, len(self.steps)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError(
                    "--device cuda, but torch sees no CUDA device "
                    "(torch.cuda.is_available() is False): use --device cpu"
                )
        first = args.from_stage or "data"
        if first != "data":
            self.check_reused(first)
        os.makedirs(self.logs, exist_ok=True)
        print(
            f"PS-KD demo: the whole pipeline on generated data (size {args.size}, "
            f"device {args.device}, "
            f"methods {', '.join(self.methods)})"
        )
        print(f"output folder: {self.out}")
        if not self.has_d2:
            print(
                "Detectron2 is not installed: the detection steps will be skipped "
                "(how to add them: at the end)."
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
                write_steps_json(self)
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
        write_steps_json(self)
        print_closing_message(self)
        return 0
