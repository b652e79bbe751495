"""The Detectron2 side: configs, VOC loading and its errors, the evaluator, feature equivalence of a
converted R-152, and a short CPU fine-tune through tools/train_net.py. Skipped without Detectron2.
"""

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
import yaml

from helpers import require_detectron2  # noqa: E402

require_detectron2()

from detectron2 import model_zoo  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances  # noqa: E402
from detectron2.evaluation import PascalVOCDetectionEvaluator  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from detection.config import add_pskd_detection_config, voc_root  # noqa: E402
from detection.convert import convert  # noqa: E402
from detection.runs import protocol, read_run  # noqa: E402
from detection.synthetic_voc import VOC_CLASSES, write_voc  # noqa: E402
from detection.verify import verify_d2_weights  # noqa: E402
from detection.voc import (  # noqa: E402
    VOCEvaluator,
    VOCFormatError,
    check_test_split,
    load_voc_split,
    register_voc,
)
from pretrain.config.defaults import get_cfg as get_pretrain_cfg  # noqa: E402
from tools.convert_to_d2 import main as convert_main  # noqa: E402

pytestmark = pytest.mark.detectron2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "detection")
TORCHVISION_MEAN = [123.675, 116.28, 103.53]
TORCHVISION_STD = [58.395, 57.12, 57.375]


def load_cfg(name, *opts):
    cfg = get_cfg()
    add_pskd_detection_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_voc(
        str(tmp_path_factory.mktemp("voc")), trainval07=8, test07=24, trainval12=4, seed=1
    )


# ---------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize(
    "name",
    [
        "faster_rcnn_R_152_C4_voc0712.yaml",
        "faster_rcnn_R_152_C4_voc0712_paper.yaml",
        "faster_rcnn_R_152_FPN_voc0712.yaml",
        "faster_rcnn_R_18_FPN_tiny_cpu.yaml",
    ],
)
def test_configs_are_set_up_for_torchvision_weights(name):
    cfg = load_cfg(name)
    assert cfg.INPUT.FORMAT == "RGB"
    assert (
        list(cfg.MODEL.PIXEL_MEAN) == TORCHVISION_MEAN
        and list(cfg.MODEL.PIXEL_STD) == TORCHVISION_STD
    )
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20
    assert tuple(cfg.DATASETS.TRAIN) == ("voc_2007_trainval", "voc_2012_trainval")
    assert tuple(cfg.DATASETS.TEST) == ("voc_2007_test",)
    assert cfg.MODEL.RESNETS.DEPTH == (18 if "tiny" in name else 152)
    assert cfg.MODEL.WEIGHTS == ""


def test_paper_protocol_arithmetic():
    cfg = load_cfg("faster_rcnn_R_152_C4_voc0712_paper.yaml")
    images, epochs = 2 * 16551, 10  # faster-rcnn.pytorch's flip-doubled VOC07+12 trainval
    assert cfg.SOLVER.IMS_PER_BATCH == 1 and cfg.SOLVER.BASE_LR == 0.001
    assert cfg.SOLVER.MAX_ITER == images * epochs // cfg.SOLVER.IMS_PER_BATCH == 331020
    assert tuple(cfg.SOLVER.STEPS) == (images * 5,) == (165510,)
    assert cfg.SOLVER.GAMMA == 0.1 and cfg.SOLVER.WARMUP_ITERS == 0
    assert cfg.SOLVER.CHECKPOINT_PERIOD == images


def test_paper_protocol_follows_faster_rcnn_pytorch():
    cfg = load_cfg("faster_rcnn_R_152_C4_voc0712_paper.yaml")
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (600,) and cfg.INPUT.MAX_SIZE_TRAIN == 1000
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (600, 1000)
    anchors = cfg.MODEL.ANCHOR_GENERATOR
    assert [list(s) for s in anchors.SIZES] == [[128, 256, 512]]
    assert [list(r) for r in anchors.ASPECT_RATIOS] == [[0.5, 1.0, 2.0]]
    heads, rpn = cfg.MODEL.ROI_HEADS, cfg.MODEL.RPN
    assert (heads.BATCH_SIZE_PER_IMAGE, heads.POSITIVE_FRACTION) == (128, 0.25)
    assert (heads.NMS_THRESH_TEST, heads.SCORE_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE) == (
        0.3,
        0.0,
        100,
    )
    assert (rpn.POST_NMS_TOPK_TEST, rpn.PRE_NMS_TOPK_TEST, rpn.POST_NMS_TOPK_TRAIN) == (
        300,
        6000,
        2000,
    )
    assert cfg.MODEL.RESNETS.DEPTH == 152 and cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"


