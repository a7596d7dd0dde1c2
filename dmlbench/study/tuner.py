"""Running a :class:`dmlbench.study.tuning.Search` with Optuna: TPE, a pruner, a real storage.

Where it keeps things: ``results/tuning/<search id>/``

    trials.db or trials.journal   Optuna's storage (SQLite through its RDB storage, or its journal file)
    search.json                   what is searched: the cell, the parameters and ranges, the budget
    trials/<number>.json          each trial: its values, state, validation curve, times, owner
    trials.csv                    every trial in one table
    best.json                     once the budget is spent: the best complete trial's values

Promises:
- the budget is the number of finished (complete or pruned) trials; a tuner stops when the search has
  that many, or that many with those still running, so two tuners on one search share the budget;
- a tuner killed mid-trial leaves that trial running in the storage; the next tuner to start marks it
  failed (its process is gone, or it gave no sign of life for ``stale_after_min``) and queues a retry
  with the same values, so a finished trial is never repeated and the killed one runs once more;
- trial ``j``'s values are drawn by a sampler seeded with (seed, j): a restarted tuner draws what an
  uninterrupted one would have drawn, so on the CPU both end at the same best settings;
- trial 0 is the untuned cell's own settings (where they lie in the ranges): tuning can only improve
  on the default on the validation classes;
- a trial sees the train and validation classes only (:class:`dmlbench.datasets.base.TuningSplits`:
  asking for the test split raises), and never writes a run folder: test numbers come from the cells.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..datasets.base import TuningSplits
from ..fileio import atomic_write_json, atomic_write_text, read_json
from .tuning import Search

log = logging.getLogger("dmlbench")

FINISHED = ("COMPLETE", "PRUNED")
HEARTBEAT_S = 30.0  # a running trial's owner writes a sign of life at least this often (at every epoch's end)


def storage(search: Search):
    """The search's Optuna storage (created on first use)."""
    import optuna

    search.folder.mkdir(parents=True, exist_ok=True)
    if search.spec.storage == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(search.folder / "trials.journal")))
    return optuna.storages.RDBStorage(f"sqlite:///{search.folder / 'trials.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def _pruner(search: Search):
    import optuna

    spec = search.spec.pruner
    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"], n_warmup_steps=spec["warmup_epochs"])
    if spec["name"] == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["min_epochs"],
                                                      reduction_factor=spec["reduction_factor"])
    return optuna.pruners.NopPruner()


def open_study(search: Search, backend=None, *, finished: int = 0):
    """The search's Optuna study, its sampler seeded for the next trial (``finished`` trials done)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=search.spec.seed * 100_003 + finished, multivariate=True,
                                         n_startup_trials=search.spec.startup_trials)
    return optuna.create_study(study_name=search.search_id, storage=backend or storage(search), direction="maximize",
                               sampler=sampler, pruner=_pruner(search), load_if_exists=True)


def tuning_splits(search: Search) -> TuningSplits:
    """The search's dataset with its test split sealed; fails before any trial when there is no
    validation split to score on."""
    from ..errors import ConfigError

    config = search.base
    splits = TuningSplits(config.load_splits())
    if len(splits.val) == 0 or len(splits.val.classes) < 2:
        raise ConfigError(f"{search.search_id}: {config.dataset} has no validation split of two classes or more to "
                          f"score trials on ({len(splits.val)} images); tuning needs one")
    return splits


def tune(search: Search, *, max_trials: int | None = None, splits: TuningSplits | None = None) -> dict | None:
    """Run trials until the search's budget is spent (or ``max_trials`` of them here); returns best.json's
    content once the budget is spent and no trial runs, else None."""
    backend = storage(search)
    atomic_write_json(search.folder / "search.json", search.describe())
    study = open_study(search, backend)
    with _search_lock(search):  # several tuners may start at once: one queues trial 0
        if not study.trials and search.default_values():  # trial 0: the defaults (those inside the ranges)
            whole = search.default_values() == search.current_values()
            study.enqueue_trial(search.default_values(),
                                user_attrs={"role": "default settings" if whole else "defaults inside the ranges"})
    run = 0
    while max_trials is None or run < max_trials:
        study = open_study(search, backend, finished=_count(study, FINISHED))
        with _search_lock(search):  # one tuner fails and requeues a given orphan
            _fail_orphans(search, study, backend)
        if _count(study, (*FINISHED, "RUNNING", "WAITING")) >= search.spec.trials and not _waiting(study):
            break
        if splits is None:
            splits = tuning_splits(search)
        elif not isinstance(splits, TuningSplits):  # whatever is passed in, a trial sees no test split
            splits = TuningSplits(splits)
        trial = study.ask()
        if _earlier_taken(study, trial.number) >= search.spec.trials:  # another tuner took the last one meanwhile
            _give_up(study, trial, "the budget was taken by another tuner")
            break
        run_trial(search, study, trial, splits)
        run += 1
    _write_table(search, study)
    return finish(search, study)


@contextmanager
def _search_lock(search: Search):
    """An exclusive lock on the search's folder (a file lock: on a shared file system where it is honoured)."""
    with open(search.folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _count(study, states: tuple[str, ...]) -> int:
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


def _waiting(study) -> bool:
    return any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False))


def _earlier_taken(study, number: int) -> int:
    return sum(t.number < number and t.state.name in (*FINISHED, "RUNNING") for t in study.get_trials(deepcopy=False))


