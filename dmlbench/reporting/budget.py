"""The training-length ablation (studies/budget.yaml): does the ranking of cells change when every run trains
twice or four times as long?

The 1x runs are the default study's own (fold 0, the ablation's seeds); the 2x and 4x runs are the budget
study's. For every budget, each cell's mean over seeds of test and validation MAP@R, its rank, and Kendall's
tau between that budget's ranking and the longest budget's (over the cells every budget finished). The
default budget is where the ranking stops changing: tau against the longest budget at least
:data:`STABLE_TAU`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

STABLE_TAU = 0.9  # the protocol's threshold: a ranking this close to the longest budget's has stopped changing
METRICS = ("map@r", "val_at_best")


def budget_runs(default_runs: str | Path, budget_runs_dir: str | Path, study) -> pd.DataFrame:
    """The runs of the ablation: the budget study's cells at every budget, the 1x ones taken from the default
    study's runs (same loss, miner, kwargs, fold and seed, the default epochs)."""
    from .runs import load_runs

    cells = {(c.config.loss, c.config.miner) for c in study.cells}
    folds = {c.config.fold or 0 for c in study.cells}
    seeds = {c.config.seed for c in study.cells}
    frames = [load_runs(budget_runs_dir), load_runs(default_runs)]
    runs = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(not f.empty for f in frames) \
        else frames[0]
    if runs.empty:
        return runs
    keep = runs.apply(lambda r: (r["loss"], r["miner"]) in cells and r["seed"] in seeds
                      and (0 if pd.isna(r.get("fold")) else int(r["fold"])) in folds, axis=1)
    return runs[keep].drop_duplicates("run_id")


def budget_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per cell and budget: seeds, mean test MAP@R, mean validation MAP@R, rank; per budget: Kendall's tau
    of its ranking against the longest budget's, by test and by validation MAP@R, over the complete cells)."""
    cells = runs.groupby(["loss", "miner", "epochs"], sort=True).agg(
        seeds=("seed", "nunique"), test_map_r=("map@r", "mean"), val_map_r=("val_at_best", "mean")).reset_index()
    budgets = sorted(cells["epochs"].unique())
    counts = cells.groupby(["loss", "miner"])["epochs"].nunique()
    complete = {key for key, n in counts.items() if n == len(budgets)}
    cells = cells[[(loss, miner) in complete for loss, miner in zip(cells["loss"], cells["miner"])]].copy()
    cells["rank"] = cells.groupby("epochs")["test_map_r"].rank(ascending=False, method="min").astype(int)
    longest = budgets[-1] if budgets else None
    rows = []
    for epochs in budgets:
        row = {"epochs": int(epochs), "budget": f"{epochs / budgets[0]:g}x", "cells": 0}
        for metric, name in (("test_map_r", "tau_test"), ("val_map_r", "tau_validation")):
            here = cells[cells["epochs"] == epochs].set_index(["loss", "miner"])[metric]
            there = cells[cells["epochs"] == longest].set_index(["loss", "miner"])[metric].reindex(here.index)
            row["cells"] = len(here)
            row[name] = float(sps.kendalltau(here, there).statistic) if len(here) >= 2 else np.nan
        row["mean_test_map_r"] = float(cells.loc[cells["epochs"] == epochs, "test_map_r"].mean())
        rows.append(row)
    return cells.reset_index(drop=True), pd.DataFrame(rows)


def stable_budget(taus: pd.DataFrame) -> int | None:
    """The shortest budget (epochs) from which on every ranking is within STABLE_TAU of the longest's."""
    stable = None
    for row in taus.sort_values("epochs", ascending=False).itertuples():
        if not row.tau_test >= STABLE_TAU:
            break
        stable = int(row.epochs)
    return stable


def budget_lines(cells: pd.DataFrame, taus: pd.DataFrame) -> list[str]:
    """What `dmlbench budget` prints (and the report quotes): the taus, the ranking per budget."""
    if taus.empty or cells.empty:
        return ["the training-length ablation has no finished cell at every budget"]
    lines = [f"{len(taus)} budgets, {int(taus['cells'].iloc[0])} cells finished at every one, "
             f"{int(cells['seeds'].min())}-{int(cells['seeds'].max())} seeds per cell and budget"]
    for row in taus.itertuples():
        lines.append(f"  {row.budget:>4} ({row.epochs} epochs): mean test MAP@R {row.mean_test_map_r:.4f}; Kendall's tau "
                     f"against the longest budget: test {row.tau_test:.3f}, validation {row.tau_validation:.3f}")
    stable = stable_budget(taus)
    shortest = int(taus["epochs"].min())
    lines.append(f"ranking stable (tau >= {STABLE_TAU}) from {stable} epochs on" if stable is not None
                 else f"the ranking has not settled (tau < {STABLE_TAU} against the longest budget)")
    lines.append(f"the default budget ({shortest} epochs) ranks the cells "
                 + ("as the longest does" if stable == shortest else "differently from the longest"))
    return lines
