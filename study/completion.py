"""When a stage is done: its outputs are there and valid (``check``), never because of a marker
alone; and whether a run stage has begun (``started``). Part of the plan (``Plan`` inherits it)."""

import json
import os
import pickle

import yaml

from detection.runs import DETECTION_RUN_FILES
from pretrain.runtime.run_folder import SETUP_FILES


class Completion:
    """The completion checks of a ``Plan``'s stages."""

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
