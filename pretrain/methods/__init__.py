"""Training methods, selected by METHOD.NAME."""
from .base import Method, MethodContext, soft_cross_entropy
from .cross_entropy import CrossEntropy, LabelSmoothing
from .cskd import ClassWiseSelfKD
from .lsskd import LayeredSelfSupervisedKD
from .nkd import NormalizedKD
from .pskd import ProgressiveSelfKD
from .tfkd import TeacherFreeKD
from .uskd import UniversalSelfKD

METHODS = {cls.name: cls for cls in (CrossEntropy, LabelSmoothing, ProgressiveSelfKD, ClassWiseSelfKD,
                                     TeacherFreeKD, UniversalSelfKD, NormalizedKD,
                                     LayeredSelfSupervisedKD)}


def build_method(ctx: MethodContext) -> Method:
    name = ctx.cfg.METHOD.NAME
    if name not in METHODS:
        raise ValueError(f"METHOD.NAME: unknown method {name!r} (expected one of {', '.join(sorted(METHODS))})")
    return METHODS[name](ctx)


__all__ = ["Method", "MethodContext", "METHODS", "build_method", "soft_cross_entropy"]
