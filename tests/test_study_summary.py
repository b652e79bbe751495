"""The study summary (study.summary, study.summary_tables) on hand-made run folders of the
paper's sizes (4,952 VOC07 test images, 50,000 ImageNet validation images): every difference and
interval is the one study.statistics gives for the runs' own per-image results, the paper's
values sit beside ours, and what cannot be said is n/a, never "no"."""

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from detection import paper
from detection.report import report_files
from detection.runs import LINK_FILE, collect
from pretrain.metrics import per_sample_stats, save_per_image, summarize
from pretrain.runtime.fileio import write_files_together
from study.imagenet_scores import ImageNetScores
from study.statistics import (
    IMAGES_ONLY,
    SEEDS_AND_IMAGES,
    SEEDS_ONLY,
    bootstrap_weights,
    difference_interval,
    one_run_prediction_interval,
)
from study.summary import summarize as summarize_study
from study.summary_tables import summary_files, to_csv, to_markdown
from study.voc_scores import ScoredRun

VOC_IMAGES, VAL_IMAGES, CLASSES = paper.VOC07_TEST_IMAGES, paper.IMAGENET_VAL_IMAGES, 20
RESAMPLES = 20


def _detections(rng, skill):
    """One run's VOC07 detections: an object per image, found on its box with probability
    ``skill`` (else a box elsewhere), with a score that favours the hits."""
    n = VOC_IMAGES
    box, far = [10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 140.0, 140.0]
    hit = rng.random(n) < skill
    return {
        "image_ids": np.array([f"{k:06d}" for k in range(n)]),
        "class_names": np.array([f"c{c}" for c in range(CLASSES)]),
        "det_image": np.arange(n),
        "det_class": np.arange(n) % CLASSES,
        "det_score": np.round(rng.random(n) + hit, 3),
        "det_box": np.array([box if h else far for h in hit]),
        "gt_image": np.arange(n),
        "gt_class": np.arange(n) % CLASSES,
        "gt_box": np.array([box] * n),
        "gt_difficult": np.zeros(n, dtype=bool),
    }


def _make_run(root, method, cutmix, seed, skill, rng, arch="resnet152"):
    """A pretraining folder (config, eval_final.json and its per-image file) and the detection
    folder fine-tuned from it (config, voc_eval.json, voc_detections.npz, backbone.json)."""
    name = f"{method}{'_cutmix' if cutmix else ''}_s{seed}"
    pre, det = os.path.join(root, "pre", name), os.path.join(root, "det", name)
    os.makedirs(pre)
    os.makedirs(det)
    pre_cfg = {"METHOD": {"NAME": method}, "MODEL": {"ARCH": arch}, "SEED": seed}
    pre_cfg["AUG"] = {"CUTMIX": {"ENABLED": cutmix}}
    with open(os.path.join(pre, "config.yaml"), "w") as f:
        yaml.safe_dump(pre_cfg, f)
    logits = torch.from_numpy(rng.normal(size=(VAL_IMAGES, 5)) * 2)
    logits[:, 0] += skill * 3  # class 0 is every label: a better backbone is more often right
    stats = per_sample_stats(logits, torch.zeros(VAL_IMAGES, dtype=torch.long))
    with open(os.path.join(pre, "eval_final.json"), "w") as f:
        json.dump(summarize(stats), f)
    index = torch.arange(VAL_IMAGES)
    samples = [f"/val/n{k % 1000:08d}/{k}.JPEG" for k in range(VAL_IMAGES)]
    save_per_image(os.path.join(pre, "eval_final_per_image.npz"), stats, index, samples)
    det_cfg = {"SEED": seed, "MODEL": {"WEIGHTS": "", "RESNETS": {"DEPTH": 152}}}
    det_cfg["SOLVER"] = {"IMS_PER_BATCH": 16, "BASE_LR": 0.02, "MAX_ITER": 18000}
    with open(os.path.join(det, "config.yaml"), "w") as f:
        yaml.safe_dump(det_cfg, f)
    detections = _detections(rng, skill)
    np.savez(os.path.join(det, "voc_detections.npz"), **detections)
    with open(os.path.join(det, "voc_eval.json"), "w") as f:
        json.dump({"AP50": ScoredRun.from_detections(detections).ap50()}, f)
    with open(os.path.join(det, LINK_FILE), "w") as f:
        json.dump({"pretrain_checkpoint": os.path.join(pre, "model_final.pth")}, f)
    return pre, det


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    rng = np.random.default_rng(0)
    runs = {}
    for seed in (0, 1, 2):
        runs["Baseline", seed] = _make_run(root, "baseline", False, seed, 0.5, rng)
        runs["PS-KD", seed] = _make_run(root, "pskd", False, seed, 0.55 + 0.02 * seed, rng)
    runs["PS-KD + CutMix", 0] = _make_run(root, "pskd", True, 0, 0.6, rng)
    return runs


