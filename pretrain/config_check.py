"""The range of every numeric config key, checked once when a config is assembled.

The type of a value is checked by the config itself (an integer key refuses 2.5); this checks
that the value makes sense, so that e.g. ``PSKD.ALPHA_T 1.5`` (negative soft targets) or
``LOG_PERIOD 0`` (a division by zero hours into a run) stops at once, naming the key.
"""

from .config_types import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range
from .methods import METHODS

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
    "SEED": NON_NEGATIVE,
}


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def numeric_keys(cfg, prefix=""):
    """Every key of ``cfg`` whose value is an int or a float (booleans excluded)."""
    keys = []
    for name, value in cfg.items():
        key = prefix + name
        if isinstance(value, dict):
            keys += numeric_keys(value, key + ".")
        elif type(value) in (int, float):
            keys.append(key)
    return keys


def validate_config(cfg):
    """Raise ValueError naming every numeric key outside its range, or, when all are in range,
    every bound a method sets between its keys and others (``Method.config_problems``, e.g.
    PSKD.TOPK above the number of classes)."""
    problems = [
        f"{key} is {_get(cfg, key)}, must be {RANGES[key]}"
        for key in RANGES
        if _get(cfg, key) not in RANGES[key]
    ]
    if not problems:
        problems = [p for method in METHODS.values() for p in method.config_problems(cfg)]
    if problems:
        raise ValueError("config value out of range: " + "; ".join(problems))
