"""What determines a stage's result: its identity. A stage is `changed` when its identity is not
the one it was run with, never because its command reads differently (another interpreter path
of the same environment, a relative path, a moved output root).

- data: the generated sizes.
- pretrain: the fully resolved config (the file, its _BASE_ files and every override, a search's
  values included), without the keys that may change on resume
  (pretrain.runtime.run_folder.MAY_CHANGE_ON_RESUME: where files are, how often to log or
  checkpoint);
  the seed; the data (the generated data's identity, or the dataset root); the teacher's
  identity.
- convert: the pretraining's identity.
- detect: the content of the detection config file and of every _BASE_ file it names, the
  overrides, the seed, the weights' identity, the VOC data.
- report: the identities of the detection runs, their labels, the bootstrap resamples.

An identity is a nested dict; ``differences`` says which key changed.
"""

import hashlib
import json
import os

import yaml

from pretrain.cli import setup_cfg
from pretrain.runtime.run_folder import MAY_CHANGE_ON_RESUME, flatten, plain_config

# Keys the study sets per stage, part of the identity in their own terms (seed, data, teacher).
_SET_BY_STUDY = ("OUTPUT_DIR", "DATA.ROOT", "SEED", "TEACHER.WEIGHTS")


def digest(identity):
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _config_files(path, seen=()):
    """{file name: SHA-256 of its content} of a Detectron2-style config and its _BASE_ chain."""
    with open(path, "rb") as f:
        content = f.read()
    files = {os.path.basename(path): hashlib.sha256(content).hexdigest()[:16]}
    base = (yaml.safe_load(content) or {}).get("_BASE_")
    if base and path not in seen:
        files.update(_config_files(os.path.join(os.path.dirname(path), base), (*seen, path)))
    return files


class Identities:
    """Every stage's identity for a plan, each computed once."""

    def __init__(self, plan):
        self.plan = plan
        self._cache = {}
        self._configs = {}

    def __call__(self, stage):
        if stage.id in self._cache:
            return self._cache[stage.id]
        identity = getattr(self, f"_{stage.kind}")(stage)
        if self.plan.settled():  # else a search's values, and what follows from them, may change
            self._cache[stage.id] = identity
        return identity

    def _data_identity(self, part):
        plan = self.plan
        if "synthetic" in plan.study.data:
            return {"generated": digest(self(plan.by_id[f"data/{part}"]))}
        return {"root": plan.study.data["pretrain" if part == "classification" else "voc"]}

    def _data(self, stage):
        return {"sizes": self.plan.study.data["synthetic"][stage.part]}

    def _pretrain(self, stage):
        b = stage.backbone
        searched = self.plan.search_opts(stage)
        if searched is None:
            return {"search": "values not known yet"}
        key = (b.name, *searched)
        if key not in self._configs:
            self._configs[key] = {
                k: v
                for k, v in plain_config(setup_cfg(b.config, b.opts + searched).dump()).items()
                if k not in MAY_CHANGE_ON_RESUME and k not in _SET_BY_STUDY
            }
        identity = {"config": self._configs[key], "SEED": stage.seed}
        identity["data"] = self._data_identity("classification")
        if b.teacher:
            identity["teacher"] = digest(self(self.plan.pretrain[b.teacher, stage.seed]))
        return identity

    def _convert(self, stage):
        return {"pretrain": digest(self(self.plan.pretrain[stage.backbone.name, stage.seed]))}

    def _detect(self, stage):
        study = self.plan.study
        opts = study.detection_opts
        return {
            "config": _config_files(study.detection_config),
            "opts": dict(zip(opts[::2], opts[1::2])),
            "SEED": stage.seed,
            "weights": digest(self(self.plan.convert[stage.backbone.name, stage.seed])),
            "data": self._data_identity("voc"),
        }

    def _report(self, stage):
        plan, labels = self.plan, self.plan.labels()
        return {
            "runs": {s.id: digest(self(s)) for s in plan.detect.values()},
            "labels": {b.name: labels[b.name] for b in plan.study.backbones},
            "bootstrap": plan.study.bootstrap,
        }


def differences(recorded, current):
    """["key: recorded -> current", ...] for every key whose value differs."""
    old, new = flatten(recorded), flatten(current)
    return [
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
