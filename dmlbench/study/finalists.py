"""A search's finalists, re-scored over new seeds before one is chosen (the ``finalists:`` and
``rescore_seeds:`` of a tuning block).

One training run per trial is one draw of the seed's noise: on han-typefaces the winner of an 8-trial
search often led its runner-up by less than one seed's standard deviation. So once a search's budget is
spent, its ``finalists`` best trials of settings other than the defaults (ranked by the epochs they
reached, then their score: a trial that survived every rung of successive halving outranks one pruned
early) and the cell's own defaults train again at full length, without pruning, at each of ``rescore_seeds`` seeds that no trial used
(the tuning seed + 1, + 2, ...), and are scored on the validation classes as the trials were. The
choice is the best mean re-score, so the trials' own scores, which picked the finalists, do not pick
the winner (no selection bias), and the defaults compete on the same footing.

Where it keeps things: ``<search folder>/finalists/<key>__seed<s>.json`` per re-score (key ``trial0012``
or ``defaults``), written once the run ends; a ``.claim`` file beside it while a tuner trains it. A
tuner killed mid-run leaves a claim whose process is gone: the next tuner takes it over and trains that
run again from its start, so a restarted search ends as an uninterrupted one (training is deterministic
on the CPU). What best.json gains: each finalist's re-scores and mean, the winner and runner-up, the gap
between them, the seeds' pooled standard deviation, and ``tie`` where the gap is below it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json, read_json
from .tuning import Search

log = logging.getLogger("dmlbench")

DEFAULTS = "defaults"


def folder(search: Search) -> Path:
    return search.folder / "finalists"


def record_path(search: Search, key: str, seed: int) -> Path:
    return folder(search) / f"{key}__seed{seed}.json"


def finalists(search: Search, study) -> list[dict[str, Any]]:
    """The runs re-scored: the cell's defaults and the ``spec.finalists`` best trials of other settings (by
    epochs reached, then score; distinct settings). Where a top trial drew the defaults' settings it stands
    for them and the next trial joins, so every search re-scores ``finalists + 1`` settings: the same
    re-score epochs for every loss."""
    from .trial_records import _record_of, budget_trials, epochs_of

    ranked = sorted(budget_trials(search, study), key=lambda t: (-epochs_of(t), -(t.value or 0.0), t.number))
    defaults = default_values(search)
    own = search.apply(defaults).config_hash()
    out, seen, others = [], set(), 0
    for trial in ranked:
        values = _record_of(search, trial)["values"]
        settings = search.apply(values).config_hash()
        if settings in seen or (settings != own and others == search.spec.finalists):
            continue
        seen.add(settings)
        others += settings != own
        out.append({"key": f"trial{trial.number:04d}", "trial": trial.number, "values": values,
                    "search_value": trial.value, "epochs": epochs_of(trial)})
        if others == search.spec.finalists and own in seen:
            break
    if own not in seen:
        out.append({"key": DEFAULTS, "trial": None, "values": defaults, "search_value": None, "epochs": None})
    return out


def default_values(search: Search) -> dict[str, Any]:
    """The cell's own value of each searched parameter that has one (applied, they give the cell itself)."""
    return {name: value for name, value in search.current_values().items() if value is not None}


def rescore(search: Search, study, splits) -> bool:
    """Train every finalist at every re-score seed not yet recorded (skipping runs another live tuner has
    claimed); True once every re-score is recorded."""
    folder(search).mkdir(parents=True, exist_ok=True)
    waiting = False  # a run claimed by another live tuner: it writes that record, and best.json after it
    for entry in finalists(search, study):
        for seed in search.spec.rescore_seed_list:
            path = record_path(search, entry["key"], seed)
            if _recorded(path):
                continue
            if not _claim(search, path):
                waiting = True
                continue
            try:
                _run(search, entry, seed, splits, path)
            finally:
                path.with_suffix(".claim").unlink(missing_ok=True)
    return not waiting  # every other run was recorded, or trained here (a run records its score or raises)


def _recorded(path: Path) -> bool:
    try:
        return isinstance(read_json(path).get("value"), (int, float))
    except (OSError, ValueError, AttributeError):
        return False


