"""A backbone's hyperparameter search, the paper's procedure for the ImageNet rows whose values the
literature does not give ("a random search over five runs" for CS-KD and TF-KD, the "optimal
alpha_T" of PS-KD): ``search:`` in the study file (docs/study.md).

Each trial is an ordinary pretraining stage (``pretrain/<backbone>/trial<k>``: same identity,
resume, Slurm and ``--status`` rules as any stage) whose config adds the trial's values to the
backbone's; the winner, the trial with the best metric of its ``eval_final.json`` once every trial
is done (ties: the first), gives its values to the backbone's pretraining of every seed, and so to
its conversion, detection and report; and to those of a backbone whose ``winner_of`` names it
(one search's values for two backbones, e.g. CS-KD with and without CutMix).

Optuna samples and records: its RandomSampler draws each trial's values, and a journal file under
the output root (``.study/search/<backbone>.journal``, Optuna's file storage, safe on a shared file
system) keeps every trial's values and, once its stage is done, its metric. A trial's values are
drawn once, when the study first runs (``sample_trials``), seeded by the search's ``sampler_seed``
and the trial's number: a rerun, an interruption or a Slurm job never draws them again, and more
``trials`` add trials after the recorded ones without changing them. ``--dry-run`` and
``--status`` only read the journal.
"""

import contextlib
import json
import os
from dataclasses import dataclass, field

from pretrain.cli import setup_cfg
from pretrain.config.defaults import get_cfg
from pretrain.metrics import METRIC_KEYS

from .identity import Identities

DIRECTIONS = ("minimize", "maximize")
# Keys the study sets per stage or that do not change a result: not a hyperparameter to search.
NOT_SEARCHED = ("OUTPUT_DIR", "DATA.ROOT", "SEED", "TEACHER.WEIGHTS", "MODEL.WEIGHTS")


