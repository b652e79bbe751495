"""Reliability on CPU: a run killed with SIGKILL (also mid-checkpoint-write, also under torchrun)
resumes to bit-identical final weights; damaged checkpoints are named and skipped; bad inputs
stop with a message naming the culprit and leave earlier outputs intact; divergence stops before
anything bad is saved; a dead or stuck rank ends the job in bounded time."""

import importlib.util
import json
import os
import re
import shutil

import pytest
import torch
import torchvision

from detection.convert import convert
from helpers import ROOT, pretrain_argv, require_detectron2, run_tool

CONFIG = "configs/pretrain/cpu_synthetic_R_18.yaml"
# 6 iterations an epoch; checkpoints at iterations 4 (mid-epoch), 6 (epoch end), 8 (mid-epoch), 12.
SMALL = [
    "INPUT.CROP_SIZE",
    "32",
    "INPUT.RESIZE_SIZE",
    "32",
    "SOLVER.EPOCHS",
    "2",
    "SOLVER.STEPS",
    "(1,)",
    "SOLVER.CHECKPOINT_PERIOD",
    "4",
    "SOLVER.MAX_TO_KEEP",
    "0",
    "LOG_PERIOD",
    "3",
]


def ckpt(out, iteration):
    return os.path.join(out, f"model_{iteration:07d}.pth")


def last_checkpoint(out):
    try:
        with open(os.path.join(out, "last_checkpoint")) as f:
            return f.read()
    except FileNotFoundError:
        return None


def temporaries(out):
    return [n for n in os.listdir(out) if n.endswith(".tmp")]


def final_weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# The single-process runs use PS-KD's other source and CutMix (both draw on checkpointed state:
# the frozen previous model, the global RNG); the 2-process runs use the sharded table.
PREVIOUS_MODEL_CUTMIX = ["PSKD.SOURCE", "previous_model", "AUG.CUTMIX.ENABLED", "True"]


def train_args(root, out, *extra):
    return pretrain_argv(CONFIG, root, out, *SMALL, first=extra)


# -- subprocess control ---------------------------------------------------------------------------
def fault(spec):
    """The environment that stops a tool at a named point (pretrain/runtime/faults.py)."""
    return {"PRETRAIN_FAULT": spec}


