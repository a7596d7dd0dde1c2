"""A study's ``tuning:`` block: one hyperparameter search per cell, the same budget for every cell.

A study file may hold::

    tuning:
      objective: map@r           # the validation metric a search maximises: map@r (default) or recall@1
      trials: 8                  # the budget in trials per cell, the same for every cell; or, instead:
      budget_epochs: 75          # the budget in training epochs per cell (pruned and stopped epochs counted)
      min_configs: 30            # with budget_epochs: epochs held back so that at least this many configurations start
      finalists: 3               # the best trials re-scored (with the cell's own defaults) at full length ...
      rescore_seeds: 2           # ... at this many new seeds before one is chosen (0: the best trial is chosen)
      seed: 0                    # the sampler's seed, and the seed the trials train with
      startup_trials: 3          # random trials before TPE models the results (default: min(3, trials))
      pruner: {name: median, startup_trials: 3, warmup_epochs: 4}
                                 # or {name: successive-halving, min_epochs: 2, reduction_factor: 3}, or none
      storage: sqlite            # or journal (Optuna's journal file: several processes or Slurm tasks, NFS)
      stale_after_min: 30        # a running trial whose tuner gave no sign of life this long is failed and retried
      space:
        settings:                # run settings every cell tunes
          lr: {low: 5.0e-4, high: 8.0e-3, log: true}
        losses:                  # per loss: its keyword arguments (or run settings, for that loss only)
          triplet: {margin: {low: 0.05, high: 0.5}}
          arcface: {scale: {low: 16, high: 64}, margin: [0.2, 0.35, 0.5]}   # a list: the choices
        miners:
          semi-hard: {margin: {low: 0.05, high: 0.5}}

Every (dataset, loss, miner) pair of the study gets one :class:`Search` over the parameters the space
names for its loss, its miner and the settings. A search trains on the training classes and scores on
the validation classes only (dmlbench.study.tuner); its best settings then run as ordinary cells over
the study's seeds, beside the untuned ("default") cells. Every name and range is checked here, before
anything runs: an unknown parameter, an empty range, a log range touching zero and a budget of zero
each fail with the problem and the valid choices; and each range's ends and each choice are made into
the run a trial would train and checked as a run is (:func:`check_ranges`: P above the training
classes, text for lr, a margin the loss refuses), so no such value fails in the middle of a search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError
from ..fileio import read_json
from ..paths import results_dir, reuse_folders

TUNING_KEYS = ("objective", "trials", "budget_epochs", "min_configs", "finalists", "rescore_seeds", "seed",
               "startup_trials", "pruner", "storage", "stale_after_min", "space")
SPACE_KEYS = ("settings", "losses", "miners")
OBJECTIVES = ("map@r", "recall@1")
STORAGES = ("sqlite", "journal")
PRUNERS = {"median": ("startup_trials", "warmup_epochs"), "successive-halving": ("min_epochs", "reduction_factor"),
           "none": ()}
RANGE_KEYS = ("low", "high", "log", "int")
# run settings a search may tune (numbers that change what a run trains, not where it runs)
TUNABLE_SETTINGS = ("lr", "loss_lr", "weight_decay", "loss_weight_decay", "embedding_dim", "P", "K")
# bumped when what a trial computes changes (how it trains, scores, prunes): searches get new ids
TUNER_VERSION = 2  # 2: the successive-halving pruner ignores failed (interrupted) trials; epoch budgets; finalists
SIGNIFICANT_DIGITS = 3  # suggested floats are rounded to this many digits: the settings a reader can write down


@dataclass(frozen=True)
class Param:
    """One searched parameter: ``loss.margin``, ``miner.margin`` or a run setting such as ``lr``."""
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    @property
    def target(self) -> str:
        """"loss", "miner" or "setting"."""
        return self.name.split(".")[0] if "." in self.name else "setting"

    @property
    def key(self) -> str:
        """The keyword argument or setting it sets."""
        return self.name.split(".", 1)[-1]

    def suggest(self, trial) -> Any:
        """The trial's value (an Optuna trial), floats rounded to SIGNIFICANT_DIGITS."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return rounded(trial.suggest_float(self.name, self.low, self.high, log=self.log))

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"name": self.name, "choices": list(self.choices)}
        return {"name": self.name, "low": self.low, "high": self.high, "log": self.log, "int": self.integer}


def rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


@dataclass(frozen=True)
class TuningSpec:
    objective: str = "map@r"
    trials: int | None = 8  # None: the budget is budget_epochs
    seed: int = 0
    budget_epochs: int | None = None
    min_configs: int = 0
    finalists: int = 0
    rescore_seeds: int = 0
    startup_trials: int = 3
    pruner: dict = field(default_factory=lambda: {"name": "median", "startup_trials": 3, "warmup_epochs": 4})
    storage: str = "sqlite"
    stale_after_min: float = 30.0
    settings: tuple[Param, ...] = ()
    losses: dict = field(default_factory=dict)  # loss name -> tuple of Params
    miners: dict = field(default_factory=dict)

    def params_for(self, loss: str, miner: str) -> tuple[Param, ...]:
        """The parameters a (loss, miner) cell searches: the loss's, the miner's, then the settings not
        given a range of their own for this loss or miner."""
        own = [*self.losses.get(loss, ()), *self.miners.get(miner, ())]
        named = {p.name for p in own}
        return tuple(own + [p for p in self.settings if p.name not in named])

    def identity(self) -> dict[str, Any]:
        """What changes a search's outcome (the storage kind does not)."""
        out = {"objective": self.objective, "trials": self.trials, "seed": self.seed,
               "startup_trials": self.startup_trials, "pruner": self.pruner, "tuner_version": TUNER_VERSION}
        if self.budget_epochs is not None or self.finalists:  # kept out otherwise: older searches keep their ids
            out.update(budget_epochs=self.budget_epochs, min_configs=self.min_configs, finalists=self.finalists,
                       rescore_seeds=self.rescore_seeds)
        return out

    @property
    def rescore_seed_list(self) -> list[int]:
        """The seeds the finalists are re-scored at: the ones after the trials' own."""
        return [self.seed + 1 + i for i in range(self.rescore_seeds)] if self.finalists else []

    def budget_text(self) -> str:
        """The budget in words: "8 trials" or "75 epochs (at least 30 configurations)"."""
        if self.budget_epochs is None:
            return f"{self.trials} trials"
        return f"{self.budget_epochs} epochs (at least {self.min_configs} configurations)"


def parse_tuning(path: Path, raw: Any) -> TuningSpec:
    """The study file's ``tuning:`` block, checked (see the module's docstring)."""
    where = f"{path}: tuning"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(TUNING_KEYS)}, got {raw!r}")
    _no_unknown(where, raw, TUNING_KEYS)
    objective = str(raw.get("objective", "map@r"))
    if objective not in OBJECTIVES:
        raise ConfigError(f"{where}: objective: {objective!r} is not a validation metric; valid: {', '.join(OBJECTIVES)}")
    trials, budget, min_configs = _budget(where, raw)
    finalists = _whole(where, "finalists", raw.get("finalists", 0), at_least=0,
                       why="how many of the best trials are re-scored, 0 or more")
    rescore = _whole(where, "rescore_seeds", raw.get("rescore_seeds", 2 if finalists else 0),
                     at_least=1 if finalists else 0, why="the seeds finalists are re-scored at (at least 1 with finalists)")
    if rescore and not finalists:
        raise ConfigError(f"{where}: rescore_seeds: {rescore} seeds but no finalists to re-score; give finalists: 3")
    seed = _whole(where, "seed", raw.get("seed", 0), at_least=0, why="a non-negative integer")
    startup = _whole(where, "startup_trials", raw.get("startup_trials", min(3, trials or 3)), at_least=0,
                     why="random trials before TPE, 0 or more")
    storage = str(raw.get("storage", "sqlite"))
    if storage not in STORAGES:
        raise ConfigError(f"{where}: storage: {storage!r}; valid: {', '.join(STORAGES)}")
    stale = raw.get("stale_after_min", 30.0)
    if not isinstance(stale, (int, float)) or isinstance(stale, bool) or stale <= 0:
        raise ConfigError(f"{where}: stale_after_min: expected a positive number of minutes, got {stale!r}")
    settings, losses, miners = _space(where, raw.get("space"))
    return TuningSpec(objective=objective, trials=trials, seed=seed, startup_trials=startup, budget_epochs=budget,
                      min_configs=min_configs, finalists=finalists, rescore_seeds=rescore,
                      pruner=_pruner(where, raw.get("pruner", {"name": "median"})), storage=storage,
                      stale_after_min=float(stale), settings=settings, losses=losses, miners=miners)


