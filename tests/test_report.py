"""tools/report.py on run folders laid out as the pretraining and detection stages write them.

The pretraining side is written with the real config (pretrain.config.defaults) and the real
converter; the detection side as tools/train_net.py leaves it (Detectron2's config.yaml dump,
voc_eval.json).
tests/test_detection.py runs the report on a folder a real Detectron2 run produced.
"""

import csv
import json
import os
import shutil

import pytest
import torch
import torchvision
import yaml
from PIL import Image

from detection.convert import convert
from detection.paper import TABLE5_AP50
from detection.report import report_files, to_markdown
from detection.runs import label_from_dirname, protocol, read_run, record_backbone
from detection.synthetic_voc import VOC_CLASSES
from pretrain.config.defaults import get_cfg
from pretrain.runtime.fileio import write_files_together
from tools.report import main as report_main


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory):
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def make_pretrain_run(root, name, weights, method, cutmix=False, top1=22.0):
    out = root / name
    out.mkdir()
    cfg = get_cfg()
    cfg.MODEL.ARCH = "resnet18"
    cfg.METHOD.NAME = method
    cfg.AUG.CUTMIX.ENABLED = cutmix
    (out / "config.yaml").write_text(cfg.dump())
    metrics = {
        "top1_err": top1,
        "top5_err": 6.0,
        "nll": 0.9,
        "ece": 3.5,
        "aurc": 60.0,
        "eaurc": 20.0,
    }
    (out / "eval_final.json").write_text(json.dumps(metrics))
    torch.save({"model": weights}, out / "model_final.pth")
    pkl = root / f"{name}.pkl"
    convert(str(out / "model_final.pth"), str(pkl))
    return pkl


def make_detection_run(root, name, weights, ap50=None):
    out = root / name
    out.mkdir()
    # The shape of Detectron2's dump: nested upper-case keys, lists for tuples.
    cfg = {
        "MODEL": {"WEIGHTS": str(weights), "RESNETS": {"DEPTH": 18}},
        "SOLVER": {
            "MAX_ITER": 300,
            "IMS_PER_BATCH": 4,
            "BASE_LR": 0.01,
            "STEPS": [240],
            "GAMMA": 0.1,
        },
        "INPUT": {"MIN_SIZE_TRAIN": [96, 112, 128], "MIN_SIZE_TEST": 128},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    if ap50 is not None:
        per_class = {c: ap50 for c in VOC_CLASSES}
        result = {
            "AP50": ap50,
            "AP": ap50 / 2,
            "AP75": ap50 / 3,
            "per_class_AP50": per_class,
            "dataset": "voc_2007_test",
        }
        (out / "voc_eval.json").write_text(json.dumps(result))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, r18_weights):
    root = tmp_path_factory.mktemp("runs")
    pskd = make_pretrain_run(root, "pre_pskd", r18_weights, "pskd", top1=21.4)
    mix = make_pretrain_run(root, "pre_mix", r18_weights, "pskd", cutmix=True, top1=20.8)
    base = make_pretrain_run(root, "pre_base", r18_weights, "baseline", top1=22.2)
    return {
        "pskd": make_detection_run(root, "det_a", pskd, 79.1),
        "mix": make_detection_run(root, "det_b", mix, 79.9),
        "base": make_detection_run(root, "det_c", base, 78.0),
        # Weights given as a path that no longer exists: the row stays, with blanks.
        "cskd_unlinked": make_detection_run(root, "det_cskd", root / "gone.pkl", 78.5),
        "unfinished": make_detection_run(root, "det_run7", root / "gone.pkl"),
    }


def test_rows_follow_the_links(runs):
    row = read_run(str(runs["mix"]))
    assert row["method"] == "PS-KD + CutMix" and row["method_from"] == "pretraining config"
    assert row["paper_AP50"] == 79.72 and row["AP50"] == 79.9
    assert row["pretrain_top1_err"] == 20.8 and row["pretrain_ece"] == 3.5
    assert row["arch"] == "resnet18"
    assert row["backbone_checkpoint"].endswith(os.path.join("pre_mix", "model_final.pth"))
    assert read_run(str(runs["base"]))["method"] == "Baseline"

    unlinked = read_run(str(runs["cskd_unlinked"]))
    assert unlinked["method"] == "CS-KD" and unlinked["method_from"] == "run folder name"
    assert unlinked["pretrain_top1_err"] is None and unlinked["backbone_checkpoint"] is None
    assert unlinked["AP50"] == 78.5 and unlinked["arch"] == "resnet18"

    unknown = read_run(str(runs["unfinished"]))
    assert unknown["method"] is None and unknown["AP50"] is None and unknown["paper_AP50"] is None


