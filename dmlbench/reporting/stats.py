"""Statistics of a study over its replicates: confidence intervals, paired comparisons, rankings.

The replicate of a cell is its **unit**, (fold, seed): a dataset with folds (han-typefaces) runs every
cell on every fold x seed, and both the fold (which characters and typefaces) and the seed (the
initialisation, batches and miners' draws) move a cell's score. A dataset without folds has one unit
per seed, as before. Every cell ran on the same units, so cells are compared unit by unit.

- :func:`t_interval`: mean and two-sided Student-t confidence interval of a metric over units
  (normal errors assumed; with 3 units the t quantile is 4.30, so intervals are wide, as they should
  be), clipped to the metric's range where asked.
- :func:`seed_summary`: that interval for every (dataset, loss, miner) cell and metric, with the
  number of units, folds and seeds behind it.
- :func:`paired_comparison`: each cell against a baseline cell (triplet + semi-hard by default) on
  the units both ran: the mean of the per-unit differences, its t-interval, the paired t-test's p
  value and Holm's adjustment over all the cells compared; a difference counts as larger than the
  noise when the Holm-adjusted p is below 1 - confidence.
- :func:`ranking`: losses (each scored by the mean over its cells) and miners (mean over the cells
  that use them), with a hierarchical bootstrap over the same units: folds are drawn with
  replacement, then seeds with replacement within each drawn fold, the same draw for every cell; the
  table gives the mean score, its interval and the 2.5-97.5% range of ranks, widened so that an
  entry the paired test cannot separate from the first shares rank 1 with it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

CELL = ["dataset", "loss", "miner"]
METRIC_RANGE = (0.0, 1.0)  # every retrieval and clustering metric of the study lies in [0, 1]
DIFFERENCE_RANGE = (-1.0, 1.0)  # and so the difference of two of them


def unit_label(fold, seed) -> str:
    """A run's replicate unit: 'fold 2, seed 1'; 'seed 1' for a dataset without folds (fold None/NaN);
    'fold 2' for a record without a seed (a raw-pixels baseline)."""
    no_seed = seed is None or pd.isna(seed)  # a baseline with nothing random (raw pixels) has no seed
    if fold is None or pd.isna(fold):
        return "seed -" if no_seed else f"seed {int(seed)}"
    return f"fold {int(fold)}" if no_seed else f"fold {int(fold)}, seed {int(seed)}"


def units(runs: pd.DataFrame) -> pd.Series:
    """Each run's unit: the table's ``unit`` column, else made from ``fold`` (absent: none) and ``seed``."""
    if "unit" in runs:
        return runs["unit"]
    folds = runs["fold"] if "fold" in runs else pd.Series(np.nan, index=runs.index)
    return pd.Series([unit_label(f, s) for f, s in zip(folds, runs["seed"])], index=runs.index, dtype=object)


def with_units(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with its ``unit`` column (made when absent)."""
    return runs if "unit" in runs else runs.assign(unit=units(runs))


def unit_folds(runs: pd.DataFrame) -> dict[str, float]:
    """unit -> its fold (NaN: a dataset without folds)."""
    runs = with_units(runs)
    folds = runs["fold"] if "fold" in runs else pd.Series(np.nan, index=runs.index)
    return dict(zip(runs["unit"], folds.astype(float)))


