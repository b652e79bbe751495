"""voc_eval.json, the record the report reads: the keys of every AP and of the evaluated model,
the metric named per VOC year, and the detections file beside it. No evaluation is run."""

import os

import pytest

from helpers import require_detectron2

require_detectron2()

from detection.voc import VOCEvaluator, detections_path, register_voc  # noqa: E402


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The voc_* splits registered at an empty root: an evaluator reads only their metadata here."""
    root = str(tmp_path_factory.mktemp("voc"))
    for folder in ("VOC2007", "VOC2012"):
        os.makedirs(os.path.join(root, folder, "Annotations"))
    register_voc(root)
    return root


@pytest.mark.parametrize(
    "dataset, metric",
    [
        ("voc_2007_test", "PASCAL VOC2007 11-point interpolated AP"),
        ("voc_2012_val", "PASCAL VOC2010+ area under the precision envelope"),
    ],
)
def test_summary_records_every_ap_and_the_evaluated_model(registered, dataset, metric):
    ev = VOCEvaluator(
        dataset,
        weights="runs/r152/model.pkl",
        evaluated=lambda: (1200, "/runs/d/model_0001199.pth"),
    )
    bbox = {"AP": 41.0, "AP50": 70.5, "AP75": 44.25}
    bbox.update({f"AP50-{c}": float(k) for k, c in enumerate(ev._class_names)})
    summary = ev.summary(bbox, num_images=7)
    assert summary["metric"].startswith(metric + ", in percent")
    assert {k: summary[k] for k in ("AP", "AP50", "AP75")} == {
        "AP": 41.0,
        "AP50": 70.5,
        "AP75": 44.25,
    }
    assert summary["per_class_AP50"] == {c: float(k) for k, c in enumerate(ev._class_names)}
    assert (summary["iteration"], summary["checkpoint"]) == (1200, "/runs/d/model_0001199.pth")
    assert summary["weights"] == os.path.abspath("runs/r152/model.pkl")
    assert (summary["dataset"], summary["num_images"]) == (dataset, 7)


def test_detections_file_sits_beside_its_summary():
    assert detections_path("/out/voc_eval.json") == "/out/voc_detections.npz"
    # Only the leading name changes, whatever the test set is called.
    assert (
        detections_path("/out/voc_eval_voc_eval_set.json") == "/out/voc_detections_voc_eval_set.npz"
    )


def test_eval_json_is_named_per_test_set_after_the_first():
    from types import SimpleNamespace

    from detection.voc import eval_json_path

    def cfg(*tests):
        return SimpleNamespace(OUTPUT_DIR="/out", DATASETS=SimpleNamespace(TEST=tests))

    assert eval_json_path(cfg("voc_2007_test"), "voc_2007_test") == "/out/voc_eval.json"
    both = cfg("voc_2007_test", "voc_2012_val")
    assert eval_json_path(both, "voc_2007_test") == "/out/voc_eval.json"
    assert eval_json_path(both, "voc_2012_val") == "/out/voc_eval_voc_2012_val.json"


def test_detections_file_keeps_its_dtypes_without_detections(tmp_path):
    """A model that detects nothing still writes index arrays (int64) and float64 boxes, so the
    AP is recomputed from the file (0) instead of failing on float indices; ground-truth boxes
    read as integers are stored as float64."""
    import numpy as np

    from detection.voc import write_detections
    from study.voc_scores import ScoredRun

    path = str(tmp_path / "voc_detections.npz")
    objects = [[("dog", [1, 1, 10, 10], 0)], [("cat", [2, 2, 20, 20], 1)]]
    write_detections(path, ["cat", "dog"], ["000001", "000002"], objects, {})
    saved = np.load(path)
    assert {
        k: (saved[k].dtype, saved[k].shape)
        for k in ("det_image", "det_class", "det_score", "det_box")
    } == {
        "det_image": (np.int64, (0,)),
        "det_class": (np.int64, (0,)),
        "det_score": (np.float64, (0,)),
        "det_box": (np.float64, (0, 4)),
    }
    assert saved["gt_box"].dtype == np.float64 and saved["gt_box"].tolist() == [
        [1, 1, 10, 10],
        [2, 2, 20, 20],
    ]
    assert saved["gt_class"].tolist() == [1, 0] and saved["gt_difficult"].tolist() == [False, True]
    assert ScoredRun.from_file(path).ap50() == 0


def test_evaluator_keeps_a_weights_url_as_given_and_no_weights_empty(registered):
    url = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert VOCEvaluator("voc_2007_test", weights=url)._weights == url
    assert VOCEvaluator("voc_2007_test")._weights == ""