def test_rows_show_the_fine_tuning_protocol(runs, tmp_path):
    expected = "batch 4, lr 0.01, 300 it (x0.1 at 240), train 96-128 / test 128 px"
    assert read_run(str(runs["mix"]))["protocol"] == expected
    # A run of the paper's protocol, as Detectron2 dumps it, next to the others.
    paper = make_detection_run(tmp_path, "det_paper", tmp_path / "gone.pkl", 79.0)
    cfg = yaml.safe_load((paper / "config.yaml").read_text())
    cfg["SOLVER"] = {
        "MAX_ITER": 331020,
        "IMS_PER_BATCH": 1,
        "BASE_LR": 0.001,
        "STEPS": [165510],
        "GAMMA": 0.1,
    }
    cfg["INPUT"] = {"MIN_SIZE_TRAIN": [600], "MIN_SIZE_TEST": 600}
    (paper / "config.yaml").write_text(yaml.safe_dump(cfg))
    row = read_run(str(paper))
    assert (
        row["protocol"]
        == "batch 1, lr 0.001, 331,020 it (x0.1 at 165,510), train 600 / test 600 px"
    )
    md = to_markdown([row, read_run(str(runs["mix"]))])
    assert "| batch 1, lr 0.001, 331,020 it" in md and "| batch 4, lr 0.01, 300 it" in md
    assert "different protocols" in md
    assert "different protocols" not in to_markdown(
        [read_run(str(runs["mix"])), read_run(str(runs["base"]))]
    )
    assert (
        read_run(str(runs["mix"]).replace("det_b", "pre_mix"))["protocol"] is None
    )  # a pretraining run


def test_backbone_json_keeps_the_link_after_eval_only(runs, tmp_path):
    pkl = yaml.safe_load((runs["pskd"] / "config.yaml").read_text())["MODEL"]["WEIGHTS"]
    run = make_detection_run(tmp_path, "det_x", pkl, 79.0)
    assert record_backbone(str(run), pkl).endswith(os.path.join("pre_pskd", "model_final.pth"))
    # What an --eval-only run in the same folder leaves: the fine-tuned model as MODEL.WEIGHTS.
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["MODEL"]["WEIGHTS"] = str(run / "model_final.pth")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    row = read_run(str(run))
    assert row["method"] == "PS-KD" and row["pretrain_top1_err"] == 21.4
    # Weights that are not a converted file record nothing.
    assert record_backbone(str(tmp_path), str(run / "model_final.pth")) is None
    assert not (tmp_path / "backbone.json").exists()


@pytest.mark.parametrize(
    "name,label",
    [
        ("det_pskd_cutmix", "PS-KD + CutMix"),
        ("voc-PS-KD", "PS-KD"),
        ("r152_tfkd", "TF-KD"),
        ("ls", "LS"),
        ("class_results", None),  # "ls" inside a word is no method
        ("uskd-run", "USKD"),
        ("lsskd-run", "LSSKD"),
        ("r152_nkd_seed1", "NKD"),
    ],
)
def test_label_from_dirname(name, label):
    assert label_from_dirname(f"/x/{name}/") == label