@dataclass
class Search:
    space: dict  # config key -> ("choices", [values]) or ("float" | "int", low, high, log)
    trials: int
    metric: str  # a key of eval_final.json (pretrain.metrics.METRIC_KEYS)
    direction: str
    seed: int  # SEED of every trial
    trial_opts: list = field(default_factory=list)  # overrides of the trials only (fewer epochs)
    sampler_seed: int = 0

    def distributions(self):
        """The space as Optuna distributions."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out = {}
        for key, (kind, *bounds) in self.space.items():
            if kind == "choices":
                out[key] = CategoricalDistribution(bounds[0])
            elif kind == "int":
                out[key] = IntDistribution(bounds[0], bounds[1], log=bounds[2])
            else:
                out[key] = FloatDistribution(bounds[0], bounds[1], log=bounds[2])
        return out


def read_search(r, node, key, config, opts, seeds, flat_opts):
    """The ``search:`` entry of a backbone (``r``: the study file's reader), checked: each key of
    the space is a config key, and the config assembles with each choice and each bound."""
    r.mapping(
        node,
        key,
        allowed=("space", "trials", "metric", "direction", "seed", "trial_opts", "sampler_seed"),
        required=("space",),
    )
    space_node = node["space"]
    if not isinstance(space_node, dict) or not space_node:
        r.fail(f"{key}.space", "expected a mapping KEY: [choices] or KEY: {low, high, log}")
    defaults = dict(_flat(get_cfg()))
    space = {}
    for name, entry in space_node.items():
        where = f"{key}.space.{name}"
        if name not in defaults:
            r.fail(where, "not a key of the pretraining config")
        if name in NOT_SEARCHED:
            r.fail(where, "set by the study for every stage; not a hyperparameter")
        space[name] = _dimension(r, where, entry, defaults[name])
    trials = node.get("trials", 5)
    seed = node.get("seed", seeds[0])
    sampler_seed = node.get("sampler_seed", 0)
    for k, v, low in (("trials", trials, 1), ("seed", seed, 0), ("sampler_seed", sampler_seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            r.fail(f"{key}.{k}", f"expected an integer >= {low}, got {v!r}")
    metric = node.get("metric", "top1_err")
    if metric not in METRIC_KEYS:
        r.fail(f"{key}.metric", f"expected one of {', '.join(METRIC_KEYS)}, got {metric!r}")
    direction = node.get("direction", "minimize")
    if direction not in DIRECTIONS:
        r.fail(f"{key}.direction", f"expected one of {', '.join(DIRECTIONS)}, got {direction!r}")
    search = Search(
        space,
        trials,
        metric,
        direction,
        seed,
        flat_opts(node.get("trial_opts"), f"{key}.trial_opts"),
        sampler_seed,
    )
    try:
        setup_cfg(config, opts + search.trial_opts)
    except (ValueError, FileNotFoundError) as exc:
        r.fail(f"{key}.trial_opts", str(exc))
    # Every value a trial may draw, in the configs of the trials and of the runs: a key's range
    # or a bound between keys stops here, not on a node.
    problem = _space_problem(space, config, (opts + search.trial_opts, opts))
    if problem:
        name, value, exc = problem
        r.fail(f"{key}.space.{name}", f"{value!r}: {exc}")
    return search


def _space_problem(space, config, opts_lists):
    """``(key, value, error)`` of the first value of ``space`` (each choice, both bounds) that
    ``config`` does not assemble with after one of ``opts_lists``, else None."""
    for name, (kind, *bounds) in space.items():
        for value in bounds[0] if kind == "choices" else bounds[:2]:
            for opts in opts_lists:
                try:
                    setup_cfg(config, opts + overrides({name: value}))
                except (ValueError, FileNotFoundError) as exc:
                    return name, value, exc
    return None


def check_winners_of(r, backbones):
    """The ``winner_of:`` entries (a backbone that trains with the winner of another backbone's
    search, searching nothing itself): each names a searched backbone of the same method, and
    every value that search may pick assembles into this backbone's config (its own opts, e.g.
    CutMix), so that the winner, known days later, cannot stop its runs."""
    by_name = {b.name: b for b in backbones}
    for b in backbones:
        if b.winner_of is None:
            continue
        key = f"backbones.{b.name}.winner_of"
        source = by_name.get(b.winner_of) if isinstance(b.winner_of, str) else None
        if b.search:
            r.fail(key, "a backbone has its own search or takes another's winner, not both")
        if source is None:
            r.fail(key, f"{b.winner_of!r} is not a backbone of this study ({', '.join(by_name)})")
        if source.winner_of is not None:
            r.fail(
                key,
                f"{source.name!r} itself takes the winner of {source.winner_of!r}; name the "
                f"searched backbone (chains are not supported)",
            )
        if not source.search:
            r.fail(key, f"{source.name!r} has no search: nothing to take the winner of")
        if source.method != b.method:
            r.fail(
                key,
                f"{source.name!r} searches for method {source.method!r}, this backbone is "
                f"{b.method!r}",
            )
        problem = _space_problem(source.search.space, b.config, (b.opts,))
        if problem:
            name, value, exc = problem
            r.fail(key, f"{source.name}'s {name} {value!r} does not fit this backbone: {exc}")


def _dimension(r, where, entry, default):
    if isinstance(entry, list):
        if not entry or len(set(map(repr, entry))) != len(entry):
            r.fail(where, f"expected a list of distinct choices, got {entry!r}")
        if not all(isinstance(v, (str, int, float, bool)) for v in entry):
            r.fail(where, "choices must be numbers, strings or booleans")
        return ("choices", list(entry))
    if not isinstance(entry, dict):
        r.fail(where, "expected [choices] or {low, high, log}")
    r.mapping(entry, where, allowed=("low", "high", "log"), required=("low", "high"))
    low, high, log = entry["low"], entry["high"], entry.get("log", False)
    kind = "int" if type(default) is int else "float"
    number = int if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        r.fail(where, f"low and high must be {'integers' if kind == 'int' else 'numbers'}")
    if not low < high or not isinstance(log, bool) or (log and low <= 0):
        r.fail(where, "expected low < high, and low > 0 with log: true")
    return (kind, low, high, log)


def _flat(cfg, prefix=""):
    for key, value in cfg.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def overrides(values):
    """``{KEY: value}`` as KEY VALUE overrides."""
    return [item for key, value in values.items() for item in (key, repr(value))]


# -- trials: Optuna's records -----------------------------------------------------------------
def journal_path(root, backbone):
    return os.path.join(root, ".study", "search", f"{backbone}.journal")


def optuna_study(path, search, backbone, seed=None):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=backbone,
        storage=JournalStorage(JournalFileBackend(path)),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        direction=search.direction,
        load_if_exists=True,
    )


def recorded_values(root, backbone, search):
    """The values of every trial drawn so far, by trial number; reads the journal only."""
    path = journal_path(root, backbone)
    if not os.path.isfile(path):
        return []
    trials = optuna_study(path, search, backbone).get_trials(deepcopy=False)
    return [dict(t.params) for t in sorted(trials, key=lambda t: t.number)]


def sample_trials(root, backbone, search):
    """Draw the values of the trials not drawn yet (trial k from RandomSampler seeded by
    ``sampler_seed`` and k, whatever process draws it) and record them; returns every trial's."""
    path = journal_path(root, backbone)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    study = optuna_study(path, search, backbone)
    for number in range(len(study.trials), search.trials):
        study.sampler = type(study.sampler)(seed=search.sampler_seed * 1_000_003 + number)
        study.ask(search.distributions())
    return recorded_values(root, backbone, search)


