"""The study file: which backbones, seeds, data, detection config, resources and output root.

A study file is YAML (configs/study/*.yaml; docs/study.md lists every key). ``load_study``
reads it, checks every key and value, and returns a ``Study``; anything wrong raises
``StudyError`` whose message starts with the file and the dotted key. Each backbone's
pretraining config is assembled here with the project's own config code, so its method
(METHOD.NAME) is checked against the method registry and teacher-based methods are recognised
by the method class, not by a list kept here.
"""

import copy
import dataclasses
import os
from dataclasses import dataclass, field

import yaml

from detection.synthetic_voc import MAX_REQUIRED, MIN_TEST07
from pretrain.cli import setup_cfg
from pretrain.methods import METHODS

from .search import Search, check_winners_of, read_search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STAGE_KINDS = ("data", "pretrain", "convert", "detect", "report")
# How long a stage may go on being requeued: submitit requeues a job that reaches its time limit
# at most max_num_timeout times (its default, 3, stops 90 ImageNet epochs on a 24-hour partition
# after the third day), and signals it signal_delay_s before the limit so that it can stop
# cleanly (a checkpoint of ResNet-152 with its optimizer and table takes tens of seconds).
SLURM_REQUEUE_DEFAULTS = {"max_num_timeout": 30, "signal_delay_s": 120}

# Slurm resources per stage, in submitit's names (also read by the local executor).
RESOURCE_KEYS = {
    "nodes": int,
    "gpus_per_node": int,
    "processes_per_node": int,
    "cpus_per_task": int,
    "mem_gb": (int, float),
    "timeout_min": int,
}
DEFAULT_RESOURCES = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 2, "timeout_min": 60}
SYNTHETIC_DEFAULTS = {
    "classification": {"classes": 4, "train_per_class": 24, "val_per_class": 8, "size": 64},
    "voc": {"trainval07": 40, "test07": 20, "trainval12": 40},
}


class StudyError(ValueError):
    """A study file is wrong; the message names the file and the key."""


@dataclass
class Backbone:
    name: str  # the folder name of its runs, e.g. "pskd_cutmix"
    config: str  # pretraining config file (absolute)
    opts: list  # KEY VALUE overrides of the pretraining config, flat
    method: str  # METHOD.NAME
    cutmix: bool
    arch: str
    teacher: str = None  # name of the backbone whose model (same seed) is the teacher
    search: Search = None  # the hyperparameter search whose winner it trains with (study.search)
    winner_of: str = None  # or: the searched backbone whose winner it trains with, not searching


@dataclass
class Study:
    path: str
    name: str
    output_root: str
    seeds: list
    backbones: list
    detection_config: str
    detection_opts: list
    data: dict  # pretrain / voc roots (absolute), or synthetic sizes to generate
    resources: dict  # stage kind -> resource dict
    slurm: dict = field(default_factory=dict)
    bootstrap: int = 1000

    def backbone(self, name):
        return next(b for b in self.backbones if b.name == name)


def _flat_opts(value, where):
    """``{KEY: VALUE}`` (or a flat ``[KEY, VALUE, ...]`` list) as config overrides."""
    if value is None:
        return []
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += [
                str(k),
                v if isinstance(v, str) else repr(v) if isinstance(v, (list, tuple)) else str(v),
            ]
        return out
    if isinstance(value, list) and len(value) % 2 == 0:
        return [str(v) for v in value]
    raise StudyError(f"{where}: expected a mapping KEY: VALUE of config overrides, got {value!r}")


class _Reader:
    """Typed access to the YAML mapping, with errors naming the file and the dotted key."""

    def __init__(self, path):
        self.path = path

    def fail(self, key, message):
        raise StudyError(f"{self.path}: {key}: {message}")

    def mapping(self, node, key, allowed, required=()):
        if not isinstance(node, dict):
            self.fail(key, f"expected a mapping, got {type(node).__name__}")
        for k in node:
            if k not in allowed:
                self.fail(
                    f"{key}.{k}" if key else k,
                    f"unknown key (expected one of: {', '.join(allowed)})",
                )
        for k in required:
            if k not in node:
                self.fail(f"{key}.{k}" if key else k, "missing (required)")
        return node

    def file(self, value, key, base):
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a file path, got {value!r}")
        for candidate in (os.path.join(base, value), os.path.join(ROOT, value)):
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        self.fail(
            key,
            f"file {value!r} not found (relative paths are taken from the study file's "
            f"folder, then from the project root)",
        )