def _row(summary, method):
    return next(s for s in summary if s["method"] == method)


def test_differences_and_intervals_are_those_of_the_per_image_results(study_runs):
    dets = [det for _, det in study_runs.values()]
    summary = summarize_study(dets, resamples=RESAMPLES)
    pskd = _row(summary, "PS-KD")
    base = [
        ScoredRun.from_file(os.path.join(study_runs["Baseline", s][1], "voc_detections.npz"))
        for s in (0, 1, 2)
    ]
    ours = [
        ScoredRun.from_file(os.path.join(study_runs["PS-KD", s][1], "voc_detections.npz"))
        for s in (0, 1, 2)
    ]
    w = bootstrap_weights(VOC_IMAGES, RESAMPLES, seed=0)
    d = [o.ap50() - b.ap50() for o, b in zip(ours, base)]
    expected = difference_interval(d, [o.bootstrap(w) - b.bootstrap(w) for o, b in zip(ours, base)])
    assert (pskd["dAP50"], pskd["dAP50_lo"], pskd["dAP50_hi"]) == pytest.approx(
        (expected["diff"], expected["lo"], expected["hi"])
    )
    assert pskd["dAP50_ci"] == SEEDS_AND_IMAGES and pskd["dAP50"] > 0
    # ImageNet top-1 error, paired image by image through the per-image files.
    base_in = [ImageNetScores.of_run(study_runs["Baseline", s][0]) for s in (0, 1, 2)]
    ours_in = [ImageNetScores.of_run(study_runs["PS-KD", s][0]) for s in (0, 1, 2)]
    w = bootstrap_weights(VAL_IMAGES, RESAMPLES, seed=1)
    d = [o.value("top1_err") - b.value("top1_err") for o, b in zip(ours_in, base_in)]
    boot = [
        o.bootstrap("top1_err", w) - b.bootstrap("top1_err", w) for o, b in zip(ours_in, base_in)
    ]
    expected = difference_interval(d, boot)
    assert (pskd["dtop1_err"], pskd["dtop1_err_lo"], pskd["dtop1_err_hi"]) == pytest.approx(
        (expected["diff"], expected["lo"], expected["hi"])
    )
    assert pskd["dtop1_err_ci"] == SEEDS_AND_IMAGES and pskd["dtop1_err"] < 0
    # The paper's one-run difference against our one-run range, on the paper's test set sizes.
    pi = one_run_prediction_interval(d)
    assert (pskd["dtop1_err_pi_lo"], pskd["dtop1_err_pi_hi"]) == pytest.approx(pi)
    paper_d = paper.TABLE4["PS-KD"]["top1_err"] - paper.TABLE4["Baseline"]["top1_err"]
    assert pskd["paper_dtop1_err"] == pytest.approx(paper_d)
    assert pskd["paper_dtop1_err_in_pi"] == (pi[0] <= paper_d <= pi[1])
    # One seed of PS-KD + CutMix: test images only, and nothing to say about the paper's run.
    mix = _row(summary, "PS-KD + CutMix")
    assert mix["dAP50_ci"] == IMAGES_ONLY and mix["dAP50_lo"] < mix["dAP50"] < mix["dAP50_hi"]
    assert mix["paper_dAP50_in_pi"] == "n/a: fewer than 2 seeds or no spread"
    assert _row(summary, "Baseline")["dAP50"] is None


