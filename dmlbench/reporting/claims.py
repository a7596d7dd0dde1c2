"""What the report may claim from a study run over folds x seeds, each claim a paired test over the
replicate units (fold, seed) with its multiplicity family named:

- :func:`tied_with_best`: every cell against the best cell (highest mean test MAP@R), paired by unit,
  Holm over that family; a cell is tied with the best when it is not significantly worse.
- :func:`named_claims`: the best miner against the runner-up miner (over the grid's losses) and the
  best loss against the runner-up loss (each with its paper's sampling), Holm over those contrasts;
  "best" only when the adjusted p is below the level, "tied" otherwise.
- :func:`exact_floor`: the smallest two-sided p an exact sign-flip test can reach with n units, and
  :func:`reachable`: whether it can pass the first Holm threshold of a family.
- :func:`fold_variance`: per cell, the method-of-moments one-way variance components of a metric
  (between folds, within folds), and the share between folds.
- :func:`validation_agreement`: Kendall's tau between the cells' mean validation MAP@R (at the
  selected epoch) and their mean test MAP@R over the best cells by test MAP@R.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from .stats import by_unit, entry_by_unit, entry_matrix, entry_scores, holm, paired_t, with_units

TIED_COLUMNS = ["loss", "miner", "map@r", "r_precision", "units", "difference", "low", "high", "p", "p_holm",
                "status"]


def _cell_means(runs: pd.DataFrame, metrics) -> pd.DataFrame:
    """Mean of ``metrics`` per (loss, miner), best first by the first metric."""
    present = [m for m in metrics if m in runs]
    means = runs.groupby(["loss", "miner"], sort=False)[present].mean().reset_index()
    return means.sort_values(present[0], ascending=False, kind="stable").reset_index(drop=True)


def tied_with_best(runs: pd.DataFrame, metric: str = "map@r", confidence: float = 0.95) -> pd.DataFrame:
    """One dataset's cells, best first by mean ``metric``: each against the best cell, paired by unit
    (its difference, t-interval and p), Holm over the family of every other cell; ``status`` is
    'best', 'tied' (not significantly worse) or 'worse'."""
    runs = with_units(runs)
    if runs.empty:
        return pd.DataFrame(columns=TIED_COLUMNS)
    means = _cell_means(runs, [metric, "r_precision"])
    cells = {cell: by_unit(part, metric) for cell, part in runs.groupby(["loss", "miner"], sort=False)}
    best = cells[(means.loc[0, "loss"], means.loc[0, "miner"])]
    rows = [{"units": len(best.dropna()), "difference": 0.0, "low": np.nan, "high": np.nan, "p": np.nan}]
    rows += [paired_t(cells[(r.loss, r.miner)], best, confidence) for r in means.iloc[1:].itertuples()]
    table = pd.concat([means, pd.DataFrame(rows)], axis=1)
    table["p_holm"] = np.concatenate([[np.nan], holm(table["p"].iloc[1:])])
    worse = (table["p_holm"] < 1 - confidence) & (table["difference"] < 0)
    table["status"] = np.where(worse, "worse", "tied")
    table.loc[0, "status"] = "best"
    return table.reindex(columns=TIED_COLUMNS + [c for c in table.columns if c not in TIED_COLUMNS])


def tied_facts(table: pd.DataFrame, confidence: float = 0.95) -> dict:
    """What the first screen says of a :func:`tied_with_best` table: the best cell, the tied ones, the
    family size, the closest cell not tied (the largest Holm-adjusted p among the worse) and its p, the
    units of the design (the most a comparison had), whether an exact test over them could pass the
    family's first Holm step, and the tied cells that had too few shared units for any test."""
    if table.empty:
        return {}
    tied = table[table["status"] == "tied"]
    worse = table[table["status"] == "worse"].sort_values("p_holm", ascending=False, kind="stable")
    family = len(table) - 1
    n_units = int(table["units"].max())  # the design's units (a cell still running may have fewer)
    closest = worse.iloc[0] if len(worse) else None
    return {"best": f"{table.loc[0, 'loss']} + {table.loc[0, 'miner']}", "best_map@r": float(table.loc[0, "map@r"]),
            "tied": [f"{r.loss} + {r.miner}" for r in tied.itertuples()], "family": family,
            "untested": [f"{r.loss} + {r.miner}" for r in tied.itertuples() if not np.isfinite(r.p)],
            "closest_not_tied": None if closest is None else f"{closest['loss']} + {closest['miner']}",
            "closest_p_holm": None if closest is None else float(closest["p_holm"]),
            "units": n_units, "level": round(1 - confidence, 10),
            "exact_reachable": reachable(n_units, family, 1 - confidence)}


def exact_floor(n_units: int) -> float:
    """The smallest two-sided p an exact sign-flip (permutation) test of paired differences can give
    with ``n_units`` pairs: both all-positive and all-negative sign patterns, 2 / 2^n."""
    return min(1.0, 2.0 / 2 ** int(n_units)) if n_units > 0 else 1.0


def reachable(n_units: int, family: int, level: float = 0.05) -> bool:
    """Whether an exact sign-flip test over ``n_units`` pairs can pass Holm's first (smallest) threshold,
    level / family, in a family of ``family`` tests."""
    return family < 1 or exact_floor(n_units) < level / family