def _read_backbones(r, node, base, pretrain_opts, seeds):
    r.mapping(node, "backbones", allowed=list(node) if isinstance(node, dict) else ())
    if not node:
        r.fail("backbones", "lists no backbone")
    backbones = []
    for name, entry in node.items():
        key = f"backbones.{name}"
        if not isinstance(name, str) or not _is_folder_name(name):
            r.fail(key, "a backbone name must be letters, digits, '_' or '-' (it names folders)")
        r.mapping(
            entry,
            key,
            allowed=("config", "opts", "teacher", "search", "winner_of"),
            required=("config",),
        )
        config = r.file(entry["config"], f"{key}.config", base)
        opts = pretrain_opts + _flat_opts(entry.get("opts"), f"{key}.opts")
        try:
            cfg = setup_cfg(config, opts)
        except (ValueError, FileNotFoundError) as exc:
            r.fail(key, str(exc))
        method = cfg.METHOD.NAME  # one of METHODS: setup_cfg checked it
        teacher = entry.get("teacher")
        if METHODS[method].needs_teacher:
            teacher = teacher or "baseline"
        elif teacher is not None:
            r.fail(f"{key}.teacher", f"method {method!r} takes no teacher")
        search = entry.get("search")
        if search is not None:
            search = read_search(r, search, f"{key}.search", config, opts, seeds, _flat_opts)
        backbones.append(
            Backbone(
                name,
                config,
                opts,
                method,
                bool(cfg.AUG.CUTMIX.ENABLED),
                cfg.MODEL.ARCH,
                teacher,
                search,
                entry.get("winner_of"),
            )
        )
    check_winners_of(r, backbones)
    names = [b.name for b in backbones]
    for b in backbones:
        if b.teacher is None:
            continue
        key = f"backbones.{b.name}.teacher"
        if b.teacher not in names:
            r.fail(
                key,
                f"{b.teacher!r} is not a backbone of this study ({', '.join(names)}); method "
                f"{b.method!r} needs a trained teacher of the same seed",
            )
        if b.search and b.search.seed not in seeds:
            r.fail(
                f"backbones.{b.name}.search.seed",
                f"{b.search.seed} is no seed of this study {seeds}: the trials are taught by the "
                f"teacher's run of their seed",
            )
        teacher = backbones[names.index(b.teacher)]
        if teacher.teacher is not None:
            r.fail(
                key, f"the teacher {b.teacher!r} itself needs a teacher; chains are not supported"
            )
        if teacher.arch != b.arch:
            r.fail(
                key,
                f"the teacher {b.teacher!r} is a {teacher.arch}, the student a {b.arch} "
                "(TEACHER.WEIGHTS is loaded into MODEL.ARCH)",
            )
    return backbones


def _read_resources(r, node):
    node = r.mapping(node or {}, "resources", allowed=STAGE_KINDS)
    resources = {}
    for kind in STAGE_KINDS:
        entry = r.mapping(node.get(kind) or {}, f"resources.{kind}", allowed=tuple(RESOURCE_KEYS))
        res = dict(DEFAULT_RESOURCES)
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, RESOURCE_KEYS[k]) or v < 0:
                r.fail(f"resources.{kind}.{k}", f"expected a non-negative number, got {v!r}")
            res[k] = v
        if res["nodes"] < 1:
            r.fail(f"resources.{kind}.nodes", "must be at least 1")
        res.setdefault("processes_per_node", max(1, res["gpus_per_node"]))
        if kind in ("data", "convert", "report") and (
            res["nodes"] > 1 or res["processes_per_node"] > 1
        ):
            r.fail(f"resources.{kind}", "this stage runs as one process on one node")
        resources[kind] = res
    return resources


