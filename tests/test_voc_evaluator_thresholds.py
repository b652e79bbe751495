"""VOCEvaluator's IoU thresholds on hand-made boxes: AP50 is taken at IoU 0.5 (a detection at
IoU 0.52 matches there and nowhere else), AP75 at 0.75, AP averages 0.50:0.95, and a detection at
IoU exactly 0.5 does not match. Expected values are worked out by hand with the 11-point rule."""

import os

import pytest
import torch

from helpers import require_detectron2

require_detectron2()

from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from detection.voc import CLASS_NAMES, VOCEvaluator, register_voc  # noqa: E402

# One aeroplane per image, 100 x 100 pixels (VOC's 1-based inclusive coordinates 1..100).
OBJECT = """  <object><name>aeroplane</name><pose>Unspecified</pose><truncated>0</truncated>
    <difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>100</ymax></bndbox>
  </object>"""
IMAGES = ["000001", "000002", "000003"]


@pytest.fixture
def voc_root(tmp_path):
    base = tmp_path / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    for image_id in IMAGES:
        (base / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>120</width><height>120</height><depth>3</depth></size>\n{OBJECT}\n</annotation>\n"
        )
    (base / "ImageSets" / "Main" / "test.txt").write_text("".join(i + "\n" for i in IMAGES))
    os.makedirs(tmp_path / "VOC2012" / "Annotations")
    register_voc(str(tmp_path))
    return tmp_path


def _detection(image_id, score, height):
    """A detection covering the top ``height`` rows of the object: IoU = height / 100."""
    inst = Instances((120, 120))
    inst.pred_boxes = Boxes(
        torch.tensor([[0.0, 0.0, 100.0, float(height)]])
    )  # 0-based, as models output
    inst.scores = torch.tensor([score])
    inst.pred_classes = torch.tensor([0])
    return {"image_id": image_id}, {"instances": inst}


def test_ap50_ap75_and_ap_use_their_iou_thresholds(voc_root, tmp_path, monkeypatch):
    # Predictions are gathered to rank 0, and the per-class detection files stay in a temporary
    # folder (nothing is left in the working directory).
    gathered_to = []

    def gather(data, dst=0, group=None):
        gathered_to.append(dst)
        return [data]

    monkeypatch.setattr(comm, "gather", gather)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    ev = VOCEvaluator("voc_2007_test")
    ev.reset()
    # IoU 0.52 (matches at 0.50 only), 0.77 (matches at 0.50..0.75), exactly 0.50 (never matches).
    for image_id, score, height in (("000001", 0.9, 52), ("000002", 0.8, 77), ("000003", 0.7, 50)):
        inputs, outputs = _detection(image_id, score, height)
        ev.process([inputs], [outputs])
    bbox = ev.evaluate()["bbox"]
    assert gathered_to == [0] and os.listdir(".") == []
    # IoU 0.50: tp, tp, fp -> precision 1 up to recall 2/3: the 7 recall points 0..0.6 score 1.
    ap50 = 100 * 7 / 11
    # IoU 0.55..0.75: fp, tp, fp -> precision 1/2 at recall 1/3: the 4 points 0..0.3 score 1/2.
    ap55_75 = 100 * 4 * 0.5 / 11
    assert bbox["AP50-aeroplane"] == pytest.approx(ap50)
    # The other 19 classes have neither objects nor detections: AP 0.
    assert all(bbox[f"AP50-{c}"] == 0 for c in CLASS_NAMES[1:])
    assert bbox["AP50"] == pytest.approx(ap50 / 20)
    assert bbox["AP75"] == pytest.approx(ap55_75 / 20)
    assert bbox["AP"] == pytest.approx((ap50 + 5 * ap55_75) / 10 / 20)
