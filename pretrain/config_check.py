"""The range of every numeric config key, checked once when a config is assembled.

The type of a value is checked by the config itself (an integer key refuses 2.5); this checks
that the value makes sense, so that e.g. ``PSKD.ALPHA_T 1.5`` (negative soft targets) or
``LOG_PERIOD 0`` (a division by zero hours into a run) stops at once, naming the key.
"""
import math


class Range:
    """An interval with optionally open ends; ``None`` is unbounded."""

    def __init__(self, low=None, high=None, low_open=False, high_open=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __contains__(self, value):
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def __str__(self):
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)

RANGES = {
    "MODEL.NUM_CLASSES": AT_LEAST_ONE,
    "INPUT.CROP_SIZE": AT_LEAST_ONE,
    "INPUT.RESIZE_SIZE": AT_LEAST_ONE,
    "INPUT.MIN_SCALE": Range(0, 1, low_open=True),
    "INPUT.COLOR_JITTER": NON_NEGATIVE,
    "INPUT.LIGHTING_STD": NON_NEGATIVE,
    "AUG.CUTMIX.PROB": FRACTION,
    "AUG.CUTMIX.BETA": POSITIVE,
    "LS.EPSILON": FRACTION,
    "PSKD.ALPHA_T": FRACTION,
    "PSKD.TOPK": NON_NEGATIVE,
    "CSKD.TEMPERATURE": POSITIVE,
    "CSKD.LAMBDA": NON_NEGATIVE,
    "TFKD.ALPHA": FRACTION,
    "TFKD.TEMPERATURE": POSITIVE,
    "USKD.ALPHA": NON_NEGATIVE,
    "USKD.BETA": NON_NEGATIVE,
    "USKD.MU": NON_NEGATIVE,
    "NKD.TEMPERATURE": POSITIVE,
    "NKD.GAMMA": NON_NEGATIVE,
    "LSSKD.ALPHA_T": FRACTION,
    "LSSKD.TEMPERATURE": POSITIVE,
    "LSSKD.KD_WEIGHT": NON_NEGATIVE,
    "LSSKD.FEAT_WEIGHT": NON_NEGATIVE,
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
    """Raise ValueError naming every numeric key outside its range (and PSKD.TOPK above the
    number of classes)."""
    problems = [f"{key} is {_get(cfg, key)}, must be {RANGES[key]}"
                for key in RANGES if _get(cfg, key) not in RANGES[key]]
    if not problems and cfg.PSKD.TOPK > cfg.MODEL.NUM_CLASSES:
        problems.append(f"PSKD.TOPK is {cfg.PSKD.TOPK}, must be at most MODEL.NUM_CLASSES "
                        f"({cfg.MODEL.NUM_CLASSES})")
    if problems:
        raise ValueError("config value out of range: " + "; ".join(problems))