def test_report_tool_writes_md_csv_png(runs, tmp_path, capsys):
    out = tmp_path / "table"
    order = [runs[k] for k in ("unfinished", "mix", "cskd_unlinked", "base", "pskd")]
    report_main(
        [str(p) for p in order] + ["--out", str(out), "--label", f"{runs['unfinished']}=TF-KD"]
    )
    assert "wrote table5.md" in capsys.readouterr().out

    with open(out / "table5.csv") as f:
        rows = list(csv.DictReader(f))
    # Paper order: Baseline, LS, CS-KD, TF-KD, PS-KD, PS-KD + CutMix.
    assert [r["method"] for r in rows] == ["Baseline", "CS-KD", "TF-KD", "PS-KD", "PS-KD + CutMix"]
    assert [r["run"] for r in rows] == ["det_c", "det_cskd", "det_run7", "det_a", "det_b"]
    tfkd = rows[2]
    assert (
        tfkd["method_from"] == "--label"
        and tfkd["AP50"] == ""
        and float(tfkd["paper_AP50"]) == 78.28
    )
    assert float(rows[3]["AP50"]) == 79.1 and float(rows[3]["pretrain_top1_err"]) == 21.4
    # Each run's method settings as its pretraining used them (a study's search winner shows
    # here); none for the baseline, which has no keys of its own.
    pskd_settings = (
        "PSKD.ALPHA_T 0.8, PSKD.TOPK 0, PSKD.SOURCE table, PSKD.PREVIOUS_MODEL_BN eval, "
        "PSKD.TABLE_DTYPE bfloat16, AUG.CUTMIX.PSKD_MODE half"
    )
    assert rows[3]["method_settings"] == pskd_settings and rows[0]["method_settings"] == ""

    md = (out / "table5.md").read_text()
    assert "| PS-KD + CutMix | det_b | resnet18 | 79.90 | 79.72 |" in md
    assert "No link to the pretraining run" in md and "det_cskd" in md
    assert f"- det_a: {pskd_settings}." in md and "- det_c:" not in md
    for method, value in TABLE5_AP50.items():
        assert f"{method} {value:.2f}" in md

    with Image.open(out / "table5.png") as img:
        assert img.format == "PNG" and img.width > 300


def test_report_names_classes_without_test_objects(runs, tmp_path):
    """A small test set without cats and dogs: the note names them beside the 20-class AP50 and
    the mean over the present classes; the CSV has both. Runs without absent classes, and
    evaluations written before the keys existed, get no note."""
    run = make_detection_run(tmp_path, "det_small", tmp_path / "gone.pkl", 45.0)
    result = json.loads((run / "voc_eval.json").read_text())
    result.update(AP50_present_classes=50.0, classes_without_test_objects=["cat", "dog"])
    (run / "voc_eval.json").write_text(json.dumps(result))
    complete = make_detection_run(tmp_path, "det_full", tmp_path / "gone.pkl", 70.0)
    result = json.loads((complete / "voc_eval.json").read_text())
    result.update(AP50_present_classes=70.0, classes_without_test_objects=[])
    (complete / "voc_eval.json").write_text(json.dumps(result))

    write_files_together(
        str(tmp_path / "t"), report_files([str(run), str(complete), str(runs["base"])])[1]
    )
    md = (tmp_path / "t" / "table5.md").read_text()
    assert (
        "- det_small: no test object of cat, dog (2 classes); AP50 45.00, mean over the classes "
        "present 50.00." in md
    )
    assert "det_full:" not in md and "det_c:" not in md
    with open(tmp_path / "t" / "table5.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert (
        rows["det_small"]["AP50_present_classes"],
        rows["det_small"]["classes_without_test_objects"],
    ) == ("50.0", "cat dog")
    assert (
        rows["det_full"]["AP50_present_classes"],
        rows["det_full"]["classes_without_test_objects"],
    ) == ("70.0", "")
    assert rows["det_c"]["AP50_present_classes"] == ""  # an older voc_eval.json: unknown
    assert "mean over the classes present" not in to_markdown([read_run(str(complete))])