def _budget(where: str, raw: dict) -> tuple[int | None, int | None, int]:
    """(trials, budget_epochs, min_configs): a budget in trials, or one in epochs, not both."""
    if "budget_epochs" not in raw:
        if "min_configs" in raw:
            raise ConfigError(f"{where}: min_configs: only with budget_epochs (a budget in trials starts that many)")
        return _whole(where, "trials", raw.get("trials", 8), at_least=1,
                      why="the budget: trials per cell, at least 1 (a budget of zero tunes nothing)"), None, 0
    if "trials" in raw:
        raise ConfigError(f"{where}: give the budget as trials or as budget_epochs, not both")
    budget = _whole(where, "budget_epochs", raw["budget_epochs"], at_least=1,
                    why="the budget: training epochs per cell, at least 1 (a budget of zero tunes nothing)")
    least = _whole(where, "min_configs", raw.get("min_configs", 1), at_least=1, why="a whole number of at least 1")
    if least > budget:
        raise ConfigError(f"{where}: min_configs: {least} configurations need at least {least} epochs, "
                          f"but budget_epochs is {budget}")
    return None, budget, least


def _no_unknown(where: str, raw: dict, keys: tuple[str, ...]) -> None:
    bad = sorted(set(raw) - set(keys))
    if bad:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, bad))}; valid keys: {', '.join(keys)}")


def _whole(where: str, key: str, value: Any, *, at_least: int, why: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < at_least:
        raise ConfigError(f"{where}: {key}: expected {why}, got {value!r}")
    return value


def _pruner(where: str, raw: Any) -> dict[str, Any]:
    """``none``, a name, or ``{name, ...its settings}``, with every setting a whole number."""
    raw = {"name": raw} if isinstance(raw, str) or raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: pruner: expected a name or a mapping with 'name', got {raw!r}")
    name = str(raw.get("name") or "none")
    if name not in PRUNERS:
        raise ConfigError(f"{where}: pruner: unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")
    _no_unknown(f"{where}: pruner", raw, ("name", *PRUNERS[name]))
    defaults = {"median": {"startup_trials": 3, "warmup_epochs": 4},
                "successive-halving": {"min_epochs": 2, "reduction_factor": 3}, "none": {}}[name]
    out = {"name": name, **defaults}
    for key in PRUNERS[name]:
        if key in raw:
            out[key] = _whole(f"{where}: pruner", key, raw[key], at_least=2 if key == "reduction_factor" else 0,
                              why="a whole number" + (" of at least 2" if key == "reduction_factor" else ""))
    return out


def _space(where: str, raw: Any) -> tuple[tuple[Param, ...], dict, dict]:
    """The search space: settings for every cell, then per loss and per miner."""
    from ..losses import LOSSES
    from ..miners import MINERS

    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: space: expected a mapping with keys {', '.join(SPACE_KEYS)} naming what to "
                          f"search, got {raw!r}")
    _no_unknown(f"{where}: space", raw, SPACE_KEYS)
    settings = tuple(_param(f"{where}: space: settings", name, value, None, None)
                     for name, value in _mapping(f"{where}: space: settings", raw.get("settings")).items())
    per = {}
    for kind, registry in (("losses", LOSSES), ("miners", MINERS)):
        per[kind] = {}
        for component, params in _mapping(f"{where}: space: {kind}", raw.get(kind)).items():
            try:
                registry.get(component)
            except ConfigError as error:
                raise type(error)(f"{where}: space: {kind}: {error}") from None
            inner = f"{where}: space: {kind}: {component}"
            per[kind][str(component)] = tuple(_param(inner, name, value, registry, component)
                                              for name, value in _mapping(inner, params).items())
    if not settings and not any(per.values()):
        raise ConfigError(f"{where}: space: names no parameter to search")
    return settings, per["losses"], per["miners"]


