"""Can the study answer its question? Convergence, statistical power and where a cell's time goes.

- **Convergence**: a run converged when its validation gain (its selection metric, best so far) over
  the last quarter of its epoch budget is below its cell's seed standard deviation (pooled within
  folds, so that a fold's harder split is not counted as noise) of the validation score at the
  selected epoch: what training longer would still add is smaller than what another seed moves. "Peaked before the last epoch" is no test under a cosine schedule
  that anneals to zero, and is not used.
- **Power**: per dataset and metric, the cells' 95% t-interval half-widths over seeds (in points of
  percent), the standard deviation of the paired differences with the baseline, and the seeds a
  paired difference of a given size would need for its interval to exclude zero.
- **Cost**: per run, the papermill wall time split into the kernel's start and papermill's own work,
  the set-up cell, training steps, validation, the test evaluation and record, the t-SNE and the
  retrieval grid, read from the executed notebook's cell timings and the run's history.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .stats import with_units

DIFFERENCES = (0.005, 0.01, 0.02)  # paired differences (0-1 scale) whose required seeds the power table gives
# The experiment notebook's code cells by what they do, recognised by a call each one makes.
PHASES = (("set-up", "check_parameter_names("), ("training", "train(config"), ("t-SNE", "tsne_figure("),
          ("retrieval grid", "retrieval_grid("), ("record", "write_record("))


LAST_SHARE = 0.25  # a run's convergence is judged on the last quarter of its epoch budget


def last_quarter_gain(history: pd.DataFrame, metric: str, budget: int) -> float:
    """How much the run's selected validation score (the best so far of ``metric``: the model selection
    keeps the best epoch) rose over the last quarter of its ``budget``: its best at the end minus its best
    up to epoch budget x 3/4. 0.0 for a run that stopped (on a plateau) before that quarter began; NaN
    when the history lacks the metric or any epoch up to the quarter's start."""
    if metric not in history or history.empty:
        return float("nan")
    ordered = history.sort_values("epoch")
    best = ordered[metric].cummax()
    start = budget * (1 - LAST_SHARE)
    before = ordered["epoch"] <= start
    if not before.any() or best[before].isna().all():
        return float("nan")
    if ordered["epoch"].iloc[-1] <= start:
        return 0.0
    return float(best.iloc[-1] - best[before].iloc[-1])


def seed_sd(values: pd.Series, folds: pd.Series) -> float:
    """The standard deviation of ``values`` between seeds: pooled within folds (each value against its
    fold's mean, n - folds degrees of freedom), so that a fold's easier or harder split does not count
    as noise; over all values where there are no folds (NaN). NaN without two values in one fold."""
    frame = pd.DataFrame({"y": values.to_numpy(float), "g": folds.fillna(-1).to_numpy()}).dropna(subset=["y"])
    dof = len(frame) - frame["g"].nunique()
    if dof < 1:
        return float("nan")
    residuals = frame["y"] - frame.groupby("g")["y"].transform("mean")
    return float(np.sqrt((residuals ** 2).sum() / dof))


def run_convergence(runs: pd.DataFrame, histories: pd.DataFrame | None) -> pd.DataFrame:
    """One row per run: its validation gain over the last quarter of its budget (:func:`last_quarter_gain`
    on its selection metric), its cell's seed standard deviation (:func:`seed_sd`, within folds) of the
    validation score at the selected epoch, and whether it converged: gain below that deviation (None
    where the cell has no two seeds in one fold or the history lacks what is needed: it cannot be told)."""
    by_run = {} if histories is None or histories.empty else dict(list(histories.groupby("run_id", sort=False)))
    folds = runs["fold"] if "fold" in runs else pd.Series(np.nan, index=runs.index)
    cell_sd = pd.Series(np.nan, index=runs.index)
    if "val_at_best" in runs:
        for _, part in runs.groupby(["dataset", "loss", "miner"], sort=False):
            cell_sd[part.index] = seed_sd(part["val_at_best"], folds[part.index])
    rows = []
    for (_, run), sd in zip(runs.iterrows(), cell_sd):
        metric = run.get("selected_by") if isinstance(run.get("selected_by"), str) else "val_map@r"
        history = by_run.get(run["run_id"], pd.DataFrame())
        gain = last_quarter_gain(history, metric, int(run["epochs"]))
        decided = np.isfinite(gain) and np.isfinite(sd)
        rows.append({"run_id": run["run_id"], "dataset": run["dataset"], "loss": run.get("loss"),
                     "miner": run.get("miner"), "gain_last_quarter": gain, "cell_sd": sd,
                     "converged": bool(gain < sd) if decided else None})
    return pd.DataFrame(rows, columns=["run_id", "dataset", "loss", "miner", "gain_last_quarter", "cell_sd",
                                       "converged"])


