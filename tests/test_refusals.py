"""Refusals that end with one ``error:`` line naming the file or key, and leave what was written
before as it was: the converter's classifier and unexpected keys (an earlier output of the same
name is kept), --verify's shape mismatch, and image sets without images (a resumed run folder
is left untouched)."""

import hashlib
import os
import pickle
import shutil

import pytest
import torch
import torchvision

from helpers import pretrain_argv, require_detectron2
from test_reliability import CONFIG, run_in_process
from test_run_folder import digest
from tools.convert_to_d2 import main as convert_main


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def r18_state_dict():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def refused_conversion(state, tmp_path):
    """Convert ``state`` onto an existing output; returns the error line. The earlier output
    must be kept byte for byte."""
    source, output = tmp_path / "model_final.pth", tmp_path / "r18.pkl"
    torch.save(state, source)
    output.write_bytes(pickle.dumps({"model": {}, "__author__": "an earlier conversion"}))
    before = sha256(output)
    with pytest.raises(SystemExit) as info:
        convert_main([str(source), str(output)])
    assert sha256(output) == before and sorted(os.listdir(tmp_path)) == [
        "model_final.pth",
        "r18.pkl",
    ]
    message = str(info.value.code)
    assert message.startswith(f"error: {source}") and "\n" not in message, message
    return message


def test_converter_refuses_other_classifier_keys(r18_state_dict, tmp_path):
    state = dict(r18_state_dict, **{"fc.scale": torch.ones(1000)})
    message = refused_conversion({"model": state}, tmp_path)
    assert "unexpected classifier keys ['fc.bias', 'fc.scale', 'fc.weight']" in message


def test_converter_refuses_unexpected_backbone_keys(r18_state_dict, tmp_path):
    state = dict(r18_state_dict, **{"layer2.0.se.fc1.weight": torch.ones(8, 128, 1, 1)})
    message = refused_conversion(state, tmp_path)
    assert "1 unexpected keys (layer2.0.se.fc1.weight)" in message


def test_verify_names_a_shape_mismatch(r18_state_dict, tmp_path):
    require_detectron2()
    from detection.convert import convert
    from detection.verify import verify_d2_weights

    torch.save(r18_state_dict, tmp_path / "r18.pth")
    pkl = str(tmp_path / "r18.pkl")
    convert(str(tmp_path / "r18.pth"), pkl)
    with open(pkl, "rb") as f:
        data = pickle.load(f)
    data["model"]["res3.1.conv2.weight"] = data["model"]["res3.1.conv2.weight"][:, :64]
    with open(pkl, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(ValueError) as info:
        verify_d2_weights(pkl, 18)
    message = str(info.value)
    assert message.startswith(f"{pkl} does not load into Detectron2's R-18"), message
    assert (
        "shape mismatches: [('res3.1.conv2.weight', (128, 64, 3, 3), (128, 128, 3, 3))]" in message
    )


def test_verify_failure_is_an_error_line(r18_state_dict, tmp_path, monkeypatch):
    """A converted file that Detectron2 cannot load (here: one name mis-translated)."""
    require_detectron2()
    from detection import convert

    d2_name = convert.d2_name
    monkeypatch.setattr(
        convert, "d2_name", lambda key: d2_name(key).replace("res4.0.shortcut", "res4.0.short")
    )
    torch.save(r18_state_dict, tmp_path / "r18.pth")
    pkl = str(tmp_path / "r18.pkl")
    with pytest.raises(SystemExit) as info:
        convert_main([str(tmp_path / "r18.pth"), pkl, "--verify"])
    message = str(info.value.code)
    assert message.startswith(f"error: {pkl} does not load into Detectron2's R-18"), message
    assert "res4.0.shortcut.weight" in message and "res4.0.short.weight" in message


# -- image sets without images --------------------------------------------------------------------
def empty_copy(synthetic_root, tmp_path, split, remove_class_folders):
    root = str(tmp_path / "data")
    shutil.copytree(synthetic_root, root)
    folder = os.path.join(root, split)
    for name in os.listdir(folder):
        if remove_class_folders:
            shutil.rmtree(os.path.join(folder, name))
        else:
            for image in os.listdir(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name, image))
    return root, folder


def run_folder(tmp_path):
    """A run folder that a --resume reads: what it holds must survive the refusal."""
    out = tmp_path / "run"
    os.makedirs(out)
    for name, text in (
        ("config.yaml", "SEED: 0\n"),
        ("metrics.json", '{"iteration": 2}\n'),
        ("last_checkpoint", "model_0000002.pth"),
        ("model_0000002.pth", "weights"),
    ):
        (out / name).write_text(text)
    return str(out)


@pytest.mark.parametrize(
    "split,remove_class_folders,expect",
    [
        (
            "train",
            False,
            "Found no valid file for the classes class_000, class_001, class_002, class_003",
        ),
        ("val", True, "Couldn't find any class folder"),
    ],
    ids=["train_class_folders_without_images", "val_without_class_folders"],
)
def test_image_set_without_images_is_named(
    split, remove_class_folders, expect, synthetic_root, tmp_path
):
    root, folder = empty_copy(synthetic_root, tmp_path, split, remove_class_folders)
    out = run_folder(tmp_path)
    before = digest(out)
    message = run_in_process(pretrain_argv(CONFIG, root, out, first=["--resume"]))
    assert message.startswith(f"error: ImageFolder {folder!r}: ") and expect in message, message
    assert "\n" not in message and digest(out) == before
    with open(os.path.join(out, "log.txt")) as f:
        assert message[len("error: ") :] in f.read()
