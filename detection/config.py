"""Config keys this project adds to Detectron2's (call before merging our YAML files)."""

import os


def add_pskd_detection_config(cfg):
    """Add the project's keys to a Detectron2 config (``get_cfg()``), in place."""
    # Folder holding VOC2007/ and VOC2012/. Empty: $DETECTRON2_DATASETS, else "datasets", the
    # place Detectron2 itself looks. Set it for a VOC copy kept elsewhere; tools/train_net.py
    # re-registers the voc_* splits at that root.
    cfg.DATASETS.VOC_ROOT = ""


def voc_root(cfg):
    """The folder the VOC splits are read from, as ``DATASETS.VOC_ROOT`` resolves (``~`` expanded,
    which a shell leaves alone in ``DETECTRON2_DATASETS=~/voc``)."""
    return os.path.expanduser(cfg.DATASETS.VOC_ROOT or os.getenv("DETECTRON2_DATASETS", "datasets"))


def finalize_detection_config(cfg):
    """Resolve and remove the project's keys, so that the config.yaml a run saves is read by plain
    Detectron2; refuse settings the project would silently ignore. Returns the VOC root."""
    if cfg.TEST.AUG.ENABLED:
        raise ValueError(
            "TEST.AUG.ENABLED: test-time augmentation is not supported by tools/train_net.py "
            "(the AP would be reported without it); set it to False"
        )
    root = voc_root(cfg)
    del cfg.DATASETS["VOC_ROOT"]
    return root
