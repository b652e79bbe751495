"""Config keys this project adds to Detectron2's (call before merging our YAML files), and the
fine-tuning config assembled from them (``setup_detection_cfg``: tools/train_net.py, and
tools/study.py before it runs anything). Detectron2 is imported only when a config is built."""

import os
from typing import NamedTuple

from pretrain.cli import merge_config

# Detectron2's launcher's own default (detectron2.engine.launch.DEFAULT_TIMEOUT): its ranks wait
# in a barrier while rank 0 alone computes the VOC AP of an evaluation.
DIST_TIMEOUT_S = 1800


class ProjectSettings(NamedTuple):
    """The project's keys, resolved and taken out of the config (``finalize_detection_config``)."""

    voc_root: str  # the folder the voc_* splits are read from
    dist_timeout_s: int  # how long a collective waits for a rank (launch()'s timeout)


def add_pskd_detection_config(cfg):
    """Add the project's keys to a Detectron2 config (``get_cfg()``), in place."""
    # Folder holding VOC2007/ and VOC2012/. Empty: $DETECTRON2_DATASETS, else "datasets", the
    # place Detectron2 itself looks. Set it for a VOC copy kept elsewhere; tools/train_net.py
    # re-registers the voc_* splits at that root.
    cfg.DATASETS.VOC_ROOT = ""
    # How long a rank waits in a collective (seconds) before every rank stops with an error: a
    # node lost or frozen mid-run ends the run within this time instead of hanging. Set in the
    # process that launches the workers (tools/train_net.py), which passes it to launch().
    cfg.DIST = type(cfg)()
    cfg.DIST.TIMEOUT_S = DIST_TIMEOUT_S


def voc_root(cfg):
    """The folder the VOC splits are read from, as ``DATASETS.VOC_ROOT`` resolves (``~`` expanded,
    which a shell leaves alone in ``DETECTRON2_DATASETS=~/voc``)."""
    return os.path.expanduser(cfg.DATASETS.VOC_ROOT or os.getenv("DETECTRON2_DATASETS", "datasets"))


def finalize_detection_config(cfg):
    """Resolve and remove the project's keys, so that the config.yaml a run saves is read by plain
    Detectron2; refuse settings the project would silently ignore. Returns ProjectSettings."""
    if cfg.TEST.AUG.ENABLED:
        raise ValueError(
            "TEST.AUG.ENABLED: test-time augmentation is not supported by tools/train_net.py "
            "(the AP would be reported without it); set it to False"
        )
    timeout = cfg.DIST.TIMEOUT_S
    if timeout <= 0:  # an int: the merge refuses any other type
        raise ValueError(f"DIST.TIMEOUT_S: expected a positive number of seconds, got {timeout}")
    settings = ProjectSettings(voc_root=voc_root(cfg), dist_timeout_s=timeout)
    del cfg.DATASETS["VOC_ROOT"]
    del cfg["DIST"]
    return settings


def setup_detection_cfg(config_file, opts=()):
    """The fine-tuning config as tools/train_net.py runs it: Detectron2's defaults and the
    project's keys <- YAML file (with _BASE_) <- KEY VALUE overrides, finalized and frozen.
    Returns ``(cfg, ProjectSettings)``. A missing file, bad YAML, an unknown key, a value of the
    wrong type or an odd override list is a ValueError or FileNotFoundError naming where it came
    from (``pretrain.cli.merge_config``, shared with the pretraining config)."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_pskd_detection_config(cfg)
    merge_config(cfg, config_file, opts)
    settings = finalize_detection_config(cfg)
    cfg.freeze()
    return cfg, settings


def check_split_names(cfg):
    """Every split of DATASETS.TRAIN / TEST is registered (the voc_* splits once ``register_voc``
    ran), named in a ValueError otherwise: Detectron2 would raise a KeyError in the data loader."""
    from detectron2.data import DatasetCatalog

    known = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        unknown = [name for name in cfg.DATASETS[key] if name not in known]
        if unknown:
            voc = sorted(name for name in known if name.startswith("voc_"))
            raise ValueError(
                f"DATASETS.{key}: {', '.join(map(repr, unknown))} is no registered split "
                f"(the VOC splits: {', '.join(voc)})"
            )


def check_model_builds(cfg):
    """Build the config's model on the meta device (no memory, no weights; a tenth of a second
    for R-152): a wrong architecture name, depth or head that Detectron2 would only refuse on the
    node, as an error naming the key where Detectron2's message does, else the error's text."""
    from detectron2.modeling import build_model

    meta = cfg.clone()
    meta.defrost()
    meta.MODEL.DEVICE = "meta"
    try:
        build_model(meta)
    except (KeyError, AssertionError, TypeError, ValueError) as exc:
        raise ValueError(
            f"the model of this config cannot be built: {type(exc).__name__}: {exc}"
        ) from None