@pytest.mark.integration
def test_paper_protocol_builds_trains_and_infers(voc):
    """The config's structural choices (512-channel RPN conv, 7x7 RoIAlign into res5, no warm-up,
    no weight decay on biases) as Detectron2 builds them, on one generated VOC image. DEPTH 50:
    the same C4 structure as 152, faster on a CPU."""
    from detectron2.data import DatasetMapper
    from detectron2.engine import DefaultTrainer
    from detectron2.utils.events import EventStorage

    cfg = load_cfg(
        "faster_rcnn_R_152_C4_voc0712_paper.yaml",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.RESNETS.DEPTH",
        "50",
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.proposal_generator.rpn_head.conv.out_channels == 512
    pooler = model.roi_heads.pooler
    assert pooler.output_size == (7, 7) and pooler.level_poolers[0].aligned is False
    optimizer = DefaultTrainer.build_optimizer(cfg, model)
    scheduler = DefaultTrainer.build_lr_scheduler(cfg, optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)  # no warm-up
    lrs = {}
    optimizer.step()  # no gradients yet: changes nothing, keeps the optimizer-then-scheduler order
    for it in (0, 165509, 165510, 331019):
        scheduler.last_epoch = it - 1
        scheduler.step()
        lrs[it] = optimizer.param_groups[0]["lr"]
    assert lrs == pytest.approx({0: 1e-3, 165509: 1e-3, 165510: 1e-4, 331019: 1e-4})
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert group["weight_decay"] == (0.0 if names[id(p)].endswith(".bias") else 1e-4)

    register_voc(voc)
    record = next(d for d in DatasetCatalog.get("voc_2007_trainval") if d["annotations"])
    batch = [DatasetMapper(cfg, is_train=True)(record)]
    assert min(batch[0]["image"].shape[1:]) == 600 or max(batch[0]["image"].shape[1:]) == 1000
    model.train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([DatasetMapper(cfg, is_train=False)(record)])[0]["instances"]
    assert len(out) <= 100


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "faster_rcnn_R_152_C4_voc0712.yaml",
            "batch 16, lr 0.02, 18,000 it (x0.1 at 12,000, 16,000), train 480-800 / test 800 px",
        ),
        (
            "faster_rcnn_R_152_C4_voc0712_paper.yaml",
            "batch 1, lr 0.001, 331,020 it (x0.1 at 165,510), train 600 / test 600 px",
        ),
    ],
)
def test_report_names_the_protocol_of_a_detectron2_dump(name, expected):
    assert protocol(yaml.safe_load(load_cfg(name).dump())) == expected


# Keys our bases set differently from Detectron2's VOC configs, on purpose (torchvision weights).
TORCHVISION_KEYS = {
    "MODEL.WEIGHTS", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT",
    "MODEL.RESNETS.STRIDE_IN_1X1", "DATASETS.VOC_ROOT",
}  # fmt: skip


