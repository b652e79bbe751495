"""Simulated studies with a known truth: two backbones x S seeds scored on the same N test
images, run through the study's own scoring (ScoredRun for VOC07 AP50, ImageNetScores for
top-1 error) and intervals (study.statistics). What docs/study.md's coverage and power tables
come from (tools/interval_coverage.py) and what tests/test_interval_coverage.py asserts.

The model, per image i, backbone m and seed s (all draws independent and normal):
  image difficulty z_i (sd 1, shared by the backbones: what pairing removes),
  backbone x image effect g_mi (sd ``image_sd``: one backbone suits some images better; the
    image term of a difference),
  run effect u_ms (sd ``seed_sd``: a seed's whole run is better or worse; the seed term),
  run x image noise e_msi (sd 1: each run errs on its own images; the interaction),
and a backbone's level a_m (the Baseline's 0, the other's ``effect``, in the same latent units).
Classification: image i is classified correctly when a_m + 1 + z_i + g_mi + u_ms + e_msi > 0.
Detection: image i has one object of class i mod ``classes``; a run detects it with score
a_m + z_i + g_mi + u_ms + e_msi (found when the score exceeds -1) and adds a Poisson(1) number
of false detections of random classes with scores N(-0.5, 1).

The truth is the expected difference over seeds and test sets of N images: for top-1 error in
closed form, for AP50 (not a mean over images) estimated by ``ap50_truth`` from many draws.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .imagenet_scores import ImageNetScores
from .statistics import bootstrap_weights, difference_interval
from .voc_scores import ScoredRun


@dataclass(frozen=True)
class Noise:
    seed_sd: float
    image_sd: float


SEED_DOMINATED = Noise(seed_sd=0.15, image_sd=0.1)
IMAGE_DOMINATED = Noise(seed_sd=0.0, image_sd=1.0)


def _latent(rng, n_images, seeds, effect, noise):
    """(2, S, N) latent scores: backbone 0 the Baseline, 1 the other."""
    z = rng.standard_normal(n_images)
    g = noise.image_sd * rng.standard_normal((2, 1, n_images))
    u = noise.seed_sd * rng.standard_normal((2, seeds, 1))
    e = rng.standard_normal((2, seeds, n_images))
    level = np.array([0.0, effect])[:, None, None]
    return level + z + g + u + e


def top1_truth(effect, noise):
    """Expected top-1 error difference (points), other minus Baseline."""
    scale = math.sqrt(2.0 + noise.image_sd**2 + noise.seed_sd**2)
    return 100.0 * (stats.norm.cdf(1.0 / scale) - stats.norm.cdf((1.0 + effect) / scale))


def _classification_runs(rng, n_images, seeds, effect, noise):
    latent = _latent(rng, n_images, seeds, effect, noise) + 1.0
    correct = torch.from_numpy(latent > 0).double()
    confidence = torch.from_numpy(1.0 / (1.0 + np.exp(-np.abs(latent))))
    nll = -torch.log(torch.where(correct > 0, confidence, 1.0 - confidence))
    index = np.arange(n_images)
    return [
        [
            ImageNetScores(
                torch.stack([nll[m, s], confidence[m, s], correct[m, s], correct[m, s]], 1),
                index,
                "sim",
            )
            for s in range(seeds)
        ]
        for m in (0, 1)
    ]


def _detection_runs(rng, n_images, seeds, effect, noise, classes=5):
    latent = _latent(rng, n_images, seeds, effect, noise)
    object_class = np.arange(n_images) % classes
    image_ids = np.arange(n_images)
    runs = [[None] * seeds for _ in (0, 1)]
    for m in (0, 1):
        for s in range(seeds):
            found = latent[m, s] > -1.0
            n_false = rng.poisson(1.0, n_images)
            false_image = np.repeat(image_ids, n_false)
            false_class = rng.integers(0, classes, len(false_image))
            false_score = rng.normal(-0.5, 1.0, len(false_image))
            matched = []
            for c in range(classes):
                hit = found & (object_class == c)
                image = np.concatenate([image_ids[hit], false_image[false_class == c]])
                score = np.concatenate([latent[m, s, hit], false_score[false_class == c]])
                tp = np.concatenate([np.ones(hit.sum()), np.zeros((false_class == c).sum())])
                order = np.argsort(-score, kind="stable")
                npos = (object_class == c).astype(np.int64)
                matched.append((image[order], tp[order], 1.0 - tp[order], npos))
            runs[m][s] = ScoredRun(image_ids, matched)
    return runs


def _metric(metric):
    """(make runs, value of a run, resampled values of a run) for ``metric``."""
    if metric == "AP50":
        return _detection_runs, lambda r: r.ap50(), lambda r, w: r.bootstrap(w)
    return (_classification_runs, lambda r: r.value(metric), lambda r, w: r.bootstrap(metric, w))


def simulate_study(rng, metric, n_images, seeds, effect, noise, resamples=200):
    """One simulated study's difference interval (``difference_interval``'s dict)."""
    make, value, boot = _metric(metric)
    base, other = make(rng, n_images, seeds, effect, noise)
    weights = bootstrap_weights(n_images, resamples, seed=int(rng.integers(2**31)))
    d = [value(o) - value(b) for o, b in zip(other, base)]
    resampled = [boot(o, weights) - boot(b, weights) for o, b in zip(other, base)]
    return difference_interval(d, resampled)


@functools.cache  # the same for every number of seeds: coverage tables ask for it once a cell
def ap50_truth(n_images, effect, noise, draws=2000, seed=12345):
    """E[AP50(other) - AP50(Baseline)] over seeds and test sets of ``n_images``, by simulation;
    returns (estimate, its standard error)."""
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(draws):
        base, other = _detection_runs(rng, n_images, 1, effect, noise)
        d.append(other[0].ap50() - base[0].ap50())
    return float(np.mean(d)), float(np.std(d, ddof=1) / math.sqrt(draws))


def coverage(metric, truth, n_images, seeds, effect, noise, replicates, seed=0, resamples=200):
    """Simulate ``replicates`` studies; returns dict(coverage, replicates, sd_diff (the spread of
    the estimate over studies), median_half (the intervals' median half-width), ideal_half (the
    half-width of an interval built from the true variance components with the t quantile of
    their Welch-Satterthwaite dof), detected (share of intervals excluding 0))."""
    rng = np.random.default_rng(seed)
    outs = [
        simulate_study(rng, metric, n_images, seeds, effect, noise, resamples)
        for _ in range(replicates)
    ]
    diff = np.array([o["diff"] for o in outs])
    lo = np.array([o["lo"] for o in outs], dtype=np.float64)
    hi = np.array([o["hi"] for o in outs], dtype=np.float64)
    # True components from the simulation itself: v_seed's expectation, and the rest of the
    # estimate's variance is the image term.
    var_true = float(diff.var(ddof=1))
    v_seed_true = float(np.mean([o["v_seed"] for o in outs]))
    v_img_true = max(0.0, var_true - v_seed_true)
    dof = (seeds - 1) * var_true**2 / v_seed_true**2 if v_seed_true > 0 else math.inf
    return {
        "coverage": float(np.mean((lo <= truth) & (truth <= hi))),
        "replicates": replicates,
        "sd_diff": math.sqrt(var_true),
        "v_img_share": v_img_true / var_true,
        "median_half": float(np.median((hi - lo) / 2)),
        "ideal_half": float(stats.t.ppf(0.975, dof)) * math.sqrt(var_true),
        "detected": float(np.mean((lo > 0) | (hi < 0))),
    }


def detection_rate(effect, seeds, sd_seed, se_images, replicates=2000, seed=0):
    """Share of studies whose interval excludes 0, for differences d_s = effect + a + e_s: a
    the test set's image term (sd ``se_images``, shared by the seeds; known, as thousands of
    images make it), e_s each seed's own (sd ``sd_seed``: seed effect and interaction)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(64)
    x = (x - x.mean()) / x.std(ddof=1) * se_images  # resampled image terms, variance exactly se^2
    hits = 0
    for _ in range(replicates):
        d = effect + se_images * rng.standard_normal() + sd_seed * rng.standard_normal(seeds)
        out = difference_interval(d, d[:, None] + x)
        hits += out["lo"] > 0 or out["hi"] < 0
    return hits / replicates


def detectable_effect(seeds, sd_seed, se_images, power=0.8, replicates=2000):
    """The smallest difference that ``difference_interval`` tells from 0 in ``power`` of
    studies (bisection over the effect, the same simulated noise at every step)."""
    lo, hi = 0.0, 10.0 * (sd_seed + se_images)
    for _ in range(14):
        mid = (lo + hi) / 2
        if detection_rate(mid, seeds, sd_seed, se_images, replicates) >= power:
            hi = mid
        else:
            lo = mid
    return hi