def t_interval(values, confidence: float = 0.95, bounds: tuple[float, float] | None = None
               ) -> tuple[float, float, float]:
    """(mean, low, high) of the values' mean; low = high = NaN for fewer than two finite values; the
    bounds clipped to ``bounds`` (a metric's range) when given."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, np.nan, np.nan
    half = float(sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


def clipped(values, confidence: float = 0.95, bounds: tuple[float, float] = METRIC_RANGE) -> bool:
    """Whether the t-interval of ``values`` reaches outside ``bounds`` (and is shown clipped)."""
    mean, low, high = t_interval(values, confidence)
    return bool(np.isfinite(low) and (low < bounds[0] or high > bounds[1]))


def seed_summary(runs: pd.DataFrame, metrics, confidence: float = 0.95) -> pd.DataFrame:
    """One row per cell: its units (fold x seed), folds and seeds, and for each metric its mean,
    ``<metric>_low`` and ``<metric>_high`` (the t-interval over units, clipped to [0, 1]); ``clipped``
    names the metrics whose interval was clipped ('' when none)."""
    rows = []
    runs = with_units(runs)
    for key, part in runs.groupby(CELL, sort=False):
        folds = part["fold"].dropna().nunique() if "fold" in part else 0
        row = dict(zip(CELL, key)) | {"seeds": int(part["seed"].nunique()), "units": int(part["unit"].nunique()),
                                      "folds": int(folds)}
        cut = []
        for metric in metrics:
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = t_interval(part[metric], confidence, METRIC_RANGE)
            if clipped(part[metric], confidence):
                cut.append(metric)
        row["clipped"] = ", ".join(cut)
        rows.append(row)
    return pd.DataFrame(rows)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of p values (family-wise error control); NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_t(values: pd.Series, reference: pd.Series, confidence: float = 0.95) -> dict[str, float]:
    """``values`` minus ``reference`` (each indexed by unit) on the units both have: units, the mean
    difference, its t-interval (clipped to [-1, 1]) and the paired t-test's two-sided p (NaN under two
    units; 1 or 0 when every difference is the same)."""
    shared = sorted(set(values.dropna().index) & set(reference.dropna().index))
    diff = (values.loc[shared] - reference.loc[shared]).to_numpy(dtype=np.float64)
    mean, low, high = t_interval(diff, confidence, DIFFERENCE_RANGE)
    p = np.nan
    if len(diff) >= 2:
        p = 1.0 if np.all(diff == diff[0]) and diff[0] == 0 else (
            0.0 if np.all(diff == diff[0]) else float(sps.ttest_1samp(diff, 0.0).pvalue))
    return {"units": len(shared), "difference": mean, "low": low, "high": high, "p": p}


def by_unit(part: pd.DataFrame, metric: str) -> pd.Series:
    """One cell's ``metric`` indexed by unit (a unit run twice: its mean)."""
    part = with_units(part)
    return part.groupby("unit")[metric].mean()


def paired_comparison(runs: pd.DataFrame, metric: str, baseline: tuple[str, str] = ("triplet", "semi-hard"),
                      confidence: float = 0.95) -> pd.DataFrame:
    """Every other cell of each dataset against ``baseline`` (loss, miner), paired by unit (fold, seed)."""
    rows = []
    for dataset, part in with_units(runs).groupby("dataset", sort=False):
        base = by_unit(part[(part["loss"] == baseline[0]) & (part["miner"] == baseline[1])], metric)
        if base.empty:
            continue
        for (loss, miner), cell in part.groupby(["loss", "miner"], sort=False):
            if (loss, miner) != tuple(baseline):
                rows.append({"dataset": dataset, "loss": loss, "miner": miner,
                             **paired_t(by_unit(cell, metric), base, confidence)})
    table = pd.DataFrame(rows, columns=["dataset", "loss", "miner", "units", "difference", "low", "high", "p"])
    table["p_holm"] = np.nan
    for dataset, index in table.groupby("dataset").groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p"])
    alpha = 1 - confidence
    table["verdict"] = np.where(
        table["p_holm"].isna(), "too few seeds",
        np.where(table["p_holm"] < alpha, np.where(table["difference"] > 0, "better than the baseline",
                                                   "worse than the baseline"), "within seed noise"))
    return table


def hierarchical_draws(folds: list, rng: np.random.Generator, resamples: int) -> list[np.ndarray]:
    """``resamples`` bootstrap draws of row positions whose units belong to ``folds`` (one fold per row,
    NaN: no folds): folds drawn with replacement, then within each drawn fold its rows with replacement."""
    keys = ["" if pd.isna(f) else f for f in folds]
    groups = [np.flatnonzero([k == g for k in keys]) for g in dict.fromkeys(keys)]
    draws = []
    for _ in range(resamples):
        chosen = rng.integers(0, len(groups), size=len(groups))
        draws.append(np.concatenate([rng.choice(groups[g], size=len(groups[g])) for g in chosen]))
    return draws


