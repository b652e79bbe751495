"""No silent wrong or lost pretraining results: a run folder belongs to one run, a resume
continues only the run that wrote the checkpoint, --eval-only writes outputs of its own, every
numeric key is range-checked, and expected failures end with one ``error:`` line that names the
file or key (also in log.txt), leaving what was written before intact."""

import hashlib
import json
import os
import shutil
import stat

import pytest
import torch
from PIL import Image

from helpers import ROOT, pretrain_argv
from pretrain.metrics import METRIC_KEYS
from study.imagenet_scores import ImageNetScores
from study.statistics import bootstrap_weights
from test_reliability import CONFIG, ckpt, last_checkpoint, run_in_process, temporaries, train_args

# Appended after train_args' own overrides (which set 2 epochs).
ONE_EPOCH = ["SOLVER.EPOCHS", "1", "SOLVER.STEPS", "()"]


def digest(folder):
    """{name: sha256} of every file in ``folder`` but log.txt (which every attempt appends to):
    what a refused command must leave as it was."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and name != "log.txt":
            with open(path, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    """A finished 2-epoch PS-KD run (checkpoints 4, 6, 8, 12), written under umask 027."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    umask = os.umask(0o027)
    try:
        run_in_process(train_args(synthetic_root, out), fails=False)
    finally:
        os.umask(umask)
    return out


def test_a_finished_run_keeps_every_images_numbers(finished_run):
    with open(os.path.join(finished_run, "eval_final.json")) as f:
        final = json.load(f)
    scores = ImageNetScores.of_run(finished_run)
    assert scores.num_images == final["num_samples"]
    for metric in METRIC_KEYS:
        assert scores.value(metric) == pytest.approx(final[metric], abs=1e-9)
    assert scores.bootstrap("top1_err", bootstrap_weights(scores.num_images, 5)).shape == (5,)
    assert ImageNetScores.of_run(os.path.dirname(finished_run)) is None


def checkpoint_folder(finished_run, tmp_path, iteration=4):
    """A run folder as a kill leaves it: ``finished_run``'s files up to checkpoint ``iteration``."""
    out = str(tmp_path / "run")
    os.makedirs(out)
    for name in ("config.yaml", "log.txt", "metrics.json", os.path.basename(ckpt(out, iteration))):
        shutil.copy(os.path.join(finished_run, name), out)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(os.path.basename(ckpt(out, iteration)))
    return out


# -- one run per folder ---------------------------------------------------------------------------
def test_fresh_run_refuses_a_folder_holding_a_run(finished_run, synthetic_root, tmp_path):
    out = checkpoint_folder(finished_run, tmp_path)
    before = digest(out)
    message = run_in_process(train_args(synthetic_root, out, "SEED", "1"))
    assert message.startswith("error: ") and repr(out) in message
    assert "--resume" in message and "new or empty folder" in message
    assert digest(out) == before