def convergence(runs: pd.DataFrame, histories: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per dataset: runs, converged (validation gain over the last quarter of the budget below the cell's
    seed standard deviation within folds: :func:`run_convergence`), their share, not converged, undetermined
    (no two seeds of the cell in one fold, or no history), stopped on a plateau, median epochs trained, the budget, and the
    medians of the gains and of the cells' deviations."""
    rows = []
    if not {"dataset", "epochs", "best_epoch"} <= set(runs.columns):  # runs without their training record
        return pd.DataFrame(rows)
    judged = run_convergence(runs, histories).set_index("run_id")
    for dataset, part in runs.groupby("dataset", sort=False):
        trained = part["epochs_run"] if "epochs_run" in part else part["epochs"]
        verdict = judged["converged"].reindex(part["run_id"])
        converged, undecided = int(verdict.map(lambda v: v is True).sum()), int(verdict.isna().sum())
        rows.append({"dataset": dataset, "runs": len(part), "converged": converged,
                     "converged_share": converged / len(part), "not_converged": len(part) - converged - undecided,
                     "undetermined": undecided, "stopped_on_plateau": int((trained < part["epochs"]).sum()),
                     "median_epochs_trained": float(trained.median()), "epoch_budget": int(part["epochs"].max()),
                     "median_gain_last_quarter": float(judged["gain_last_quarter"].reindex(part["run_id"]).median()),
                     "median_cell_sd": float(judged["cell_sd"].reindex(part["run_id"]).median())})
    return pd.DataFrame(rows)


def seeds_needed(sd: float, difference: float, confidence: float = 0.95, most: int = 1000) -> int | None:
    """The fewest seeds (>= 2) whose paired t-interval of half-width t(n-1) sd / sqrt(n) is below
    ``difference``: a true difference that large then lies outside the noise. None beyond ``most``."""
    if not np.isfinite(sd):
        return None  # no seed-paired differences: nothing to size
    if sd <= 0:
        return 2
    for n in range(2, most + 1):
        if sps.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n) < difference:
            return n
    return None


def _paired_sd(runs: pd.DataFrame, metric: str, baseline: tuple[str, str]) -> float:
    """Median over cells of the standard deviation of the cell's unit-paired differences with the baseline."""
    runs = with_units(runs)
    base = runs[(runs["loss"] == baseline[0]) & (runs["miner"] == baseline[1])].set_index("unit")[metric]
    sds = []
    for cell, part in runs.groupby(["loss", "miner"], sort=False):
        if cell == tuple(baseline):
            continue
        values = part.set_index("unit")[metric]
        seeds = sorted(set(values.index) & set(base.index))
        if len(seeds) >= 2:
            sds.append(float(np.std(values.loc[seeds].to_numpy() - base.loc[seeds].to_numpy(), ddof=1)))
    return float(np.median(sds)) if sds else float("nan")


def power(runs: pd.DataFrame, seed_tables: dict, baseline: tuple[str, str], confidence: float = 0.95,
          metrics=("recall@1", "map@r")) -> pd.DataFrame:
    """Per dataset and metric: cells, seeds, median and largest interval half-width (points), the median
    paired-difference standard deviation (points) and the seeds needed for each of DIFFERENCES."""
    rows = []
    for dataset, table in seed_tables.items():
        part = runs[runs["dataset"] == dataset]
        for metric in metrics:
            half = ((table[f"{metric}_high"] - table[f"{metric}_low"]) / 2 * 100).dropna()
            sd = _paired_sd(part, metric, baseline)
            row = {"dataset": dataset, "metric": metric, "cells": int(len(table)),
                   "seeds": int(table["units" if "units" in table else "seeds"].median()) if len(table) else 0,
                   "median_half_width_pts": float(half.median()) if len(half) else float("nan"),
                   "max_half_width_pts": float(half.max()) if len(half) else float("nan"),
                   "paired_sd_pts": sd * 100}
            for d in DIFFERENCES:
                row[f"seeds_for_{d * 100:g}_pts"] = seeds_needed(sd, d, confidence)
            rows.append(row)
    return pd.DataFrame(rows)