def entry_matrix(runs: pd.DataFrame, metric: str, by: str):
    """(units x cells values, the units' folds, the entries of column ``by``, entries x cells membership)."""
    runs = with_units(runs)
    table = runs.pivot_table(index="unit", columns=["loss", "miner"], values=metric)  # (units, cells)
    folds = unit_folds(runs)
    cells = table.columns
    entries = sorted(set(cells.get_level_values(by)))
    member = np.array([[c[0 if by == "loss" else 1] == e for c in cells] for e in entries], dtype=np.float64)
    return table.to_numpy(dtype=np.float64), [folds[u] for u in table.index], entries, member, list(table.index)


def entry_scores(matrix: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Each entry's score: the mean over its cells of the cell's mean over the rows of ``matrix``."""
    with warnings.catch_warnings():  # a cell with no value in a draw's units: NaN, said nowhere else
        warnings.simplefilter("ignore", RuntimeWarning)
        cell_means = np.nanmean(matrix, axis=0)  # (cells,)
    return (member * cell_means).sum(axis=1) / member.sum(axis=1)


def entry_by_unit(matrix: np.ndarray, member: np.ndarray, units: list, entry: int) -> pd.Series:
    """One entry's score per unit: the mean over its cells at that unit."""
    cells = matrix[:, member[entry] > 0]
    with warnings.catch_warnings():  # a unit none of its cells ran: NaN, left out of the pairs
        warnings.simplefilter("ignore", RuntimeWarning)
        return pd.Series(np.nanmean(cells, axis=1), index=units)


def ties_with_first(matrix: np.ndarray, member: np.ndarray, units: list, order: np.ndarray,
                    confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per entry (by position): the Holm-adjusted p of the paired test (by unit) of the first entry
    (``order[0]``) against it, over the family of every other entry; and whether it is tied with the
    first (not separated at 1 - confidence). The first itself: NaN and True."""
    first = entry_by_unit(matrix, member, units, order[0])
    p = np.full(len(member), np.nan)
    for i in order[1:]:
        p[i] = paired_t(first, entry_by_unit(matrix, member, units, i), confidence)["p"]
    adjusted = holm(p)
    tied = ~(adjusted < 1 - confidence)
    tied[order[0]] = True
    return adjusted, tied


def ranking(runs: pd.DataFrame, metric: str, by: str, *, resamples: int = 2000, seed: int = 0,
            confidence: float = 0.95) -> pd.DataFrame:
    """Entries of column ``by`` ('loss' or 'miner') of one dataset's runs ranked by ``metric`` (higher
    is better): score = mean over the entry's cells of the cell's mean over units; a hierarchical
    bootstrap over units (folds, then seeds within fold). The range of ranks is widened where the
    paired test (by unit, Holm over the entries) cannot separate an entry from the first: the first's
    worst rank then reaches past every entry tied with it, and theirs start at 1."""
    if runs["dataset"].nunique() > 1:
        raise ValueError("rank one dataset at a time")
    values, folds, entries, member, unit_names = entry_matrix(runs, metric, by)
    observed = entry_scores(values, member)
    draws = hierarchical_draws(folds, np.random.default_rng(seed), resamples)
    boot = np.stack([entry_scores(values[d], member) for d in draws])  # (resamples, entries)
    ranks = (-boot).argsort(axis=1).argsort(axis=1) + 1
    tail = (1 - confidence) / 2 * 100
    order = (-observed).argsort(kind="stable")
    p_first, tied = ties_with_first(values, member, unit_names, order, confidence)
    rank_low = np.percentile(ranks, tail, axis=0, method="lower").astype(int)
    rank_high = np.percentile(ranks, 100 - tail, axis=0, method="higher").astype(int)
    rank_low[tied] = 1
    rank_high[order[0]] = max(rank_high[order[0]], int(tied.sum()))
    out = pd.DataFrame({by: entries, "score": observed,
                        "score_low": np.percentile(boot, tail, axis=0),
                        "score_high": np.percentile(boot, 100 - tail, axis=0),
                        "rank": order.argsort() + 1, "rank_low": rank_low, "rank_high": rank_high,
                        "p_holm_vs_first": p_first, "tied_with_first": tied,
                        "cells": member.sum(axis=1).astype(int)})
    return out.sort_values("rank").reset_index(drop=True)
