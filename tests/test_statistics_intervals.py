"""The Table 5 intervals on hand-made detections (no dataset needed): the t quantiles at the
end of the table and beyond it, seed-only intervals, and the paired bootstrap interval built
from the per-resample AP50 differences."""

import math

import numpy as np
import pytest

from study.statistics import (
    ScoredRun,
    bootstrap_weights,
    mean_std,
    paired_ap_interval,
    seed_interval,
    t975,
)


def test_t_quantiles_from_the_table_then_the_approximation():
    assert t975(1) == 12.706 and t975(30) == 2.042
    assert t975(31) == pytest.approx(1.96 + 2.5 / 31)
    assert t975(100) == pytest.approx(1.985)


def test_seed_interval_pairs_common_seeds_only():
    out = seed_interval({1: 10.0, 2: 12.0, 3: 11.0, 9: 50.0}, {1: 9.0, 2: 10.0, 3: 11.0, 4: 0.0})
    d = np.array([1.0, 2.0, 0.0])
    half = 4.303 * d.std(ddof=1) / math.sqrt(3)
    assert out.pop("seeds") == [1, 2, 3]
    assert out == pytest.approx({"diff": 1.0, "lo": 1.0 - half, "hi": 1.0 + half})


def test_seed_interval_of_two_seeds_has_bounds_and_of_one_has_none():
    two = seed_interval({1: 3.0, 2: 5.0}, {1: 1.0, 2: 2.0})
    half = 12.706 * math.sqrt(0.5) / math.sqrt(2)
    assert two.pop("seeds") == [1, 2]
    assert two == pytest.approx({"diff": 2.5, "lo": 2.5 - half, "hi": 2.5 + half})
    assert seed_interval({1: 3.0}, {1: 1.0}) == {"diff": 2.0, "lo": None, "hi": None, "seeds": [1]}


def _run(scores, hits):
    """Detections of one class on 6 images, one ground-truth box per image; detection k sits on
    image k with ``scores[k]``, on its box when ``hits[k]``, else far from it."""
    box = [10.0, 10.0, 50.0, 50.0]
    far = [100.0, 100.0, 140.0, 140.0]
    n = len(scores)
    return ScoredRun(
        {
            "image_ids": np.array([f"{k:06d}" for k in range(6)]),
            "class_names": np.array(["cat"]),
            "det_image": np.arange(n),
            "det_class": np.zeros(n, dtype=np.int64),
            "det_score": np.array(scores, dtype=np.float64),
            "det_box": np.array([box if h else far for h in hits], dtype=np.float64),
            "gt_image": np.arange(6),
            "gt_class": np.zeros(6, dtype=np.int64),
            "gt_box": np.array([box] * 6, dtype=np.float64),
            "gt_difficult": np.zeros(6, dtype=bool),
        }
    )


def test_bootstrap_caches_each_weights_array_separately():
    run = _run([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 0, 1, 1, 0, 1])
    a, b = bootstrap_weights(6, 5, seed=0), bootstrap_weights(6, 5, seed=1)
    np.testing.assert_allclose(run.bootstrap(a), [run.ap50(w) for w in a])
    np.testing.assert_allclose(run.bootstrap(b), [run.ap50(w) for w in b])
    assert not np.allclose(run.bootstrap(a), run.bootstrap(b))


def test_paired_interval_uses_the_variance_of_the_resampled_differences():
    weights = bootstrap_weights(6, 40, seed=3)
    runs = {
        1: _run([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 1, 1, 1]),
        2: _run([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 0, 1, 1, 1, 1]),
        7: _run([0.9] * 6, [1] * 6),
    }
    baseline = {
        1: _run([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0, 1, 1, 1, 0, 1]),
        2: _run([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 1, 0, 0, 1, 1]),
    }
    out = paired_ap_interval(runs, baseline, weights)
    d = np.array([runs[s].ap50() - baseline[s].ap50() for s in (1, 2)])
    boot = np.mean(
        [np.array([runs[s].ap50(w) - baseline[s].ap50(w) for w in weights]) for s in (1, 2)], axis=0
    )
    v_img, v_seed = boot.var(ddof=1), d.var(ddof=1) / 2
    half = 12.706 * math.sqrt(v_img + v_seed)
    assert out.pop("seeds") == [1, 2]
    assert out == pytest.approx(
        {
            "diff": d.mean(),
            "lo": d.mean() - half,
            "hi": d.mean() + half,
            "v_img": v_img,
            "v_seed": v_seed,
        }
    )
    assert v_img > 0


def test_bootstrap_resamples_are_reproducible_from_seed_0():
    w = bootstrap_weights(6, 4)
    np.testing.assert_array_equal(w, bootstrap_weights(6, 4, seed=0))
    assert not np.array_equal(w, bootstrap_weights(6, 4, seed=1))
    assert w.shape == (4, 6) and (w.sum(axis=1) == 6).all()


def test_mean_std_is_the_mean_and_the_sample_std():
    mean, std = mean_std([1, 2, 4])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx((7 / 3) ** 0.5)  # ddof=1: squared deviations 42/9 over 2
    assert mean_std([1, 3]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([5]) == (5.0, None)
