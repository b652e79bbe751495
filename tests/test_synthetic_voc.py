"""The generated VOC tree: layout, annotation format, and objects where the boxes say."""

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from detection.synthetic_voc import VOC_CLASSES, _class_style, write_voc
from tools.make_synthetic_data import main as make_data_main


def read_ids(root, year, split):
    with open(os.path.join(root, f"VOC{year}", "ImageSets", "Main", f"{split}.txt")) as f:
        return f.read().split()


def objects_of(root, year, image_id):
    tree = ET.parse(os.path.join(root, f"VOC{year}", "Annotations", image_id + ".xml"))
    size = tree.find("size")
    out = []
    for obj in tree.findall("object"):
        box = [int(obj.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
        out.append(
            (obj.find("name").text, box, int(obj.find("difficult").text), obj.find("pose").text)
        )
    return int(size.find("width").text), int(size.find("height").text), out


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("voc"))
    make_data_main(
        ["voc", root, "--trainval07", "12", "--test07", "24", "--trainval12", "6", "--seed", "3"]
    )
    return root


def test_layout_and_ids(voc):
    tv07, te07, tv12 = (
        read_ids(voc, 2007, "trainval"),
        read_ids(voc, 2007, "test"),
        read_ids(voc, 2012, "trainval"),
    )
    assert (len(tv07), len(te07), len(tv12)) == (12, 24, 6)
    assert not set(tv07) & set(te07)
    assert tv07[0] == "000001" and tv12[0] == "2012_000001"
    for year, ids in ((2007, tv07 + te07), (2012, tv12)):
        for image_id in ids:
            for sub, ext in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
                assert os.path.isfile(os.path.join(voc, f"VOC{year}", sub, image_id + ext))


def test_annotations_match_images(voc):
    difficult = 0
    test_classes = set()
    for year, split in ((2007, "trainval"), (2007, "test"), (2012, "trainval")):
        for image_id in read_ids(voc, year, split):
            width, height, objects = objects_of(voc, year, image_id)
            with Image.open(os.path.join(voc, f"VOC{year}", "JPEGImages", image_id + ".jpg")) as im:
                assert im.size == (width, height) and im.mode == "RGB"
                pixels = np.asarray(im, dtype=np.float32)
            assert objects and objects[0][2] == 0  # first object never difficult
            for name, (x0, y0, x1, y1), diff, pose in objects:
                assert name in VOC_CLASSES and pose == "Unspecified"
                assert 1 <= x0 < x1 <= width and 1 <= y0 < y1 <= height
                # The box's centre has the class colour (JPEG and noise allow some slack).
                colour, _ = _class_style(VOC_CLASSES.index(name))
                centre = pixels[(y0 - 1 + y1) // 2, (x0 - 1 + x1) // 2]
                assert (
                    np.abs(centre - colour * np.clip(centre.sum() / colour.sum(), 0.8, 1.15)).max()
                    < 60
                )
                difficult += diff
                if split == "test" and not diff:
                    test_classes.add(name)
    assert difficult > 0
    assert test_classes == set(VOC_CLASSES)


def test_same_seed_same_tree(tmp_path):
    a, b = (
        write_voc(str(tmp_path / "a"), 3, 5, 2, seed=5),
        write_voc(str(tmp_path / "b"), 3, 5, 2, seed=5),
    )
    for rel in (
        "VOC2007/Annotations/000004.xml",
        "VOC2012/Annotations/2012_000002.xml",
        "VOC2007/JPEGImages/000001.jpg",
    ):
        with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
            assert fa.read() == fb.read()


def test_small_test_split_shows_every_class(tmp_path):
    """Fewer test images than classes: the images share the 20 classes between them, every one
    with a non-difficult object (so none scores AP 0 for want of test objects), in boxes that
    do not overlap."""
    for n in (5, 7, 19):
        root = write_voc(str(tmp_path / str(n)), 2, n, 1, seed=n)
        shown = set()
        for image_id in read_ids(root, 2007, "test"):
            _, _, objects = objects_of(root, 2007, image_id)
            boxes = [box for _, box, _, _ in objects]
            assert len(objects) <= 6
            for k, (x0, y0, x1, y1) in enumerate(boxes):
                for a0, b0, a1, b1 in boxes[:k]:
                    assert min(x1, a1) < max(x0, a0) or min(y1, b1) < max(y0, b0)
            shown |= {name for name, _, difficult, _ in objects if not difficult}
        assert shown == set(VOC_CLASSES), n


@pytest.mark.parametrize(
    "kind, option, value, message",
    [
        ("voc", "--test07", "-3", "--test07 -3: the test split needs at least 5 images to show"),
        ("voc", "--test07", "4", "--test07 4: the test split needs at least 5 images"),
        ("voc", "--trainval07", "0", "--trainval07 0: every split needs at least one image"),
        ("voc", "--trainval12", "-1", "--trainval12 -1: every split needs at least one image"),
        ("voc", "--size", "5", "--size 5: must be at least 6 (an object's sides are 1/6 to 1/2"),
        ("classification", "--classes", "0", "--classes 0: must be at least 1"),
        ("classification", "--train-per-class", "-1", "--train-per-class -1: must be at least 1"),
        ("classification", "--val-per-class", "0", "--val-per-class 0: must be at least 1"),
        ("classification", "--size", "0", "--size 0: must be at least 1"),
    ],
)
def test_tool_refuses_a_size_with_an_error_line(tmp_path, kind, option, value, message):
    with pytest.raises(SystemExit) as info:
        make_data_main([kind, str(tmp_path / "v"), option, value])
    assert str(info.value.code).startswith(f"error: {message}")
    assert not (tmp_path / "v").exists()  # refused before anything is written
