"""Tables 5 and 4 over seeds: per backbone the mean and spread of VOC07 AP50 and of the ImageNet
metrics, the difference to the Baseline with its 95% interval (study.statistics), and the
paper's values with whether its one-run difference is consistent with ours.

Runs are grouped by (method label, architecture, detection protocol); within a group the seed is
the run's SEED, and a backbone's run is paired with the Baseline's run of the same seed. AP50 is
paired image by image through the saved detections (voc_detections.npz), the ImageNet metrics
through the per-image file beside eval_final.json; a run without them gets a seeds-only interval
(and the report says so). A run the per-run table flags (detection.runs.run_flags: no
voc_eval.json, evaluated before SOLVER.MAX_ITER, a backbone from another pretraining checkpoint than
model_final.pth, a pretraining run not finished) is left out of every number, and named. Writes
table5_summary.md / .csv and table5_diff.png (study.summary_tables). Needs no Detectron2.
"""

import os

import yaml

from detection import paper
from detection.runs import read_run
from pretrain.methods import method_label
from pretrain.metrics import METRIC_KEYS

from .imagenet_scores import ImageNetScores
from .statistics import (
    bootstrap_weights,
    difference_interval,
    mean_std,
    one_run_prediction_interval,
)
from .voc_scores import ScoredRun

BASELINE = method_label("baseline")
# Every metric of the summary: detection first, then pretraining's.
METRICS = ("AP50",) + METRIC_KEYS
# The paper's number of test images per metric: its one-run differences are comparable with ours
# only on the same test set.
PAPER_TEST_IMAGES = dict.fromkeys(METRIC_KEYS, paper.IMAGENET_VAL_IMAGES)
PAPER_TEST_IMAGES["AP50"] = paper.VOC07_TEST_IMAGES
NO_DETECTION = "ImageNet only (no detection run)"


def _paper_value(method, metric):
    if metric == "AP50":
        return paper.TABLE5_AP50.get(method)
    return paper.TABLE4.get(method, {}).get(metric)


def _paper_order(mapping):
    order = paper.METHOD_ORDER
    return dict(
        sorted(
            mapping.items(),
            key=lambda kv: order.index(kv[0][0]) if kv[0][0] in order else len(order),
        )
    )


def collect_groups(run_dirs, labels=None):
    """({(method, arch, protocol): {seed: (run_dir, row)}}, {(method, arch, protocol): [(run_dir,
    row, seed)]}): the runs the summary counts, and the flagged ones it leaves out (a row's
    ``flags``: detection.runs.run_flags), each in the order of the paper's rows. A group of
    only flagged runs is in the first with no seed."""
    labels = labels or {}
    groups, left_out = {}, {}
    for d in run_dirs:
        row = read_run(d, labels.get(os.path.normpath(d)))
        cfg_path = os.path.join(d, "config.yaml")
        cfg = {}
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                cfg = yaml.safe_load(f) or {}
        key = (row["method"] or "?", row["arch"] or "?", row["protocol"] or NO_DETECTION)
        seed = cfg.get("SEED")
        group = groups.setdefault(key, {})
        if row["flags"]:
            left_out.setdefault(key, []).append((d, row, seed))
            continue
        if seed in group:
            raise ValueError(
                f"two runs of {key[0]} ({key[2]}) with SEED {seed}: {group[seed][0]} and {d}"
            )
        group[seed] = (d, row)
    return _paper_order(groups), _paper_order(left_out)


def _pretraining_dir(run_dir, row):
    """The pretraining run folder behind a report row (itself for a pretraining run)."""
    if row["backbone_checkpoint"]:
        return os.path.dirname(row["backbone_checkpoint"])
    return run_dir if os.path.isfile(os.path.join(run_dir, "eval_final.json")) else None


class _PerImage:
    """Each run's per-image scores (detections and ImageNet predictions), read once, with one
    set of bootstrap resamples per test set shared by every run scored on it."""

    def __init__(self, groups, resamples):
        self.resamples = resamples
        self.voc, self.imagenet, self._weights = {}, {}, {}
        for runs in groups.values():
            for d, row in runs.values():
                path = os.path.join(d, "voc_detections.npz")
                self.voc[d] = ScoredRun.from_file(path) if os.path.isfile(path) else None
                pre = _pretraining_dir(d, row)
                self.imagenet[d] = ImageNetScores.of_run(pre) if pre else None

    def weights(self, kind, num_images):
        key = (kind, num_images)
        if key not in self._weights:  # a seed per kind: AP50 and ImageNet resamples independent
            seed = 0 if kind == "voc" else 1
            self._weights[key] = bootstrap_weights(num_images, self.resamples, seed)
        return self._weights[key]

    def paired(self, metric, runs, base):
        """(d (S,), boot (S, B) or None, test images or None) over the seeds both have."""
        seeds = [s for s in runs if s in base and _value(runs[s], metric) is not None]
        seeds = [s for s in seeds if _value(base[s], metric) is not None]
        d = [_value(runs[s], metric) - _value(base[s], metric) for s in seeds]
        pairs = [(runs[s][0], base[s][0]) for s in seeds]
        table = self.voc if metric == "AP50" else self.imagenet
        scores = [(table[a], table[b]) for a, b in pairs]
        if not seeds or any(a is None or b is None for a, b in scores):
            return seeds, d, None, None
        if metric == "AP50":
            n = len(scores[0][0].image_ids)
            same = all(
                len(x.image_ids) == n and (x.image_ids == scores[0][0].image_ids).all()
                for pair in scores
                for x in pair
            )
            if not same:
                raise ValueError(f"{pairs[0][0]}: the runs were evaluated on different test images")
            w = self.weights("voc", n)
            boot = [a.bootstrap(w) - b.bootstrap(w) for a, b in scores]
        else:
            first = scores[0][0]
            if not all(first.pairs_with(x) for pair in scores for x in pair):
                raise ValueError(
                    f"{_pretraining_dir(*runs[seeds[0]])}: the pretraining runs were evaluated "
                    "on different validation images"
                )
            n = first.num_images
            w = self.weights("imagenet", n)
            boot = [a.bootstrap(metric, w) - b.bootstrap(metric, w) for a, b in scores]
        return seeds, d, boot, n