def run_in_process(args, fails=True):
    """tools/pretrain.py's main in this process, so a bad input costs no interpreter start.
    Returns the ``error: ...`` message it exits with (``fails``) or None. The thread count is
    put back afterwards (the tool's logging set-up: tests/conftest.py, after every test)."""
    spec = importlib.util.spec_from_file_location(
        "pretrain_tool", os.path.join(ROOT, "tools", "pretrain.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_tool's OMP_NUM_THREADS: the CPU is shared
    try:
        if not fails:
            return tool.main(args[1:])
        with pytest.raises(SystemExit) as info:
            tool.main(args[1:])
        return str(info.value.code)
    finally:
        torch.set_num_threads(threads)


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory):
    """The uninterrupted single-process run."""
    out = str(tmp_path_factory.mktemp("reference"))
    run_tool(train_args(synthetic_root, out, *PREVIOUS_MODEL_CUTMIX))
    return out


# -- SIGKILL and exact resume ---------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_exact(synthetic_root, reference, tmp_path):
    out = str(tmp_path / "killed")
    os.makedirs(out)
    # 1. Killed while checkpoint 8 is being written: it must not exist, and last_checkpoint keeps
    #    naming checkpoint 6.
    first = run_tool(
        train_args(synthetic_root, out, *PREVIOUS_MODEL_CUTMIX),
        check=False,
        env=fault(f"kill at write {os.path.basename(ckpt(out, 8))}"),
    )
    assert first.returncode != 0
    assert not os.path.exists(ckpt(out, 8)) and last_checkpoint(out) == os.path.basename(
        ckpt(out, 6)
    )
    assert temporaries(out)  # what the kill interrupted
    # 2. The newest checkpoint is damaged as well (a disk that lost its tail): resume names it,
    #    falls back to the mid-epoch checkpoint 4, and is killed right after writing checkpoint 8.
    with open(ckpt(out, 6), "r+b") as f:
        f.truncate(os.path.getsize(ckpt(out, 6)) // 2)
    second = run_tool(
        train_args(synthetic_root, out, "--resume", *PREVIOUS_MODEL_CUTMIX),
        check=False,
        env=fault("kill at checkpoint 8"),
    )
    assert second.returncode != 0 and last_checkpoint(out) == os.path.basename(ckpt(out, 8))
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert f"cannot resume from {ckpt(out, 6)}" in log and "truncated, corrupt" in log
    assert f"resumed from {ckpt(out, 4)}: epoch 0, step 4" in log
    assert not temporaries(out)  # the interrupted write's leftover was removed on resume
    # 3. Resume to the end from the mid-epoch checkpoint 8.
    _resume_to_the_end_as(reference, synthetic_root, out, 1, *PREVIOUS_MODEL_CUTMIX)


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_both_resume_bit_exact(synthetic_root, tmp_path):
    """With 2 processes (the sharded PS-KD table): rank 1 killed right after checkpoint 8, and
    torchrun ends the job (rank 0 would otherwise wait DIST.TIMEOUT_S, 600 s, beyond run_tool's
    timeout); both ranks resume from it and end as the uninterrupted run. (A kill mid-write and
    a damaged checkpoint: the single-process test above, the same writer and fallback.)"""
    expected, out = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    run_tool(train_args(synthetic_root, expected), nproc=2)
    killed = run_tool(
        train_args(synthetic_root, out),
        nproc=2,
        check=False,
        env=fault("kill at checkpoint 8 on rank 1"),
    )
    assert killed.returncode != 0 and last_checkpoint(out) == os.path.basename(ckpt(out, 8))
    assert "SIGKILL" in killed.stdout + killed.stderr
    _resume_to_the_end_as(expected, synthetic_root, out, 2)


def _resume_to_the_end_as(expected, root, out, nproc, *method):
    """--resume ``out`` from its mid-epoch checkpoint 8 to the end: the weights and final
    metrics of the uninterrupted run ``expected``."""
    proc = run_tool(train_args(root, out, "--resume", *method), nproc=nproc)
    assert f"resumed from {ckpt(out, 8)}: epoch 1, step 2" in proc.stdout
    assert_same_weights(final_weights(expected), final_weights(out))
    torchvision.models.resnet18(num_classes=4).load_state_dict(final_weights(out))  # no DDP prefix
    with (
        open(os.path.join(out, "eval_final.json")) as a,
        open(os.path.join(expected, "eval_final.json")) as b,
    ):
        final = json.load(a)
        assert final == json.load(b) and final["num_samples"] == 32


# -- bad inputs -----------------------------------------------------------------------------------
def damage_images(root, tmp_path):
    """A copy of the data where one training JPEG is truncated and another is a text file;
    returns (root, the two paths)."""
    copy = str(tmp_path / "data")
    shutil.copytree(root, copy)
    folder = os.path.join(copy, "train", "class_001")
    truncated, text = (os.path.join(folder, n) for n in sorted(os.listdir(folder))[:2])
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    with open(text, "w") as f:
        f.write("not an image\n")
    return copy, [truncated, text]


def copy_checkpoint(reference, iteration, out):
    """An output folder holding one checkpoint of the reference run, named by last_checkpoint."""
    os.makedirs(out)
    shutil.copy(ckpt(reference, iteration), out)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(os.path.basename(ckpt(out, iteration)))
    return out


def assert_kept(reference, iteration, out):
    """The run that failed left the checkpoint it started from intact and wrote no final model."""
    name = os.path.basename(ckpt(out, iteration))
    with open(ckpt(reference, iteration), "rb") as a, open(ckpt(out, iteration), "rb") as b:
        assert a.read() == b.read()
    state = torch.load(os.path.join(out, last_checkpoint(out)), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert last_checkpoint(out) == name or int(last_checkpoint(out)[6:13]) > iteration
    assert not os.path.exists(os.path.join(out, "model_final.pth")) and not temporaries(out)


@pytest.mark.integration
def test_bad_image_under_error_policy_stops_naming_it(synthetic_root, reference, tmp_path):
    root, bad = damage_images(synthetic_root, tmp_path)
    out = copy_checkpoint(reference, 4, str(tmp_path / "out"))
    message = run_in_process(train_args(root, out, "--resume", *PREVIOUS_MODEL_CUTMIX))
    assert "cannot read training image" in message and "DATA.ON_BAD_IMAGE skip" in message
    assert any(path in message for path in bad), message
    assert_kept(reference, 4, out)


def test_bad_images_under_skip_policy_are_counted_and_named(synthetic_root, tmp_path):
    root, bad = damage_images(synthetic_root, tmp_path)
    out = str(tmp_path / "out")
    run_in_process(
        train_args(
            root, out, "DATA.ON_BAD_IMAGE", "skip", "SOLVER.EPOCHS", "1", "SOLVER.STEPS", "()"
        ),
        fails=False,
    )
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "epoch 1: skipped 2 unreadable training images" in log
    assert all(path in log for path in bad)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


@pytest.mark.parametrize(
    "setting,expect",
    [
        ("empty_class", r"ImageFolder '.*/train'.*class_004"),
        ("num_classes", r"MODEL.NUM_CLASSES is 5 but .* has 4 classes"),
        ("typo_file", r"config file '.*typo.yaml': .*SOLVER.BASE_LRR"),
        ("typo_cli", r"command-line override: .*SOLVER.EPOHCS"),
    ],
)
def test_bad_set_up_is_named(setting, expect, synthetic_root, tmp_path):
    root, extra = synthetic_root, []
    if setting == "empty_class":
        root = str(tmp_path / "data")
        shutil.copytree(synthetic_root, root)
        os.makedirs(os.path.join(root, "train", "class_004"))
    elif setting == "num_classes":
        extra = ["MODEL.NUM_CLASSES", "5"]
    elif setting == "typo_file":
        config = tmp_path / "typo.yaml"
        config.write_text(f"_BASE_: {os.path.join(ROOT, CONFIG)}\nSOLVER:\n  BASE_LRR: 0.1\n")
        extra = ["--config-file", str(config)]
    else:
        extra = ["SOLVER.EPOHCS", "3"]
    message = run_in_process(train_args(root, str(tmp_path / "out"), *extra))
    assert message.startswith("error: ") and re.search(expect, message), message


@pytest.mark.integration
@pytest.mark.parametrize(
    "weights", ["resnet50", "resnet18_10_classes", "truncated", "missing", "detectron2.pkl"]
)
def test_eval_only_names_unusable_weights(weights, reference, synthetic_root, tmp_path):
    path = str(tmp_path / (weights if weights.endswith(".pkl") else f"{weights}.pth"))
    if weights == "detectron2.pkl":  # the converter's output, given to the wrong tool
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
        convert(str(tmp_path / "r18.pth"), path)
    elif weights == "resnet50":
        torch.save(torchvision.models.resnet50(num_classes=4).state_dict(), path)
    elif weights == "resnet18_10_classes":
        torch.save({"model": torchvision.models.resnet18(num_classes=10).state_dict()}, path)
    elif weights == "truncated":
        data = open(os.path.join(reference, "model_final.pth"), "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    out = str(tmp_path / "out")
    message = run_in_process(
        pretrain_argv(CONFIG, synthetic_root, out, "MODEL.WEIGHTS", path, first=["--eval-only"])
    )
    assert message.startswith("error: ") and path in message, message
    expect = {
        "resnet50": "does not fit MODEL.ARCH resnet18",
        "resnet18_10_classes": r"fc.weight: \[10, 512\]",
        "truncated": "truncated, corrupt",
        "missing": "does not exist",
        "detectron2.pkl": "is a pickle, not a PyTorch checkpoint: a Detectron2 weight file",
    }[weights]
    assert re.search(expect, message), message
    assert not os.path.exists(os.path.join(tmp_path, "out", "eval_final.json"))


# -- divergence -----------------------------------------------------------------------------------
def test_divergence_stops_before_saving(synthetic_root, tmp_path):
    # Epoch 1 trains normally (checkpoints 4 and 6); GAMMA then multiplies the learning rate by
    # 1e30 and the weights break at the first step of epoch 2, before checkpoint 8.
    out = str(tmp_path / "out")
    message = run_in_process(train_args(synthetic_root, out, "SOLVER.GAMMA", "1e30"))
    assert "non-finite" in message and "last_checkpoint" in message
    assert last_checkpoint(out) == os.path.basename(ckpt(out, 6))
    assert not os.path.exists(ckpt(out, 8)) and not os.path.exists(
        os.path.join(out, "model_final.pth")
    )
    state = torch.load(ckpt(out, 6), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not temporaries(out)


# -- a stuck rank ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_stuck_rank_is_bounded_by_dist_timeout(synthetic_root, tmp_path):
    """A rank that stops answering without dying (a frozen node, a lost link) is invisible to
    torchrun; the other rank gives up after DIST.TIMEOUT_S, with a message, and the job ends (with
    the default DIST.TIMEOUT_S, 600 s, run_tool's timeout would end the test first)."""
    out = str(tmp_path / "out")
    # Rank 1 hangs after its first step, before any checkpoint: no legitimate wait (rank 1 at a
    # barrier while rank 0 writes a checkpoint) comes near the 5 s.
    proc = run_tool(
        train_args(synthetic_root, out, "DIST.TIMEOUT_S", "5"),
        nproc=2,
        check=False,
        env=fault("hang at step 1 on rank 1"),
    )
    assert proc.returncode != 0
    # Rank 0's own collective timed out after 5 s (gloo's message), and it said why it stopped.
    stopped = r"rank 0 of 2 stopped: .*Timed out waiting 5000ms.*DIST.TIMEOUT_S \(5 s\)"
    assert re.search(stopped, proc.stdout), proc.stdout


# -- atomic writes --------------------------------------------------------------------------------
def test_interrupted_write_keeps_the_previous_file(tmp_path):
    from pretrain.runtime.fileio import atomic_open, atomic_torch_save, atomic_write_json

    json_path, torch_path = str(tmp_path / "eval_final.json"), str(tmp_path / "model_final.pth")
    atomic_write_json(json_path, {"top1_err": 1.0})
    atomic_torch_save({"model": {"w": torch.ones(2)}}, torch_path)
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(json_path, "w") as f:
            f.write('{"top1_err": ')
            raise KeyboardInterrupt  # Ctrl-C (or any error) half-way through
    with pytest.raises(Exception):
        atomic_torch_save(
            {"model": {"w": torch.zeros(2)}, "oops": lambda: 0}, torch_path
        )  # fails mid-pickle
    with open(json_path) as f:
        assert json.load(f) == {"top1_err": 1.0}
    assert torch.equal(torch.load(torch_path, weights_only=True)["model"]["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["eval_final.json", "model_final.pth"]


def test_checkpoints_are_written_without_the_zip_checksum(tmp_path):
    """torch.load never reads the zip's CRC-32 (so the writer skips it); a truncated file is
    still refused."""
    import zipfile

    from pretrain.runtime.fileio import atomic_torch_save

    path = str(tmp_path / "model_0000001.pth")
    weights = torch.randn(1000)
    atomic_torch_save({"model": {"w": weights}}, path)
    with zipfile.ZipFile(path) as z:
        assert {i.CRC for i in z.infolist()} == {0}
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], weights)
    assert torch.serialization.get_crc32_options()  # the writer's own setting, not the process's
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)


# -- detection inputs -----------------------------------------------------------------------------
# Covered in tests/test_detection.py::test_malformed_annotation_is_named: malformed XML, a
# coordinate that is not a number, no <size> or <bndbox>, an unknown class name; and in
# tests/test_convert.py::test_refuses_other_architectures: a checkpoint of another architecture
# given to the converter.
@pytest.fixture
def voc_annotation(tmp_path):
    """A small VOC tree and the path of the first VOC2007 trainval annotation."""
    require_detectron2()
    from detection.synthetic_voc import write_voc

    folder = os.path.join(
        write_voc(str(tmp_path / "voc"), trainval07=2, test07=5, trainval12=1, size=64), "VOC2007"
    )
    with open(os.path.join(folder, "ImageSets", "Main", "trainval.txt")) as f:
        return folder, os.path.join(folder, "Annotations", f.read().split()[0] + ".xml")


def test_missing_voc_annotation_is_named(voc_annotation):
    from detection.voc import VOCFormatError, load_voc_split

    folder, path = voc_annotation
    os.remove(path)
    with pytest.raises(VOCFormatError, match="annotation file not found") as info:
        load_voc_split(folder, "trainval")
    assert path in str(info.value)


def test_voc_box_outside_the_image_is_named(voc_annotation):
    from detection.voc import VOCFormatError, load_voc_split

    folder, path = voc_annotation
    with open(path) as f:
        text = f.read()
    width = int(re.search(r"<width>(\d+)</width>", text).group(1))
    with open(path, "w") as f:
        f.write(re.sub(r"<xmax>\d+</xmax>", f"<xmax>{width + 50}</xmax>", text, count=1))
    with pytest.raises(VOCFormatError, match="outside") as info:
        load_voc_split(folder, "trainval")
    assert path in str(info.value)
