"""The stage graph of a study and each stage's exact command and completion check.

Stages (ids as printed by ``--status``)::

    data/classification, data/voc   only for a study on generated data
    pretrain/<backbone>/seed<k>      tools/pretrain.py        -> pretrain/<backbone>/seed<k>/
    convert/<backbone>/seed<k>       tools/convert_to_d2.py   -> weights/<backbone>_seed<k>.pkl
    detect/<backbone>/seed<k>        tools/train_net.py       -> detect/<backbone>/seed<k>/
    report/<study name>              tools/report.py          -> report/<study name>/

The report is the study's own (named after it), so that two studies over the same output root
(Table 5's six backbones and Table 4's ten) share every training stage and keep their reports.
A backbone whose method needs a teacher (TF-KD) pretrains after its teacher's pretraining of the
same seed, with TEACHER.WEIGHTS set to that run's model_final.pth. The seed is SEED of both the
pretraining and the detection fine-tune. A stage is done when its outputs are there and valid
(``Stage.check``), never because of a marker alone.
"""

import json
import os
import pickle
import sys

import yaml

from detection.runs import DETECTION_RUN_FILES
from pretrain.methods import method_label
from pretrain.run_folder import SETUP_FILES

from .identity import Identities

PYTHON = sys.executable
# Outputs that are runs (a folder with checkpoints): once started, only --resume continues them.
RUN_KINDS = ("pretrain", "detect")
# Cheap and deterministic: redone when their inputs change (their previous outputs kept beside).
DERIVED_KINDS = ("convert", "report")


class Stage:
    def __init__(self, study, kind, backbone=None, seed=None, deps=(), part=None):
        self.kind, self.backbone, self.seed, self.part = kind, backbone, seed, part
        self.deps = list(deps)
        self.resources = study.resources[kind]
        name = part or (backbone.name if backbone else None)
        self.id = "/".join(
            p for p in (kind, name, None if seed is None else f"seed{seed}") if p is not None
        )
        self.out = None  # set by the plan

    @property
    def slug(self):
        return self.id.replace("/", "__")

    def __repr__(self):
        return f"Stage({self.id})"