def _claim(search: Search, path: Path) -> bool:
    """Take the run of ``path`` for this tuner: no claim, or one whose tuner is gone."""
    from .trial_records import _alive, _owner

    claim = path.with_suffix(".claim")
    for _ in range(2):
        try:
            handle = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(claim.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            if owner and _alive(owner, search.spec.stale_after_min * 60):
                return False
            log.warning("%s: the re-score %s was interrupted (its tuner is gone); training it again", search.search_id,
                        path.name)
            claim.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as out:
            json.dump(_owner(), out)
        return True
    return False


def _run(search: Search, entry: dict, seed: int, splits, path: Path) -> None:
    """One finalist at one seed, at full length and unpruned, scored on the validation classes."""
    from ..training.loop import fit
    from .trial_records import _owner

    config = search.apply(entry["values"], seed=seed)
    metric = f"val_{search.spec.objective}"
    curve, started = [], time.time()

    def on_epoch(epoch: dict, history: list[dict]) -> None:
        curve.append({k: epoch.get(k) for k in ("epoch", "loss", metric, "time_s")})
        path.with_suffix(".claim").write_text(json.dumps(_owner()))

    record = {"search_id": search.search_id, **entry, "seed": seed, "run_config": config.to_dict(), "curve": curve}
    try:
        _result, state = fit(config, splits, on_epoch_end=on_epoch, progress=False)
    except FloatingPointError as error:  # diverged: a legitimate, bad outcome, scored 0 as a trial is
        record.update(value=0.0, diverged=str(error))
    else:
        record.update(value=float(state.best["score"]), best_epoch=state.best["epoch"])
    atomic_write_json(path, {**record, "duration_s": time.time() - started})
    log.info("%s: finalist %s at seed %d: %s", search.search_id, entry["key"], seed, record["value"])


def choose(search: Search, study) -> dict[str, Any]:
    """best.json's choice: the finalist with the best mean re-score (ties: the first ranked), its gap to
    the runner-up, and the seeds' pooled standard deviation (``tie``: the gap is below it)."""
    seeds = search.spec.rescore_seed_list
    entries = []
    for rank, entry in enumerate(finalists(search, study)):
        scores = [float(read_json(record_path(search, entry["key"], s))["value"]) for s in seeds]
        entries.append({**entry, "rescores": dict(zip(map(str, seeds), scores)), "mean": sum(scores) / len(scores),
                        "rank_in_search": rank})
    ranked = sorted(entries, key=lambda e: (-e["mean"], e["rank_in_search"]))
    winner, runner = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    sd = pooled_sd([list(e["rescores"].values()) for e in entries])
    gap = winner["mean"] - runner["mean"] if runner else None
    defaults = next((e for e in entries if e["key"] == DEFAULTS), None)
    return {"chosen_by": f"the best mean validation {search.spec.objective} over re-score seeds "
                         f"{', '.join(map(str, seeds))} of {len(entries)} finalists",
            "best_trial": winner["trial"], "value": winner["mean"], "values": _as_cell(search, winner["values"]),
            "winner": winner["key"], "runner_up": runner["key"] if runner else None, "gap": gap, "seed_sd": sd,
            "tie": bool(sd is not None and gap is not None and gap < sd),
            "defaults_rescored": defaults["mean"] if defaults else None,
            "finalists": [{k: e[k] for k in ("key", "trial", "values", "search_value", "epochs", "rescores", "mean")}
                          for e in ranked]}


def is_defaults(search: Search, values: dict[str, Any]) -> bool:
    """Whether ``values`` are the cell's own settings: applied, they give the cell itself, or the cell with
    its defaults written out (a trial drawing a loss's default margin names it; the cell leaves it unsaid)."""
    applied = search.apply(values).config_hash()
    return applied in (search.base.config_hash(), search.apply(default_values(search)).config_hash())


def _as_cell(search: Search, values: dict[str, Any]) -> dict[str, Any]:
    """The chosen values; {} where they are the cell's own defaults written out, so that the tuned cells
    are the default cells themselves (one run per seed) rather than copies under other run ids."""
    return {} if is_defaults(search, values) else values


def pooled_sd(groups: list[list[float]]) -> float | None:
    """The standard deviation within groups, pooled (each group's own variance about its mean); None
    where no group has two values."""
    squares, freedom = 0.0, 0
    for values in groups:
        if len(values) < 2:
            continue
        mean = sum(values) / len(values)
        squares += sum((v - mean) ** 2 for v in values)
        freedom += len(values) - 1
    return math.sqrt(squares / freedom) if freedom else None
