"""The stage graph of a study and each stage's exact command (its completion checks:
study/completion.py).

Stages (ids as printed by ``--status``)::

    data/classification, data/voc   only for a study on generated data
    pretrain/<backbone>/trial<k>     tools/pretrain.py        -> pretrain/<backbone>/trial<k>/
    pretrain/<backbone>/seed<k>      tools/pretrain.py        -> pretrain/<backbone>/seed<k>/
    convert/<backbone>/seed<k>       tools/convert_to_d2.py   -> weights/<backbone>_seed<k>.pkl
    detect/<backbone>/seed<k>        tools/train_net.py       -> detect/<backbone>/seed<k>/
    report/<study name>              tools/report.py          -> report/<study name>/

The report is the study's own (named after it), so that two studies over the same output root
(Table 5's six backbones and Table 4's ten) share every training stage and keep their reports.
A backbone whose method needs a teacher (TF-KD) pretrains after its teacher's pretraining of the
same seed, with TEACHER.WEIGHTS set to that run's model_final.pth. The seed is SEED of both the
pretraining and the detection fine-tune. A backbone with a hyperparameter search (study.search)
pretrains its trials first, and its runs with the winner's values; one with ``winner_of`` takes
that winner after the same trials, searching nothing itself. A stage is done when its outputs are
there and valid (``check``), never because of a marker alone.
"""

import os
import sys

from pretrain.methods import method_label

from .completion import Completion
from .identity import Identities
from .search import SearchPlan, recorded_values

PYTHON = sys.executable
# What a command shows in place of a search's values not known yet (--dry-run).
PENDING = ["<search values: drawn at the first run; the winner once every trial is done>"]
# Outputs that are runs (a folder with checkpoints): once started, only --resume continues them.
RUN_KINDS = ("pretrain", "detect")
# Cheap and deterministic: redone when their inputs change (their previous outputs kept beside).
DERIVED_KINDS = ("convert", "report")


class Stage:
    def __init__(self, study, kind, backbone=None, seed=None, deps=(), part=None, trial=None):
        self.kind, self.backbone, self.seed, self.part = kind, backbone, seed, part
        self.trial = trial  # the trial number of a search's pretraining stage
        self.deps = list(deps)
        self.resources = study.resources[kind]
        name = part or (backbone.name if backbone else None)
        run = f"trial{trial}" if trial is not None else None if seed is None else f"seed{seed}"
        self.id = "/".join(p for p in (kind, name, run) if p is not None)
        self.out = None  # set by the plan

    @property
    def slug(self):
        return self.id.replace("/", "__")

    def __repr__(self):
        return f"Stage({self.id})"


class Plan(Completion, SearchPlan):
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
        self.trials, self.sampled = {}, {}  # of each searched backbone: stages, values drawn
        for seed in study.seeds:
            # Teachers first: a backbone's position never precedes its teacher's.
            for b in sorted(study.backbones, key=lambda b: b.teacher is not None):
                deps = [self.cls_data.id] if synthetic else []
                if b.teacher:
                    deps.append(self.pretrain[b.teacher, seed].id)
                searched = self.search_of(b)  # b, or the backbone whose winner it takes
                if searched:
                    if searched.name not in self.trials:
                        self._add_trials(searched, synthetic)
                    deps += [t.id for t in self.trials[searched.name]]
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
        self.stages = _dependencies_first(self.stages)
        self.by_id = {s.id: s for s in self.stages}
        self.identity = Identities(self)

    def _add_trials(self, b, synthetic):
        """The trials of ``b``'s search, taught (TF-KD) by the teacher's run of their seed."""
        self.sampled[b.name] = recorded_values(self.root, b.name, b.search)
        deps = [self.cls_data.id] if synthetic else []
        if b.teacher:
            deps.append(f"pretrain/{b.teacher}/seed{b.search.seed}")
        self.trials[b.name] = [
            self._add(
                Stage(self.study, "pretrain", b, b.search.seed, deps, trial=k),
                os.path.join(self.root, "pretrain", b.name, f"trial{k}"),
            )
            for k in range(b.search.trials)
        ]

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
            searched = self.search_opts(stage)
            opts = (
                list(b.opts)
                + (PENDING if searched is None else searched)
                + [
                    "DATA.ROOT",
                    self.pretrain_root(),
                    "OUTPUT_DIR",
                    stage.out,
                    "SEED",
                    str(stage.seed),
                ]
            )
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


def _dependencies_first(stages):
    """``stages`` in their order, except that each comes after its dependencies (a search's
    trials may wait for a teacher's run of a later seed)."""
    placed, ordered, rest = set(), [], list(stages)
    while rest:
        stage = next(s for s in rest if all(d in placed for d in s.deps))
        rest.remove(stage)
        ordered.append(stage)
        placed.add(stage.id)
    return ordered