def _flatten(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize(
    "ours,theirs", [("C4", "faster_rcnn_R_50_C4"), ("FPN", "faster_rcnn_R_50_FPN")]
)
def test_bases_hold_what_detectron2_voc_configs_hold(ours, theirs):
    mine = _flatten(load_cfg(f"Base-RCNN-{ours}-VOC.yaml"))
    ref = get_cfg()
    add_pskd_detection_config(ref)
    ref.merge_from_file(model_zoo.get_config_file(f"PascalVOC-Detection/{theirs}.yaml"))
    ref = _flatten(ref)
    differing = {k for k in ref if mine[k] != ref[k]}
    assert differing == TORCHVISION_KEYS - {"DATASETS.VOC_ROOT"}


def test_voc_root_key_overrides_environment(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/from/env")
    assert voc_root(load_cfg("faster_rcnn_R_152_C4_voc0712.yaml")) == "/from/env"
    assert (
        voc_root(load_cfg("faster_rcnn_R_152_C4_voc0712.yaml", "DATASETS.VOC_ROOT", "/data/voc"))
        == "/data/voc"
    )
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert voc_root(load_cfg("faster_rcnn_R_152_C4_voc0712.yaml")) == "datasets"


# ---------------------------------------------------------------------------------------------
# VOC loading


@pytest.mark.parametrize("year,split", [(2007, "trainval"), (2007, "test"), (2012, "trainval")])
def test_loader_matches_detectron2(voc, year, split):
    dirname = os.path.join(voc, f"VOC{year}")
    assert load_voc_split(dirname, split) == load_voc_instances(dirname, split, CLASS_NAMES)
    assert tuple(CLASS_NAMES) == VOC_CLASSES


def test_register_voc_points_splits_at_root(voc):
    register_voc(voc)
    dicts = DatasetCatalog.get("voc_2007_test")
    assert len(dicts) == 24 and dicts[0]["file_name"].startswith(voc)


def _broken_copy(voc, tmp_path, edit):
    import shutil

    root = str(tmp_path / "broken")
    shutil.copytree(voc, root)
    path = os.path.join(root, "VOC2007", "Annotations", "000003.xml")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(edit(text))
    return root, path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t[: len(t) // 2], "not valid XML"),
        (lambda t: t.replace("<xmax>", "<xmax>x", 1), "<xmax> is 'x"),
        (lambda t: t.replace("<size>", "<sizes>").replace("</size>", "</sizes>"), "no <size>"),
        (lambda t: t.replace("<name>", "<name>zebra_", 1), "not one of the 20 classes"),
        (
            lambda t: t.replace("<bndbox>", "<box>", 1).replace("</bndbox>", "</box>", 1),
            "has no <bndbox>",
        ),
    ],
)
def test_malformed_annotation_is_named(voc, tmp_path, edit, message):
    root, path = _broken_copy(voc, tmp_path, edit)
    register_voc(root)
    with pytest.raises(VOCFormatError, match=message) as info:
        DatasetCatalog.get("voc_2007_trainval")
    assert path in str(info.value)


def test_missing_folders_and_files_are_named(voc, tmp_path):
    register_voc(str(tmp_path / "nowhere"))
    with pytest.raises(VOCFormatError, match="VOC folder not found.*DETECTRON2_DATASETS") as info:
        DatasetCatalog.get("voc_2012_trainval")
    assert str(tmp_path / "nowhere" / "VOC2012") in str(info.value)
    register_voc(voc)
    with pytest.raises(VOCFormatError, match="val.txt: image-set file not found"):
        DatasetCatalog.get("voc_2007_val")
    root, _ = _broken_copy(voc, tmp_path, lambda t: t)
    os.remove(os.path.join(root, "VOC2007", "JPEGImages", "000002.jpg"))
    register_voc(root)
    with pytest.raises(VOCFormatError, match="000002.jpg: image listed in trainval.txt not found"):
        DatasetCatalog.get("voc_2007_trainval")


# ---------------------------------------------------------------------------------------------
# Evaluator


def _noisy_predictions(dicts, seed=0):
    """Ground truth jittered, some boxes dropped and false positives added: 0 < AP < 100."""
    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for d in dicts:
        boxes, scores, classes = [], [], []
        for a in d["annotations"]:
            if rng.random() < 0.2:
                continue
            boxes.append(np.array(a["bbox"]) + rng.normal(0, 3.0, 4))
            scores.append(rng.uniform(0.3, 1.0))
            classes.append(a["category_id"])
        for _ in range(2):
            x, y = rng.uniform(0, 80, 2)
            boxes.append([x, y, x + 30, y + 30])
            scores.append(rng.uniform(0.0, 0.7))
            classes.append(int(rng.integers(0, 20)))
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes)
        inputs.append({"image_id": d["image_id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def test_evaluator_matches_detectron2_and_returns_per_class(voc, tmp_path):
    register_voc(voc)
    inputs, outputs = _noisy_predictions(DatasetCatalog.get("voc_2007_test"))
    theirs, ours = (
        PascalVOCDetectionEvaluator("voc_2007_test"),
        VOCEvaluator(
            "voc_2007_test",
            output_file=str(tmp_path / "voc_eval.json"),
            weights="some/backbone.pkl",
        ),
    )
    results = []
    for ev in (theirs, ours):
        ev.reset()
        ev.process(inputs, outputs)
        results.append(ev.evaluate()["bbox"])
    ref, got = results
    assert 20 < ref["AP50"] < 100
    for k in ("AP", "AP50", "AP75"):
        assert got[k] == pytest.approx(ref[k], abs=1e-9)

    saved = json.loads((tmp_path / "voc_eval.json").read_text())
    assert list(saved["per_class_AP50"]) == list(CLASS_NAMES)
    assert np.mean(list(saved["per_class_AP50"].values())) == pytest.approx(saved["AP50"], abs=1e-9)
    assert saved["AP50"] == pytest.approx(ref["AP50"], abs=1e-9)
    assert saved["dataset"] == "voc_2007_test" and saved["num_images"] == 24
    assert saved["weights"] == os.path.abspath("some/backbone.pkl")
    assert "11-point" in saved["metric"]


def test_evaluator_names_bad_test_annotation(voc, tmp_path):
    root, path = _broken_copy(voc, tmp_path, lambda t: t)
    register_voc(root)
    ev = VOCEvaluator("voc_2007_test")
    test_xml = os.path.join(root, "VOC2007", "Annotations", "000010.xml")  # 000009.. are test ids
    with open(test_xml) as f:
        text = f.read()
    with open(test_xml, "w") as f:
        f.write(text.replace("<difficult>0</difficult>", "", 1))
    ev.reset()
    with pytest.raises(VOCFormatError, match="has no <difficult>") as info:
        ev.evaluate()
    assert test_xml in str(info.value)


def test_the_test_split_check_reads_what_the_evaluator_reads(voc, tmp_path):
    # A field only the evaluator reads (<difficult>) is missing in a test annotation: training's
    # loader accepts the split, the check before training names the file.
    root, _ = _broken_copy(voc, tmp_path, lambda t: t)
    register_voc(root)
    check_test_split("voc_2007_test")  # a good split passes
    test_xml = os.path.join(root, "VOC2007", "Annotations", "000010.xml")
    with open(test_xml) as f:
        text = f.read()
    with open(test_xml, "w") as f:
        f.write(text.replace("<difficult>0</difficult>", "", 1))
    DatasetCatalog.get("voc_2007_test")
    with pytest.raises(VOCFormatError, match="has no <difficult>") as info:
        check_test_split("voc_2007_test")
    assert test_xml in str(info.value)


# ---------------------------------------------------------------------------------------------
# Converted weights inside Detectron2


def _calibrated(model):
    """Random init leaves BN at mean 0 / var 1, so 150 layers deep activations reach 1e10 and any
    comparison is dominated by a common offset. Set the running statistics from one batch (as
    training would) and randomise the affine parameters, then switch to inference."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 96, 128, generator=g))
    return model.eval()


def _rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.integration
def test_converted_r152_reproduces_torchvision_features(tmp_path):
    torch.manual_seed(0)
    tv = _calibrated(torchvision.models.resnet152(weights=None))
    torch.save(
        {"model": {"module." + k: v for k, v in tv.state_dict().items()}},
        tmp_path / "model_final.pth",
    )
    pkl = str(tmp_path / "r152.pkl")
    convert(str(tmp_path / "model_final.pth"), pkl)
    n = sum(
        1
        for k in tv.state_dict()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    )
    assert f"all {n} weights" in verify_d2_weights(pkl, 152)

    cfg = load_cfg("faster_rcnn_R_152_C4_voc0712.yaml", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", pkl)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(pkl)

    # One RGB uint8 image through Detectron2's own input normalisation ...
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        x = model.preprocess_image([{"image": image}]).tensor
        res4 = model.backbone(x)["res4"]
        res5 = model.roi_heads.res5(res4)
        # ... and through torchvision's: [0, 1] RGB, ImageNet mean/std.
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        t = (image.float()[None] / 255.0 - mean[:, None, None]) / std[:, None, None]
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(t))))
        layer3 = tv.layer3(tv.layer2(tv.layer1(t)))
        layer4 = tv.layer4(layer3)
    assert x.shape == (1, 3, 96, 128)  # C4: no padding
    assert res4.shape == layer3.shape and res5.shape == layer4.shape
    print(f"relative error res4 {_rel_err(res4, layer3):.2e}, res5 {_rel_err(res5, layer4):.2e}")
    assert _rel_err(res4, layer3) < 1e-4
    assert _rel_err(res5, layer4) < 1e-4
    # The same weights with the wrong stride convention load silently but compute something else.
    wrong = build_model(
        load_cfg(
            "faster_rcnn_R_152_C4_voc0712.yaml",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.RESNETS.STRIDE_IN_1X1",
            True,
        )
    ).eval()
    DetectionCheckpointer(wrong).load(pkl)
    with torch.no_grad():
        assert _rel_err(wrong.backbone(x)["res4"], layer3) > 0.05  # vs ~3e-6 when right


def test_convert_tool_verify_option(tmp_path, capsys):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    convert_main([str(tmp_path / "r34.pth"), str(tmp_path / "r34.pkl"), "--verify"])
    assert "verified: all" in capsys.readouterr().out


def test_verify_rejects_what_detectron2_would_silently_skip(tmp_path):
    # What Detectron2's own converter makes of a DDP checkpoint: every name prefixed.
    sd = torchvision.models.resnet18(weights=None).state_dict()
    data = {
        "model": {"module." + k: v.numpy() for k, v in sd.items()},
        "__author__": "torchvision",
        "matching_heuristics": True,
    }
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(ValueError, match="backbone weights not in the file"):
        verify_d2_weights(str(tmp_path / "bad.pkl"), 18)


# ---------------------------------------------------------------------------------------------
# End to end: convert -> fine-tune -> evaluate -> report


def _train_net(*args, env=None, check=True):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args]
    # One intra-op thread: on a CPU shared with other jobs, OpenMP threads spinning against each
    # other made this run 5-10x slower (0.3 s/it alone, several s/it beside a second job).
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _tiny_run(pkl, voc, out, *opts, check=True):
    return _train_net(
        "--config-file", os.path.join(CONFIGS, "faster_rcnn_R_18_FPN_tiny_cpu.yaml"),
        "MODEL.WEIGHTS", pkl, "DATASETS.VOC_ROOT", voc, "OUTPUT_DIR", str(out),
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(100,)", "TEST.EVAL_PERIOD", "0", *opts,
        check=check,
    )  # fmt: skip


def _losses(out):
    with open(out / "metrics.json") as f:
        return [json.loads(line)["total_loss"] for line in f if "total_loss" in line]


@pytest.mark.slow
def test_tiny_config_is_seeded(voc, random_r18_pkl, tmp_path):
    """A fixed SEED (Detectron2's default, -1, draws one), which reaches the data order and
    initialisation: another SEED trains another model. (The same command training the same
    model: an interrupted run ends as the uninterrupted one, tests/test_detection_resume.py.)"""
    assert load_cfg("faster_rcnn_R_18_FPN_tiny_cpu.yaml").SEED >= 0
    no_eval = ["SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()"]
    _tiny_run(random_r18_pkl, voc, tmp_path / "a", *no_eval)
    _tiny_run(random_r18_pkl, voc, tmp_path / "b", *no_eval, "SEED", "12345")
    assert _losses(tmp_path / "a") and _losses(tmp_path / "a") != _losses(tmp_path / "b")


@pytest.mark.integration
def test_divergence_ends_with_an_error_line(voc, random_r18_pkl, tmp_path):
    proc = _tiny_run(
        random_r18_pkl,
        voc,
        tmp_path / "det",
        "SOLVER.MAX_ITER",
        "20",
        "SOLVER.BASE_LR",
        "1e6",
        "SOLVER.CLIP_GRADIENTS.ENABLED",
        "False",
        check=False,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: training diverged: the loss became Inf/NaN at iteration \d+ \(run folder .*\)\. "
        r"Try a lower SOLVER\.BASE_LR, .*SOLVER\.CLIP_GRADIENTS\.ENABLED True\.",
        last,
    ), last
    assert "Traceback" not in proc.stdout + proc.stderr


def _refused(argv):
    """tools/train_net.py's entry point here, for a run it refuses before Detectron2 starts
    (one process: launch() calls the worker's function in place): its error line."""
    from detectron2.engine import default_argument_parser

    from tools.train_net import launch_workers

    with pytest.raises(SystemExit) as stop:
        launch_workers(default_argument_parser().parse_args(argv))
    return str(stop.value.code)


@pytest.mark.slow
def test_cpu_finetune_writes_voc_eval_and_report(voc, tmp_path, monkeypatch):
    # A pretraining run folder as the pretraining stage leaves it.
    pre = tmp_path / "pretrain_pskd"
    pre.mkdir()
    pcfg = get_pretrain_cfg()
    pcfg.MODEL.ARCH, pcfg.METHOD.NAME = "resnet18", "pskd"
    (pre / "config.yaml").write_text(pcfg.dump())
    (pre / "eval_final.json").write_text(json.dumps({"top1_err": 30.5, "ece": 2.0}))
    torch.manual_seed(0)
    torch.save(
        {"model": torchvision.models.resnet18(weights=None).state_dict()}, pre / "model_final.pth"
    )
    pkl = str(tmp_path / "r18.pkl")
    convert(str(pre / "model_final.pth"), pkl)

    out = tmp_path / "det"
    config = os.path.join(CONFIGS, "faster_rcnn_R_18_FPN_tiny_cpu.yaml")
    # VOC found through the config key here, through $DETECTRON2_DATASETS below.
    _train_net(
        "--config-file", config, "MODEL.WEIGHTS", pkl, "OUTPUT_DIR", str(out),
        "DATASETS.VOC_ROOT", voc, "SOLVER.MAX_ITER", "30", "SOLVER.STEPS", "(20,)",
        "SOLVER.WARMUP_ITERS", "5",
    )  # fmt: skip
    first = json.loads((out / "voc_eval.json").read_text())
    assert list(first["per_class_AP50"]) == list(CLASS_NAMES)
    assert np.mean(list(first["per_class_AP50"].values())) == pytest.approx(first["AP50"], abs=1e-9)
    assert first["weights"] == pkl and first["dataset"] == "voc_2007_test"
    assert first["iteration"] == 30 and first["checkpoint"] == str(out / "model_final.pth")
    assert all(0.0 <= v <= 100.0 for v in first["per_class_AP50"].values())

    # --eval-only on the fine-tuned model, in its own folder: Detectron2's own .pth checkpoint
    # loads and the evaluation is identical. Into the training folder it is refused, and so is a
    # second fresh run there: either would rewrite the finished run's config.yaml and voc_eval.json.
    config_before = (out / "config.yaml").read_text()
    monkeypatch.setenv("DETECTRON2_DATASETS", voc)
    for extra in (["--eval-only"], []):
        weights = ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(out)]
        refused = _refused(["--config-file", config, *extra, *weights])
        assert refused.startswith(f"error: OUTPUT_DIR {out} "), refused
    assert (out / "config.yaml").read_text() == config_before
    assert json.loads((out / "voc_eval.json").read_text()) == first
    evaluation = tmp_path / "det_eval"
    _train_net(
        "--config-file", config, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
        "OUTPUT_DIR", str(evaluation),
        env={"DETECTRON2_DATASETS": voc},
    )  # fmt: skip
    second = json.loads((evaluation / "voc_eval.json").read_text())
    assert second["AP50"] == pytest.approx(first["AP50"], abs=1e-6)
    assert second["iteration"] == 30 and second["checkpoint"] == str(out / "model_final.pth")

    # The training folder still reads as the run it was, linked back to its backbone.
    row = read_run(str(out))
    assert row["AP50"] == first["AP50"]
    assert row["backbone_checkpoint"] == str(pre / "model_final.pth")
    assert row["method"] == "PS-KD" and row["pretrain_top1_err"] == 30.5
    assert row["flags"] == [] and row["eval_iteration"] == 30  # its full schedule, evaluated
    # The --eval-only folder's config.yaml lacks the training's SOLVER.MAX_ITER override: its
    # Fine-tuning column would describe a schedule the model did not have, and the row says so.
    assert read_run(str(evaluation))["flags"] == [
        "evaluated at iteration 30 of 300 (SOLVER.MAX_ITER): not the full schedule"
    ]