def _give_up(study, trial, reason: str) -> None:
    import optuna

    trial.set_user_attr("failed_because", reason)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


def _alive(owner: dict[str, Any], stale_after_s: float) -> bool:
    """Whether a running trial's tuner may still be at work: on this machine its process exists; anywhere,
    its last sign of life is younger than ``stale_after_s``."""
    if time.time() - float(owner.get("heartbeat", 0)) > stale_after_s:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _fail_orphans(search: Search, study, backend) -> None:
    """Running trials whose tuner is gone: marked failed, and retried with the same values."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = _read_owner(search, trial)
        if _alive(owner, search.spec.stale_after_min * 60):
            continue
        backend.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        log.warning("%s: trial %d was interrupted (its tuner %s:%s is gone); retrying its values", search.search_id,
                    trial.number, owner.get("host"), owner.get("pid"))
        record = _read_record(search, trial.number) or {}
        _write_record(search, {**record, "number": trial.number, "state": "FAIL",
                               "failed_because": "interrupted: its tuner stopped mid-trial; retried"})
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number,
                                                            **{k: v for k, v in trial.user_attrs.items() if k == "role"}})


def trial_path(search: Search, number: int) -> Path:
    return search.folder / "trials" / f"{number:04d}.json"


def _read_record(search: Search, number: int) -> dict | None:
    try:
        return read_json(trial_path(search, number))
    except (OSError, ValueError):
        return None


def _read_owner(search: Search, trial) -> dict:
    """Who runs a trial and when it last said so; a trial without a record yet (its tuner asked for it
    and has not written it) counts as alive from its start until it is stale."""
    record = _read_record(search, trial.number)
    if record and record.get("owner"):
        return record["owner"]
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return {"host": "", "pid": -1, "heartbeat": started}


def _write_record(search: Search, record: dict) -> None:
    trial_path(search, record["number"]).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(trial_path(search, record["number"]), record)


def run_trial(search: Search, study, trial, splits: TuningSplits) -> None:
    """Train the trial's settings on the train classes, scoring each epoch on the validation classes;
    pruned when the pruner says so; told to the storage complete, pruned or failed."""
    import optuna

    from ..training.loop import fit

    values = {param.name: param.suggest(trial) for param in search.params}
    config = search.apply(values)
    record = {"number": trial.number, "search_id": search.search_id, "state": "RUNNING", "values": values,
              "run_config": config.to_dict(), "started": time.time(), "owner": _owner(), "curve": [],
              **{k: v for k, v in trial.user_attrs.items() if k in ("role", "retry_of")}}
    _write_record(search, record)
    metric = f"val_{search.spec.objective}"

    def on_epoch(epoch: dict, history: list[dict]) -> None:
        record["curve"].append({k: epoch.get(k) for k in ("epoch", "loss", metric, "val_recall@1", "val_map@r",
                                                           "time_s", "lr")})
        record["owner"] = _owner()
        _write_record(search, record)
        if epoch["epoch"] >= 1:
            trial.report(float(epoch[metric]), epoch["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

    try:
        _run, state = fit(config, splits, on_epoch_end=on_epoch, progress=False)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        _close(search, record, "PRUNED", value=max(c[metric] for c in record["curve"][1:]))
    except FloatingPointError as error:  # the settings diverge: a legitimate, bad outcome, scored 0
        study.tell(trial, 0.0)
        _close(search, record, "COMPLETE", value=0.0, diverged=str(error))
    except BaseException as error:  # a bug, or a stop: the trial failed, the error goes up
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        _close(search, record, "FAIL", failed_because=f"{type(error).__name__}: {error}")
        raise
    else:
        study.tell(trial, float(state.best["score"]))
        _close(search, record, "COMPLETE", value=float(state.best["score"]), best_epoch=state.best["epoch"])


def _close(search: Search, record: dict, state: str, **extra) -> None:
    finished = time.time()
    _write_record(search, {**record, "state": state, "finished": finished,
                           "duration_s": finished - record["started"], **extra})
    log.info("%s: trial %d %s %s", search.search_id, record["number"], state, extra.get("value"))


def _write_table(search: Search, study) -> None:
    """trials.csv: every trial's number, state, value, values and duration."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    atomic_write_text(search.folder / "trials.csv", frame.to_csv(index=False))


def finish(search: Search, study) -> dict | None:
    """best.json once the budget's trials are all finished: the best complete trial (ties: the earliest)."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED]
    if len(trials) < search.spec.trials or _count(study, ("RUNNING", "WAITING")):
        return None
    trials = sorted(trials, key=lambda t: t.number)[:search.spec.trials]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: (t.value, -t.number))
    records = [_read_record(search, t.number) or {} for t in trials]
    by_number = {r.get("number"): r for r in records}
    best_record = {"search_id": search.search_id, "objective": search.spec.objective, "trials": len(trials),
                   "best_trial": best.number, "value": best.value, "values": by_number[best.number]["values"],
                   "default_values": search.current_values(),
                   "default_value": next((t.value for t in complete if t.user_attrs.get("role") == "default settings"),
                                         None),
                   "states": {s: sum(t.state.name == s for t in trials) for s in FINISHED},
                   "trial_seconds": sum(r.get("duration_s", 0.0) for r in records)}
    atomic_write_json(search.best_path, best_record)
    return best_record
