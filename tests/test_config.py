"""Config assembly: shipped files load, _BASE_ chains, unknown keys are named."""

import glob
import os

import pytest

from helpers import ROOT
from pretrain.cli import setup_cfg
from pretrain.config.defaults import get_cfg

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "pretrain", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_configs_load(path):
    cfg = setup_cfg(path)
    assert cfg.MODEL.ARCH.startswith("resnet")


def test_paper_recipe_in_imagenet_configs():
    cfg = setup_cfg(os.path.join(ROOT, "configs/pretrain/imagenet_R_152_pskd.yaml"))
    assert (cfg.MODEL.ARCH, cfg.SOLVER.EPOCHS, cfg.SOLVER.IMS_PER_BATCH) == ("resnet152", 90, 256)
    assert (cfg.SOLVER.BASE_LR, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.WEIGHT_DECAY) == (
        0.1,
        (30, 60),
        1e-4,
    )
    assert cfg.METHOD.NAME == "pskd"


def test_overrides_apply_and_cfg_is_frozen():
    cfg = setup_cfg(
        os.path.join(ROOT, "configs/pretrain/imagenet_R_152_baseline.yaml"),
        ["SOLVER.EPOCHS", "3", "SOLVER.STEPS", "(2,)", "OUTPUT_DIR", "/tmp/x"],
    )
    assert cfg.SOLVER.EPOCHS == 3 and cfg.OUTPUT_DIR == "/tmp/x"
    with pytest.raises(Exception):
        cfg.SOLVER.EPOCHS = 4


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("SOLVER:\n  EPOHCS: 3\n")
    with pytest.raises(ValueError, match=r"typo\.yaml.*SOLVER\.EPOHCS"):
        setup_cfg(str(path))