def test_the_report_prints_tables_5_and_4_with_the_papers_values(study_runs, tmp_path):
    dets = [det for _, det in study_runs.values()]
    summary, files = summary_files(dets, resamples=RESAMPLES)
    write_files_together(str(tmp_path), files)
    md = (tmp_path / "table5_summary.md").read_text()
    assert "Not the paper's setting" not in md
    assert "## Table 5" in md and "## Table 4" in md
    assert "| PS-KD | resnet152 | batch 16, lr 0.02, 18,000 it | 0, 1, 2 |" in md
    aurc = _row(summary, "PS-KD")["aurc_mean"]
    assert (
        f"({paper.TABLE4['PS-KD']['aurc']:.2f}; {aurc - paper.TABLE4['PS-KD']['aurc']:+.2f})" in md
    )
    assert "| 79.50 | +1.24 |" in md
    pskd = _row(summary, "PS-KD")
    assert f"{pskd['dAP50']:+.2f} [{pskd['dAP50_lo']:+.2f}, {pskd['dAP50_hi']:+.2f}]" in md
    header = (tmp_path / "table5_summary.csv").read_text().splitlines()[0].split(",")
    assert {"dAP50_ci", "dtop1_err_pi_lo", "paper_dnll_in_pi", "daurc_hi", "ece_vs_paper"} <= set(
        header
    )
    assert (tmp_path / "table5_diff.png").stat().st_size > 0


def test_without_per_image_files_the_intervals_are_seeds_only(study_runs, tmp_path):
    dets = []
    for (method, seed), (pre, det) in study_runs.items():
        if method == "PS-KD + CutMix":
            continue
        copy = tmp_path / os.path.basename(det)
        os.makedirs(copy)
        for name in ("config.yaml", "voc_eval.json", LINK_FILE):
            (copy / name).write_bytes(open(os.path.join(det, name), "rb").read())
        dets.append(str(copy))  # no voc_detections.npz; the pretraining runs keep theirs
    summary = summarize_study(dets, resamples=RESAMPLES)
    pskd = _row(summary, "PS-KD")
    assert pskd["dAP50_ci"] == SEEDS_ONLY and pskd["dtop1_err_ci"] == SEEDS_AND_IMAGES


def test_other_settings_are_flagged_and_the_paper_comparison_is_na():
    s = {
        "method": "PS-KD",
        "arch": "resnet18",
        "protocol": "p",
        "seeds": [0, 1],
        "test_images": {"AP50": 20},
    }
    for m in ("AP50", "top1_err", "top5_err", "nll", "ece", "aurc", "eaurc"):
        s.update(
            {f"{m}_mean": 1.0, f"{m}_std": 0.1, f"d{m}": 0.5, f"d{m}_lo": 0.1, f"d{m}_hi": 0.9}
        )
        s.update({f"d{m}_ci": SEEDS_AND_IMAGES, f"d{m}_pi_lo": None, f"d{m}_pi_hi": None})
        s.update(
            {
                f"paper_{m}": 2.0,
                f"{m}_vs_paper": -1.0,
                f"paper_d{m}": 0.3,
                f"paper_d{m}_in_pi": "n/a: resnet18, not the paper's resnet152",
            }
        )
    md = to_markdown([s], RESAMPLES)
    assert (
        "**Not the paper's setting** (backbone resnet18; 20 VOC07 test images instead of 4,952)"
        in md
    )
    assert "say nothing about the methods" in md
    assert "| n/a |" in md and "**no**" not in md
    assert "Paper comparison n/a: resnet18, not the paper's resnet152." in md
    assert "n/a: resnet18" in to_csv([s])


def _copy_runs(study_runs, tmp_path, keys):
    """Copies of the fixture's detection folders (still linked to their pretraining runs), to
    change one; {key: path}."""
    copies = {}
    for key in keys:
        det = study_runs[key][1]
        copies[key] = tmp_path / os.path.basename(det)
        shutil.copytree(det, copies[key])
    return copies


def _ap50(run):
    return json.loads((run / "voc_eval.json").read_text())["AP50"]


SIX = [(m, s) for m in ("Baseline", "PS-KD") for s in (0, 1, 2)]


