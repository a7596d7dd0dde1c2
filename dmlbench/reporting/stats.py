"""Statistics of a study over seeds: confidence intervals, paired comparisons, rankings.

- :func:`t_interval`: mean and two-sided Student-t confidence interval of a metric over seeds
  (normal errors assumed; with 3 seeds the t quantile is 4.30, so intervals are wide, as they should be).
- :func:`seed_summary`: that interval for every (dataset, loss, miner) cell and metric.
- :func:`paired_comparison`: each cell against a baseline cell (triplet + semi-hard by default) on
  the seeds both ran: the mean of the per-seed differences, its t-interval, the paired t-test's p
  value and Holm's adjustment over all the cells compared; a difference counts as larger than seed
  noise when the Holm-adjusted p is below 1 - confidence.
- :func:`ranking`: losses (each scored by the mean over its cells) and miners (mean over the
  cells that use them), with a bootstrap over seeds: seeds are drawn with replacement, the same draw
  for every cell (a seed fixes the initialisation and batches of every cell alike), and the rank of
  each entry is recorded; the table gives the mean score, its interval and the 2.5-97.5% range of ranks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

CELL = ["dataset", "loss", "miner"]


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the values' mean; low = high = NaN for fewer than two finite values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, np.nan, np.nan
    half = float(sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def seed_summary(runs: pd.DataFrame, metrics, confidence: float = 0.95) -> pd.DataFrame:
    """One row per cell: seeds, and for each metric its mean, ``<metric>_low`` and ``<metric>_high``."""
    rows = []
    for key, part in runs.groupby(CELL, sort=False):
        row = dict(zip(CELL, key)) | {"seeds": int(part["seed"].nunique())}
        for metric in metrics:
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = t_interval(part[metric], confidence)
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


def paired_comparison(runs: pd.DataFrame, metric: str, baseline: tuple[str, str] = ("triplet", "semi-hard"),
                      confidence: float = 0.95) -> pd.DataFrame:
    """Every other cell of each dataset against ``baseline`` (loss, miner), paired by seed."""
    rows = []
    for dataset, part in runs.groupby("dataset", sort=False):
        base = part[(part["loss"] == baseline[0]) & (part["miner"] == baseline[1])].set_index("seed")[metric]
        if base.empty:
            continue
        for (loss, miner), cell in part.groupby(["loss", "miner"], sort=False):
            if (loss, miner) == baseline:
                continue
            values = cell.set_index("seed")[metric]
            seeds = sorted(set(values.index) & set(base.index))
            diff = (values.loc[seeds] - base.loc[seeds]).to_numpy(dtype=np.float64)
            mean, low, high = t_interval(diff, confidence)
            p = np.nan
            if len(diff) >= 2:
                p = 1.0 if np.all(diff == diff[0]) and diff[0] == 0 else (
                    0.0 if np.all(diff == diff[0]) else float(sps.ttest_1samp(diff, 0.0).pvalue))
            rows.append({"dataset": dataset, "loss": loss, "miner": miner, "seeds": len(seeds), "difference": mean,
                         "low": low, "high": high, "p": p})
    table = pd.DataFrame(rows, columns=["dataset", "loss", "miner", "seeds", "difference", "low", "high", "p"])
    table["p_holm"] = np.nan
    for dataset, index in table.groupby("dataset").groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p"])
    alpha = 1 - confidence
    table["verdict"] = np.where(
        table["p_holm"].isna(), "too few seeds",
        np.where(table["p_holm"] < alpha, np.where(table["difference"] > 0, "better than the baseline",
                                                   "worse than the baseline"), "within seed noise"))
    return table


def ranking(runs: pd.DataFrame, metric: str, by: str, *, resamples: int = 2000, seed: int = 0,
            confidence: float = 0.95) -> pd.DataFrame:
    """Entries of column ``by`` ('loss' or 'miner') of one dataset's runs ranked by ``metric`` (higher
    is better): score = mean over the entry's cells of the cell's mean over seeds; bootstrap over seeds."""
    if runs["dataset"].nunique() > 1:
        raise ValueError("rank one dataset at a time")
    table = runs.pivot_table(index="seed", columns=["loss", "miner"], values=metric)  # (seeds, cells)
    cells = table.columns
    entries = sorted(set(cells.get_level_values(by)))
    member = np.array([[c[0 if by == "loss" else 1] == e for c in cells] for e in entries], dtype=np.float64)

    def scores(matrix: np.ndarray) -> np.ndarray:
        cell_means = np.nanmean(matrix, axis=0)  # (cells,)
        return (member * cell_means).sum(axis=1) / member.sum(axis=1)

    values = table.to_numpy(dtype=np.float64)
    observed = scores(values)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    boot = np.stack([scores(values[d]) for d in draws])  # (resamples, entries)
    ranks = (-boot).argsort(axis=1).argsort(axis=1) + 1
    tail = (1 - confidence) / 2 * 100
    out = pd.DataFrame({by: entries, "score": observed,
                        "score_low": np.percentile(boot, tail, axis=0),
                        "score_high": np.percentile(boot, 100 - tail, axis=0),
                        "rank": (-observed).argsort().argsort() + 1,
                        "rank_low": np.percentile(ranks, tail, axis=0, method="lower").astype(int),
                        "rank_high": np.percentile(ranks, 100 - tail, axis=0, method="higher").astype(int),
                        "cells": member.sum(axis=1).astype(int)})
    return out.sort_values("rank").reset_index(drop=True)