def test_unknown_key_on_command_line_is_named():
    with pytest.raises(ValueError, match="command-line.*PSKD.ALPHA"):
        setup_cfg(CONFIGS[0], ["PSKD.ALPHA", "0.5"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        setup_cfg(str(tmp_path / "nope.yaml"))


# -- text options: every choice is checked when the config is assembled ------------------------
@pytest.mark.parametrize(
    "key, typo",
    [
        ("TFKD.KL_REDUCTION", "batchmeen"),
        ("PSKD.SOURCE", "tabel"),
        ("PSKD.PREVIOUS_MODEL_BN", "frozen"),
        ("PSKD.TABLE_DTYPE", "float16"),
        ("AUG.CUTMIX.PSKD_MODE", "halve"),
        ("SOLVER.AMP.DTYPE", "fp16"),
        ("DATALOADER.DECODE", "gpu"),
        ("INPUT.PRESET", "imagnet"),
        ("DATA.FORMAT", "imagenet"),
        ("DATA.ON_BAD_IMAGE", "ignore"),
        ("MODEL.ARCH", "resnet-18"),
        ("MODEL.DEVICE", "gpu"),
        ("METHOD.NAME", "ps-kd"),
    ],
)
def test_a_text_option_that_is_none_of_its_choices_is_named_with_them(key, typo):
    # Whatever METHOD.NAME is: a PS-KD key's typo in a baseline config is still a typo.
    with pytest.raises(ValueError, match=rf"{key} is '{typo}', must be one of '"):
        setup_cfg(CONFIGS[0], [key, typo])


@pytest.mark.parametrize(
    "opts, named",
    [
        (["SEED", str(2**70)], r"SEED is 1180591620717411303424, must be in \[0, 4294967295\]"),
        (["SOLVER.WARMUP_EPOCHS", "91"], "SOLVER.WARMUP_EPOCHS is 91.0, must be at most"),
        (["DATALOADER.DECODE", "device", "INPUT.PRESET", "cifar"], "needs DATA.FORMAT imagefolder"),
        (["METHOD.NAME", "cskd", "DATA.ON_BAD_IMAGE", "skip"], "use DATA.ON_BAD_IMAGE error"),
    ],
)
def test_bounds_between_keys_and_the_seed_are_checked_when_assembled(opts, named):
    with pytest.raises(ValueError, match=named):
        setup_cfg(os.path.join(ROOT, "configs/pretrain/imagenet_R_152_baseline.yaml"), opts)


def test_the_largest_seed_trains_its_derived_seeds():
    import torch

    from pretrain.data.samplers import sample_seed

    cfg = setup_cfg(CONFIGS[0], ["SEED", str(2**32 - 1)])
    torch.Generator().manual_seed(cfg.SEED * 1_000 + 1 + 63)  # the engine's per-rank seed
    torch.Generator().manual_seed(sample_seed(cfg.SEED, 1000, 10**7))


# -- the paper's choices, as the shipped configs resolve ---------------------------------------
def pretrain_cfg(name, *opts):
    return setup_cfg(os.path.join(ROOT, "configs", "pretrain", name), list(opts))


def config_text(name):
    with open(os.path.join(ROOT, "configs", "pretrain", name)) as f:
        return f.read()


@pytest.mark.parametrize("name", ["imagenet_R_152_pskd.yaml", "imagenet_R_152_pskd_cutmix.yaml"])
def test_imagenet_pskd_uses_the_previous_epoch_model(name):
    cfg = pretrain_cfg(name)
    assert (cfg.METHOD.NAME, cfg.PSKD.SOURCE, cfg.PSKD.PREVIOUS_MODEL_BN) == (
        "pskd",
        "previous_model",
        "eval",
    )
    assert cfg.PSKD.ALPHA_T == 0.3
    assert cfg.AUG.CUTMIX.ENABLED == name.endswith("_cutmix.yaml")


def test_imagenet_pskd_cutmix_follows_the_half_rule():
    cutmix = pretrain_cfg("imagenet_R_152_pskd_cutmix.yaml").AUG.CUTMIX
    assert (cutmix.PSKD_MODE, cutmix.PROB, cutmix.BETA) == ("half", 0.5, 1.0)


def test_the_table_stays_the_default_and_the_cifar_source():
    assert pretrain_cfg("cifar100_R_18_pskd.yaml").PSKD.SOURCE == "table"
    cfg = pretrain_cfg(
        "imagenet_R_152_pskd.yaml", "PSKD.SOURCE", "table", "PSKD.TABLE_DTYPE", "float32"
    )
    assert (cfg.PSKD.SOURCE, cfg.PSKD.TABLE_DTYPE) == ("table", "float32")  # each one key away
    defaults = get_cfg().PSKD
    assert (defaults.SOURCE, defaults.PREVIOUS_MODEL_BN, defaults.TABLE_DTYPE) == (
        "table",
        "eval",
        "bfloat16",
    )


def test_imagenet_tfkd_follows_the_paper_equation():
    cfg = pretrain_cfg("imagenet_R_152_tfkd.yaml")
    assert (cfg.TFKD.KL_REDUCTION, cfg.TFKD.ALPHA, cfg.TFKD.TEMPERATURE) == ("batchmean", 0.1, 20.0)
    assert (
        pretrain_cfg("imagenet_R_152_tfkd.yaml", "TFKD.KL_REDUCTION", "mean").TFKD.KL_REDUCTION
        == "mean"
    )
    assert "our reading" in config_text(
        "imagenet_R_152_tfkd.yaml"
    )  # the teacher choice is an inference


def test_configs_say_where_unreported_values_come_from():
    pskd = config_text("imagenet_R_152_pskd.yaml")
    assert "unconfirmed" in pskd and "as quoted by the authors" not in pskd
    cfg = pretrain_cfg("imagenet_R_152_cskd.yaml")
    assert (cfg.CSKD.TEMPERATURE, cfg.CSKD.LAMBDA) == (4.0, 1.0)
    cskd = config_text("imagenet_R_152_cskd.yaml")
    assert "CIFAR defaults" in cskd and "random search" in cskd and "did not report" in cskd