def _value(run, metric):
    _, row = run
    return row[metric] if metric == "AP50" else row[f"pretrain_{metric}"]


def _paper_check(s, metric, num_images, d):
    """Whether the paper's one-run difference lies in our one-run 95% prediction interval:
    True / False, or the reason it cannot be said."""
    paper_d = s[f"paper_d{metric}"]
    if paper_d is None:
        return None
    if s["arch"] != paper.ARCH:
        return f"n/a: {s['arch']}, not the paper's {paper.ARCH}"
    if num_images is not None and num_images != PAPER_TEST_IMAGES[metric]:
        return f"n/a: {num_images} test images, the paper's set has {PAPER_TEST_IMAGES[metric]}"
    pi = one_run_prediction_interval(d)
    if pi is None:
        return "n/a: fewer than 2 seeds or no spread"
    s[f"d{metric}_pi_lo"], s[f"d{metric}_pi_hi"] = pi
    return pi[0] <= paper_d <= pi[1]


def _metric_block(s, metric, runs, base, per_image):
    """Fill ``s`` with one metric's mean, spread, difference, interval and paper comparison."""
    values = [_value(r, metric) for r in runs.values() if _value(r, metric) is not None]
    s[f"{metric}_mean"], s[f"{metric}_std"] = mean_std(values) if values else (None, None)
    s[f"paper_{metric}"] = _paper_value(s["method"], metric)
    s[f"{metric}_vs_paper"] = (
        s[f"{metric}_mean"] - s[f"paper_{metric}"]
        if None not in (s[f"{metric}_mean"], s[f"paper_{metric}"])
        else None
    )
    base_paper = _paper_value(BASELINE, metric)
    s[f"paper_d{metric}"] = (
        s[f"paper_{metric}"] - base_paper
        if s[f"paper_{metric}"] is not None and s["method"] != BASELINE
        else None
    )
    for key in ("d{}", "d{}_lo", "d{}_hi", "d{}_ci", "d{}_pi_lo", "d{}_pi_hi", "paper_d{}_in_pi"):
        s[key.format(metric)] = None
    if s["method"] == BASELINE:
        return
    if not runs:
        s[f"d{metric}_ci"] = "n/a: every run of it left out (flagged)"
        return
    if base is None:
        return
    if not base:
        s[f"d{metric}_ci"] = "n/a: every Baseline run left out (flagged)"
        return
    seeds, d, boot, num_images = per_image.paired(metric, runs, base)
    ci = difference_interval(d, boot)
    if ci is None:
        s[f"d{metric}_ci"] = "no seed in common with the Baseline"
        return
    s[f"d{metric}"], s[f"d{metric}_lo"], s[f"d{metric}_hi"] = ci["diff"], ci["lo"], ci["hi"]
    if ci["lo"] is not None:
        s[f"d{metric}_ci"] = ci["kind"]
    elif ci["kind"] is None:
        s[f"d{metric}_ci"] = "n/a: one seed and no per-image data"
    else:  # a metric of few values on a small test set: the seeds' differences came out equal
        s[f"d{metric}_ci"] = (
            "n/a: no spread (equal differences over the seeds, and no image effect they share)"
        )
    s[f"paper_d{metric}_in_pi"] = _paper_check(s, metric, num_images, d)
    s.setdefault("test_images", {})[metric] = num_images


def summarize(run_dirs, labels=None, resamples=1000):
    """One dict per backbone group: every metric over seeds, its difference to the Baseline of
    the same architecture and protocol with a 95% interval, and the paper's values."""
    groups, left_out = collect_groups(run_dirs, labels)
    per_image = _PerImage(groups, resamples)
    out = []
    for (method, arch, proto), runs in groups.items():
        s = {"method": method, "arch": arch, "protocol": proto}
        s["seeds"], s["runs"] = sorted(runs, key=str), len(runs)
        s["left_out"] = [
            {"run": d, "seed": seed, "flags": row["flags"]}
            for d, row, seed in left_out.get((method, arch, proto), [])
        ]
        base = groups.get((BASELINE, arch, proto))
        for metric in METRICS:
            _metric_block(s, metric, runs, base, per_image)
        s.setdefault("test_images", {})
        out.append(s)
    return out
