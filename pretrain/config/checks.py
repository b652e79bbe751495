"""The range of every numeric config key and the choices of every text key that names an
option, checked once when a config is assembled (``pretrain.cli.setup_cfg``, for every tool).

The type of a value is checked by the config itself (an integer key refuses 2.5); this checks
that the value makes sense, so that e.g. ``PSKD.ALPHA_T 1.5`` (negative soft targets),
``LOG_PERIOD 0`` (a division by zero hours into a run) or ``TFKD.KL_REDUCTION batchmeen`` (read
only when the method is built, on a GPU node after the dataset scan) stops at once, naming the key.
Each option set is defined once, by the module that implements the options.
"""

from pretrain.config.types import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Choices,
    Range,
    lookup,
)
from pretrain.data.build import DECODES, FORMATS
from pretrain.data.datasets import BAD_IMAGE_POLICIES
from pretrain.data.transforms import PRESETS
from pretrain.engine.build import AMP_DTYPES
from pretrain.methods import METHODS
from pretrain.models import ARCHS
from pretrain.runtime.distributed import DEVICES

RANGES = {
    "MODEL.NUM_CLASSES": AT_LEAST_ONE,
    "INPUT.CROP_SIZE": AT_LEAST_ONE,
    "INPUT.RESIZE_SIZE": AT_LEAST_ONE,
    "INPUT.MIN_SCALE": Range(0, 1, low_open=True),
    "INPUT.COLOR_JITTER": NON_NEGATIVE,
    "INPUT.LIGHTING_STD": NON_NEGATIVE,
    "AUG.CUTMIX.PROB": FRACTION,
    "AUG.CUTMIX.BETA": POSITIVE,
    # Each method's own keys, declared with the method (Method.config_ranges).
    **{key: values for method in METHODS.values() for key, values in method.config_ranges.items()},
    "SOLVER.EPOCHS": AT_LEAST_ONE,
    "SOLVER.IMS_PER_BATCH": AT_LEAST_ONE,
    "SOLVER.BASE_LR": POSITIVE,
    "SOLVER.GAMMA": POSITIVE,
    "SOLVER.MOMENTUM": Range(0, 1, high_open=True),
    "SOLVER.WEIGHT_DECAY": NON_NEGATIVE,
    "SOLVER.WARMUP_EPOCHS": NON_NEGATIVE,
    "SOLVER.WARMUP_FACTOR": Range(0, 1, low_open=True),
    "SOLVER.CHECKPOINT_PERIOD": AT_LEAST_ONE,
    "SOLVER.MAX_TO_KEEP": NON_NEGATIVE,
    "DATALOADER.NUM_WORKERS": NON_NEGATIVE,
    "TEST.EVAL_PERIOD": AT_LEAST_ONE,
    "TEST.IMS_PER_BATCH": AT_LEAST_ONE,
    "DIST.TIMEOUT_S": POSITIVE,
    "LOG_PERIOD": AT_LEAST_ONE,
    # The seeds derived from it (SEED * 1000 + rank, per-sample seeds) must stay 64-bit integers.
    "SEED": Range(0, 2**32 - 1),
}

CHOICES = {
    "MODEL.ARCH": Choices(ARCHS),
    "MODEL.DEVICE": Choices(DEVICES),
    "DATA.FORMAT": Choices(FORMATS),
    "DATA.ON_BAD_IMAGE": Choices(BAD_IMAGE_POLICIES),
    "INPUT.PRESET": Choices(PRESETS),
    "METHOD.NAME": Choices(METHODS),
    "SOLVER.AMP.DTYPE": Choices(AMP_DTYPES),
    "DATALOADER.DECODE": Choices(DECODES),
    # Each method's own text keys, declared with the method (Method.config_choices).
    **{key: values for method in METHODS.values() for key, values in method.config_choices.items()},
}

# Text keys that hold a path or a name of the user's, not an option.
FREE_TEXT = {
    "MODEL.WEIGHTS",
    "DATA.ROOT",
    "DATA.TRAIN_SPLIT",
    "DATA.VAL_SPLIT",
    "TEACHER.WEIGHTS",
    "OUTPUT_DIR",
}


def keys_of_type(cfg, types, prefix=""):
    """Every key of ``cfg`` whose value's type is one of ``types`` (exactly: bool is no int)."""
    keys = []
    for name, value in cfg.items():
        key = prefix + name
        if isinstance(value, dict):
            keys += keys_of_type(value, types, key + ".")
        elif type(value) in types:
            keys.append(key)
    return keys


def numeric_keys(cfg):
    """Every key of ``cfg`` whose value is an int or a float (booleans excluded)."""
    return keys_of_type(cfg, (int, float))


def general_problems(cfg):
    """Bounds between general keys, as phrases for ``validate_config``."""
    problems = []
    epochs, steps = cfg.SOLVER.EPOCHS, list(cfg.SOLVER.STEPS)
    if steps != sorted(set(steps)) or any(not 0 < s < epochs for s in steps):
        problems.append(
            f"SOLVER.STEPS is {steps}, must be increasing epochs inside (0, SOLVER.EPOCHS={epochs})"
        )
    if cfg.SOLVER.WARMUP_EPOCHS > epochs:
        problems.append(
            f"SOLVER.WARMUP_EPOCHS is {cfg.SOLVER.WARMUP_EPOCHS}, must be at most SOLVER.EPOCHS "
            f"({epochs})"
        )
    if cfg.DATALOADER.DECODE == "device" and (
        cfg.DATA.FORMAT != "imagefolder" or cfg.INPUT.PRESET != "imagenet"
    ):
        problems.append(
            "DATALOADER.DECODE device decodes JPEG files with the imagenet augmentation: it needs "
            f"DATA.FORMAT imagefolder and INPUT.PRESET imagenet, got {cfg.DATA.FORMAT!r} and "
            f"{cfg.INPUT.PRESET!r} (use DATALOADER.DECODE cpu)"
        )
    return problems


def validate_config(cfg):
    """Raise ValueError naming every numeric key outside its range and every text key that is
    none of its choices, or, when all are admitted, every bound between keys (general ones and
    those a method sets, ``Method.config_problems``, e.g. PSKD.TOPK above the number of
    classes)."""
    problems = [
        f"{key} is {lookup(cfg, key)!r}, must be {allowed}"
        for key, allowed in {**RANGES, **CHOICES}.items()
        if lookup(cfg, key) not in allowed
    ]
    if not problems:
        problems = general_problems(cfg) + [
            p for method in METHODS.values() for p in method.config_problems(cfg)
        ]
    if problems:
        raise ValueError("config value not admitted: " + "; ".join(problems))
