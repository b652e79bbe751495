"""A detection run checks its inputs before the first iteration: MODEL.WEIGHTS must initialise every
backbone tensor of the config's model, every split must load (test annotations as the evaluator
reads them), images that cannot be decoded are named; expected errors are one ``error:`` line;
the saved config.yaml is plain Detectron2's; voc_eval.json says which model it evaluated."""

import importlib.util
import os
import pickle
import re
import shutil

import pytest
import torch
import torchvision
from PIL import Image

pytest.importorskip("detectron2")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from detection.checks import NamedImageMapper, WeightsError, check_backbone_weights, check_datasets  # noqa: E402
from detection.config import add_pskd_detection_config, voc_root  # noqa: E402
from detection.convert import convert  # noqa: E402
from detection.synthetic_voc import write_voc  # noqa: E402
from detection.voc import VOCFormatError, check_image_sizes, register_voc  # noqa: E402
from pretrain.data.images import UnreadableImage  # noqa: E402

pytestmark = pytest.mark.detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "detection")
TINY = os.path.join(CONFIGS, "faster_rcnn_R_18_FPN_tiny_cpu.yaml")


def load_cfg(path, *opts):
    cfg = get_cfg()
    add_pskd_detection_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Converted R-18 and R-50 backbones, and an unconverted torchvision R-18 state dict."""
    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for arch in ("resnet18", "resnet50"):
        pth = str(folder / f"{arch}.pth")
        torch.save(getattr(torchvision.models, arch)().state_dict(), pth)
        out[arch] = str(folder / f"{arch}.pkl")
        convert(pth, out[arch])
    out["torchvision"] = str(folder / "resnet18.pth")
    return out


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc(
        str(tmp_path_factory.mktemp("voc")), trainval07=2, test07=5, trainval12=1, seed=2
    )


# -- MODEL.WEIGHTS --------------------------------------------------------------------------------
def test_converter_stores_the_arch(weights):
    with open(weights["resnet50"], "rb") as f:
        assert pickle.load(f)["arch"] == "resnet50"


def test_matching_backbone_is_accepted(weights):
    check_backbone_weights(load_cfg(TINY), weights["resnet18"])


@pytest.mark.parametrize(
    "config,file,found,expected",
    [
        (TINY, "resnet50", "R-50", 18),
        (TINY, "torchvision", "torchvision key names", 18),
        (os.path.join(CONFIGS, "faster_rcnn_R_152_C4_voc0712.yaml"), "resnet18", "R-18", 152),
        (os.path.join(CONFIGS, "Base-RCNN-C4-VOC.yaml"), "resnet18", "R-18", 50),
    ],
)
def test_backbone_of_another_depth_or_unconverted_is_refused(
    config, file, found, expected, weights
):
    with pytest.raises(WeightsError) as info:
        check_backbone_weights(load_cfg(config), weights[file])
    message = str(info.value)
    assert weights[file] in message and found in message and f"expects R-{expected}" in message, (
        message
    )
    assert re.search(r"\d+ of \d+ backbone tensors would keep random values", message), message


def test_depth_is_found_without_the_arch_entry(weights, tmp_path):
    """Files converted before the arch was stored: the depth comes from the block counts."""
    with open(weights["resnet50"], "rb") as f:
        data = pickle.load(f)
    del data["arch"]
    path = str(tmp_path / "old.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(WeightsError, match="holds R-50, the config expects R-18"):
        check_backbone_weights(load_cfg(TINY), path)


# -- tools/train_net.py before its first iteration ------------------------------------------------
def train_net_tool():
    """tools/train_net.py as a module (by path: Detectron2's wheel may install a ``tools``
    package)."""
    spec = importlib.util.spec_from_file_location(
        "train_net_tool", os.path.join(ROOT, "tools", "train_net.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def train_net(*argv):
    """tools/train_net.py in this process (one process: launch() calls the worker function
    itself); returns its ``error:`` message."""
    args = default_argument_parser().parse_args(list(argv))
    with pytest.raises(SystemExit) as info:
        train_net_tool().launch_workers(args)
    return str(info.value.code)


def train_tiny(weights, out, voc_root, *opts):
    """``train_net`` with the tiny config on ``voc_root`` from ``weights`` into ``out``."""
    return train_net(
        "--config-file",
        TINY,
        "MODEL.WEIGHTS",
        weights,
        "OUTPUT_DIR",
        str(out),
        "DATASETS.VOC_ROOT",
        voc_root,
        *opts,
    )


def test_config_key_typo_is_one_error_line(weights, voc, tmp_path):
    out = tmp_path / "det"
    message = train_tiny(weights["resnet18"], out, voc, "SOLVER.MAXITER", "3")
    assert message == (
        "error: command-line override: Non-existent key: SOLVER.MAXITER "
        "(did you mean SOLVER.MAX_ITER?)"
    )
    assert not out.exists()  # refused before anything is written


def test_config_key_without_value_is_one_error_line(weights, voc, tmp_path):
    out = tmp_path / "det"
    message = train_tiny(weights["resnet18"], out, voc, "SOLVER.MAX_ITER")
    given = ["MODEL.WEIGHTS", weights["resnet18"], "OUTPUT_DIR", str(out)]
    given += ["DATASETS.VOC_ROOT", voc, "SOLVER.MAX_ITER"]
    assert message == f"error: command-line overrides must be KEY VALUE pairs, got {given}"
    assert not out.exists()


def test_bad_test_annotation_stops_before_training(weights, voc, tmp_path):
    root = str(tmp_path / "voc")
    shutil.copytree(voc, root)
    folder = os.path.join(root, "VOC2007")
    with open(os.path.join(folder, "ImageSets", "Main", "test.txt")) as f:
        bad = os.path.join(folder, "Annotations", f.read().split()[-1] + ".xml")
    with open(bad) as f:
        text = f.read()
    with open(bad, "w") as f:
        f.write(re.sub(r"<name>\w+</name>", "<name>unicorn</name>", text, count=1))
    out = tmp_path / "det"
    message = train_tiny(weights["resnet18"], out, root)
    assert message.startswith(f"error: {bad}: object 0 has class 'unicorn'"), message
    assert not any(n.startswith("model_") for n in os.listdir(out))


def test_test_id_listed_twice_stops_before_training(weights, voc, tmp_path):
    """voc_eval would count the image's objects twice as positives but match them once."""
    root = str(tmp_path / "voc")
    shutil.copytree(voc, root)
    list_file = os.path.join(root, "VOC2007", "ImageSets", "Main", "test.txt")
    with open(list_file) as f:
        ids = f.read().split()
    # A blank line counts: line numbers are the file's, as an editor shows them.
    with open(list_file, "w") as f:
        f.write("\n".join([ids[0], ids[1], "", *ids[2:], ids[1]]) + "\n")
    out = tmp_path / "det"
    message = train_tiny(weights["resnet18"], out, root)
    assert message == (
        f"error: {list_file}: image id {ids[1]!r} listed twice (lines 2 and {len(ids) + 2})"
    ), message
    assert not any(n.startswith("model_") for n in os.listdir(out))


