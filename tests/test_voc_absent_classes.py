"""A test set lacking classes: voc_eval.json names the classes without a non-difficult test
object (they count as AP 0 in the 20-class AP50) and gives the mean over the classes present."""

import json
import os

import pytest
import torch

from helpers import require_detectron2

require_detectron2()

from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from detection.voc import CLASS_NAMES, VOCEvaluator, register_voc  # noqa: E402

# Two images: a countable aeroplane and a difficult cat in the first, a countable dog in the
# second. Boxes are VOC's 1-based inclusive pixels; the detections below cover them exactly.
IMAGES = {
    "000001": [("aeroplane", (1, 1, 50, 50), 0), ("cat", (61, 61, 100, 100), 1)],
    "000002": [("dog", (11, 11, 80, 90), 0)],
}


def _object(name, box, difficult):
    x0, y0, x1, y1 = box
    return (
        f"  <object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


@pytest.fixture
def voc_root(tmp_path):
    base = tmp_path / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    for image_id, objects in IMAGES.items():
        (base / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><size><width>120</width><height>120</height><depth>3</depth></size>\n"
            + "\n".join(_object(*o) for o in objects)
            + "\n</annotation>\n"
        )
    (base / "ImageSets" / "Main" / "test.txt").write_text("".join(i + "\n" for i in IMAGES))
    os.makedirs(tmp_path / "VOC2012" / "Annotations")
    register_voc(str(tmp_path))
    return tmp_path


def test_voc_eval_json_names_absent_classes_and_the_mean_over_the_others(
    voc_root, tmp_path, monkeypatch
):
    monkeypatch.setattr(comm, "gather", lambda data, dst=0, group=None: [data])
    out = tmp_path / "voc_eval.json"
    ev = VOCEvaluator("voc_2007_test", output_file=str(out))
    ev.reset()
    # A perfect detector: every object, the difficult cat included, found exactly.
    for image_id, objects in IMAGES.items():
        inst = Instances((120, 120))
        inst.pred_boxes = Boxes(
            torch.tensor([[x0 - 1.0, y0 - 1.0, x1, y1] for _, (x0, y0, x1, y1), _ in objects])
        )
        inst.scores = torch.tensor([0.9] * len(objects))
        inst.pred_classes = torch.tensor([CLASS_NAMES.index(n) for n, _, _ in objects])
        ev.process([{"image_id": image_id}], [{"instances": inst}])
    bbox = ev.evaluate()["bbox"]
    saved = json.loads(out.read_text())

    # Detectron2's number stays the headline: the 18 classes without test objects count as 0.
    assert bbox["AP50"] == pytest.approx(100 * 2 / 20) and saved["AP50"] == bbox["AP50"]
    assert saved["AP50_present_classes"] == pytest.approx(100.0)
    # The cat is there, but only as a difficult object, which the evaluator ignores.
    assert saved["classes_without_test_objects"] == [
        c for c in CLASS_NAMES if c not in ("aeroplane", "dog")
    ]
    assert "AP50_present_classes" in saved["metric"]


def test_present_class_mean_leaves_out_exactly_the_absent_classes(voc_root):
    ev = VOCEvaluator("voc_2007_test")
    bbox = {"AP": 40.0, "AP50": 59.0, "AP75": 45.0}
    bbox.update({f"AP50-{c}": 40.0 + 2 * k for k, c in enumerate(CLASS_NAMES)})
    summary = ev.summary(bbox, num_images=2)
    assert summary["classes_without_test_objects"] == []
    assert summary["AP50_present_classes"] == pytest.approx(59.0)  # 40 + 2 * mean(0..19)
    summary = ev.summary(bbox, num_images=2, absent=["aeroplane"])
    assert summary["classes_without_test_objects"] == ["aeroplane"]
    assert summary["AP50_present_classes"] == pytest.approx(60.0)  # 40 + 2 * mean(1..19)
    assert ev.summary(bbox, num_images=2, absent=list(CLASS_NAMES))["AP50_present_classes"] is None