def _contrast(runs: pd.DataFrame, by: str, metric: str, confidence: float) -> dict | None:
    """The first entry of column ``by`` (by mean score over its cells) against the runner-up, paired
    by unit (each entry's score at a unit: its cells' mean there)."""
    if runs.empty or runs[by].nunique() < 2:
        return None
    values, _, entries, member, unit_names = entry_matrix(runs, metric, by)
    scores = entry_scores(values, member)
    order = (-scores).argsort(kind="stable")
    first, second = (entry_by_unit(values, member, unit_names, i) for i in order[:2])
    return {"claim": f"best {by}", "first": entries[order[0]], "runner_up": entries[order[1]],
            "first_score": float(scores[order[0]]), "runner_up_score": float(scores[order[1]]),
            "entries": len(entries), **paired_t(first, second, confidence)}


def named_claims(sources: dict[str, pd.DataFrame], metric: str = "map@r", confidence: float = 0.95) -> pd.DataFrame:
    """The named claims of one dataset, ``sources``: by ('miner' | 'loss') -> the runs it is judged on
    (the grid's losses for the miners, each loss with its paper's sampling for the losses). One row per
    contrast (first against runner-up, paired by unit), Holm over the contrasts made (``family``);
    ``verdict`` 'best' where the first is significantly ahead, else 'tied'."""
    rows = [row for by, part in sources.items() if (row := _contrast(part, by, metric, confidence)) is not None]
    table = pd.DataFrame(rows, columns=["claim", "first", "runner_up", "first_score", "runner_up_score", "entries",
                                        "units", "difference", "low", "high", "p"])
    table["p_holm"] = holm(table["p"]) if len(table) else []
    table["family"] = len(table)
    table["verdict"] = np.where((table["p_holm"] < 1 - confidence) & (table["difference"] > 0), "best", "tied")
    return table


def variance_components(values: pd.Series, folds: pd.Series) -> dict[str, float]:
    """Method-of-moments one-way variance components of ``values`` grouped by ``folds``: the variance
    between folds (negative estimates set to 0), within folds, and the share between; NaN where there
    are fewer than two folds or no replicate within a fold."""
    frame = pd.DataFrame({"y": values.to_numpy(float), "g": folds.to_numpy()}).dropna()
    groups = frame.groupby("g")["y"]
    k, n = groups.ngroups, len(frame)
    out = {"folds": int(k), "units": int(n), "between": np.nan, "within": np.nan, "between_share": np.nan}
    if k < 2 or n <= k:
        return out
    sizes, means, grand = groups.size(), groups.mean(), frame["y"].mean()
    ms_between = float((sizes * (means - grand) ** 2).sum() / (k - 1))
    ms_within = float(((frame["y"] - frame["g"].map(means)) ** 2).sum() / (n - k))
    n0 = (n - float((sizes ** 2).sum()) / n) / (k - 1)
    between = max(0.0, (ms_between - ms_within) / n0)
    total = between + ms_within
    return out | {"between": between, "within": ms_within, "between_share": between / total if total > 0 else np.nan}


def fold_variance(runs: pd.DataFrame, metric: str = "map@r") -> pd.DataFrame:
    """Per cell of each dataset: its folds and units, the variance of ``metric`` between and within
    folds (method of moments) and the share between folds."""
    rows = []
    if "fold" not in runs:
        runs = runs.assign(fold=np.nan)
    for (dataset, loss, miner), part in runs.groupby(["dataset", "loss", "miner"], sort=False):
        rows.append({"dataset": dataset, "loss": loss, "miner": miner, "metric": metric,
                     **variance_components(part[metric], part["fold"])})
    return pd.DataFrame(rows, columns=["dataset", "loss", "miner", "metric", "folds", "units", "between", "within",
                                       "between_share"])


def agreement_cells(runs: pd.DataFrame, top: int = 15, validation: str = "val_map@r",
                    test: str = "map@r") -> pd.DataFrame:
    """The ``top`` best cells by mean ``test`` score with their mean ``validation`` score (at the selected
    epoch), best first: what :func:`validation_agreement` ranks."""
    if validation not in runs or runs.empty:
        return pd.DataFrame(columns=["loss", "miner", test, validation])
    return _cell_means(runs, [test, validation]).dropna(subset=[test, validation]).head(top)


def validation_agreement(runs: pd.DataFrame, top: int = 15, validation: str = "val_map@r",
                         test: str = "map@r") -> dict:
    """Kendall's tau-b between the cells' mean ``validation`` score (at the selected epoch) and their
    mean ``test`` score over the ``top`` best cells by test score (fewer when there are fewer), with its
    p value; tau None where fewer than three cells have both."""
    means = agreement_cells(runs, top, validation, test)
    if len(means) < 3:
        return {"cells": len(means), "tau": None, "p": None, "validation": validation, "test": test}
    result = sps.kendalltau(means[validation], means[test])
    return {"cells": len(means), "tau": float(result.statistic), "p": float(result.pvalue),
            "validation": validation, "test": test}
