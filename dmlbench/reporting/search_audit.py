"""Can a tuned study's searches pick their winners? Per search, read from its files:

- :func:`search_rows`: the budget and what it bought (epochs trained, pruned ones counted; configurations
  started; complete, pruned and budget-stopped trials), the finalists' re-scores, the winner's gap to the
  runner-up against the seeds' pooled standard deviation ("tie" where the gap is below it), the validation
  gain of the winner over the cell's own defaults (paired by re-score seed), and each searched
  parameter's winner as a position in its range (0: the low end, 1: the high end, on the range's own
  scale: logarithmic for a log range), flagged where it lies in the outer :data:`EDGE` of the range;
- :func:`epochs_check`: whether every search trained the same number of epochs (within :data:`EQUAL`);
- :func:`tied_after_tuning`: each loss at its chosen settings (the tuned cells, or the default cells where
  the defaults won) against the best, paired by unit with Holm over that family
  (dmlbench.reporting.claims.tied_with_best);
- :func:`command_lines`: what ``dmlbench tuning`` prints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import read_json
from .stats import DIFFERENCE_RANGE, t_interval

EDGE = 0.10  # a winner in the outer tenth of a range (on its scale) sits at an edge: the optimum may lie beyond
EQUAL = 0.05  # the epochs the searches trained may differ by this share of the largest, and no more


def position(param, value) -> float | None:
    """Where ``value`` lies in ``param``'s range, 0 (low end) to 1 (high end), on a log scale for a log
    range; None for a list of choices or a missing value."""
    if param.choices is not None or value is None:
        return None
    low, high, value = float(param.low), float(param.high), float(value)
    if param.log:
        low, high, value = math.log(low), math.log(high), math.log(value)
    return (value - low) / (high - low)


def _records(folder: Path) -> list[dict[str, Any]]:
    """The search's trial records; a damaged one is left out with a warning naming it and the command
    that writes it again from the search's storage (the tuner does so for a finished search too)."""
    out = []
    for path in sorted((folder / "trials").glob("*.json")):
        try:
            record = read_json(path)
        except (OSError, ValueError) as error:
            record = f"{type(error).__name__}: {' '.join(str(error).split())}"
        if isinstance(record, dict) and "number" in record:
            out.append(record)
            continue
        problem = record if isinstance(record, str) else "not a trial record"
        logging.getLogger("dmlbench").warning(
            "%s: a damaged trial record (%s), left out of the report; 'dmlbench tune --study FILE' sets it aside "
            "and writes it again from the search's storage", path, problem)
    return out


def _trial_records(search) -> list[dict]:
    return [r for r in _records(search.folder) if r.get("state") in ("COMPLETE", "PRUNED")]


def _epochs(record: dict) -> int:
    return max((c.get("epoch") or 0 for c in record.get("curve") or []), default=0)


def _defaults_entry(search, finalists: list[dict]) -> dict | None:
    """The finalist with the cell's own settings (the 'defaults' entry, or a trial that drew them)."""
    from ..study.finalists import is_defaults

    return next((f for f in finalists if is_defaults(search, f["values"])), None)


def _gain(search, best: dict) -> tuple[float, float, float]:
    """The winner's validation gain over the defaults, paired by re-score seed, with its t-interval."""
    finalists = best.get("finalists") or []
    winner = next((f for f in finalists if f["key"] == best.get("winner")), None)
    defaults = _defaults_entry(search, finalists)
    if winner is None or defaults is None:
        return (np.nan,) * 3
    differences = [winner["rescores"][s] - defaults["rescores"][s] for s in winner["rescores"]]
    return t_interval(pd.Series(differences), 0.95, DIFFERENCE_RANGE)


def search_row(search) -> dict[str, Any] | None:
    """One finished search's row (None while it runs)."""
    if not search.is_done():
        return None
    best, records = read_json(search.best_path), _trial_records(search)
    defaults = _defaults_entry(search, best.get("finalists") or [])
    gain, gain_low, gain_high = _gain(search, best)
    keys = [p.key for p in search.params]  # a loss's and a miner's parameter of one name: both qualified
    positions = {(p.key if keys.count(p.key) == 1 else p.name):
                 position(p, best["values"].get(p.name, search.current_values().get(p.name))) for p in search.params}
    edges = [name for name, where in positions.items() if where is not None and min(where, 1 - where) < EDGE]
    return {"loss": search.base.loss, "miner": search.base.miner, "search_id": search.search_id,
            "budget_epochs": search.spec.budget_epochs, "epochs": sum(_epochs(r) for r in records),
            "configs": sum(not r.get("invalid") for r in records), "invalid": sum(bool(r.get("invalid")) for r in records),
            "complete": sum(r["state"] == "COMPLETE" for r in records),
            "pruned": sum(r["state"] == "PRUNED" and not r.get("stopped_by") and not r.get("invalid") for r in records),
            "stopped": sum(bool(r.get("stopped_by")) for r in records),
            "rescore_epochs": sum(_epochs(read_json(p)) for p in (search.folder / "finalists").glob("*.json")),
            "finalists": len(best.get("finalists") or []), "winner": best.get("winner", f"trial{best['best_trial']:04d}"),
            "winner_val": best["value"], "runner_up": best.get("runner_up"),
            "gap": best.get("gap"), "seed_sd": best.get("seed_sd"), "tie": bool(best.get("tie")),
            "defaults_val": defaults["mean"] if defaults else best.get("default_value"),
            "val_gain": gain, "val_gain_low": gain_low, "val_gain_high": gain_high,
            "positions": positions, "at_edge": edges, "values": best["values"]}


def search_rows(searches) -> pd.DataFrame:
    rows = [row for row in map(search_row, searches) if row is not None]
    return pd.DataFrame(rows)


