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
- a damaged store is named and set aside (``<name>.damaged-<time>``), never silently replaced: a storage
  that does not read, or was emptied, stops the tuner where the trial records say trials finished
  (restore the file, or move the search's folder away to start over) and is started anew where none
  did; a storage lacking finished trials that the records hold is refused; a damaged trial record is
  written again from the storage;
- a trial sees the train and validation classes only (:class:`dmlbench.datasets.base.TuningSplits`:
  asking for the test split raises), and never writes a run folder: test numbers come from the cells.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..datasets.base import TuningSplits
from ..errors import ConfigError, DamagedFileError
from ..fileio import atomic_write_json, atomic_write_text, set_aside
from .trial_records import (FINISHED, _alive, _owner, _read_record, _record_of, _write_record, budget_trials,
                            epochs_of, trial_path)
from .tuning import Search

log = logging.getLogger("dmlbench")

HEARTBEAT_S = 30.0  # a running trial's owner writes a sign of life at least this often (at every epoch's end)


def storage_path(search: Search) -> Path:
    """The file of the search's Optuna storage."""
    return search.folder / ("trials.journal" if search.spec.storage == "journal" else "trials.db")


def storage(search: Search):
    """The search's Optuna storage (created on first use), checked first (:func:`check_storage`)."""
    import optuna

    search.folder.mkdir(parents=True, exist_ok=True)
    check_storage(search)
    if search.spec.storage == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(storage_path(search))))
    return optuna.storages.RDBStorage(f"sqlite:///{storage_path(search)}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def check_storage(search: Search) -> None:
    """The storage file reads, or there is nothing to lose. A damaged or emptied one is set aside; where the
    trial records say trials finished, a damaged, emptied, unreadable or missing storage stops the tuner
    (:class:`DamagedFileError`, naming the file and the way out) rather than start the search over."""
    path = storage_path(search)
    problem = _storage_problem(path)
    if problem is None:
        return
    finished = _recorded_finished(search)
    if not finished and problem[0].startswith("empty"):  # new: another tuner may be creating it this moment
        return
    moved = set_aside(path) if problem[1] else None
    aside = f"; set aside as {moved.name}" if moved else ""
    if not finished:  # nothing finished to lose: a new storage
        if moved is None and path.exists():
            raise DamagedFileError(f"{path}: {problem[0]}; make it readable, or remove it to start the search anew")
        if moved is not None:
            log.warning("%s: %s%s; no trial had finished, the search starts anew", path, problem[0], aside)
        return
    raise DamagedFileError(
        f"{path}: {problem[0]}{aside}; the search had finished {len(finished)} trials ({_numbers(finished)}, "
        f"recorded in trials/), which would be run again: restore the storage file from a copy to go on, or "
        f"move the folder {search.folder} away to start the search over")


def _storage_problem(path: Path) -> tuple[str, bool] | None:
    """What is wrong with a storage file, and whether to set it aside (None: nothing; a missing file is
    'missing', not set aside)."""
    if not path.exists():
        return "missing", False
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return f"unreadable ({error.strerror or error})", False
    if not head:
        return "empty (0 bytes)", True
    if path.suffix != ".db":
        return _journal_problem(path)
    if head != b"SQLite format 3\x00":
        return "not an SQLite database", True
    import sqlite3

    try:
        verdict = _quick_check(sqlite3, path, read_only=True)
    except sqlite3.OperationalError as error:
        if "readonly" not in str(error):
            return f"a damaged SQLite database ({error})", True
        try:  # a tuner killed inside a transaction left a hot journal: a writable connection rolls it back
            verdict = _quick_check(sqlite3, path, read_only=False)
        except sqlite3.DatabaseError as again:
            return f"a damaged SQLite database ({again})", True
    except sqlite3.DatabaseError as error:
        return f"a damaged SQLite database ({error})", True
    return None if verdict == ["ok"] else (f"a damaged SQLite database ({'; '.join(map(str, verdict[:3]))})", True)


def _quick_check(sqlite3, path: Path, read_only: bool) -> list:
    """SQLite's quick_check of ``path``; read-only unless a hot journal must be rolled back first (a
    read-only connection cannot, and fails with 'attempt to write a readonly database')."""
    where = f"{path.resolve().as_uri()}?mode=ro" if read_only else str(path)
    with contextlib.closing(sqlite3.connect(where, uri=read_only, timeout=120)) as connection:
        return [row[0] for row in connection.execute("PRAGMA quick_check")]


def _journal_problem(path: Path, wait_s: float = 0.5) -> tuple[str, bool] | None:
    """What is wrong with an Optuna journal: a line that is not JSON, or a last line cut short (looked at
    again after ``wait_s``: another tuner may be appending it this moment)."""
    import json

    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            return f"a damaged Optuna journal (line {number} is not JSON)", True
    if lines[-1]:  # no line end at the end of the file
        time.sleep(wait_s)
        if not path.read_bytes().endswith(b"\n"):
            return f"a damaged Optuna journal (its last line, {len(lines)}, is cut short)", True
    return None


def _numbers(numbers: set[int]) -> str:
    shown = sorted(numbers)
    return "trial " + ", ".join(map(str, shown[:10])) + (", ..." if len(shown) > 10 else "")


def _pruner(search: Search):
    import optuna

    spec = search.spec.pruner
    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"], n_warmup_steps=spec["warmup_epochs"])
    if spec["name"] == "successive-halving":
        return _WithoutFailed.pruner(optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec["min_epochs"], reduction_factor=spec["reduction_factor"]))
    return optuna.pruners.NopPruner()