def _read_data(r, node):
    node = r.mapping(node, "data", allowed=("pretrain", "voc", "synthetic"))
    if "synthetic" in node:
        if "pretrain" in node or "voc" in node:
            r.fail(
                "data",
                "either synthetic (generated into the output root) or the roots pretrain and voc",
            )
        synthetic = r.mapping(
            node["synthetic"] or {}, "data.synthetic", allowed=tuple(SYNTHETIC_DEFAULTS)
        )
        sizes = {}
        for kind, defaults in SYNTHETIC_DEFAULTS.items():
            entry = r.mapping(
                synthetic.get(kind) or {}, f"data.synthetic.{kind}", allowed=tuple(defaults)
            )
            for k, v in entry.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    r.fail(f"data.synthetic.{kind}.{k}", f"expected a positive integer, got {v!r}")
            sizes[kind] = {**defaults, **entry}
        if sizes["voc"]["test07"] < MIN_TEST07:
            r.fail(
                "data.synthetic.voc.test07",
                f"expected at least {MIN_TEST07} (the generated test split shows all 20 classes, "
                f"at most {MAX_REQUIRED} per image), got {sizes['voc']['test07']}",
            )
        return {"synthetic": sizes}
    data = {}
    for k in ("pretrain", "voc"):
        if not isinstance(node.get(k), str) or not node[k]:
            r.fail(
                f"data.{k}",
                "missing: the folder of the "
                + (
                    "ImageNet train/ and val/ trees (DATA.ROOT)"
                    if k == "pretrain"
                    else "VOC2007/ and VOC2012/ folders (DATASETS.VOC_ROOT)"
                ),
            )
        data[k] = os.path.abspath(os.path.expanduser(node[k]))
    return data


def _is_folder_name(name):
    return bool(name) and name.replace("_", "").replace("-", "").isalnum()


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps
    the last silently, so a second ``baseline:`` backbone would replace the first unseen."""

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice: lines {first[key]} and {line}"
                )
            first[key] = line
        return super().construct_mapping(node, deep)


def load_study(path):
    """Read and check a study file; raise StudyError naming the key of the first problem."""
    if not os.path.isfile(path):
        raise StudyError(f"{path}: study file not found")
    try:
        with open(path) as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as exc:
        raise StudyError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{path}: not valid YAML ({exc})") from None
    r = _Reader(path)
    base = os.path.dirname(os.path.abspath(path))
    node = r.mapping(
        raw,
        "",
        allowed=(
            "name",
            "output_root",
            "seeds",
            "data",
            "pretrain",
            "backbones",
            "detection",
            "report",
            "resources",
            "slurm",
        ),
        required=("name", "output_root", "seeds", "data", "backbones", "detection"),
    )
    if not isinstance(node["name"], str) or not _is_folder_name(node["name"]):
        r.fail("name", "expected letters, digits, '_' or '-' (it names the report's folder)")
    seeds = node["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        r.fail("seeds", f"expected a list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        r.fail("seeds", f"a seed is listed twice: {seeds}")
    if not isinstance(node["output_root"], str) or not node["output_root"]:
        r.fail("output_root", "expected a folder path")
    pretrain = r.mapping(node.get("pretrain") or {}, "pretrain", allowed=("opts",))
    backbones = _read_backbones(
        r, node["backbones"], base, _flat_opts(pretrain.get("opts"), "pretrain.opts"), seeds
    )
    detection = r.mapping(
        node["detection"], "detection", allowed=("config", "opts"), required=("config",)
    )
    report = r.mapping(node.get("report") or {}, "report", allowed=("bootstrap",))
    bootstrap = report.get("bootstrap", 1000)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 10:
        r.fail(
            "report.bootstrap",
            f"expected an integer >= 10 (bootstrap resamples), got {bootstrap!r}",
        )
    slurm = r.mapping(
        node.get("slurm") or {},
        "slurm",
        allowed=("partition", "account", "additional_parameters", *SLURM_REQUEUE_DEFAULTS),
    )
    for k, default in SLURM_REQUEUE_DEFAULTS.items():
        v = slurm.setdefault(k, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            r.fail(f"slurm.{k}", f"expected a non-negative integer, got {v!r}")
    return Study(
        path=os.path.abspath(path),
        name=node["name"],
        output_root=os.path.abspath(os.path.expanduser(node["output_root"])),
        seeds=list(seeds),
        backbones=backbones,
        detection_config=r.file(detection["config"], "detection.config", base),
        detection_opts=_flat_opts(detection.get("opts"), "detection.opts"),
        data=_read_data(r, node["data"]),
        resources=_read_resources(r, node.get("resources")),
        slurm=copy.deepcopy(slurm),
        bootstrap=bootstrap,
    )


def on_device(study, device):
    """``study`` with MODEL.DEVICE ``device`` for every pretraining and detection stage, writing
    into ``<output_root>-<device>``: runs on another device give other numbers, and a study never
    trains over runs made with other settings (they would be ``changed``)."""
    device_opts = ["MODEL.DEVICE", device]
    return dataclasses.replace(
        study,
        output_root=f"{study.output_root}-{device}",
        backbones=[dataclasses.replace(b, opts=b.opts + device_opts) for b in study.backbones],
        detection_opts=study.detection_opts + device_opts,
    )