def _cell_durations(notebook: Path) -> dict[str, float]:
    """Seconds of each phase's code cell in an executed notebook (papermill's timings); {} if unreadable
    (a damaged one named in a warning: its run's metrics file keeps the results, only its timings are lost)."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, KeyError, TypeError):
        return {}
    except ValueError as error:  # cut short (a full disk before notebooks were written atomically), edited
        logging.getLogger("dmlbench").warning("%s: damaged notebook (not valid JSON: %s); its cell timings are "
                                              "left out", notebook, " ".join(str(error).split()))
        return {}
    out = {"cells": 0.0}
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        seconds = float((cell.get("metadata", {}).get("papermill") or {}).get("duration") or 0.0)
        out["cells"] += seconds
        source = "".join(cell.get("source", []))
        for phase, marker in PHASES:
            if marker in source:
                out[phase] = out.get(phase, 0.0) + seconds
    return out


def cell_profile(runs_dir: str | os.PathLike, runs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """One row per run: papermill wall time and its parts (seconds); training = the optimisation steps,
    validation = the per-epoch validation, "training cell, other" = curves and checkpoints."""
    rows = []
    for run in runs.itertuples():
        from ..training.rundir import RunDir

        folder = Path(runs_dir) / run.run_id
        try:
            wall = float(json.loads((folder / RunDir.EXECUTION).read_text())["notebook_wall_s"])
        except (OSError, ValueError, KeyError):
            continue
        cells = _cell_durations(folder / RunDir.NOTEBOOK)
        history = histories[histories["run_id"] == run.run_id] if "run_id" in histories else histories.iloc[0:0]
        validation = float(history["val_time_s"].fillna(0).sum()) if "val_time_s" in history else float("nan")
        train = float(getattr(run, "train_time_s", float("nan")))
        row = {"run_id": run.run_id, "dataset": getattr(run, "dataset", ""), "wall_s": wall, "training_s": train,
               "validation_s": validation, "kernel_and_papermill_s": wall - cells.get("cells", wall)}
        row["training_cell_other_s"] = cells.get("training", np.nan) - train - (validation if np.isfinite(validation) else 0)
        for phase in ("set-up", "t-SNE", "retrieval grid", "record"):
            row[f"{phase}_s"] = cells.get(phase, np.nan)
        row["test_and_tables_s"] = cells.get("cells", np.nan) - sum(cells.get(p, 0.0) for p, _ in PHASES)
        row["training_share"] = train / wall if wall > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def cost_summary(profile: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and over all runs: the median seconds of each part and the training share of the
    summed wall time (and its median over runs)."""
    if profile.empty:
        return pd.DataFrame()
    parts = [c for c in profile.columns if c.endswith("_s")]
    rows = []
    for dataset, part in [*profile.groupby("dataset", sort=False), ("all", profile)]:
        row = {"dataset": dataset, "runs": len(part)} | {c: float(part[c].median()) for c in parts}
        row["training_share_of_summed_wall"] = float(part["training_s"].sum() / part["wall_s"].sum())
        row["median_training_share"] = float(part["training_share"].median())
        rows.append(row)
    return pd.DataFrame(rows)


def metric_verdicts(comparisons: dict, dataset: str, metrics=("recall@1", "map@r")) -> dict[str, int]:
    """metric -> how many cells of ``dataset`` differ from the baseline beyond seed noise (Holm)."""
    out = {}
    for metric in metrics:
        table = comparisons.get((dataset, metric))
        out[metric] = 0 if table is None else int(table["verdict"].isin(["better than the baseline",
                                                                          "worse than the baseline"]).sum())
    return out


def convergence_text(row: dict) -> str:
    """A dataset's row of :func:`convergence` in words, as the report and ``--status`` say it."""
    undecided = f", {row['undetermined']} undetermined (no two seeds in one fold)" if row["undetermined"] else ""
    def points(value: float) -> str:
        return f"{value * 100:.2f} points" if value == value else "none measured"

    return (f"{row['converged']} of {row['runs']} converged ({row['converged_share']:.0%}: validation gain over the "
            f"last quarter of the {row['epoch_budget']}-epoch budget below the cell's standard deviation between "
            f"seeds within a fold; median gain {points(row['median_gain_last_quarter'])}, median deviation "
            f"{points(row['median_cell_sd'])}){undecided}")


def status_lines(study, baseline: tuple[str, str] = ("triplet", "semi-hard"), confidence: float = 0.95) -> list[str]:
    """What 'dmlbench study FILE --status' adds below the cells: per dataset, of the finished runs,
    how many converged, the median Recall@1 and MAP@R half-widths and the training share of the time."""
    from ..paths import runs_dir
    from .runs import load_histories, load_runs
    from .stats import seed_summary

    done = {cell.run_id for cell in study.cells if cell.is_done()}
    runs = load_runs(runs_dir())
    runs = runs[runs["run_id"].isin(done)]
    if runs.empty:
        return ["no finished run yet: nothing to say about convergence, power or cost"]
    histories = load_histories(runs_dir())
    histories = histories[histories["run_id"].isin(done)]
    seeds = {d: seed_summary(part, ["recall@1", "map@r"], confidence) for d, part in runs.groupby("dataset", sort=False)}
    power_table = power(runs, seeds, baseline, confidence).set_index(["dataset", "metric"])
    cost = cost_summary(cell_profile(runs_dir(), runs, histories)).set_index("dataset")
    lines = []
    for row in convergence(runs, histories).to_dict("records"):
        d = row["dataset"]
        halves = {m: power_table.loc[(d, m), "median_half_width_pts"] for m in ("recall@1", "map@r")}
        share = cost.loc[d, "training_share_of_summed_wall"] if d in cost.index else float("nan")
        lines.append(f"{d}: {row['runs']} runs finished; {convergence_text(row)}; median {confidence:.0%} "
                     f"half-width over cells: Recall@1 "
                     f"{halves['recall@1']:.2f} points, MAP@R {halves['map@r']:.2f} points; training steps "
                     f"{share:.0%} of the papermill wall time")
    return lines
