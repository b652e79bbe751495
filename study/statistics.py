"""Seed and test-image statistics for Table 5: VOC07 AP50 recomputed from saved detections,
paired bootstrap over test images, and intervals that combine it with seed variation.

Procedure (docs/study.md states it for readers of the report). For a backbone m and the
baseline b, both run with seeds s = 1..S (the same seed pairs a run of m with one of b):

1. d_s = AP50(m, s) - AP50(b, s) on the whole test set; the estimate is D = mean_s d_s.
2. Test-image sampling: B resamples of the N test images with replacement (image counts
   w ~ Multinomial(N, 1/N)); each resample is applied to every run (paired over backbones and
   seeds) and the VOC07 11-point AP50 is recomputed on it exactly as Detectron2's voc_eval would
   on that resampled set (duplicated images count twice). D_r = mean_s d_s(resample r);
   v_img = Var_r(D_r).
3. Seed variation: v_seed = Var_s(d_s) / S (sample variance, S - 1 in the denominator).
4. 95% interval: D +- t(0.975, S - 1) * sqrt(v_img + v_seed). With one seed v_seed cannot be
   estimated: the interval is D +- 1.96 sqrt(v_img) and covers test-image sampling only.

ImageNet metrics (top-1 error, ECE, AURC, ...) have no saved per-image predictions: their
interval is D +- t(0.975, S - 1) * sd_s(d_s) / sqrt(S), seed variation only.
"""

import math

import numpy as np

# t quantiles (0.975) for 1..30 degrees of freedom; above, 1.96 + 2.5 / dof (within 0.002).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
THRESHOLDS = np.arange(0.0, 1.1, 0.1)  # VOC2007's 11 recall points, as voc_eval builds them


def t975(dof):
    if dof < 1:
        raise ValueError("t quantile needs at least one degree of freedom")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.5 / dof


def load_detections(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _match_class(det, c, iou):
    """TP / FP flags of class ``c``'s detections, in voc_eval's order and with its rules:
    detections sorted by descending score (the same np.argsort call), each matched to the
    unmatched ground-truth box of its image with the largest overlap > ``iou``; a match to a
    difficult box counts as neither; boxes in VOC's inclusive pixel convention (+1)."""
    sel = np.flatnonzero(det["det_class"] == c)
    order = sel[np.argsort(-det["det_score"][sel])]
    gt_sel = det["gt_class"] == c
    gt_by_image = {}
    for k in np.flatnonzero(gt_sel):
        gt_by_image.setdefault(int(det["gt_image"][k]), []).append(k)
    used = set()
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for n, d in enumerate(order):
        bb = det["det_box"][d]
        cand = gt_by_image.get(int(det["det_image"][d]), [])
        ovmax, jmax = -np.inf, None
        if cand:
            g = det["gt_box"][cand]
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax, jmax = overlaps.max(), cand[int(overlaps.argmax())]
        if ovmax > iou:
            if not det["gt_difficult"][jmax]:
                if jmax in used:
                    fp[n] = 1
                else:
                    tp[n] = 1
                    used.add(jmax)
        else:
            fp[n] = 1
    npos = np.bincount(
        det["gt_image"][gt_sel & ~det["gt_difficult"]], minlength=len(det["image_ids"])
    )
    return det["det_image"][order], tp, fp, npos


class ScoredRun:
    """One detection run's matched detections, from which AP50 on any weighting of the test
    images (a bootstrap resample) is computed without matching again."""

    def __init__(self, det, iou=0.5):
        self.image_ids = det["image_ids"]
        self.classes = [_match_class(det, c, iou) for c in range(len(det["class_names"]))]
        self._boot = {}

    def bootstrap(self, weights):
        """AP50 on every resample (row) of ``weights``, computed once per weights array."""
        if id(weights) not in self._boot:
            self._boot[id(weights)] = (weights, np.array([self.ap50(w) for w in weights]))
        return self._boot[id(weights)][1]

    @classmethod
    def from_file(cls, path, iou=0.5):
        return cls(load_detections(path), iou)

    def ap50(self, weights=None):
        """Mean over classes of the VOC07 11-point AP, in percent; ``weights`` = how often each
        test image is counted (None: once). Duplicates of a detection share its rank; this gives
        the AP of the expanded set because the points inside a run of duplicates never raise the
        precision envelope."""
        aps = []
        for image, tp, fp, npos in self.classes:
            w = np.ones(len(npos)) if weights is None else weights
            positives = float(np.dot(w, npos))
            if positives == 0 or len(tp) == 0:
                aps.append(0.0)  # voc_eval: recall NaN (no positives) or no detections -> AP 0
                continue
            ctp = np.cumsum(tp * w[image])
            cfp = np.cumsum(fp * w[image])
            rec = ctp / positives
            prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            envelope = np.maximum.accumulate(prec[::-1])[::-1]  # max precision at recall >= rec[i]
            first = np.searchsorted(rec, THRESHOLDS, side="left")
            aps.append(float(np.mean([envelope[i] if i < len(rec) else 0.0 for i in first])))
        return 100.0 * float(np.mean(aps))


def bootstrap_weights(num_images, resamples, seed=0):
    """(resamples, num_images) image counts, each row a resample with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(
        num_images, np.full(num_images, 1.0 / num_images), size=resamples
    ).astype(np.float64)


def seed_interval(values, baseline):
    """Mean difference over paired seeds with its 95% interval from seed variation only.
    ``values``/``baseline``: {seed: number}. Returns dict(diff, lo, hi, seeds) or None."""
    seeds = sorted(set(values) & set(baseline))
    d = np.array([values[s] - baseline[s] for s in seeds], dtype=np.float64)
    if len(d) == 0:
        return None
    mean = float(d.mean())
    if len(d) < 2:
        return {"diff": mean, "lo": None, "hi": None, "seeds": seeds}
    half = t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return {"diff": mean, "lo": mean - half, "hi": mean + half, "seeds": seeds}


def paired_ap_interval(runs, baseline, weights):
    """Difference of AP50 to the baseline with the 95% interval of the module docstring.
    ``runs``/``baseline``: {seed: ScoredRun}; ``weights``: bootstrap_weights(...), shared by
    every backbone of a report. Returns dict(diff, lo, hi, seeds, v_img, v_seed)."""
    seeds = sorted(set(runs) & set(baseline))
    if not seeds:
        return None
    for s in seeds:
        if not np.array_equal(runs[s].image_ids, baseline[s].image_ids):
            raise ValueError(f"seed {s}: the runs were evaluated on different test images")
    d = np.array([runs[s].ap50() - baseline[s].ap50() for s in seeds])
    boot = np.mean(
        [runs[s].bootstrap(weights) - baseline[s].bootstrap(weights) for s in seeds], axis=0
    )
    v_img = float(boot.var(ddof=1))
    mean = float(d.mean())
    if len(seeds) > 1:
        v_seed = float(d.var(ddof=1)) / len(seeds)
        half = t975(len(seeds) - 1) * math.sqrt(v_img + v_seed)
    else:
        v_seed = None
        half = 1.96 * math.sqrt(v_img)
    return {
        "diff": mean,
        "lo": mean - half,
        "hi": mean + half,
        "seeds": seeds,
        "v_img": v_img,
        "v_seed": v_seed,
    }


def mean_std(values):
    """(mean, sample std or None with one value) of a list of numbers."""
    a = np.array(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)
