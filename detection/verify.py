"""Check a converted weight file against Detectron2's own ResNet (needs Detectron2).

A file whose names Detectron2 cannot match still "loads": its checkpointer only logs the
unmatched keys and leaves random weights in place. This builds the ResNet backbone of the given
depth, loads the file through Detectron2's checkpointer (its name-matching heuristics included)
and fails unless every backbone weight was loaded with the file's value.
"""

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

# Detectron2 never loads BatchNorm's step counter (FrozenBatchNorm2d has none).
IGNORED_SUFFIX = "num_batches_tracked"


def build_torchvision_style_resnet(depth):
    """Detectron2's ResNet (stem..res5) configured for torchvision weights, on the CPU."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def verify_d2_weights(pkl_path, depth):
    """Load ``pkl_path`` into Detectron2's ResNet-``depth``; return a summary or raise
    ValueError."""
    backbone = build_torchvision_style_resnet(depth)
    checkpointer = DetectionCheckpointer(backbone)
    # _load_file/_load_model are the two halves of Checkpointer.load; called apart, the
    # incompatible-keys report comes back instead of only being logged.
    checkpoint = checkpointer._load_file(pkl_path)
    source = {k: v for k, v in checkpoint["model"].items() if not k.endswith(IGNORED_SUFFIX)}
    incompatible = checkpointer._load_model(checkpoint)
    problems = []
    if incompatible.missing_keys:
        problems.append(f"backbone weights not in the file: {incompatible.missing_keys[:5]}")
    unused = [k for k in incompatible.unexpected_keys if not k.endswith(IGNORED_SUFFIX)]
    if unused:
        problems.append(f"file weights Detectron2 did not use: {unused[:5]}")
    if incompatible.incorrect_shapes:
        problems.append(f"shape mismatches: {incompatible.incorrect_shapes[:5]}")
    loaded = backbone.state_dict()
    differing = [
        k for k, v in source.items() if k in loaded and not np.array_equal(loaded[k].numpy(), v)
    ]
    if differing:
        problems.append(f"weights loaded with other values: {differing[:5]}")
    if problems:
        raise ValueError(
            f"{pkl_path} does not load into Detectron2's R-{depth}: " + "; ".join(problems)
        )
    return (
        f"verified: all {len(loaded)} weights of Detectron2's R-{depth} backbone loaded from "
        f"{pkl_path}"
    )