def test_fresh_run_accepts_a_folder_with_only_a_failed_set_up_log(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    run_in_process(train_args(synthetic_root, out, "MODEL.NUM_CLASSES", "5"))
    assert os.listdir(out) == ["log.txt"]
    run_in_process(train_args(synthetic_root, out) + ONE_EPOCH, fails=False)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    from pretrain.runtime.checkpoint import save_checkpoint

    out = str(tmp_path)
    # A checkpoint of a later iteration than this run has reached (one a resume skipped as
    # unreadable): it must not push the new checkpoint out.
    with open(ckpt(out, 12), "wb") as f:
        f.write(b"truncated")
    save_checkpoint(out, 2, {"model": {}}, max_to_keep=1)
    save_checkpoint(out, 4, {"model": {}}, max_to_keep=1)
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_0000004.pth", "model_0000012.pth"]
    assert last_checkpoint(out) == "model_0000004.pth"


# -- resume continues the same run only -----------------------------------------------------------
@pytest.mark.parametrize(
    "key,value,saved,now",
    [
        ("METHOD.NAME", "baseline", "'pskd'", "'baseline'"),
        ("MODEL.ARCH", "resnet34", "'resnet18'", "'resnet34'"),
        ("SOLVER.BASE_LR", "0.05", "0.02", "0.05"),
        ("PSKD.ALPHA_T", "0.5", "0.8", "0.5"),
    ],
)
def test_resume_refuses_changed_run_defining_keys(
    key, value, saved, now, finished_run, synthetic_root, tmp_path
):
    out = checkpoint_folder(finished_run, tmp_path)
    before = digest(out)
    message = run_in_process(train_args(synthetic_root, out, "--resume", key, value))
    assert message.startswith("error: ") and ckpt(out, 4) in message
    assert f"{key}: {saved} in the checkpoint, {now} now" in message, message
    assert digest(out) == before


def test_resume_refuses_other_training_files(finished_run, synthetic_root, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(synthetic_root, root)
    folder = os.path.join(root, "train", "class_000")
    os.remove(os.path.join(folder, min(os.listdir(folder))))
    out = checkpoint_folder(finished_run, tmp_path)
    before = digest(out)
    message = run_in_process(train_args(root, out, "--resume"))
    assert "trained on other data: 96 training samples then, 95 now" in message, message
    assert digest(out) == before


@pytest.mark.integration
def test_resume_allows_keys_that_do_not_define_the_run(finished_run, synthetic_root, tmp_path):
    moved = str(tmp_path / "moved_data")
    shutil.copytree(synthetic_root, moved)
    out = checkpoint_folder(finished_run, tmp_path, iteration=8)
    run_in_process(
        train_args(
            moved,
            out,
            "--resume",
            "LOG_PERIOD",
            "2",
            "DIST.TIMEOUT_S",
            "60",
            "DATALOADER.NUM_WORKERS",
            "1",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
        ),
        fails=False,
    )
    with open(os.path.join(out, "log.txt")) as f:
        assert f"resumed from {ckpt(out, 8)}" in f.read()
    # The run-defining content is that of the uninterrupted run.
    a = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(finished_run, "model_final.pth"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # config.yaml stays the one the run started with.
    with (
        open(os.path.join(out, "config.yaml")) as x,
        open(os.path.join(finished_run, "config.yaml")) as y,
    ):
        assert x.read() == y.read()


def test_resume_of_a_finished_run_is_refused(finished_run, synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished_run, out)
    before = digest(out)
    message = run_in_process(train_args(synthetic_root, out, "--resume"))
    assert "holds a finished run" in message and repr(out) in message
    assert digest(out) == before


# -- eval-only ------------------------------------------------------------------------------------
def test_eval_only_never_replaces_the_training_outputs(finished_run, synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished_run, out)
    before = digest(out)
    weights = os.path.join(out, "model_final.pth")
    eval_only = pretrain_argv(
        "configs/pretrain/cpu_synthetic_R_18_cskd.yaml",
        synthetic_root,
        out,
        *["MODEL.WEIGHTS", weights, "INPUT.CROP_SIZE", "32", "INPUT.RESIZE_SIZE", "32"],
        first=["--eval-only"],
    )
    run_in_process(eval_only, fails=False)
    after = digest(out)
    assert {k: v for k, v in after.items() if k in before} == before
    added = sorted(set(after) - set(before))
    assert added == [
        "eval_only_model_final.json",
        "eval_only_model_final_config.yaml",
        "eval_only_model_final_per_image.npz",
        "eval_only_model_final_reliability.png",
    ]
    with open(os.path.join(out, "eval_only_model_final_config.yaml")) as f:
        assert "NAME: cskd" in f.read()
    # A second evaluation of the same weights would replace the first: refused.
    message = run_in_process(eval_only)
    assert "would replace" in message and "eval_only_model_final.json" in message
    assert digest(out) == after


def test_failed_eval_only_writes_no_config(synthetic_root, finished_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished_run, out)
    before = digest(out)
    bad = str(tmp_path / "r50.pth")
    import torchvision

    torch.save(torchvision.models.resnet50(num_classes=4).state_dict(), bad)
    message = run_in_process(
        pretrain_argv(
            CONFIG,
            synthetic_root,
            out,
            *["MODEL.WEIGHTS", bad, "METHOD.NAME", "baseline"],
            first=["--eval-only"],
        )
    )
    assert "does not fit" in message
    assert digest(out) == before
    with open(os.path.join(out, "log.txt")) as f:
        assert message[len("error: ") :] in f.read()


# -- value ranges ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,value",
    [
        ("PSKD.ALPHA_T", "1.5"),
        ("PSKD.ALPHA_T", "-1.0"),
        ("LS.EPSILON", "1.5"),
        ("LOG_PERIOD", "0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0"),
        ("TEST.EVAL_PERIOD", "0"),
        ("SOLVER.IMS_PER_BATCH", "0"),
        ("TEST.IMS_PER_BATCH", "0"),
        ("SOLVER.EPOCHS", "-1"),
        ("SOLVER.BASE_LR", "0.0"),
        ("SOLVER.WARMUP_EPOCHS", "-1"),
        ("PSKD.TOPK", "5"),
    ],
)
def test_out_of_range_values_are_named(key, value):
    from pretrain.cli import setup_cfg

    with pytest.raises(ValueError, match=rf"{key} is .*must be"):
        setup_cfg(os.path.join(ROOT, CONFIG), ["SOLVER.EPOCHS", "2", key, value])


def test_every_numeric_key_has_a_range_and_the_defaults_are_in_it():
    from pretrain.config.checks import RANGES, numeric_keys, validate_config
    from pretrain.config.defaults import get_cfg

    assert set(numeric_keys(get_cfg())) == set(RANGES)
    validate_config(get_cfg())


def test_integer_for_a_float_key_is_accepted():
    from pretrain.cli import setup_cfg

    cfg = setup_cfg(os.path.join(ROOT, CONFIG), ["SOLVER.WARMUP_EPOCHS", "0", "PSKD.ALPHA_T", "1"])
    assert cfg.SOLVER.WARMUP_EPOCHS == 0.0 and isinstance(cfg.SOLVER.WARMUP_EPOCHS, float)
    assert cfg.PSKD.ALPHA_T == 1.0


def test_out_of_range_value_stops_the_tool_before_writing(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    message = run_in_process(train_args(synthetic_root, out, "PSKD.ALPHA_T", "1.5"))
    assert message == "error: config value not admitted: PSKD.ALPHA_T is 1.5, must be in [0, 1]"
    assert not os.path.exists(out) or os.listdir(out) == []


# -- error lines instead of tracebacks ------------------------------------------------------------
def test_yaml_syntax_error_is_named(synthetic_root, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text(f"_BASE_: {os.path.join(ROOT, CONFIG)}\nSOLVER:\n  STEPS: [1, 2\n")
    message = run_in_process(
        train_args(synthetic_root, str(tmp_path / "out"), "--config-file", str(config))
    )
    assert (
        message.startswith(f"error: config file {str(config)!r} is not valid YAML")
        and "line" in message
    )
    assert "\n" not in message


def test_flag_after_overrides_says_flags_come_first(synthetic_root, tmp_path):
    message = run_in_process(train_args(synthetic_root, str(tmp_path / "out")) + ["--resume"])
    assert (
        message.startswith("error: --resume came after the KEY VALUE overrides: flags")
        and "first" in message
    )


def test_unwritable_output_dir_is_named(synthetic_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out in (str(blocker), str(blocker / "run")):
        message = run_in_process(train_args(synthetic_root, out))
        assert message.startswith("error: ") and "OUTPUT_DIR" in message and repr(out) in message, (
            message
        )


def test_full_disk_names_the_file_and_the_disk(synthetic_root, tmp_path, monkeypatch):
    """The system's own ENOSPC (/dev/full) when checkpoint 4 is written."""
    from pretrain.runtime import fileio

    real_mkstemp = fileio.tempfile.mkstemp

    def mkstemp(prefix, suffix, dir):
        if prefix.startswith(".model_0000004.pth"):
            return os.open("/dev/full", os.O_WRONLY), os.path.join(dir, prefix + "x" + suffix)
        return real_mkstemp(prefix=prefix, suffix=suffix, dir=dir)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    out = str(tmp_path / "run")
    message = run_in_process(train_args(synthetic_root, out))
    assert message.startswith(f"error: cannot write {ckpt(out, 4)!r}: No space left on device"), (
        message
    )
    assert f"the disk mounted at {fileio.mount_point(out)!r}" in message
    with open(os.path.join(out, "log.txt")) as f:
        assert "No space left on device" in f.read()
    assert last_checkpoint(out) is None and not temporaries(out)


def test_set_up_errors_are_logged(synthetic_root, tmp_path):
    out = str(tmp_path / "run")
    message = run_in_process(train_args(synthetic_root, out, "MODEL.NUM_CLASSES", "5"))
    with open(os.path.join(out, "log.txt")) as f:
        assert message[len("error: ") :] in f.read()


def write_png(path, size):
    Image.new("RGB", (size, size), (120, 30, 200)).save(path)


def test_decompression_bombs_are_bad_images(synthetic_root, tmp_path, monkeypatch):
    """Above Image.MAX_IMAGE_PIXELS PIL only warns, above twice that it raises: both are bad
    images (scaled down here: 64x64 data images, a limit of 5000 pixels)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    root = str(tmp_path / "data")
    shutil.copytree(synthetic_root, root)
    folder = os.path.join(root, "train", "class_002")
    for name in sorted(os.listdir(folder))[:2]:  # replaced: full batches stay full
        os.remove(os.path.join(folder, name))
    warns, raises = (os.path.join(folder, n) for n in ("bomb_warns.png", "bomb_raises.png"))
    write_png(warns, 80)  # 6,400 pixels
    write_png(raises, 120)  # 14,400 pixels
    message = run_in_process(train_args(root, str(tmp_path / "stop"), "DATA.ON_BAD_IMAGE", "error"))
    assert message.startswith("error: cannot read training image") and "bomb" in message, message
    out = str(tmp_path / "skip")
    run_in_process(train_args(root, out, "DATA.ON_BAD_IMAGE", "skip") + ONE_EPOCH, fails=False)
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert (
        f"skipped unreadable training image {warns}" in log
        and f"skipped unreadable training image {raises}" in log
    )


def test_device_decode_failure_is_an_error_line(synthetic_root, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(synthetic_root, root)
    folder = os.path.join(root, "train", "class_001")
    bad = os.path.join(folder, min(os.listdir(folder)))
    with open(bad, "r+b") as f:  # the header reads, the data does not decode
        f.truncate(os.path.getsize(bad) // 2)
    message = run_in_process(
        train_args(root, str(tmp_path / "out"), "DATALOADER.DECODE", "device") + ONE_EPOCH
    )
    assert message.startswith(f"error: cannot decode image {bad!r}"), message


@pytest.mark.integration
def test_error_in_a_loader_worker_is_one_line(synthetic_root, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(synthetic_root, root)
    bad = os.path.join(root, "train", "class_001", "not_an_image.jpg")
    with open(bad, "w") as f:
        f.write("text\n")
    message = run_in_process(train_args(root, str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", "1"))
    assert (
        message.startswith(f"error: cannot read training image {bad!r}") and "\n" not in message
    ), message


def test_skipped_file_with_a_non_utf8_name_is_logged(synthetic_root, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(synthetic_root, root)
    folder = os.path.join(root, "train", "class_001")
    os.remove(os.path.join(folder, min(os.listdir(folder))))  # replaced: full batches stay full
    with open(
        os.path.join(folder.encode(), b"caf\xe9.jpg"), "w"
    ) as f:  # Latin-1 name, not an image
        f.write("text\n")
    out = str(tmp_path / "out")
    run_in_process(train_args(root, out, "DATA.ON_BAD_IMAGE", "skip") + ONE_EPOCH, fails=False)
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "skipped unreadable training image" in log and "caf\\udce9.jpg" in log
    assert "epoch 1: skipped 1 unreadable training images" in log


# -- file modes -----------------------------------------------------------------------------------
def test_outputs_get_the_mode_the_umask_says(finished_run, tmp_path):
    for name in (
        "model_final.pth",
        "eval_final.json",
        "reliability_final.png",
        "config.yaml",
        "last_checkpoint",
        "model_0000012.pth",
        "metrics.json",
    ):
        assert mode(os.path.join(finished_run, name)) == 0o640, name
    from pretrain.runtime.fileio import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "a.txt"), "x")
    finally:
        os.umask(umask)
    assert mode(tmp_path / "a.txt") == 0o644
