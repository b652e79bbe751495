"""Every run stage's full config, assembled as its tool will assemble it, before a study runs
anything: a typo in a backbone's or the detection's opts, or a value a tool refuses, stops
``tools/study.py`` (``--dry-run`` included) on the login node, naming the stage, instead of a
detect stage failing after days of pretraining.

Pretraining stages go through ``pretrain.cli.setup_cfg`` with the stage's own opts (seed, output
folder, teacher); detection stages through ``detection.config.setup_detection_cfg``, their splits
are looked up among the registered ones and their model is built once on the meta device. Only
config files are read: no data, no weights.
"""

import warnings

from pretrain.cli import setup_cfg

from .spec import StudyError


def check_stage_configs(plan):
    """Assemble every pretrain and detect stage's config; raise StudyError naming the stage and
    the problem of the first one its tool would refuse. Returns a note when the detection configs
    could not be checked here (Detectron2 not installed), else None."""
    for stage in plan.stages:
        # A stage whose search values are not known yet: each value a trial may draw was
        # assembled when the study file was read (study.search.read_search).
        if stage.kind == "pretrain" and plan.search_opts(stage) is not None:
            config, opts = plan.tool_config(stage)
            _assemble(stage, lambda: setup_cfg(config, opts))
    detect = [stage for stage in plan.stages if stage.kind == "detect"]
    if not detect:
        return None
    # Detectron2 scripts functions with torch.jit.script as its modules are imported, which
    # torch announces as deprecated: a warning about Detectron2's code, not about the study.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _check_detect_stages(plan, detect)


def _check_detect_stages(plan, detect):
    try:
        from detection.config import check_model_builds, check_split_names, setup_detection_cfg
        from detection.voc import register_voc
    except ImportError as exc:
        return f"detection configs not checked: {exc} (make venv installs Detectron2)"
    for n, stage in enumerate(detect):
        config, opts = plan.tool_config(stage)
        cfg, settings = _assemble(stage, lambda: setup_detection_cfg(config, opts))
        # Names only: the splits' files are read when a loader asks for them.
        register_voc(settings.voc_root)
        _assemble(stage, lambda: check_split_names(cfg))
        if n == 0:  # the stages differ only in weights, data root, output folder and seed
            _assemble(stage, lambda: check_model_builds(cfg))
    return None


def _assemble(stage, build):
    try:
        return build()
    except (ValueError, FileNotFoundError) as exc:
        raise StudyError(f"stage {stage.id}: {exc}") from None
