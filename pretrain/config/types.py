"""What a config declaration is built from: ``CN``, the node every config key hangs on,
``Range``, the values a numeric key admits, and ``Choices``, the values a text key admits.

The general keys (pretrain/config/defaults.py) and each method's own keys (``Method.add_config`` in
pretrain/methods/) are declared with these; this module imports nothing of the project, so both
can.
"""

import math

from fvcore.common.config import CfgNode


class CN(CfgNode):
    """fvcore's CfgNode that also takes an integer where the default is a float: YAML and the
    command line write ``0`` for ``0.0``, and yacs would refuse it as a type mismatch."""

    def merge_from_other_cfg(self, cfg_other):
        _ints_to_floats(cfg_other, self)
        return super().merge_from_other_cfg(cfg_other)

    def merge_from_list(self, cfg_list):
        cfg_list = list(cfg_list)
        for i in range(0, len(cfg_list) - 1, 2):
            default = lookup(self, cfg_list[i])
            value = CfgNode._decode_cfg_value(cfg_list[i + 1])
            if isinstance(default, float) and type(value) is int:
                cfg_list[i + 1] = float(value)
        return super().merge_from_list(cfg_list)


def lookup(node, dotted, default=None):
    """The value at a dotted key (``"SOLVER.BASE_LR"``) of a config node or of the plain dicts a
    config.yaml reads back as; ``default`` where a part of the key is not there."""
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _ints_to_floats(other, defaults):
    for key, value in other.items():
        default = defaults.get(key) if isinstance(defaults, CfgNode) else None
        if isinstance(value, CfgNode):
            _ints_to_floats(value, default)
        elif isinstance(default, float) and type(value) is int:
            other[key] = float(value)


class Range:
    """An interval with optionally open ends; ``None`` is unbounded."""

    def __init__(self, low=None, high=None, low_open=False, high_open=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __contains__(self, value):
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def __str__(self):
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {low}{self.low}, {self.high}{high}"


class Choices:
    """The values a text key admits, checked with ``in`` as a ``Range`` is."""

    def __init__(self, values):
        self.values = tuple(values)

    def __contains__(self, value):
        return value in self.values

    def __str__(self):
        return "one of " + ", ".join(repr(v) for v in self.values)


POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