class Plan:
    """Every stage of a study, in an order where each stage follows its dependencies."""

    def __init__(self, study):
        self.study = study
        self.root = study.output_root
        self.stages = []
        synthetic = "synthetic" in study.data
        if synthetic:
            self.cls_data = self._add(
                Stage(study, "data", part="classification"),
                os.path.join(self.root, "data", "classification"),
            )
            self.voc_data = self._add(
                Stage(study, "data", part="voc"), os.path.join(self.root, "data", "voc")
            )
        self.pretrain, self.convert, self.detect = {}, {}, {}
        for seed in study.seeds:
            # Teachers first: a backbone's position never precedes its teacher's.
            for b in sorted(study.backbones, key=lambda b: b.teacher is not None):
                deps = [self.cls_data.id] if synthetic else []
                if b.teacher:
                    deps.append(self.pretrain[b.teacher, seed].id)
                self.pretrain[b.name, seed] = self._add(
                    Stage(study, "pretrain", b, seed, deps),
                    os.path.join(self.root, "pretrain", b.name, f"seed{seed}"),
                )
        for seed in study.seeds:
            for b in study.backbones:
                self.convert[b.name, seed] = self._add(
                    Stage(study, "convert", b, seed, [self.pretrain[b.name, seed].id]),
                    os.path.join(self.root, "weights", f"{b.name}_seed{seed}.pkl"),
                )
        for seed in study.seeds:
            for b in study.backbones:
                deps = [self.convert[b.name, seed].id] + ([self.voc_data.id] if synthetic else [])
                self.detect[b.name, seed] = self._add(
                    Stage(study, "detect", b, seed, deps),
                    os.path.join(self.root, "detect", b.name, f"seed{seed}"),
                )
        self.report = self._add(
            Stage(study, "report", deps=[s.id for s in self.detect.values()], part=study.name),
            os.path.join(self.root, "report", study.name),
        )
        self.by_id = {s.id: s for s in self.stages}
        self.identity = Identities(self)

    def _add(self, stage, out):
        stage.out = out
        self.stages.append(stage)
        return stage

    # -- data roots ------------------------------------------------------------------------------
    def pretrain_root(self):
        return self.cls_data.out if "synthetic" in self.study.data else self.study.data["pretrain"]

    def voc_root(self):
        return self.voc_data.out if "synthetic" in self.study.data else self.study.data["voc"]

    def labels(self):
        """The report's method label per backbone: the method's (``PS-KD + CutMix``), or the
        backbone's name where two backbones would share one."""
        names = {b.name: method_label(b.method, b.cutmix) for b in self.study.backbones}
        shared = {v for v in names.values() if list(names.values()).count(v) > 1}
        return {k: (k if v in shared else v) for k, v in names.items()}

    # -- commands ---------------------------------------------------------------------------------
    def command(self, stage, resume=False, node=None):
        """The argv of ``stage`` (run from the project root). ``resume`` continues a started run
        from its newest checkpoint. ``node`` = (num_nodes, node_rank, master_addr, port, run_id)
        places a multi-node stage (the Slurm executor fills it in on every node; without it the
        command shows placeholders)."""
        res = stage.resources
        if node is None:
            node = (res["nodes"], "$NODE_RANK", "$MASTER_ADDR", "$PORT", "$SLURM_JOB_ID")
        if stage.kind == "data":
            sizes = self.study.data["synthetic"][stage.part]
            args = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
            return [PYTHON, "tools/make_synthetic_data.py", stage.part, stage.out] + args
        if stage.kind == "pretrain":
            config, opts = self.tool_config(stage)
            return (
                self._torchrun(res, node)
                + ["tools/pretrain.py", "--config-file", config]
                + (["--resume"] if resume else [])
                + opts
            )
        if stage.kind == "convert":
            pre = self.pretrain[stage.backbone.name, stage.seed].out
            # No --verify: the detect stage checks, before its first iteration, that the file
            # initialises every backbone tensor of its own config's model.
            return [
                PYTHON,
                "tools/convert_to_d2.py",
                os.path.join(pre, "model_final.pth"),
                stage.out,
            ]
        if stage.kind == "detect":
            launch = ["--num-gpus", str(res["processes_per_node"])]
            if res["nodes"] > 1:
                nodes, rank, master, port, _ = node
                launch += [
                    "--num-machines",
                    str(nodes),
                    "--machine-rank",
                    str(rank),
                    "--dist-url",
                    f"tcp://{master}:{port}",
                ]
            config, opts = self.tool_config(stage)
            return (
                [PYTHON, "tools/train_net.py", "--config-file", config]
                + launch
                + (["--resume"] if resume else [])
                + opts
            )
        if stage.kind == "report":
            labels = self.labels()
            runs = [
                self.detect[b.name, s].out for s in self.study.seeds for b in self.study.backbones
            ]
            return (
                [PYTHON, "tools/report.py"]
                + runs
                + ["--out", stage.out, "--bootstrap", str(self.study.bootstrap)]
                + [
                    f"--label={self.detect[b.name, s].out}={labels[b.name]}"
                    for s in self.study.seeds
                    for b in self.study.backbones
                ]
            )
        raise ValueError(stage.kind)

    def tool_config(self, stage):
        """(config file, KEY VALUE overrides) a pretrain or detect stage's tool assembles its
        config from: the study's opts, then the stage's data, output folder, seed and inputs."""
        if stage.kind == "pretrain":
            b = stage.backbone
            opts = list(b.opts) + [
                "DATA.ROOT",
                self.pretrain_root(),
                "OUTPUT_DIR",
                stage.out,
                "SEED",
                str(stage.seed),
            ]
            if b.teacher:
                opts += [
                    "TEACHER.WEIGHTS",
                    os.path.join(self.pretrain[b.teacher, stage.seed].out, "model_final.pth"),
                ]
            return b.config, opts
        opts = list(self.study.detection_opts) + [
            "MODEL.WEIGHTS",
            self.convert[stage.backbone.name, stage.seed].out,
            "DATASETS.VOC_ROOT",
            self.voc_root(),
            "OUTPUT_DIR",
            stage.out,
            "SEED",
            str(stage.seed),
        ]
        return self.study.detection_config, opts

    @staticmethod
    def _torchrun(res, node):
        procs, nodes = res["processes_per_node"], res["nodes"]
        if nodes == 1 and procs == 1:
            return [PYTHON]
        run = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        if nodes == 1:
            return run + ["--standalone"]
        num_nodes, rank, master, port, run_id = node
        return run + [
            "--nnodes",
            str(num_nodes),
            "--node_rank",
            str(rank),
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            f"{master}:{port}",
            "--rdzv_id",
            str(run_id),
        ]

    # -- completion -------------------------------------------------------------------------------
    def check(self, stage):
        """``(done, why_not)``: whether the stage's outputs are there and valid."""
        try:
            return getattr(self, f"_check_{stage.kind}")(stage)
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            EOFError,
            pickle.UnpicklingError,
            yaml.YAMLError,
        ) as exc:
            return False, f"unreadable output ({type(exc).__name__}: {exc})"

    def started(self, stage):
        """Whether a run stage has begun its run (then only --resume may continue it): written
        more than its tool's set-up files, which a fresh start may find (a stage that failed
        before training can start again)."""
        if not os.path.isdir(stage.out):
            return False
        if stage.kind == "pretrain":
            return any(name not in SETUP_FILES for name in os.listdir(stage.out))
        return any(os.path.exists(os.path.join(stage.out, f)) for f in DETECTION_RUN_FILES)

    def _same_file(self, recorded, path):
        """Whether a path an output recorded (absolute, when it was written) is ``path`` of this
        output root, the root possibly moved since: the same path below the root."""
        if not isinstance(recorded, str):
            return False
        below = os.path.relpath(os.path.abspath(path), self.root)
        return recorded == os.path.abspath(path) or recorded.endswith(os.sep + below)

    def _check_data(self, stage):
        sizes = self.study.data["synthetic"][stage.part]
        if stage.part == "classification":
            expected = {
                "train": sizes["classes"] * sizes["train_per_class"],
                "val": sizes["classes"] * sizes["val_per_class"],
            }
            for split, n in expected.items():
                folder = os.path.join(stage.out, split)
                found = sum(len(files) for _, _, files in os.walk(folder))
                if found != n:
                    return False, f"{folder}: {found} images, expected {n}"
            return True, ""
        for folder, split, n in (
            ("VOC2007", "test", sizes["test07"]),
            ("VOC2007", "trainval", sizes["trainval07"]),
            ("VOC2012", "trainval", sizes["trainval12"]),
        ):
            path = os.path.join(stage.out, folder, "ImageSets", "Main", f"{split}.txt")
            if not os.path.isfile(path):
                return False, f"{path} missing"
            with open(path) as f:
                ids = [line for line in f if line.strip()]
            if len(ids) != n:
                return False, f"{path}: {len(ids)} images, expected {n}"
            missing = [
                i.strip()
                for i in ids
                if not os.path.isfile(
                    os.path.join(stage.out, folder, "Annotations", i.strip() + ".xml")
                )
            ]
            if missing:
                return False, f"{folder}: annotation of {missing[0]} missing"
        return True, ""

    def _check_pretrain(self, stage):
        import torch

        final = os.path.join(stage.out, "model_final.pth")
        metrics = os.path.join(stage.out, "eval_final.json")
        for path in (final, metrics, os.path.join(stage.out, "config.yaml")):
            if not os.path.isfile(path):
                return False, f"{path} missing"
        with open(metrics) as f:
            if not isinstance(json.load(f).get("top1_err"), (int, float)):
                return False, f"{metrics}: no top1_err"
        with open(os.path.join(stage.out, "config.yaml")) as f:
            cfg = yaml.safe_load(f)
        if cfg["SEED"] != stage.seed or cfg["METHOD"]["NAME"] != stage.backbone.method:
            return False, (
                f"{stage.out}/config.yaml: SEED {cfg['SEED']}, METHOD.NAME "
                f"{cfg['METHOD']['NAME']}; this stage is seed {stage.seed}, {stage.backbone.method}"
            )
        # Memory-mapped: reads the header and tensor index, not the weights.
        try:
            state = torch.load(final, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # a truncated or damaged archive
            return False, f"{final}: unreadable ({' '.join(str(exc).split())})"
        if not isinstance(state, dict) or not state.get("model"):
            return False, f"{final}: no model state"
        return True, ""

    def _check_convert(self, stage):
        if not os.path.isfile(stage.out):
            return False, f"{stage.out} missing"
        with open(stage.out, "rb") as f:
            data = pickle.load(f)
        source = os.path.join(self.pretrain[stage.backbone.name, stage.seed].out, "model_final.pth")
        if not isinstance(data, dict) or not data.get("model"):
            return False, f"{stage.out}: no weights"
        if not self._same_file(data.get("__source__"), source):
            return False, f"{stage.out} was converted from {data.get('__source__')}, not {source}"
        if os.path.getmtime(stage.out) < os.path.getmtime(source):
            return False, f"{stage.out} is older than {source}"
        return True, ""

    def _check_detect(self, stage):
        result = os.path.join(stage.out, "voc_eval.json")
        final = os.path.join(stage.out, "model_final.pth")
        detections = os.path.join(stage.out, "voc_detections.npz")
        for path in (result, final, detections):
            if not os.path.isfile(path):
                return False, f"{path} missing"
        with open(result) as f:
            summary = json.load(f)
        if not isinstance(summary.get("AP50"), (int, float)):
            return False, f"{result}: no AP50"
        weights = self.convert[stage.backbone.name, stage.seed].out
        if not self._same_file(summary.get("weights"), weights):
            # An --eval-only run of model_final.pth names that file instead: not this stage's
            # result.
            return (
                False,
                f"{result} evaluates {summary.get('weights')}, not the fine-tune from {weights}",
            )
        if os.path.getmtime(result) < os.path.getmtime(final):
            return False, f"{result} is older than {final} (the final model was not evaluated)"
        import numpy as np

        with np.load(detections) as data:
            if "det_score" not in data.files:
                return False, f"{detections}: no detections array"
        return True, ""

    def _check_report(self, stage):
        inputs = [os.path.join(s.out, "voc_eval.json") for s in self.detect.values()]
        newest = max(os.path.getmtime(p) for p in inputs)
        for name in (
            "table5.md",
            "table5.csv",
            "table5_summary.md",
            "table5_summary.csv",
            "table5_diff.png",
        ):
            path = os.path.join(stage.out, name)
            if not os.path.isfile(path):
                return False, f"{path} missing"
            if os.path.getmtime(path) < newest:
                return False, f"{path} is older than a detection result"
        return True, ""
