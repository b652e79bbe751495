"""The intervals of study.statistics on hand-made numbers: each formula of the procedure
(docs/study.md) computed by hand, the t quantiles, the one-run prediction interval, and the
cases where no interval can be given."""

import math

import numpy as np
import pytest

from study.statistics import (
    IMAGES_ONLY,
    SEEDS_AND_IMAGES,
    SEEDS_ONLY,
    bootstrap_weights,
    difference_interval,
    mean_std,
    one_run_prediction_interval,
    t_quantile,
    variance_components,
)


def test_t_quantiles():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(3) < t_quantile(2.5) < t_quantile(2)  # fractional (Welch) dof
    assert t_quantile(math.inf) == pytest.approx(1.95996, abs=1e-5)
    assert t_quantile(4, level=0.9) == pytest.approx(2.1318, abs=1e-4)
    with pytest.raises(ValueError, match="positive degrees of freedom"):
        t_quantile(0)


# Three seeds' differences on the whole test set and on four shared resamples: a shared image
# effect (x) plus each seed's own interaction.
D = np.array([1.0, 2.0, 4.0])
X = np.array([0.0, 1.0, -1.0, 2.0])
BOOT = np.stack([D[0] + X + [0.1, 0, 0, 0], D[1] + X + [0, 0.2, 0, 0], D[2] + X - [0, 0, 0.3, 0]])


def test_image_term_is_the_covariance_the_seeds_share():
    v_seed, v_img = variance_components(D, BOOT)
    cov = np.cov(BOOT)
    assert v_seed == pytest.approx(D.var(ddof=1) / 3)
    assert v_img == pytest.approx((cov[0, 1] + cov[0, 2] + cov[1, 2]) / 3)
    # Not the variance of the mean over seeds (that also holds the interactions v_seed counts).
    assert v_img < BOOT.mean(axis=0).var(ddof=1)


def test_image_term_is_clipped_at_zero():
    boot = np.stack([X, -X])  # the two seeds' resampled differences move against each other
    assert variance_components([1.0, 2.0], boot) == (pytest.approx(0.25), 0.0)


def test_interval_of_seeds_and_images_uses_welch_satterthwaite():
    out = difference_interval(D, BOOT)
    v_seed, v_img = variance_components(D, BOOT)
    var = v_seed + v_img
    dof = 2 * var**2 / v_seed**2
    half = t_quantile(dof) * math.sqrt(var)
    assert out["kind"] == SEEDS_AND_IMAGES
    assert out["dof"] == pytest.approx(dof) and 2 < dof < math.inf
    assert (out["diff"], out["lo"], out["hi"]) == pytest.approx(
        (D.mean(), D.mean() - half, D.mean() + half)
    )
    assert out["se"] == pytest.approx(math.sqrt(var))


def test_equal_seeds_leave_the_image_term_with_unlimited_dof():
    d = np.array([2.0, 2.0, 2.0])
    out = difference_interval(d, d[:, None] + X)
    assert out["v_seed"] == 0 and out["dof"] == math.inf
    half = t_quantile(math.inf) * math.sqrt(X.var(ddof=1))
    assert (out["lo"], out["hi"]) == pytest.approx((2.0 - half, 2.0 + half))


def test_one_seed_covers_test_images_only():
    out = difference_interval([3.0], (3.0 + X)[None])
    half = t_quantile(math.inf) * math.sqrt(X.var(ddof=1))
    assert out["kind"] == IMAGES_ONLY and out["v_seed"] is None
    assert (out["lo"], out["hi"]) == pytest.approx((3.0 - half, 3.0 + half))


def test_without_per_image_data_seeds_only():
    out = difference_interval(D)
    half = t_quantile(2) * D.std(ddof=1) / math.sqrt(3)
    assert out["kind"] == SEEDS_ONLY and out["v_img"] is None
    assert (out["lo"], out["hi"]) == pytest.approx((D.mean() - half, D.mean() + half))


def test_no_interval_without_spread_or_seeds():
    assert difference_interval([]) is None
    one = difference_interval([0.5])
    assert one["diff"] == 0.5 and one["lo"] is None and one["hi"] is None
    flat = difference_interval([0.0, 0.0], np.zeros((2, 4)))  # every AP 0: nothing to say
    assert flat["diff"] == 0.0 and flat["lo"] is None and flat["hi"] is None


def test_one_run_prediction_interval():
    half = t_quantile(2) * D.std(ddof=1) * math.sqrt(1 + 1 / 3)
    assert one_run_prediction_interval(D) == pytest.approx((D.mean() - half, D.mean() + half))
    assert one_run_prediction_interval([1.0]) is None
    assert one_run_prediction_interval([1.0, 1.0, 1.0]) is None


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
