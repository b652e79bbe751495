"""study.voc_scores against Detectron2's VOC07 evaluation: AP50 from the saved detections equals
the evaluator's, and on a bootstrap resample equals voc_eval run on that resampled test set."""

import os
import shutil

import numpy as np
import pytest

from helpers import require_detectron2
from study import voc_scores
from study.statistics import bootstrap_weights
from study.voc_scores import ScoredRun

require_detectron2()

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.evaluation.pascal_voc_evaluation import voc_eval  # noqa: E402

from detection.synthetic_voc import write_voc  # noqa: E402
from detection.voc import VOCEvaluator, register_voc  # noqa: E402
from tests.test_detection import _noisy_predictions  # noqa: E402


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two evaluations (different noise) of the same generated VOC07 test set."""
    root = str(tmp_path_factory.mktemp("voc"))
    write_voc(root, trainval07=4, test07=24, trainval12=4, seed=1)
    register_voc(root)
    runs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"det{seed}")
        ev = VOCEvaluator("voc_2007_test", output_file=str(out / "voc_eval.json"))
        ev.reset()
        ev.process(*_noisy_predictions(DatasetCatalog.get("voc_2007_test"), seed=seed))
        runs.append((out, ev.evaluate()["bbox"]["AP50"]))
    return root, runs


def test_ap50_from_saved_detections_equals_the_evaluator(evaluated):
    _, runs = evaluated
    for out, ap50 in runs:
        assert 20 < ap50 < 100
        assert ScoredRun.from_file(str(out / "voc_detections.npz")).ap50() == pytest.approx(
            ap50, abs=1e-9
        )


def _voc_eval_on_resample(root, npz, counts, tmp):
    """Detectron2's voc_eval on the test set with image k present counts[k] times (copies
    renamed)."""
    det = dict(np.load(npz))
    src = os.path.join(root, "VOC2007", "Annotations")
    anno = os.path.join(tmp, "Annotations")
    os.makedirs(anno)
    ids, lines = [], {c: [] for c in range(len(det["class_names"]))}
    for k, image_id in enumerate(det["image_ids"]):
        for copy in range(int(counts[k])):
            new = f"{image_id}_{copy}"
            ids.append(new)
            shutil.copy(os.path.join(src, f"{image_id}.xml"), os.path.join(anno, f"{new}.xml"))
            for d in np.flatnonzero(det["det_image"] == k):
                box = " ".join(f"{v:.1f}" for v in det["det_box"][d])
                lines[int(det["det_class"][d])].append(f"{new} {det['det_score'][d]:.3f} {box}")
    with open(os.path.join(tmp, "set.txt"), "w") as f:
        f.write("\n".join(ids))
    aps = []
    for c, name in enumerate(det["class_names"]):
        with open(os.path.join(tmp, f"{name}.txt"), "w") as f:
            f.write("\n".join(lines[c]))
        _, _, ap = voc_eval(
            os.path.join(tmp, "{}.txt"),
            os.path.join(anno, "{}.xml"),
            os.path.join(tmp, "set.txt"),
            str(name),
            ovthresh=0.5,
            use_07_metric=True,
        )
        aps.append(ap * 100)
    return float(np.mean(aps))


def test_bootstrap_ap50_equals_voc_eval_on_the_resampled_set(evaluated, tmp_path):
    root, runs = evaluated
    npz = str(runs[0][0] / "voc_detections.npz")
    scored = ScoredRun.from_file(npz)
    for r, counts in enumerate(bootstrap_weights(len(scored.image_ids), 3, seed=5)):
        assert counts.sum() == len(scored.image_ids) and (counts == 0).any() and (counts > 1).any()
        expected = _voc_eval_on_resample(root, npz, counts, str(tmp_path / f"r{r}"))
        assert scored.ap50(counts) == pytest.approx(expected, abs=1e-9)


def test_resamples_scored_at_once_equal_one_at_a_time(evaluated, monkeypatch):
    _, runs = evaluated
    scored = ScoredRun.from_file(str(runs[0][0] / "voc_detections.npz"))
    weights = bootstrap_weights(len(scored.image_ids), 150, seed=2)
    batch = scored.bootstrap(weights)
    assert batch.shape == (150,) and len(set(batch.round(9))) > 10
    np.testing.assert_allclose(batch, [scored.ap50(w) for w in weights], atol=1e-12)
    # In blocks of rows, as a test set with many detections is scored.
    longest = max(len(tp) for _, tp, _, _ in scored.classes)
    monkeypatch.setattr(voc_scores, "_BLOCK_ELEMENTS", len(voc_scores.THRESHOLDS) * longest * 40)
    np.testing.assert_allclose(scored.ap50(weights), batch, atol=1e-12)
    assert scored.bootstrap(weights) is batch  # kept per weights array
    assert not np.allclose(scored.bootstrap(bootstrap_weights(len(scored.image_ids), 150)), batch)