def epochs_check(rows: pd.DataFrame) -> dict[str, Any]:
    """The fewest and most epochs a search trained, their spread as a share of the most, and whether
    it is within :data:`EQUAL`."""
    if rows.empty:
        return {"least": None, "most": None, "spread": None, "equal": False}
    least, most = int(rows["epochs"].min()), int(rows["epochs"].max())
    spread = (most - least) / most if most else 0.0
    return {"least": least, "most": most, "spread": spread, "equal": spread <= EQUAL}


def tied_after_tuning(study) -> pd.DataFrame:
    """Each searched loss at its chosen settings against the best (dmlbench.reporting.claims.tied_with_best):
    the tuned cells, and the default cells of a search whose defaults won."""
    from .claims import tied_with_best
    from .runs import _run_row

    chosen = {s.search_id: s.apply(read_json(s.best_path)["values"]).config_hash()
              for s in study.searches if s.is_done()}
    rows = []
    seen = set()
    for cell in study.cells:
        if cell.search not in chosen or cell.run_id in seen or not cell.is_done():
            continue
        if dataclasses.replace(cell.config, seed=study.tuning.seed).config_hash() == chosen[cell.search]:
            seen.add(cell.run_id)
            rows.append(_run_row(read_json(cell.metrics_path)))
    return tied_with_best(pd.DataFrame(rows)) if rows else pd.DataFrame()


# ---- dmlbench tuning -------------------------------------------------------------------------------------

def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def epochs_lines(rows: pd.DataFrame) -> list[str]:
    table = rows[["loss", "miner", "epochs", "configs", "complete", "pruned", "stopped", "invalid", "rescore_epochs"]]
    check = epochs_check(rows)
    return ["Epochs each search trained (pruned and budget-stopped epochs counted), the configurations it trained "
            "(invalid: values that make no valid run together, pruned untrained), and the finalists' re-score epochs:", table.to_string(index=False),
            f"the searches trained {check['least']} to {check['most']} epochs: a spread of {check['spread']:.1%} of the "
            f"most, {'equal' if check['equal'] else 'NOT equal'} within {EQUAL:.0%}; the fewest configurations a search "
            f"started: {int(rows['configs'].min())}"]


def choice_lines(rows: pd.DataFrame, spec) -> list[str]:
    shown = pd.DataFrame({
        "loss": rows["loss"], "miner": rows["miner"], "winner": rows["winner"], "val": rows["winner_val"].map(_number),
        "runner-up": rows["runner_up"], "gap": rows["gap"].map(_number), "seed SD": rows["seed_sd"].map(_number),
        "verdict": np.where(rows["tie"], "tie", "winner"), "defaults": rows["defaults_val"].map(_number),
        "val gain [95% CI]": [f"{_number(g)} [{_number(lo)}, {_number(hi)}]" for g, lo, hi in
                              zip(rows["val_gain"], rows["val_gain_low"], rows["val_gain_high"])]})
    seeds = ", ".join(map(str, spec.rescore_seed_list))
    ties = rows.loc[rows["tie"], "loss"].tolist()
    return [f"Each search's choice: validation {spec.objective} as the mean over re-score seeds {seeds}; gap: winner "
            f"minus runner-up; seed SD: the finalists' re-scores' pooled standard deviation; tie: gap below it; "
            f"val gain: winner minus the cell's defaults, paired by seed:", shown.to_string(index=False),
            f"{len(ties)} of {len(rows)} searches end in a tie: {', '.join(ties) or 'none'}"]


def edge_lines(rows: pd.DataFrame) -> list[str]:
    lines = [f"Each winner's place in its ranges (0: the low end, 1: the high end, on the range's scale; * in the "
             f"outer {EDGE:.0%}):"]
    for row in rows.itertuples():
        places = ", ".join(f"{name} {_number(where, 2)}{'*' if name in row.at_edge else ''}"
                           for name, where in row.positions.items())
        lines.append(f"  {row.loss} + {row.miner}: {places}")
    edged = [f"{r.loss} {name}" for r in rows.itertuples() for name in r.at_edge]
    lines.append(f"winners at an edge: {len(edged)} ({', '.join(edged) or 'none'})")
    return lines


def tied_lines(study) -> list[str]:
    table = tied_after_tuning(study)
    if table.empty:
        return ["Tied with the best after tuning: no finished cell at the chosen settings yet"]
    shown = table[["loss", "miner", "map@r", "units", "difference", "p_holm", "status"]]
    tied = [f"{r.loss} + {r.miner}" for r in table.itertuples() if r.status in ("best", "tied")]
    return [f"Test MAP@R of each loss at its chosen settings against the best, paired by unit, Holm over the "
            f"{len(table) - 1} others:", shown.to_string(index=False, float_format=lambda x: f"{x:.4f}"),
            f"tied with the best after tuning: {len(tied)} ({', '.join(tied)})"]


def command_lines(study_path, results=None) -> tuple[list[str], int]:
    """What `dmlbench tuning` prints, and its exit status (1 when no search has finished)."""
    import os

    from .field import results_folder, study_file

    study = study_file(study_path, "--study")
    if study.tuning is None:
        from ..errors import ConfigError

        raise ConfigError(f"{study_path}: no tuning block, so no search to audit")
    os.environ["DMLBENCH_RESULTS"] = str(results_folder(results, study, "--results").absolute())
    study = study_file(study_path, "--study")
    rows = search_rows(study.searches)
    head = (f"{study.name}: {len(rows)} of {len(study.searches)} searches finished; budget "
            f"{study.tuning.budget_text()} each, pruner {study.tuning.pruner}")
    if rows.empty:
        return [head], 1
    return [head, *epochs_lines(rows), "", *choice_lines(rows, study.tuning), "", *edge_lines(rows), "",
            *tied_lines(study)], 0