class _WithoutFailed:
    """A study as a pruner sees it, less its failed trials: an interrupted trial's rung scores would
    otherwise stay among the competitors beside its retry's, and a restarted search would prune
    differently from an uninterrupted one."""

    def __init__(self, study):
        self._study = study

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None):
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if t.state.name != "FAIL"]

    @staticmethod
    def pruner(inner):
        import optuna

        class Pruner(optuna.pruners.BasePruner):
            def prune(self, study, trial) -> bool:
                return inner.prune(_WithoutFailed(study), trial)

        return Pruner()


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
    study = open_study(search, backend)
    _check_records(search, study)
    atomic_write_json(search.folder / "search.json", search.describe())
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
        if not budget_left(search, study) and not _waiting(study):
            break
        if splits is None:
            splits = tuning_splits(search)
        elif not isinstance(splits, TuningSplits):  # whatever is passed in, a trial sees no test split
            splits = TuningSplits(splits)
        trial = study.ask()
        if search.spec.trials is not None and _earlier_taken(study, trial.number) >= search.spec.trials:  # another
            # tuner took the last one meanwhile
            _give_up(study, trial, "the budget was taken by another tuner")
            break
        run_trial(search, study, trial, splits)
        run += 1
    _write_table(search, study)
    if search.spec.finalists and searched(search, study):
        from .finalists import rescore

        if not rescore(search, study, splits if splits is not None else tuning_splits(search)):
            return None
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


def spent_epochs(study) -> int:
    """The epochs a search's budget has paid for: its finished and running trials' (a failed trial's are
    not counted: it is retried with the same values)."""
    return sum(epochs_of(t) for t in study.get_trials(deepcopy=False) if t.state.name in (*FINISHED, "RUNNING"))


def budget_left(search: Search, study) -> bool:
    """Whether the search may start another trial."""
    if search.spec.budget_epochs is not None:
        return spent_epochs(study) < search.spec.budget_epochs
    return _count(study, (*FINISHED, "RUNNING", "WAITING")) < search.spec.trials


class BudgetSpent(Exception):
    """A trial stopped because the search's epoch budget is spent (or held back for configurations to come)."""


def check_budget(search: Search, study, epoch: int, last_epoch: int) -> None:
    """After a trial's ``epoch``: raise :class:`BudgetSpent` when the budget has no epoch left for it, or
    when one more would eat the epochs held back so that ``min_configs`` configurations can start."""
    spec = search.spec
    if spec.budget_epochs is None or epoch >= last_epoch:
        return
    spent = spent_epochs(study)
    if spent >= spec.budget_epochs:
        raise BudgetSpent("the search's epoch budget is spent")
    started = _count(study, (*FINISHED, "RUNNING"))
    held = max(0, spec.min_configs - started) * int(spec.pruner.get("min_epochs", 1) or 1)
    if spent + 1 + held > spec.budget_epochs:
        raise BudgetSpent(f"its epochs are held back for the {spec.min_configs - started} configurations still to start")


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