def rewrite_training_annotations(voc, tmp_path, change):
    """A copy of ``voc`` whose training annotations (VOC2007 and VOC2012 trainval) are
    ``change``d (text -> text); returns the copy's root."""
    root = str(tmp_path / "voc")
    shutil.copytree(voc, root)
    for year in ("VOC2007", "VOC2012"):
        with open(os.path.join(root, year, "ImageSets", "Main", "trainval.txt")) as f:
            ids = f.read().split()
        for image_id in ids:
            path = os.path.join(root, year, "Annotations", image_id + ".xml")
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(change(text))
    return root


def test_training_images_without_objects_stop_before_training(weights, voc, tmp_path):
    """Detectron2 would drop every image (FILTER_EMPTY_ANNOTATIONS) and assert in its loader."""
    root = rewrite_training_annotations(
        voc, tmp_path, lambda t: re.sub(r"\s*<object>.*?</object>", "", t, flags=re.S)
    )
    out = tmp_path / "det"
    message = train_tiny(weights["resnet18"], out, root)
    assert message.startswith(
        "error: DATASETS.TRAIN (voc_2007_trainval, voc_2012_trainval): none of the 3 images has "
        "an object"
    ), message
    assert "DATALOADER.FILTER_EMPTY_ANNOTATIONS" in message
    assert not any(n.startswith("model_") for n in os.listdir(out))


def test_training_images_with_only_difficult_objects_are_trained_on(voc, tmp_path):
    """Training keeps difficult objects (as Detectron2's VOC loader does): nothing to refuse."""
    root = rewrite_training_annotations(
        voc, tmp_path, lambda t: t.replace("<difficult>0<", "<difficult>1<")
    )
    register_voc(root)
    check_datasets(load_cfg(TINY))


def test_annotated_size_unlike_the_image_stops_before_training(weights, voc, tmp_path):
    root = str(tmp_path / "voc")
    shutil.copytree(voc, root)
    register_voc(root)
    record = DatasetCatalog.get("voc_2012_trainval")[0]
    anno = os.path.join(root, "VOC2012", "Annotations", record["image_id"] + ".xml")
    with open(anno) as f:
        text = f.read()
    with open(anno, "w") as f:
        f.write(text.replace(f"<width>{record['width']}<", f"<width>{record['width'] + 100}<"))
    out = tmp_path / "det"
    message = train_tiny(weights["resnet18"], out, root)
    assert message == (
        f"error: {anno}: <size> is {record['width'] + 100}x{record['height']} (width x height), "
        f"but its image {record['file_name']} is {record['width']}x{record['height']} (upright, "
        "as training reads it): correct <width> and <height>"
    )
    assert not any(n.startswith("model_") for n in os.listdir(out))


