"""Differences between two backbones over seeds and test images, with intervals that have the
coverage they claim (docs/study.md states the procedure and its assumptions; a simulation with a
known truth checks it: tests/test_interval_coverage.py).

A backbone m and the Baseline b are each run with seeds s = 1..S (the same seed pairs a run of m
with one of b), and every run is scored on the same test images. For a metric M:

1. d_s = M(m, s) - M(b, s) on the whole test set; the estimate is D = mean_s d_s.
2. Seeds: the d_s differ by the seed effect and by the seed x image interaction (each seed errs
   on other images), so v_seed = Var_s(d_s) / S holds both, with S - 1 degrees of freedom.
3. Test images: what all seeds share is the image effect (a test set that happens to favour m).
   B resamples of the test images with replacement, the same for every run, give d_s on each
   resample; the covariance over resamples of d_s and d_s' (s != s') is the part the seeds have
   in common, so v_img = mean over seed pairs of that covariance (clipped at 0). Its variance
   alone (S = 1) would also hold the interaction, which v_seed already counts.
4. Interval: D +- t(0.975, nu) sqrt(v_img + v_seed), nu from Welch-Satterthwaite with v_img's
   degrees of freedom taken as unlimited (thousands of test images): nu = (S - 1) (v_img +
   v_seed)^2 / v_seed^2.

With one seed the seed term cannot be estimated: D +- 1.96 sqrt(Var_r(d_1)) covers test-image
sampling only (and says so). Without per-image data: D +- t(0.975, S - 1) sqrt(v_seed), seed
variation only.

Whether a number from elsewhere (the paper's one run per backbone on the same test set) is
consistent with ours is another question: ``one_run_prediction_interval``.
"""

import math

import numpy as np

LEVEL = 0.95
# What each kind of interval covers, as the report names it.
SEEDS_AND_IMAGES = "seeds + test images"
IMAGES_ONLY = "test images only (one seed)"
SEEDS_ONLY = "seeds only (no per-image data)"


def t_quantile(dof, level=LEVEL):
    """Two-sided ``level`` quantile of Student's t with ``dof`` (any real > 0; inf: normal)."""
    if not dof > 0:
        raise ValueError(f"t quantile needs positive degrees of freedom, got {dof}")
    # scipy here, not with the module: its import (about 1 s) would slow every tools/study.py
    # and Slurm job wrapper, which import this module with the report's code but never use it.
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, dof))


def bootstrap_weights(num_images, resamples, seed=0):
    """(resamples, num_images) image counts, each row a resample with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(
        num_images, np.full(num_images, 1.0 / num_images), size=resamples
    ).astype(np.float64)


def variance_components(d, boot):
    """(v_seed, v_img) of D = mean(d): ``d`` (S,) per-seed differences on the whole test set;
    ``boot`` (S, B) the same differences on B shared resamples of the test images, or None.
    v_seed is None with one seed, v_img None without ``boot``."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    v_seed = float(d.var(ddof=1)) / n if n > 1 else None
    if boot is None:
        return v_seed, None
    cov = np.atleast_2d(np.cov(np.asarray(boot, dtype=np.float64)))
    if n == 1:
        return None, float(cov[0, 0])
    shared = (cov.sum() - np.trace(cov)) / (n * (n - 1))  # mean over seed pairs s != s'
    return v_seed, max(0.0, float(shared))


def difference_interval(d, boot=None, level=LEVEL):
    """D = mean(d) with its ``level`` interval (module docstring). Returns a dict: diff, lo, hi
    (None when nothing can be estimated), se, dof, v_seed, v_img, kind (what it covers)."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) == 0:
        return None
    v_seed, v_img = variance_components(d, boot)
    out = {"diff": float(d.mean()), "lo": None, "hi": None, "se": None, "dof": None}
    out.update(v_seed=v_seed, v_img=v_img, kind=None)
    if v_seed is None and v_img is None:
        return out  # one seed, no per-image data
    if v_seed is None:
        var, dof, out["kind"] = v_img, math.inf, IMAGES_ONLY
    elif v_img is None:
        var, dof, out["kind"] = v_seed, len(d) - 1, SEEDS_ONLY
    else:
        var, out["kind"] = v_img + v_seed, SEEDS_AND_IMAGES
        dof = (len(d) - 1) * var**2 / v_seed**2 if v_seed > 0 else math.inf
    if var <= 0:
        return out  # every run scored the same: no spread to build an interval from
    half = t_quantile(dof, level) * math.sqrt(var)
    out.update(lo=out["diff"] - half, hi=out["diff"] + half, se=math.sqrt(var), dof=dof)
    return out


def one_run_prediction_interval(d, level=LEVEL):
    """Where a single further run's difference on the same test set falls with probability
    ``level``, from our seeds' spread: mean(d) +- t(S - 1) sd(d) sqrt(1 + 1/S). (lo, hi), or None
    with fewer than two seeds or no spread (then nothing can be said)."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2 or not d.std(ddof=1) > 0:
        return None
    half = t_quantile(len(d) - 1, level) * float(d.std(ddof=1)) * math.sqrt(1 + 1 / len(d))
    return float(d.mean()) - half, float(d.mean()) + half


def mean_std(values):
    """(mean, sample std or None with one value) of a list of numbers."""
    a = np.array(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)