def record_metric(root, backbone, search, number, value):
    """Record trial ``number``'s metric in the journal (once; its stage's files stay the truth).
    Every job records every finished trial, so two trials' jobs that end together both record
    the first trial: the one that comes second finds it finished, at any point of its ``tell``,
    and leaves it (the value is the same, read from the same run folder)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    study = optuna_study(journal_path(root, backbone), search, backbone)
    if study.trials[number].state == TrialState.RUNNING:
        # Finished before tell() reads the trial: skip_if_finished; after: the journal's error.
        with contextlib.suppress(UpdateFinishedTrialError):
            study.tell(number, value, skip_if_finished=True)


def trial_metric(out, metric):
    """The metric of a finished trial's run folder (its eval_final.json)."""
    with open(os.path.join(out, "eval_final.json")) as f:
        return float(json.load(f)[metric])


# -- the plan's side: which search a run trains with, its winner -------------------------------
class SearchPlan:
    """The searches of a plan (mixed into study.plan.Plan, which adds the trials' stages in
    ``self.trials`` and the values drawn in ``self.sampled``, by searched backbone)."""

    def search_of(self, b):
        """The backbone whose search's winner ``b``'s runs train with: ``b`` itself, the backbone
        named by its ``winner_of``, or None."""
        if b.search:
            return b
        return self.study.backbone(b.winner_of) if b.winner_of else None

    def search_opts(self, stage):
        """The overrides a search adds to a pretrain stage: a trial's own (the trials' opts, then
        its drawn values), or its winner's values for the runs of every seed of the searched
        backbone and of those that take its winner; None while they are not known (not drawn
        yet, or not every trial done)."""
        b = stage.backbone
        if stage.trial is not None:
            sampled = self.sampled[b.name]
            if stage.trial >= len(sampled):
                return None
            return list(b.search.trial_opts) + overrides(sampled[stage.trial])
        searched = self.search_of(b)
        if searched is None:
            return []
        winner = self.winner(searched)
        return None if winner is None else overrides(winner["values"])

    def winner(self, b):
        """``{"trial", "values", "metric"}`` of the best trial of ``b``'s search once every trial
        is done (ties: the first), else None. Read from the trials' run folders."""
        trials = self.trials[b.name]
        if len(self.sampled[b.name]) < len(trials) or not all(self.check(t)[0] for t in trials):
            return None
        scores = [trial_metric(t.out, b.search.metric) for t in trials]
        pick = min if b.search.direction == "minimize" else max
        best = pick(range(len(trials)), key=scores.__getitem__)
        return {"trial": best, "values": self.sampled[b.name][best], "metric": scores[best]}

    def settled(self):
        """Whether every search's values are known (each stage's identity is then final)."""
        return all(self.winner(b) for b in self.study.backbones if b.search)

    def sample_trials(self):
        """Draw and record the values of the trials not drawn yet, and record the metric of every
        finished one (tools/study.py, before it runs or submits anything: --dry-run and
        --status never write)."""
        for b in self.study.backbones:
            if b.search:
                self.sampled[b.name] = sample_trials(self.root, b.name, b.search)
        self.record_trials()
        self.identity = Identities(self)  # those computed before the values were known

    def record_trials(self):
        """Record each finished trial's metric in its search's journal."""
        for b in self.study.backbones:
            for t in self.trials.get(b.name, ()):
                if t.trial < len(self.sampled[b.name]) and self.check(t)[0]:
                    value = trial_metric(t.out, b.search.metric)
                    record_metric(self.root, b.name, b.search, t.trial, value)
