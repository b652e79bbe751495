"""The learning-rate schedule of pretraining: a multiplier of SOLVER.BASE_LR over training."""

from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
)


def build_lr_schedule(cfg, iters_per_epoch):
    """Multiplier of BASE_LR as a function of where in training we are (0 <= where < 1):
    x GAMMA at each epoch of SOLVER.STEPS, after an optional linear warmup."""
    # SOLVER.STEPS are increasing epochs inside the run (pretrain.config.checks).
    epochs, steps = cfg.SOLVER.EPOCHS, list(cfg.SOLVER.STEPS)
    total = epochs * iters_per_epoch
    schedule = MultiStepParamScheduler(
        values=[cfg.SOLVER.GAMMA**i for i in range(len(steps) + 1)],
        num_updates=total,
        milestones=[s * iters_per_epoch for s in steps],
    )
    warmup = cfg.SOLVER.WARMUP_EPOCHS / epochs
    if warmup <= 0:
        return schedule
    return CompositeParamScheduler(
        [LinearParamScheduler(cfg.SOLVER.WARMUP_FACTOR, 1.0), schedule],
        lengths=[warmup, 1.0 - warmup],
        interval_scaling=["rescaled", "fixed"],
    )
