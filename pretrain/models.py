"""torchvision ResNets, and the state dict we export (plain torchvision key names)."""

import torch

# The architectures MODEL.ARCH may name: torchvision's ResNets, with their blocks per stage and
# block type (the converter to Detectron2 checks a checkpoint's keys and shapes against them).
ARCHS = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet101": ((3, 4, 23, 3), "bottleneck"),
    "resnet152": ((3, 8, 36, 3), "bottleneck"),
}

# Prefixes added by wrappers: DistributedDataParallel ("module."), torch.compile ("_orig_mod."),
# and modules that hold the network as ``self.model``. They can nest (module._orig_mod.).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def memory_format(cfg):
    """The memory format of the model and its input batches (MODEL.CHANNELS_LAST)."""
    return torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.contiguous_format


def build_model(cfg, device):
    """The network of MODEL.ARCH, MODEL.NUM_CLASSES and MODEL.CIFAR_STEM on ``device``, in
    ``memory_format(cfg)``, initialised from torch's global generator."""
    model = build_resnet(cfg.MODEL.ARCH, cfg.MODEL.NUM_CLASSES, cfg.MODEL.CIFAR_STEM)
    return model.to(device, memory_format=memory_format(cfg))


def build_resnet(arch, num_classes, cifar_stem=False):
    if arch not in ARCHS:
        raise ValueError(
            f"MODEL.ARCH: unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})"
        )
    # Imported here, not with the module: torchvision's import (about 2 s, it loads
    # torch._dynamo) would slow every process that only reads configs and plans (tools/study.py,
    # each Slurm job's wrapper) and never builds a network.
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if cifar_stem:
        # 32x32 inputs: a 3x3 stride-1 stem without max-pool keeps the spatial resolution.
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model


def strip_wrapper_prefixes(state_dict):
    """Remove wrapper prefixes, however nested, from every key; two keys that become one are an
    error (ValueError), not a silent overwrite."""
    out = {}
    for key, value in state_dict.items():
        stripped = key
        while stripped.startswith(WRAPPER_PREFIXES):
            stripped = stripped.split(".", 1)[1]
        if stripped in out:
            raise ValueError(f"keys {key!r} and another one both become {stripped!r}")
        out[stripped] = value
    return out