def test_annotated_size_is_the_upright_one(voc, tmp_path):
    """An image with an EXIF quarter turn is read upright, its width and height swapped."""
    register_voc(voc)
    record = DatasetCatalog.get("voc_2007_test")[0]
    turned = str(tmp_path / "turned.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees clockwise
    Image.open(record["file_name"]).save(turned, exif=exif)
    upright = dict(record, file_name=turned, width=record["height"], height=record["width"])
    check_image_sizes("voc_2007_test", [upright])
    with pytest.raises(VOCFormatError) as info:
        check_image_sizes("voc_2007_test", [dict(record, file_name=turned)])
    assert f"but its image {turned} is {record['height']}x{record['width']} (upright" in str(
        info.value
    )


def test_wrong_or_missing_weights_are_one_error_line(weights, voc, tmp_path):
    out = str(tmp_path / "det")
    message = train_tiny(weights["resnet50"], out, voc)
    assert message.startswith(
        f"error: MODEL.WEIGHTS {weights['resnet50']!r} does not initialise"
    ), message
    missing = str(tmp_path / "nowhere.pkl")
    message = train_tiny(missing, out, voc)
    assert message == f"error: MODEL.WEIGHTS {missing!r} does not exist"


def test_test_time_augmentation_is_refused(weights, voc, tmp_path):
    message = train_tiny(weights["resnet18"], tmp_path / "det", voc, "TEST.AUG.ENABLED", "True")
    assert message.startswith("error: TEST.AUG.ENABLED") and "not supported" in message


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_non_positive_dist_timeout_is_one_error_line(weights, voc, tmp_path, value):
    out = tmp_path / "det"
    message = train_tiny(weights["resnet18"], out, voc, "DIST.TIMEOUT_S", value)
    assert message == f"error: DIST.TIMEOUT_S: expected a positive number of seconds, got {value}"
    assert not out.exists()


def test_an_unregistered_split_is_one_error_line(weights, voc, tmp_path):
    message = train_tiny(
        weights["resnet18"], tmp_path / "det", voc, "DATASETS.TEST", "('voc_2007_tset',)"
    )
    assert message.startswith(
        "error: DATASETS.TEST: 'voc_2007_tset' is no registered split (the VOC splits: "
    ), message
    assert not os.path.exists(tmp_path / "det" / "last_checkpoint")


def test_saved_config_is_read_by_plain_detectron2(weights, voc, tmp_path):
    out = str(tmp_path / "det")
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            TINY,
            "MODEL.WEIGHTS",
            weights["resnet18"],
            "OUTPUT_DIR",
            out,
            "DATASETS.VOC_ROOT",
            voc,
            "DIST.TIMEOUT_S",
            "45",
        ]
    )
    _, settings = train_net_tool().setup(args)
    assert settings == (voc, 45)
    plain = get_cfg()
    plain.merge_from_file(os.path.join(out, "config.yaml"))  # an extra key would raise KeyError
    assert plain.MODEL.WEIGHTS == weights["resnet18"]


def test_detectron2_datasets_tilde_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/voc")
    assert voc_root(load_cfg(TINY)) == str(tmp_path / "voc")


# -- images and the evaluation record -------------------------------------------------------------
def test_undecodable_training_image_is_named(voc, tmp_path):
    from detection.voc import load_voc_split

    record = load_voc_split(os.path.join(voc, "VOC2007"), "trainval")[0]
    bad = str(tmp_path / "truncated.jpg")
    with open(record["file_name"], "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    mapper = NamedImageMapper(load_cfg(TINY), True)
    with pytest.raises(UnreadableImage, match=re.escape(f"cannot read image {bad!r}")):
        mapper(dict(record, file_name=bad))


def test_evaluation_during_training_names_iteration_and_checkpoint(tmp_path):
    trained_model = train_net_tool().trained_model
    cfg = load_cfg(
        TINY, "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", str(tmp_path)
    )
    for storage_iter in (29, 30):  # the last after_step hook, and the after_train one
        with EventStorage(storage_iter):
            assert trained_model(cfg) == (30, str(tmp_path / "model_final.pth"))
    with EventStorage(19):
        assert trained_model(cfg) == (20, str(tmp_path / "model_0000019.pth"))
    with EventStorage(14):
        assert trained_model(cfg) == (15, None)
