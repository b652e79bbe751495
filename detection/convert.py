"""Turn a pretraining checkpoint into a Detectron2 backbone weight file.

Detectron2's own tools/convert-torchvision-to-d2.py takes only a flat torchvision state dict.
Given a wrapped checkpoint it crashes; given ``module.``-prefixed keys it converts without
complaint, and Detectron2 then matches no weight and silently trains from random init. So this
module first reduces any checkpoint we produce to a plain torchvision ResNet state dict, checks
that every key and shape is exactly one of ResNet-18/34/50/101/152 (refusing anything else with
what it found), and only then renames with Detectron2's rules. No Detectron2 import: the
conversion must run where Detectron2 is not installed.
"""

import os
import pickle
import re

from pretrain.models import ARCHS
from pretrain.runtime.checkpoint import UnreadableCheckpoint, extract_state_dict, load_file
from pretrain.runtime.fileio import atomic_open

DEPTHS = {name: int(name[len("resnet") :]) for name in ARCHS}

AUTHOR = "pskd-toolkit tools/convert_to_d2.py (torchvision ResNet layout)"


class ConversionError(ValueError):
    """The input is not a checkpoint of a torchvision ResNet this converter can take."""


def _bn_shapes(prefix, channels):
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def backbone_shapes(arch):
    """Every key of torchvision's ``arch`` state dict except ``fc``, with its shape, in order."""
    blocks, kind = ARCHS[arch]
    expansion = 1 if kind == "basic" else 4
    shapes = {"conv1.weight": (64, 3, 7, 7)}
    shapes.update(_bn_shapes("bn1", 64))
    in_ch = 64
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        out_ch = width * expansion
        for i in range(count):
            p = f"layer{stage + 1}.{i}"
            if kind == "basic":
                convs = [(in_ch, width, 3), (width, width, 3)]
            else:
                convs = [(in_ch, width, 1), (width, width, 3), (width, out_ch, 1)]
            for k, (cin, cout, ksize) in enumerate(convs, start=1):
                shapes[f"{p}.conv{k}.weight"] = (cout, cin, ksize, ksize)
                shapes.update(_bn_shapes(f"{p}.bn{k}", cout))
            # torchvision puts a projection shortcut on the first block of a stage whenever the
            # stride or the channel count changes: every stage but ResNet-18/34's first.
            if i == 0 and (stage > 0 or in_ch != out_ch):
                shapes[f"{p}.downsample.0.weight"] = (out_ch, in_ch, 1, 1)
                shapes.update(_bn_shapes(f"{p}.downsample.1", out_ch))
            in_ch = out_ch
    return shapes


def load_checkpoint(path):
    """Load ``path`` (weights only, on the CPU) and return the network's flat state dict."""
    try:
        return extract_state_dict(load_file(path), path)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except (IsADirectoryError, UnreadableCheckpoint) as e:  # the message names the file and why
        raise ConversionError(str(e)) from e
    except ValueError as e:  # no state dict inside, or clashing keys once prefixes are stripped
        raise ConversionError(str(e)) from e


def identify_resnet(state_dict, name="checkpoint"):
    """Return the torchvision ResNet name whose backbone ``state_dict`` is, or raise saying why
    not."""
    counts = {}
    for key in state_dict:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            stage = int(m.group(1))
            counts[stage] = max(counts.get(stage, 0), int(m.group(2)) + 1)
    blocks = tuple(counts.get(s, 0) for s in (1, 2, 3, 4))
    kind = (
        "bottleneck" if any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in state_dict) else "basic"
    )
    arch = next((a for a, spec in ARCHS.items() if spec == (blocks, kind)), None)
    if arch is None:
        sample = ", ".join(list(state_dict)[:5])
        raise ConversionError(
            f"{name} is not a torchvision ResNet-18/34/50/101/152: found {kind} blocks per stage "
            f"{blocks} (keys start {sample} ...)"
        )

    expected = backbone_shapes(arch)
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in backbone]
    extra = [k for k in backbone if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({', '.join(missing[:5])})")
    if extra:
        problems.append(f"{len(extra)} unexpected keys ({', '.join(extra[:5])})")
    wrong = [
        f"{k} {tuple(backbone[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in backbone and tuple(backbone[k].shape) != expected[k]
    ]
    if wrong:
        hint = ""
        if "conv1.weight" in [w.split()[0] for w in wrong]:
            hint = "; a 3x3 stem is the CIFAR variant, which Detectron2's 7x7 stem cannot take"
        problems.append(f"{len(wrong)} wrong shapes ({'; '.join(wrong[:3])}){hint}")
    if problems:
        raise ConversionError(
            f"{name} looks like {arch} but is not one (a different variant, e.g. ResNeXt/wide, "
            "or a modified network): " + "; ".join(problems)
        )
    fc = sorted(k for k in state_dict if k.startswith("fc."))
    if fc and fc != ["fc.bias", "fc.weight"]:
        raise ConversionError(f"{name}: unexpected classifier keys {fc}")
    return arch


def d2_name(key):
    """Detectron2's name for a torchvision ResNet key (the rules of its torchvision converter)."""
    if not key.startswith("layer"):
        key = "stem." + key
    key = re.sub(r"layer([1-4])", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"\bbn([1-3])\b", r"conv\1.norm", key)
    key = key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return key


def to_d2(state_dict, source=None, arch=None):
    """The Detectron2 pickle payload for a checked torchvision ResNet state dict (``fc`` dropped).

    ``source`` (the input checkpoint's absolute path) is stored as ``"__source__"``: Detectron2's
    checkpointer ignores it, and tools/report.py follows it back to the pretraining run. ``arch``
    (e.g. ``"resnet152"``) is stored as ``"arch"``: tools/train_net.py names it when the file does
    not fit the config's depth.
    """
    model = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        value = value.detach().cpu()
        # Detectron2 loads every weight into float32 parameters; numpy has no bfloat16.
        if value.is_floating_point():
            value = value.float()
        model[d2_name(key)] = value.numpy()
    payload = {"model": model, "__author__": AUTHOR, "matching_heuristics": True}
    if source is not None:
        payload["__source__"] = source
    if arch is not None:
        payload["arch"] = arch
    return payload


def check_output(out_path):
    """Refuse an output path the converter could not write, before the input is read."""
    if os.path.isdir(out_path):
        raise ConversionError(
            f"output {out_path} is a folder: give the file to write, e.g. "
            f"{os.path.join(out_path, 'backbone.pkl')}"
        )
    if not out_path.endswith(".pkl"):
        # Detectron2 picks the loader by extension; only .pkl reads this format.
        raise ConversionError(
            f"output {out_path}: must end in .pkl (Detectron2 reads this format only under it)"
        )


def convert(in_path, out_path):
    """Convert checkpoint ``in_path`` to Detectron2 pickle ``out_path``; return the arch name."""
    check_output(out_path)
    state_dict = load_checkpoint(in_path)
    arch = identify_resnet(state_dict, in_path)
    payload = to_d2(state_dict, source=os.path.abspath(in_path), arch=arch)
    with atomic_open(out_path, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    return arch


def read_source(pkl_path):
    """The input checkpoint a converted file came from, or None (not ours, or not readable)."""
    try:
        with open(pkl_path, "rb") as f:
            data = pickle.load(f)
    except Exception:  # unpickling garbage raises almost anything; an unreadable file is no link
        return None
    return data.get("__source__") if isinstance(data, dict) else None
