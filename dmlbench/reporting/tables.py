"""The study's tables, computed from the table of runs (:func:`dmlbench.reporting.runs.load_runs`):
means per cell, loss x miner pivots, the statistics over seeds, the correlations with the embedding
diagnostics, the study's counts; and writing them as CSV under results/tables/.

Floats are stored to SIGNIFICANT_DIGITS (:func:`rounded`), and a CSV is rewritten only when its
content changes, so a rebuild over the same runs changes no byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import write_if_changed
from .labels import DIAGNOSTICS, METRICS, ROTH_SIGNS, recall_columns

SIGNIFICANT_DIGITS = 12  # floats are stored to this many digits: sums whose order varies with the
                         # machine's vector units differ in the 16th-17th digit, and must not show


def rounded(value: Any) -> Any:
    """``value`` with every float rounded to SIGNIFICANT_DIGITS (NaN and infinity as None), numpy
    scalars as Python numbers, in dicts, lists and tuples too."""
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}") if np.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def save_table(table: pd.DataFrame, name: str, tables: Path, index: bool = True) -> Path:
    """Save as CSV under results/tables/, floats to SIGNIFICANT_DIGITS; rewritten only when it changes."""
    path = tables / f"{name}.csv"
    floats = table.map(lambda v: float(f"{v:.{SIGNIFICANT_DIGITS}g}") if isinstance(v, float) else v)
    write_if_changed(path, floats.to_csv(index=index))
    return path


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean (and standard deviation over units; the seeds, units and folds counted) of every metric per
    dataset x loss x miner."""
    if runs.empty:
        return pd.DataFrame()
    grouped = runs.groupby(["dataset", "loss", "miner"], sort=True)
    mean = grouped[list(METRICS)].mean()
    std = grouped[list(METRICS)].std(ddof=1).add_suffix("_std")
    out = pd.concat([mean, std], axis=1)
    out["seeds"] = grouped["seed"].nunique()
    out["units"] = grouped.size()  # runs: one per fold x seed (per seed where there are no folds)
    out["folds"] = grouped["fold"].nunique() if "fold" in runs else 0
    out["wall_time_s"] = grouped["wall_time_s"].mean()
    return out.reset_index()


def pivot(summary: pd.DataFrame, dataset: str, metric: str, losses: list[str] | None = None,
          miners: list[str] | None = None) -> pd.DataFrame:
    """loss x miner table of one metric (mean over seeds), rows and columns in study order."""
    table = summary[summary["dataset"] == dataset].pivot(index="loss", columns="miner", values=metric)
    if losses:
        table = table.reindex([l for l in losses if l in table.index])
    if miners:
        table = table.reindex(columns=[m for m in miners if m in table.columns])
    return table


def with_skipped(table: pd.DataFrame, skipped: set[tuple[str, str]]) -> pd.DataFrame:
    """A loss x miner pivot with the incompatible (loss, miner) pairs written 'skipped', so that they
    stay visible in the CSV."""
    marked = table.astype(object)
    for loss, miner in skipped:
        if loss in marked.index and miner in marked.columns:
            marked.loc[loss, miner] = "skipped"
    return marked


def grid_losses(runs: pd.DataFrame, dataset: str, losses: list[str] | None = None) -> list[str]:
    """The losses of ``dataset`` run with more than one miner (the loss x miner grid), in ``losses``'
    order (else alphabetical)."""
    part = runs[runs["dataset"] == dataset]
    several = set(part.groupby("loss")["miner"].nunique().loc[lambda n: n > 1].index)
    return [l for l in (losses or sorted(several)) if l in several]


def grid_order(table: pd.DataFrame, grid: list[str]) -> tuple[list[str], list[str]]:
    """The rows (losses of ``grid``) and columns (miners with a value) of a loss x miner pivot, each
    best first by its mean."""
    mean = table.loc[grid]
    rows = list(mean.mean(axis=1).sort_values(ascending=False, kind="stable").index)
    columns = [m for m in mean.mean(axis=0).sort_values(ascending=False, kind="stable").index if mean[m].notna().any()]
    return rows, columns


