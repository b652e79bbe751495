"""The torchvision -> Detectron2 converter: names, values, accepted inputs and refusals.

Runs without Detectron2. The reference naming below transcribes the rules of Detectron2's
tools/convert-torchvision-to-d2.py literally (plain substring replaces, fc kept as stem.fc), so the
converter's regex-based renaming is checked against the original rules, not against itself.
"""

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

from detection.convert import (
    ARCHS,
    ConversionError,
    backbone_shapes,
    convert,
    d2_name,
    identify_resnet,
    read_source,
    to_d2,
)
from pretrain.runtime.checkpoint import extract_state_dict
from tools.convert_to_d2 import main as convert_main


def detectron2_reference_name(k):
    """Detectron2's convert-torchvision-to-d2.py, one key at a time."""
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace("layer{}".format(t), "res{}".format(t + 1))
    for t in [1, 2, 3]:
        k = k.replace("bn{}".format(t), "conv{}.norm".format(t))
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k


def meta_state_dict(name):
    # Shapes only: building on the meta device skips the random init of 60M parameters.
    with torch.device("meta"):
        return getattr(torchvision.models, name)(weights=None).state_dict()


def randomise_bn(model, seed=0):
    """Random-init BN layers have mean 0 / var 1 / weight 1 / bias 0; make every value distinct."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model


@pytest.fixture(scope="module")
def r152_state_dict():
    torch.manual_seed(0)
    return randomise_bn(torchvision.models.resnet152(weights=None)).state_dict()


@pytest.fixture(scope="module")
def r18_state_dict():
    torch.manual_seed(1)
    return randomise_bn(torchvision.models.resnet18(weights=None), seed=1).state_dict()


def load_pkl(path):
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_backbone_shapes_match_torchvision(arch):
    sd = meta_state_dict(arch)
    expected = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("fc.")}
    assert list(backbone_shapes(arch).items()) == list(expected.items())
    assert identify_resnet(sd) == arch
    # Renaming every key: the original rules and ours agree, and names stay unique.
    names = [d2_name(k) for k in sd]
    assert names == [detectron2_reference_name(k) for k in sd]
    assert len(set(names)) == len(names)


def test_resnet152_names_and_values_match_detectron2_rules(r152_state_dict, tmp_path):
    src = tmp_path / "r152.pth"
    torch.save(r152_state_dict, src)
    out = tmp_path / "r152.pkl"
    assert convert(str(src), str(out)) == "resnet152"

    data = load_pkl(out)
    assert data["matching_heuristics"] is True
    assert isinstance(data["__author__"], str)
    assert data["__source__"] == str(src.resolve())
    model = data["model"]
    reference = {
        detectron2_reference_name(k): v.numpy()
        for k, v in r152_state_dict.items()
        if not k.startswith("fc.")
    }
    assert list(model) == list(reference)  # same names, same order, fc dropped
    assert not any("fc" in k for k in model)
    for k, ref in reference.items():
        assert isinstance(model[k], np.ndarray)
        assert model[k].dtype == ref.dtype and model[k].shape == ref.shape, k
        assert np.array_equal(model[k], ref), k
    # A few names spelled out, as Detectron2's ResNet modules call them.
    for k in (
        "stem.conv1.weight",
        "stem.conv1.norm.running_var",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.bias",
        "res4.35.conv3.norm.weight",
        "res5.2.conv2.weight",
    ):
        assert k in model
    assert len(model) == len(r152_state_dict) - 2


def _periodic(sd):
    return {
        "model": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "trainer": {"iteration": 123, "epoch": 2},
        "method": {"table": torch.zeros(3, 2)},
        "extra": "anything",
    }


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


ACCEPTED = {
    "plain": lambda sd: sd,
    "final": lambda sd: {"model": sd},
    "periodic": _periodic,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    "ddp": lambda sd: {"model": _prefixed(sd, "module.")},
    "compiled": lambda sd: _prefixed(sd, "_orig_mod."),
    "model_attr": lambda sd: {"state_dict": _prefixed(sd, "model.")},
    "ddp_compiled": lambda sd: {"model": _prefixed(sd, "module._orig_mod.")},
    "no_fc": lambda sd: {k: v for k, v in sd.items() if not k.startswith("fc.")},
    "other_num_classes": lambda sd: {
        **sd,
        "fc.weight": torch.zeros(10, 512),
        "fc.bias": torch.zeros(10),
    },
}


@pytest.mark.parametrize("form", sorted(ACCEPTED))
def test_accepted_inputs_give_identical_output(form, r18_state_dict, tmp_path):
    src = tmp_path / f"{form}.pth"
    torch.save(ACCEPTED[form](r18_state_dict), src)
    out = tmp_path / "out.pkl"
    assert convert(str(src), str(out)) == "resnet18"
    model = load_pkl(out)["model"]
    reference = {
        detectron2_reference_name(k): v.numpy()
        for k, v in r18_state_dict.items()
        if not k.startswith("fc.")
    }
    assert list(model) == list(reference)
    assert all(np.array_equal(model[k], v) for k, v in reference.items())


def test_bfloat16_checkpoint_is_written_as_float32(r18_state_dict):
    sd = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in r18_state_dict.items()}
    model = to_d2(extract_state_dict(sd))["model"]
    assert model["stem.conv1.weight"].dtype == np.float32
    assert model["stem.conv1.norm.num_batches_tracked"].dtype == np.int64
    assert np.array_equal(model["stem.conv1.weight"], sd["conv1.weight"].float().numpy())


def _refusal(tmp_path, obj=None, raw=None):
    path = tmp_path / "input.pth"
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    out = tmp_path / "out.pkl"
    with pytest.raises(ConversionError) as info:
        convert(str(path), str(out))
    assert not out.exists()
    assert str(path) in str(info.value)
    return str(info.value)


def test_refuses_text_file(tmp_path):
    msg = _refusal(tmp_path, raw=b"model: resnet152\n")
    assert "not a PyTorch checkpoint" in msg


def test_refuses_a_detectron2_file(r18_state_dict, tmp_path):
    """An already converted file: a pickle, which torch.load would ask to save as a zip."""
    torch.save(r18_state_dict, tmp_path / "r18.pth")
    convert(str(tmp_path / "r18.pth"), str(tmp_path / "r18.pkl"))
    with pytest.raises(ConversionError) as info:
        convert(str(tmp_path / "r18.pkl"), str(tmp_path / "again.pkl"))
    assert str(info.value).startswith(
        f"checkpoint {str(tmp_path / 'r18.pkl')!r} is a pickle, not a PyTorch checkpoint: a "
        "Detectron2 weight file (.pkl, as tools/convert_to_d2.py writes) is already in "
        "Detectron2's format"
    ), info.value
    assert not (tmp_path / "again.pkl").exists()


def test_older_torch_format_is_left_to_torch(r18_state_dict, tmp_path):
    """torch.save's pre-zip format is a pickle too, but no Detectron2 file: torch.load's advice
    (save it again as a zip archive, which can be memory-mapped) is the right one."""
    path = tmp_path / "old.pth"
    torch.save(r18_state_dict, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ConversionError, match="_use_new_zipfile_serialization") as info:
        convert(str(path), str(tmp_path / "out.pkl"))
    assert "Detectron2" not in str(info.value)


def test_refuses_a_run_folder_naming_its_checkpoint(r18_state_dict, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ConversionError) as info:
        convert(str(run), str(tmp_path / "out.pkl"))
    assert str(info.value) == (
        f"checkpoint {str(run)!r} is a folder, not a file: give a checkpoint file in it"
    )
    torch.save({"model": r18_state_dict}, run / "model_final.pth")
    with pytest.raises(ConversionError) as info:
        convert(str(run), str(tmp_path / "out.pkl"))
    assert str(info.value).endswith(f"is a folder, not a file: give {run / 'model_final.pth'}")


def test_refuses_missing_file(tmp_path):
    with pytest.raises(ConversionError, match="no such file"):
        convert(str(tmp_path / "absent.pth"), str(tmp_path / "out.pkl"))


class NotAWeight:
    pass


def test_refuses_pickled_objects(tmp_path):
    msg = _refusal(tmp_path, obj={"model": NotAWeight()})
    assert "weights_only" in msg


def test_refuses_dict_without_state_dict(tmp_path):
    msg = _refusal(tmp_path, obj={"optimizer": {"lr": 0.1}, "epoch": 3})
    assert "'epoch'" in msg and "'optimizer'" in msg


def test_refuses_tensor(tmp_path):
    assert "holds a Tensor" in _refusal(tmp_path, obj=torch.zeros(3))


@pytest.mark.parametrize(
    "name,expect",
    [
        ("resnext50_32x4d", "wrong shapes"),
        ("wide_resnet50_2", "wrong shapes"),
        ("vgg11", "not a torchvision ResNet"),
        ("mobilenet_v2", "not a torchvision ResNet"),
    ],
)
def test_refuses_other_architectures(name, expect):
    sd = meta_state_dict(name)
    with pytest.raises(ConversionError, match=expect):
        identify_resnet(sd, name)


def test_refuses_cifar_stem(r18_state_dict, tmp_path):
    sd = dict(r18_state_dict, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    msg = _refusal(tmp_path, obj={"model": sd})
    assert "conv1.weight (64, 3, 3, 3) (expected (64, 3, 7, 7))" in msg
    hint = "; a 3x3 stem is the CIFAR variant, which Detectron2's 7x7 stem cannot take"
    assert msg.endswith(hint)


def test_refuses_missing_backbone_key(r18_state_dict, tmp_path):
    sd = {k: v for k, v in r18_state_dict.items() if k != "layer3.1.bn2.running_var"}
    msg = _refusal(tmp_path, obj=sd)
    assert "1 missing keys (layer3.1.bn2.running_var)" in msg


def test_refuses_extra_backbone_key(r18_state_dict, tmp_path):
    sd = dict(r18_state_dict, **{"aux_head.weight": torch.zeros(100, 256)})
    msg = _refusal(tmp_path, obj={"model": _prefixed(sd, "module.")})
    assert "1 unexpected keys (aux_head.weight)" in msg


def test_refuses_truncated_network(r18_state_dict, tmp_path):
    sd = {k: v for k, v in r18_state_dict.items() if not k.startswith("layer4")}
    msg = _refusal(tmp_path, obj=sd)
    assert "blocks per stage (2, 2, 2, 0)" in msg


def test_refuses_colliding_prefixes(r18_state_dict, tmp_path):
    sd = dict(r18_state_dict, **{"module.conv1.weight": r18_state_dict["conv1.weight"]})
    assert "both become 'conv1.weight'" in _refusal(tmp_path, obj=sd)


def test_cli_converts_and_refuses(r18_state_dict, tmp_path, capsys):
    src = tmp_path / "model_final.pth"
    torch.save({"model": r18_state_dict}, src)
    out = tmp_path / "r18.pkl"
    convert_main([str(src), str(out)])
    assert "converted resnet18" in capsys.readouterr().out
    assert read_source(str(out)) == str(src.resolve())

    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(SystemExit) as info:
        convert_main([str(bad), str(tmp_path / "bad.pkl")])
    assert str(bad) in str(info.value.code)
    with pytest.raises(SystemExit):
        convert_main([str(src), str(tmp_path / "r18.pth")])  # wrong extension
    assert not os.path.exists(tmp_path / "bad.pkl")


@pytest.mark.parametrize("name", ["r18.pkl", "weights"])
def test_cli_refuses_a_folder_as_output(r18_state_dict, tmp_path, name):
    src, folder = tmp_path / "model_final.pth", tmp_path / name
    torch.save(r18_state_dict, src)
    folder.mkdir()
    (folder / "kept").write_text("mine")
    with pytest.raises(SystemExit) as info:
        convert_main([str(src), str(folder)])
    assert info.value.code == (
        f"error: output {folder} is a folder: give the file to write, e.g. {folder}/backbone.pkl"
    )
    assert sorted(os.listdir(tmp_path)) == sorted(["model_final.pth", name])
    assert os.listdir(folder) == ["kept"] and (folder / "kept").read_text() == "mine"


def test_read_source_of_foreign_files(tmp_path):
    other = tmp_path / "other.pkl"
    with open(other, "wb") as f:
        pickle.dump({"model": {}, "__author__": "torchvision"}, f)
    assert read_source(str(other)) is None
    assert read_source(str(tmp_path / "absent.pkl")) is None


def test_the_payload_names_its_arch_and_source(r18_state_dict, tmp_path):
    src = tmp_path / "model_final.pth"
    torch.save(r18_state_dict, src)
    assert convert(str(src), str(tmp_path / "out.pkl")) == "resnet18"
    payload = load_pkl(tmp_path / "out.pkl")
    assert payload["arch"] == "resnet18" and payload["__source__"] == str(src)
    assert "arch" not in to_d2(r18_state_dict)


def test_the_classifier_is_dropped_wherever_it_sits(r18_state_dict):
    # A state dict with fc first (another saver's order) still gives every backbone weight.
    fc_first = {k: v for k, v in r18_state_dict.items() if k.startswith("fc.")}
    fc_first.update((k, v) for k, v in r18_state_dict.items() if not k.startswith("fc."))
    assert to_d2(fc_first)["model"].keys() == to_d2(r18_state_dict)["model"].keys()
    assert not any("fc" in k for k in to_d2(fc_first)["model"])


def test_refusals_list_the_first_keys_and_shapes(r18_state_dict):
    keys = list(meta_state_dict("vgg11"))
    with pytest.raises(ConversionError) as info:
        identify_resnet(meta_state_dict("vgg11"))
    assert str(info.value) == (
        "checkpoint is not a torchvision ResNet-18/34/50/101/152: found basic blocks per stage "
        f"(0, 0, 0, 0) (keys start {', '.join(keys[:5])} ...)"
    )
    backbone = [k for k in r18_state_dict if not k.startswith("fc.")]
    missing = {k: v for k, v in r18_state_dict.items() if k not in backbone[-7:]}
    with pytest.raises(ConversionError, match="7 missing keys") as info:
        identify_resnet(missing)
    assert str(info.value).endswith(f"7 missing keys ({', '.join(backbone[-7:-2])})")
    extra = dict(r18_state_dict, **{f"aux.{i}": torch.zeros(1) for i in range(7)})
    with pytest.raises(ConversionError, match="7 unexpected keys") as info:
        identify_resnet(extra)
    assert str(info.value).endswith("7 unexpected keys (aux.0, aux.1, aux.2, aux.3, aux.4)")
    wrong = dict(r18_state_dict)
    for k in backbone[-4:]:
        wrong[k] = torch.zeros(2)
    with pytest.raises(ConversionError) as info:
        identify_resnet(wrong)
    shapes = "; ".join(
        f"{k} (2,) (expected {tuple(r18_state_dict[k].shape)})" for k in backbone[-4:-1]
    )
    assert str(info.value).endswith(f"4 wrong shapes ({shapes})")  # no stem: no CIFAR hint
