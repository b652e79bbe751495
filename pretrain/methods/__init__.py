"""Training methods, selected by METHOD.NAME.

``METHODS`` is the registry every other part of the project reads a method from: its class, its
label (``method_label``), its config keys (``pretrain.config.defaults.get_cfg``) and their ranges
(``pretrain.config.checks``). A new method is a ``Method`` subclass in a module of this package,
added to the tuple below.
"""

from pretrain.methods.base import Method, MethodContext, soft_cross_entropy
from pretrain.methods.cross_entropy import CrossEntropy, LabelSmoothing
from pretrain.methods.cskd import ClassWiseSelfKD
from pretrain.methods.lsskd import LayeredSelfSupervisedKD
from pretrain.methods.nkd import NormalizedKD
from pretrain.methods.pskd import ProgressiveSelfKD
from pretrain.methods.tfkd import TeacherFreeKD
from pretrain.methods.uskd import UniversalSelfKD

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
    """The method of METHOD.NAME (one of METHODS: pretrain.config.checks checked it)."""
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
