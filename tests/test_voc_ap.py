"""VOC07 AP50 recomputed from saved detections (study.voc_scores), on hand-made boxes: the
inclusive-pixel IoU and its strict 0.5 threshold, duplicates of a matched box, and classes
without ground truth. Expected values are worked out by hand with the 11-point rule."""

import numpy as np
import pytest

from study.voc_scores import ScoredRun

GT = [0.0, 0.0, 99.0, 99.0]  # 100 x 100 pixels, VOC's inclusive coordinates


def _run(dets, num_images=2, gt_classes=(0, 0), num_classes=1, gt=GT):
    """``dets``: (image, class, score, box); one ground-truth box ``gt`` per image."""
    return ScoredRun.from_detections(
        {
            "image_ids": np.array([f"{k:06d}" for k in range(num_images)]),
            "class_names": np.array([f"c{k}" for k in range(num_classes)]),
            "det_image": np.array([d[0] for d in dets]),
            "det_class": np.array([d[1] for d in dets]),
            "det_score": np.array([d[2] for d in dets], dtype=np.float64),
            "det_box": np.array([d[3] for d in dets], dtype=np.float64),
            "gt_image": np.arange(num_images),
            "gt_class": np.array(gt_classes),
            "gt_box": np.array([gt] * num_images),
            "gt_difficult": np.zeros(num_images, dtype=bool),
        }
    )


def test_iou_counts_pixels_inclusively_and_must_exceed_one_half():
    # 100 x 50.2 pixels inside GT: IoU 0.502, a match; 100 x 50: IoU exactly 0.5, not a match.
    run = _run([(0, 0, 0.9, [0.0, 0.0, 99.0, 49.2]), (1, 0, 0.8, [0.0, 0.0, 99.0, 49.0])])
    # recall 1/2 at precision 1 -> the 6 recall points 0..0.5 score 1, the other 5 score 0.
    assert run.ap50() == pytest.approx(100 * 6 / 11)


def test_a_second_detection_of_a_matched_box_is_a_false_positive():
    box = [0.0, 0.0, 99.0, 89.0]
    run = _run([(0, 0, 0.9, box), (0, 0, 0.8, box), (1, 0, 0.7, box)])
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: envelope 1 up to recall 0.5, then 2/3.
    assert run.ap50() == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)


def test_a_class_without_ground_truth_scores_zero():
    box = [0.0, 0.0, 99.0, 89.0]
    run = _run([(0, 0, 0.9, box), (1, 0, 0.8, box), (1, 1, 0.95, box)], num_classes=2)
    assert run.ap50() == pytest.approx(50.0)  # class 0 perfect, class 1 (no positives) 0


@pytest.mark.parametrize("box", [[5.0, 0.0, 5.0, 99.0], [0.0, 5.0, 99.0, 5.0]])
def test_disjoint_boxes_share_no_pixel(box):
    """One-pixel-thin boxes side by side (columns 0 and 5, or rows 0 and 5): no overlap at all,
    although their extents along the other axis coincide."""
    thin = [0.0, 0.0, 0.0, 99.0] if box[0] == box[2] else [0.0, 0.0, 99.0, 0.0]
    run = _run([(0, 0, 0.9, box)], num_images=1, gt_classes=(0,), gt=thin)
    assert run.ap50() == 0