def _recorded_finished(search: Search) -> set[int]:
    """The numbers of the trials whose records say they finished (damaged records are set aside)."""
    folder = search.folder / "trials"
    numbers = sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()) if folder.is_dir() else []
    return {n for n in numbers if (_read_record(search, n) or {}).get("state") in FINISHED}


def _check_records(search: Search, study) -> None:
    """The storage holds every trial its records say finished: an emptied or older storage would have the
    search redo finished trials and overwrite their records."""
    recorded = _recorded_finished(search)  # read first: a trial is told to the storage before its record says so
    lost = recorded - {t.number for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED}
    if lost:
        raise DamagedFileError(
            f"{storage_path(search)}: lacks {len(lost)} finished trials that its trials/ records ({_numbers(lost)}): "
            f"it was emptied or replaced by an older copy, and they would be run again; restore the storage file "
            f"that holds them to go on, or move the folder {search.folder} away to start the search over")


def _read_owner(search: Search, trial) -> dict:
    """Who runs a trial and when it last said so; a trial without a record yet (its tuner asked for it
    and has not written it) counts as alive from its start until it is stale."""
    record = _read_record(search, trial.number)
    if record and record.get("owner"):
        return record["owner"]
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return {"host": "", "pid": -1, "heartbeat": started}


def run_trial(search: Search, study, trial, splits: TuningSplits) -> None:
    """Train the trial's settings on the train classes, scoring each epoch on the validation classes;
    pruned when the pruner says so; told to the storage complete, pruned or failed."""
    import optuna

    from ..training.loop import fit

    values = {param.name: param.suggest(trial) for param in search.params}
    config = search.apply(values)
    try:
        config.validate()
    except ConfigError as error:  # values that each pass alone but not together (a margin above another)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        _write_record(search, {"number": trial.number, "search_id": search.search_id, "state": "PRUNED", "values": values,
                               "curve": [], "value": None, "invalid": str(error), "duration_s": 0.0})
        log.warning("%s: trial %d's settings make no valid run (%s): pruned untrained", search.search_id, trial.number,
                    error)
        return
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
            check_budget(search, study, epoch["epoch"], config.epochs)

    try:
        _run, state = fit(config, splits, on_epoch_end=on_epoch, progress=False)
    except (optuna.TrialPruned, BudgetSpent) as stop:
        why = {"stopped_by": str(stop)} if isinstance(stop, BudgetSpent) else {}
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        _close(search, record, "PRUNED", value=max(c[metric] for c in record["curve"][1:]), **why)
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


def searched(search: Search, study) -> bool:
    """The search's budget is spent and no trial of it runs or waits."""
    return not budget_left(search, study) and not _count(study, ("RUNNING", "WAITING"))


def finish(search: Search, study) -> dict | None:
    """best.json once the budget's trials are all finished (and, with finalists, re-scored): the best
    complete trial (ties: the earliest), or the finalist with the best mean re-score."""
    if not searched(search, study):
        return None
    trials = budget_trials(search, study)
    if search.spec.trials is not None and len(trials) < search.spec.trials:
        return None
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete or trials, key=lambda t: (t.value if t.value is not None else -math.inf, -t.number))
    records = [_record_of(search, t) for t in trials]
    by_number = {r.get("number"): r for r in records}
    best_record = {"search_id": search.search_id, "objective": search.spec.objective, "trials": len(trials),
                   "best_trial": best.number, "value": best.value, "values": by_number[best.number]["values"],
                   "default_values": search.current_values(),
                   "default_value": next((t.value for t in complete if t.user_attrs.get("role") == "default settings"),
                                         None),
                   "states": {s: sum(t.state.name == s for t in trials) for s in FINISHED},
                   "epochs_spent": sum(epochs_of(t) for t in trials), "budget": search.spec.budget_text(),
                   "trial_seconds": sum(r.get("duration_s", 0.0) for r in records)}
    if search.spec.finalists:
        from .finalists import choose

        best_record.update(choose(search, study))
    atomic_write_json(search.best_path, best_record)
    return best_record
