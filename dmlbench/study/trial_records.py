"""A search's trial records and who runs them: shared by the tuner (dmlbench.study.tuner) and the
finalists' re-scores (dmlbench.study.finalists).

- ``trials/<number>.json``: a trial's record (values, state, curve, times, owner); a damaged one is set
  aside and written again from the storage;
- an owner: the host, process and last sign of life of the tuner running a trial or a re-score.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json, read_json, set_aside
from .tuning import Search, rounded

log = logging.getLogger("dmlbench")

FINISHED = ("COMPLETE", "PRUNED")


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


def trial_path(search: Search, number: int) -> Path:
    return search.folder / "trials" / f"{number:04d}.json"


def _read_record(search: Search, number: int) -> dict | None:
    """Trial ``number``'s record; None where there is none, or it is damaged (then set aside, with a
    warning naming it: :func:`_record_of` writes it again from the storage)."""
    path = trial_path(search, number)
    try:
        record = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    else:
        if isinstance(record, dict) and record.get("number") == number and isinstance(record.get("state"), str):
            return record
        problem = f"not the record of trial {number}"
    moved = set_aside(path)
    log.warning("%s: a damaged trial record (%s); set aside as %s", path, problem, moved.name)
    return None


def _record_of(search: Search, trial) -> dict:
    """A finished trial's record; a missing or damaged one is written again from what the storage holds
    (its values, state, score, validation curve and times)."""
    record = _read_record(search, trial.number)
    if record is not None and record.get("state") == trial.state.name and "values" in record:
        return record
    metric = f"val_{search.spec.objective}"
    record = {"number": trial.number, "search_id": search.search_id, "state": trial.state.name,
              "values": {name: rounded(v) if isinstance(v, float) else v for name, v in trial.params.items()},
              "value": trial.value, "curve": [{"epoch": e, metric: v} for e, v in sorted(trial.intermediate_values.items())],
              "rebuilt_from_storage": True,
              **{k: v for k, v in trial.user_attrs.items() if k in ("role", "retry_of")}}
    if trial.datetime_start and trial.datetime_complete:
        record.update(started=trial.datetime_start.timestamp(), finished=trial.datetime_complete.timestamp(),
                      duration_s=(trial.datetime_complete - trial.datetime_start).total_seconds())
    _write_record(search, record)
    log.warning("%s: trial %d's record written again from the storage", search.search_id, trial.number)
    return record


def _write_record(search: Search, record: dict) -> None:
    trial_path(search, record["number"]).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(trial_path(search, record["number"]), record)


def epochs_of(trial) -> int:
    """The epochs a trial trained (its reported epochs; a pruned or stopped trial's up to its stop)."""
    return max(trial.intermediate_values, default=0)


def budget_trials(search: Search, study) -> list:
    """The finished trials the budget paid for, in order (a budget in trials: its first that many)."""
    trials = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED), key=lambda t: t.number)
    return trials if search.spec.trials is None else trials[:search.spec.trials]