def by_result(table: pd.DataFrame, metric: str = "map@r") -> pd.DataFrame:
    """Rows best first by ``metric`` (ties: by Recall@1, then as they came)."""
    keys = [metric] + (["recall@1"] if metric != "recall@1" and "recall@1" in table else [])
    return table.sort_values(keys, ascending=False, kind="stable", na_position="last")


def paper_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` whose miner is its loss's own paper's sampling."""
    from ..losses import LOSSES

    return table[[LOSSES.get(l).paper_miner == m for l, m in zip(table["loss"], table["miner"])]]


def over_seeds(runs: pd.DataFrame, baseline: tuple[str, str], confidence: float):
    """Per dataset: the cells' t-intervals (best first), the paired comparisons with ``baseline``
    (MAP@R and Recall@1), and the bootstrap rankings of losses (each with its paper's sampling) and of
    miners (over the losses crossed with several). Returns (seed_tables, comparisons, rankings)."""
    from . import stats

    seed_tables, comparisons, rankings = {}, {}, {}
    for dataset, part in runs.groupby("dataset", sort=False):
        seed_tables[dataset] = by_result(stats.seed_summary(part, [*METRICS, *recall_columns(part)], confidence))
        for metric in ("map@r", "recall@1"):
            comparisons[(dataset, metric)] = stats.paired_comparison(part, metric, baseline, confidence)
        paper = paper_cells(part)
        grid = part[part["loss"].isin(grid_losses(part, dataset))]
        for by, source in (("loss", paper), ("miner", grid)):
            if source["loss"].nunique() + source["miner"].nunique() < 3 or source[by].nunique() < 2:
                continue
            rankings[(dataset, by)] = stats.ranking(source, "map@r", by, confidence=confidence)
    return seed_tables, comparisons, rankings


def over_units(runs: pd.DataFrame, confidence: float) -> tuple[dict, dict]:
    """Per dataset: every cell against the best by test MAP@R, paired by unit with Holm over that family
    (:func:`dmlbench.reporting.claims.tied_with_best`), and the named claims, best miner (over the grid's
    losses) and best loss (each with its paper's sampling), against their runners-up
    (:func:`dmlbench.reporting.claims.named_claims`). Returns (tied, claims)."""
    from .claims import named_claims, tied_with_best

    tied, claims = {}, {}
    for dataset, part in runs.groupby("dataset", sort=False):
        tied[dataset] = tied_with_best(part, "map@r", confidence)
        sources = {"miner": part[part["loss"].isin(grid_losses(part, dataset))], "loss": paper_cells(part)}
        claims[dataset] = named_claims({by: s for by, s in sources.items() if s[by].nunique() >= 2}, "map@r",
                                       confidence)
    return tied, claims


BASELINE_MINER = "(baseline, no training)"  # the miner column of a baseline's row in the tables of cells


def baseline_table(baselines: pd.DataFrame, dataset: str, metrics, confidence: float) -> pd.DataFrame:
    """The baselines of ``dataset`` (a :func:`dmlbench.study.baselines.load_baselines` frame) as rows of
    a seed table: loss = the baseline's name, miner = BASELINE_MINER, each metric's mean and t-interval
    over its units (folds, or fold x seed), ``kind`` 'baseline'. Empty when it has none."""
    from . import stats

    part = baselines[baselines["dataset"] == dataset] if len(baselines) else baselines
    if part.empty:
        return pd.DataFrame()
    rows = part.assign(loss=part["baseline"], miner=BASELINE_MINER)
    present = [m for m in metrics if m in rows]
    return stats.seed_summary(rows, present, confidence).assign(kind="baseline")


def with_baselines(table: pd.DataFrame, baselines: pd.DataFrame | None) -> pd.DataFrame:
    """A seed table (cells) with the baselines' rows after them and a ``kind`` column: 'cell' or 'baseline'."""
    table = table.assign(kind="cell") if "kind" not in table else table
    if baselines is None or baselines.empty:
        return table
    return pd.concat([table, baselines.reindex(columns=[c for c in table.columns if c in baselines] +
                                               [c for c in baselines.columns if c not in table])], ignore_index=True)


def pivot_with_baselines(table: pd.DataFrame, baselines: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """A loss x miner pivot of ``metric`` with a row per baseline (its name), its mean in a column of its
    own, 'baseline (no training)', empty in the cells' rows."""
    if baselines is None or baselines.empty or metric not in baselines:
        return table
    column = "baseline (no training)"
    extra = pd.DataFrame({column: list(baselines[metric])}, index=list(baselines["loss"]))
    return pd.concat([table, extra]).reindex(columns=[*table.columns, column])


def correlations(runs: pd.DataFrame, metric: str = "recall@1", confidence: float = 0.95) -> pd.DataFrame:
    """Pearson (with a Fisher-z interval) and Spearman correlation of ``metric`` with each diagnostic
    across runs, per dataset, and whether the sign agrees with Roth et al.'s."""
    from scipy import stats as sps

    rows = []
    for dataset, part in runs.groupby("dataset"):
        for name in DIAGNOSTICS:
            ok = part[[metric, name]].dropna()
            n = len(ok)
            r = rho = low = high = p = np.nan
            if n >= 4 and ok[name].std() > 0 and ok[metric].std() > 0:
                r, p = sps.pearsonr(ok[name], ok[metric])
                rho = sps.spearmanr(ok[name], ok[metric]).statistic
                z, se = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1 / np.sqrt(n - 3)
                q = sps.norm.ppf(0.5 + confidence / 2)
                low, high = np.tanh(z - q * se), np.tanh(z + q * se)
            sign = ROTH_SIGNS.get(name)
            agrees = "" if sign is None or np.isnan(r) else ("yes" if np.sign(r) == sign else "no")
            rows.append({"dataset": dataset, "diagnostic": name, "runs": n, "pearson_r": r, "r_low": low,
                         "r_high": high, "p": p, "spearman": rho,
                         "roth_sign": {1: "+", -1: "-"}.get(sign, ""), "same_sign_as_roth": agrees})
    return pd.DataFrame(rows)


def study_counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a study is made of: runs, cells (dataset x loss x miner, and in a study with a tuning block
    x settings: the defaults or tuned), seeds per cell, the axes; ``roles``: the cells per settings."""
    cells = manifest["cells"]
    seeds_per_cell: dict[tuple, set] = {}
    for c in cells:
        seeds_per_cell.setdefault((c["dataset"], c["loss"], c["miner"], c.get("role", "study")), set()).add(c["seed"])
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    per_dataset = {d: {(l, m, r) for (dd, l, m, r) in seeds_per_cell if dd == d} for d in datasets}
    roles = pd.Series([key[3] for key in seeds_per_cell], dtype=object).value_counts().to_dict()
    skipped = list(dict.fromkeys((s["dataset"], s["loss"], s["miner"]) for s in manifest["skipped"]))
    return {"runs": len(cells), "cells": len(seeds_per_cell), "datasets": datasets,
            "losses": list(dict.fromkeys(c["loss"] for c in cells)),
            "miners": list(dict.fromkeys(c["miner"] for c in cells)),
            "seeds": sorted({len(s) for s in seeds_per_cell.values()}),
            "same_cells_per_dataset": len({frozenset(p) for p in per_dataset.values()}) <= 1,
            "cells_per_dataset": len(next(iter(per_dataset.values()), ())), "skipped": skipped, "roles": roles}


def in_result_order(runs: pd.DataFrame, seed_tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The runs with their cells in the order of the seed tables (best first), seeds ascending within."""
    order = {cell: i for i, cell in enumerate(zip(*(pd.concat(seed_tables.values())[k]
                                                   for k in ("dataset", "loss", "miner"))))}
    shown = runs.assign(_order=[order.get(c, len(order)) for c in zip(runs["dataset"], runs["loss"], runs["miner"])])
    return shown.sort_values(["_order", "seed"], kind="stable")