def test_report_refuses_non_run_folder(tmp_path):
    with pytest.raises(SystemExit, match="not a detection or pretraining run folder"):
        report_main([str(tmp_path), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_report_writes_all_its_files_or_none(runs, tmp_path, capsys):
    out = tmp_path / "table"
    report_main([str(runs["base"]), str(runs["pskd"]), "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {
        "table5.md",
        "table5.csv",
        "table5.png",
        "table5_summary.md",
        "table5_summary.csv",
        "table5_diff.png",
    }
    # Two runs with the same SEED of one method: found while reading, after the per-run table
    # could be made; nothing is written, and the earlier report stays whole.
    twin = tmp_path / "twin"
    shutil.copytree(runs["pskd"], twin)
    with pytest.raises(SystemExit, match="two runs of PS-KD"):
        report_main([str(runs["base"]), str(runs["pskd"]), str(twin), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # The same run twice: refused before reading anything.
    with pytest.raises(SystemExit) as stop:
        report_main([str(runs["pskd"]), str(runs["pskd"]) + "/", "--out", str(out)])
    assert stop.value.code == 2 and "given twice" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "out, problem",
    [
        ("file", "is a file, not a folder to write into"),
        ("file/table", "lies under {file}, a file, not a folder"),
    ],
    ids=["file", "under_a_file"],
)
def test_report_refuses_a_file_as_its_folder(runs, tmp_path, out, problem):
    file = tmp_path / "file"
    file.write_text("mine")
    with pytest.raises(SystemExit) as stop:
        report_main([str(runs["pskd"]), "--out", str(tmp_path / out)])
    assert stop.value.code == (
        f"error: --out {tmp_path / out} {problem.format(file=file)}: give a folder (one that "
        "does not exist yet is created)"
    )
    assert os.listdir(tmp_path) == ["file"] and file.read_text() == "mine"


@pytest.mark.parametrize("label", ["elsewhere=LS", "LS"])
def test_report_refuses_a_label_for_no_given_run(runs, tmp_path, capsys, label):
    # The run itself is fine: only the label stops the report, before anything is written.
    with pytest.raises(SystemExit) as stop:
        report_main([str(runs["pskd"]), "--out", str(tmp_path / "o"), "--label", label])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"error: --label {label!r}: expected RUN_DIR=NAME with RUN_DIR one of the runs given" in err
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_report_never_imports_detectron2(runs, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['detectron2'] = None\n"  # any import of it would now fail
        "from tools.report import main\n"
        f"main([{str(runs['pskd'])!r}, '--out', {str(tmp_path)!r}])\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True)
    assert (tmp_path / "table5.md").exists()


def test_pretraining_run_gives_a_row_without_ap(runs, tmp_path):
    pre = os.path.join(os.path.dirname(runs["mix"]), "pre_mix")
    row = read_run(pre)
    assert row["method"] == "PS-KD + CutMix" and row["method_from"] == "pretraining config"
    assert row["AP50"] is None and row["paper_AP50"] == TABLE5_AP50["PS-KD + CutMix"]
    assert row["pretrain_top1_err"] == 20.8 and row["arch"] == "resnet18"
    assert row["backbone_checkpoint"] == os.path.join(pre, "model_final.pth")
    report_main([pre, str(runs["pskd"]), "--out", str(tmp_path)])
    md = (tmp_path / "table5.md").read_text()
    assert "No VOC evaluation (voc_eval.json) yet for: pre_mix;" in md


def test_backbone_from_a_periodic_checkpoint_shows_no_final_metrics(runs, r18_weights, tmp_path):
    """A backbone converted from model_0004999.pth of a finished pretraining run: eval_final.json
    evaluates model_final.pth, not it, so no ImageNet metric is shown; the run is flagged and the
    summary leaves it out."""
    make_pretrain_run(tmp_path, "pre_pskd", r18_weights, "pskd", top1=21.4)
    pre = str(tmp_path / "pre_pskd")
    torch.save({"model": r18_weights}, os.path.join(pre, "model_0004999.pth"))
    pkl = tmp_path / "pskd_5k.pkl"
    convert(os.path.join(pre, "model_0004999.pth"), str(pkl))
    det = make_detection_run(tmp_path, "det_pskd_5k", pkl, 77.0)
    flag = (
        "backbone from checkpoint model_0004999.pth, not model_final.pth: ImageNet metrics are "
        "the final model's, not shown"
    )
    row = read_run(str(det))
    assert row["backbone_checkpoint"] == os.path.join(pre, "model_0004999.pth")
    assert row["method"] == "PS-KD" and row["arch"] == "resnet18" and row["AP50"] == 77.0
    assert all(row[f"pretrain_{m}"] is None for m in ("top1_err", "ece", "nll"))
    assert row["flags"] == [flag]
    assert read_run(str(runs["pskd"]))["flags"] == []  # model_final.pth: its metrics, no flag

    out = tmp_path / "table"
    report_main([str(det), str(runs["base"]), "--out", str(out)])
    md = (out / "table5.md").read_text()
    assert (
        "| PS-KD | det_pskd_5k (flagged) | resnet18 | 77.00 | 79.50 | 38.50 | 25.67 |  |  |" in md
    )
    assert f"- det_pskd_5k: {flag}." in md
    with open(out / "table5.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["det_pskd_5k"]["pretrain_top1_err"] == "" and rows["det_pskd_5k"]["flags"] == flag
    summary = (out / "table5_summary.md").read_text()
    assert f"- {det} (PS-KD, SEED None): {flag}." in summary
    assert "| none (1 left out) | n/a | n/a |" in summary
    assert "21.40" not in summary  # pre_pskd's final top-1 error, of another model


def test_an_unfinished_pretraining_run_is_no_detection_run(runs, tmp_path, capsys):
    """A pretraining OUTPUT_DIR still training (config.yaml, a checkpoint, no eval_final.json)
    is read as pretraining: method and backbone from its config, no detection column from its
    solver (its 256-image batch is not a fine-tuning protocol), and a flag; the summary leaves it
    out. A finished one keeps its row without AP, unflagged."""
    pre = tmp_path / "pre_running"
    pre.mkdir()
    cfg = get_cfg()
    cfg.MODEL.ARCH, cfg.METHOD.NAME, cfg.SOLVER.IMS_PER_BATCH = "resnet18", "cskd", 256
    (pre / "config.yaml").write_text(cfg.dump())
    torch.save({"model": {}}, pre / "model_0000999.pth")
    (pre / "last_checkpoint").write_text("model_0000999.pth")
    flag = (
        "pretraining not finished (no eval_final.json): no ImageNet metrics, and no detection run"
    )
    row = read_run(str(pre))
    assert (row["protocol"], row["max_iter"], row["ims_per_batch"], row["weights"]) == (None,) * 4
    assert row["method"] == "CS-KD" and row["method_from"] == "pretraining config"
    assert row["arch"] == "resnet18"
    assert row["run_kind"] == "pretraining" and row["flags"] == [flag]
    assert protocol(yaml.safe_load(cfg.dump())) is None

    finished = os.path.join(os.path.dirname(runs["pskd"]), "pre_pskd")
    assert read_run(finished)["flags"] == [] and read_run(finished)["run_kind"] == "pretraining"

    out = tmp_path / "table"
    report_main([str(pre), str(runs["pskd"]), str(runs["base"]), "--out", str(out)])
    assert f"pre_running                    AP50 n/a (flagged: {flag})" in capsys.readouterr().out
    with open(out / "table5.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["pre_running"]["ims_per_batch"] == "" and rows["pre_running"]["flags"] == flag
    md = (out / "table5.md").read_text()
    assert f"- pre_running: {flag}." in md
    assert "| CS-KD | pre_running (flagged) | resnet18 |" in md
    assert "No link to the pretraining run" not in md  # it is one
    summary = (out / "table5_summary.md").read_text()
    assert f"- {pre} (CS-KD, SEED 0): {flag}." in summary
    assert "| CS-KD | resnet18 | none (1 left out) |" in summary  # Table 4 only, n/a
    assert "| CS-KD | resnet18 | ImageNet only" not in summary  # never a Table 5 row


@pytest.mark.parametrize(
    "record,flags",
    [
        ({}, []),  # written before voc_eval.json recorded the iteration: not known, not flagged
        ({"iteration": 300}, []),  # SOLVER.MAX_ITER
        (
            {"iteration": 400},
            [
                "evaluated a model of iteration 400, but config.yaml's SOLVER.MAX_ITER is 300: "
                "the Fine-tuning column does not describe it"
            ],
        ),
        (
            {"iteration": None, "checkpoint": "/w/r18.pkl"},
            [
                "voc_eval.json does not record the iteration of the model it evaluated "
                "(/w/r18.pkl): not known to be trained to SOLVER.MAX_ITER"
            ],
        ),
    ],
)
def test_the_evaluated_iteration_against_the_schedule(tmp_path, record, flags):
    run = make_detection_run(tmp_path, "det_x", tmp_path / "gone.pkl", 70.0)
    result = json.loads((run / "voc_eval.json").read_text())
    (run / "voc_eval.json").write_text(json.dumps({**result, **record}))
    assert read_run(str(run))["flags"] == flags