def _mapping(where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def component_arguments(registry, name: str) -> list[str]:
    """A loss's or miner's keyword arguments (those of its constructor)."""
    parameters = inspect.signature(registry.get(name).__init__).parameters
    return [p for p, v in parameters.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]


def _param(where: str, name: Any, value: Any, registry, component: str | None) -> Param:
    """One parameter's range or choices; its name a keyword argument of the component, else a run setting."""
    name = str(name)
    if registry is not None and name in component_arguments(registry, component):
        qualified = f"{'loss' if registry.kind == 'loss' else 'miner'}.{name}"
    elif name in TUNABLE_SETTINGS:
        qualified = name
    else:
        valid = (component_arguments(registry, component) if registry is not None else []) + list(TUNABLE_SETTINGS)
        what = f"{registry.kind} {component!r} takes no argument" if registry is not None else "no tunable setting"
        raise ConfigError(f"{where}: {what} {name!r} and it is not a tunable run setting; valid: {', '.join(valid)}")
    where = f"{where}: {name}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: an empty list of choices; give at least one value")
        return Param(qualified, choices=tuple(value))
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected {{low, high, log, int}} or a list of choices, got {value!r}")
    _no_unknown(where, value, RANGE_KEYS)
    low, high = value.get("low"), value.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must both be finite numbers, got low={low!r}, high={high!r}")
    if not low < high:
        raise ConfigError(f"{where}: an empty range: low={low!r} is not below high={high!r}")
    log, integer = bool(value.get("log", False)), bool(value.get("int", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range must lie above zero, got low={low!r} (use a positive low, or log: false)")
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: an integer range needs whole bounds, got low={low!r}, high={high!r}")
    return Param(qualified, low=float(low), high=float(high), log=log, integer=integer)


@dataclass(frozen=True)
class Search:
    """The hyperparameter search of one (dataset, loss, miner) cell: its trials train ``base`` (with the
    tuning seed) with each trial's values applied, and score on the validation classes."""
    spec: TuningSpec
    base: RunConfig
    params: tuple[Param, ...]

    @property
    def search_hash(self) -> str:
        identity = {"base": self.base.config_hash(), "params": [p.describe() for p in self.params], **self.spec.identity()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def search_id(self) -> str:
        return self.base.run_id().rsplit("__", 2)[0] + f"__tuning__{self.search_hash[:10]}"

    @property
    def folder(self) -> Path:
        """Its folder in the study's tuning/ when it is there; else a finished search of the same id in a
        reuse folder (dmlbench.paths.reuse_folders), read there and never written; else the study's, to run."""
        own = results_dir() / "tuning" / self.search_id
        if own.exists():
            return own
        for root in reuse_folders():
            found = root / "tuning" / self.search_id
            if found.resolve() != own.resolve() and _finished(found / "best.json", self.search_id):
                return found
        return own

    @property
    def best_path(self) -> Path:
        return self.folder / "best.json"

    def is_done(self) -> bool:
        """Its budget is spent and best.json written (a damaged best.json is not done)."""
        return _finished(self.best_path, self.search_id)

    def best_values(self) -> dict[str, Any]:
        return dict(read_json(self.best_path)["values"])

    def current_values(self) -> dict[str, Any]:
        """The untuned cell's value of each searched parameter (None where it has none, e.g. loss_lr unset)."""
        return {param.name: self._current(param) for param in self.params}

    def default_values(self) -> dict[str, Any]:
        """The untuned cell's values that lie inside their ranges: trial 0's (the others are drawn)."""
        return {param.name: value for param, value in zip(self.params, self.current_values().values())
                if value is not None and param.contains(value)}

    def _current(self, param: Param) -> Any:
        if param.target == "setting":
            return getattr(self.base, param.key)
        from ..losses import LOSSES
        from ..miners import MINERS

        kwargs, registry, name = ((self.base.loss_kwargs, LOSSES, self.base.loss) if param.target == "loss"
                                  else (self.base.miner_kwargs, MINERS, self.base.miner))
        if param.key in kwargs:
            return kwargs[param.key]
        default = inspect.signature(registry.get(name).__init__).parameters[param.key].default
        return None if default is inspect.Parameter.empty else default

    def apply(self, values: dict[str, Any], seed: int | None = None) -> RunConfig:
        """``base`` with ``values`` (parameter name -> value) applied, at ``seed`` (default the tuning seed)."""
        loss_kwargs, miner_kwargs, settings = dict(self.base.loss_kwargs), dict(self.base.miner_kwargs), {}
        for param in self.params:
            if param.name not in values:
                continue
            target = {"loss": loss_kwargs, "miner": miner_kwargs, "setting": settings}[param.target]
            target[param.key] = values[param.name]
        return dataclasses.replace(self.base, loss_kwargs=loss_kwargs, miner_kwargs=miner_kwargs, **settings,
                                   seed=self.base.seed if seed is None else seed)

    def describe(self) -> dict[str, Any]:
        return {"search_id": self.search_id, "dataset": self.base.dataset, "loss": self.base.loss,
                "miner": self.base.miner, "base_config": self.base.to_dict(), "base_run_id": self.base.run_id(),
                "params": [p.describe() for p in self.params], "defaults": self.current_values(),
                "trial_0": self.default_values(),
                "spec": self.spec.identity() | {"storage": self.spec.storage, "stale_after_min": self.spec.stale_after_min}}


def range_ends(param: Param) -> list[tuple[str, Any]]:
    """(what, value) of each value a range can give a trial at its ends, as :meth:`Param.suggest` gives
    it (whole numbers for an int range, floats rounded), or of each choice."""
    if param.choices is not None:
        return [("the choice", value) for value in param.choices]
    if param.integer:
        return [("the low end", int(param.low)), ("the high end", int(param.high))]
    return [("the low end", rounded(param.low)), ("the high end", rounded(param.high))]


def check_ranges(search: Search, where: str, *, checked_models: set | None = None, data: bool = True) -> None:
    """Each range's ends and each choice of ``search`` made into the run a trial would train, and
    checked as a run is (RunConfig.validate; with ``data``, also the batch sampler against the
    dataset's training split: dmlbench.study.preflight), so that a value no trial could train with
    (P above the training classes, text for lr, a margin the loss refuses, a float for a whole-number
    setting) fails before the first trial, naming where the range is written. ``where`` is the
    study file's "<path>: tuning: space"."""
    from .preflight import check_sampler, training_split

    base = search.base
    for param in search.params:
        owner = ("losses", base.loss) if param.name in {p.name for p in search.spec.losses.get(base.loss, ())} \
            else ("miners", base.miner) if param.name in {p.name for p in search.spec.miners.get(base.miner, ())} \
            else ("settings",)
        for what, value in range_ends(param):
            config = search.apply({param.name: value})
            try:
                config.validate(checked_models)
                if data:
                    check_sampler(config, training_split(config.dataset, config.data_root))
            except ConfigError as error:
                hint = " (give the range int: true)" if param.key in ("P", "K", "embedding_dim") \
                    and not param.integer and param.choices is None else ""
                raise ConfigError(f"{where}: {': '.join(owner)}: {param.key}: {what} {value!r} makes a run no trial "
                                  f"could train ({base.dataset} x {base.loss} x {base.miner}){hint}: {error}") from None


def _finished(best: Path, search_id: str) -> bool:
    """``best`` is a readable best.json of search ``search_id``."""
    try:
        return read_json(best)["search_id"] == search_id
    except (OSError, ValueError, KeyError, TypeError):
        return False


def searches_for(spec: TuningSpec, configs: list[RunConfig]) -> list[Search]:
    """One search per distinct (dataset, loss, miner, kwargs, settings) of ``configs``, at the tuning seed.
    A cell the space gives no parameter to is not searched (it has nothing to tune)."""
    out, seen = [], set()
    for config in configs:
        base = dataclasses.replace(config, seed=spec.seed)
        params = spec.params_for(config.loss, config.miner)
        if not params or base.config_hash() in seen:
            continue
        seen.add(base.config_hash())
        out.append(Search(spec, base, params))
    return out