def test_a_run_without_voc_eval_json_is_flagged_and_in_no_difference(study_runs, tmp_path):
    """Not evaluated yet: n/a with a note in both tables, never a zero-width interval or a seed
    counted as if it had an AP50; the other seeds' difference is theirs alone."""
    copies = _copy_runs(study_runs, tmp_path, SIX + [("PS-KD + CutMix", 0)])
    (copies["PS-KD", 2] / "voc_eval.json").unlink()
    (copies["PS-KD + CutMix", 0] / "voc_eval.json").unlink()  # its backbone's only run
    dets = [str(p) for p in copies.values()]
    flag = (
        "no voc_eval.json (training unfinished, or stopped before its evaluation): continue it "
        "with tools/train_net.py --resume (same config and OUTPUT_DIR), which evaluates the "
        "final model"
    )
    summary, files = summary_files(dets, resamples=RESAMPLES)
    pskd = _row(summary, "PS-KD")
    assert pskd["seeds"] == [0, 1] and pskd["runs"] == 2
    assert pskd["left_out"] == [{"run": str(copies["PS-KD", 2]), "seed": 2, "flags": [flag]}]
    d = [_ap50(copies["PS-KD", s]) - _ap50(copies["Baseline", s]) for s in (0, 1)]
    assert pskd["dAP50"] == pytest.approx(np.mean(d))
    assert pskd["AP50_mean"] == pytest.approx(np.mean([_ap50(copies["PS-KD", s]) for s in (0, 1)]))
    mix = _row(summary, "PS-KD + CutMix")
    assert mix["seeds"] == [] and mix["AP50_mean"] is None and mix["dAP50"] is None
    assert mix["dAP50_lo"] is None and mix["dAP50_ci"] == "n/a: every run of it left out (flagged)"

    md = files["table5_summary.md"]
    assert f"- {copies['PS-KD', 2]} (PS-KD, SEED 2): {flag}." in md
    assert "| PS-KD | resnet152 | batch 16, lr 0.02, 18,000 it | 0, 1 (1 left out) |" in md
    assert (
        "| PS-KD + CutMix | resnet152 | batch 16, lr 0.02, 18,000 it | none (1 left out) | n/a "
        "| n/a | 79.72 |" in md
    )
    assert "+0.00 [+0.00, +0.00]" not in md
    rows = {r["run"]: r for r in collect(dets)}
    assert rows["pskd_s2"]["flags"] == [flag] and rows["pskd_s0"]["flags"] == []
    table5 = report_files(dets)[1]["table5.md"]
    assert "| PS-KD | pskd_s2 (flagged) | resnet152 |  |" in table5
    assert f"- pskd_s2: {flag}." in table5
    csv_rows = {
        r["run"]: r for r in csv.DictReader(io.StringIO(report_files(dets)[1]["table5.csv"]))
    }
    assert csv_rows["pskd_s2"]["flags"] == flag and csv_rows["pskd_s1"]["flags"] == ""


def test_a_run_evaluated_mid_training_is_flagged_and_left_out(study_runs, tmp_path):
    """voc_eval.json of iteration 1,000 in a run of SOLVER.MAX_ITER 18,000 (an evaluation during
    training, of a run stopped then): its AP50 is shown, flagged, and counts in no summary
    number; an evaluation that records the last iteration is the full schedule."""
    copies = _copy_runs(study_runs, tmp_path, SIX)
    for key, iteration, name in (
        (("PS-KD", 1), 1000, "model_0000999.pth"),
        (("PS-KD", 0), 18000, "model_final.pth"),
    ):
        path = copies[key] / "voc_eval.json"
        result = json.loads(path.read_text())
        result.update(iteration=iteration, checkpoint=str(copies[key] / name))
        path.write_text(json.dumps(result))
    dets = [str(p) for p in copies.values()]
    flag = "evaluated at iteration 1,000 of 18,000 (SOLVER.MAX_ITER): not the full schedule"
    summary, files = summary_files(dets, resamples=RESAMPLES)
    pskd = _row(summary, "PS-KD")
    assert pskd["seeds"] == [0, 2]
    d = [_ap50(copies["PS-KD", s]) - _ap50(copies["Baseline", s]) for s in (0, 2)]
    assert pskd["dAP50"] == pytest.approx(np.mean(d))
    rows = {r["run"]: r for r in collect(dets)}
    assert rows["pskd_s1"]["flags"] == [flag] and rows["pskd_s1"]["eval_iteration"] == 1000
    assert rows["pskd_s0"]["flags"] == [] and rows["pskd_s0"]["eval_iteration"] == 18000
    assert f"- {copies['PS-KD', 1]} (PS-KD, SEED 1): {flag}." in files["table5_summary.md"]
    assert "| 0, 2 (1 left out) |" in files["table5_summary.md"]
    assert f"{copies['PS-KD', 1]} (SEED 1): {flag}" in files["table5_summary.csv"]
    table5 = report_files(dets)[1]["table5.md"]
    assert f"| PS-KD | pskd_s1 (flagged) | resnet152 | {_ap50(copies['PS-KD', 1]):.2f} |" in table5
    assert f"- pskd_s1: {flag}." in table5
