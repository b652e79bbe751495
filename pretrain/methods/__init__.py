"""Training methods, selected by METHOD.NAME.

``METHODS`` is the registry every other part of the project reads a method from: its class, its
label (``method_label``), its config keys (``pretrain.config.get_cfg``) and their ranges
(``pretrain.config_check``). A new method is a ``Method`` subclass in a module of this package,
added to the tuple below.
"""

from .base import Method, MethodContext, soft_cross_entropy
from .cross_entropy import CrossEntropy, LabelSmoothing
from .cskd import ClassWiseSelfKD
from .lsskd import LayeredSelfSupervisedKD
from .nkd import NormalizedKD
from .pskd import ProgressiveSelfKD
from .tfkd import TeacherFreeKD
from .uskd import UniversalSelfKD

METHODS = {
    cls.name: cls
    for cls in (
        CrossEntropy,
        LabelSmoothing,
        ProgressiveSelfKD,
        ClassWiseSelfKD,
        TeacherFreeKD,
        UniversalSelfKD,
        NormalizedKD,
        LayeredSelfSupervisedKD,
    )
}


def build_method(ctx: MethodContext) -> Method:
    """The method of METHOD.NAME (one of METHODS: pretrain.config_check checked it)."""
    return METHODS[ctx.cfg.METHOD.NAME](ctx)


def method_label(name, cutmix=False):
    """How tables and plots name METHOD.NAME ``name`` ("PS-KD", "PS-KD + CutMix"); a name that
    is no method of the registry is shown as it is."""
    method = METHODS.get(str(name).lower())
    label = method.label if method else str(name)
    return f"{label} + CutMix" if cutmix else label


__all__ = [
    "Method",
    "MethodContext",
    "METHODS",
    "build_method",
    "method_label",
    "soft_cross_entropy",
]
