"""Does the miniature resemble the field? A study's ranking of its cells set against the rankings that the
published fair-protocol comparisons give the same cells, and against another study of this project (the
from-scratch default study beside the transfer study, say).

**The published rankings** live in ``published_fair.csv`` beside this module, one row per published number
(percent): its source, the preset that names its protocol (``mlrc``, ``roth2020``), the dataset, the method as
the paper names it, the (loss, miner) cell of this project that trains the same way (empty where the project
has none), the metric and the value, and the basis of the number (backbone, where it was read).

- "A Metric Learning Reality Check" (Musgrave et al., ECCV 2020), CUB-200-2011 and Cars196, the four fold
  models concatenated to 512-d: P@1 (this project's Recall@1), R-Precision and MAP@R. The paper trains every
  loss on its batches as they come, with no miner, except its "MS + miner" row. A row therefore maps to the
  cell with the same loss and the miner ``none`` (contrastive, triplet, ProxyNCA, margin, normalized softmax,
  ArcFace, multi-similarity), and "MS + miner" to (multi-similarity, multi-similarity). A study that never ran
  one of these cells (the default study has margin only with distance-weighted sampling and multi-similarity
  only with its miner) leaves that row out rather than stand a differently sampled cell in for it. The
  untrained backbone, NT-Xent, CosFace, FastAP and SoftTriple have no cell here.
- Roth et al. (ICML 2020), CUB-200-2011 Recall@1 read off the authors' figures: each row names its batch
  miner, so it maps to that (loss, miner) cell of the grid directly (N-pair, angular, ProxyNCA, normalized
  softmax and ArcFace with their own sampling: the miner ``none``).

**The statistics** (:func:`agreement`): per cell, the mean over its (fold, seed) units of the test metric;
Kendall's tau-b between those means and the published values over the cells in common, with scipy's p (exact
for small rankings without ties); a hierarchical bootstrap interval (folds drawn with replacement, then seeds
within each drawn fold, the cell means and tau recomputed; the published values stay fixed, as nothing of
their replicates is known); and the spread of the common cells, max - min in points, here and there. Two
studies are compared over every cell both ran, paired by unit: the same draw of units for both. For scale,
the table also sets the Reality Check's ranking of the twelve losses it trained on CUB against its ranking
on Cars196 (:func:`yardstick_rows`): how far the field agrees with itself across two datasets.

**The verdict** follows the protocol's language: an interval that contains 0 is "no detectable agreement",
whatever the point estimate. The bootstrap interval measures how stable *our* ranking is over folds and seeds,
not whether a tau over a handful of cells exceeds chance: six cells ranked identically in every draw still give
a tau that a random order reaches often. Agreement (or a reversed ranking) is therefore claimed only when the
interval excludes 0 *and* Kendall's test of no association rejects at 5% (scipy's p, exact for small rankings
without ties); otherwise the row says that the interval excludes 0 but the p does not support it. The
published values carry noise of their own that the interval ignores (Roth et al.'s are read off figures to
about 0.3 points, and the Reality Check finds most of its losses within each other's confidence intervals).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .stats import hierarchical_draws, with_units

PUBLISHED_FILE = Path(__file__).with_name("published_fair.csv")
PUBLISHED_COLUMNS = ("source", "protocol", "dataset", "method", "loss", "miner", "metric", "value", "basis")
RESAMPLES = 2000
CONFIDENCE = 0.95
MIN_CELLS = 3  # fewer cells in common give no ranking worth a tau
TABLE_NAME = "field_agreement"  # tables/field_agreement.csv
AGAINST_STUDY = "study"  # the 'against' column of a row that compares two studies
DATASET_NAMES = {"cub": "CUB", "cars196": "Cars196"}
METRIC_NAMES = {"map@r": "MAP@R", "recall@1": "Recall@1", "r_precision": "R-Precision"}
SHORT_SOURCES = {"mlrc": "the Reality Check", "roth2020": "Roth et al."}


@dataclass(frozen=True)
class FieldRanking:
    """One published ranking a study is set against: the ``protocol``'s numbers of ``metric`` on ``dataset``,
    compared with the study's ``ours`` (a column of :func:`dmlbench.reporting.runs.load_runs`)."""

    protocol: str
    dataset: str
    metric: str
    ours: str


FIELD_RANKINGS = (  # the lead row first: MAP@R, the study's lead metric, against the Reality Check on CUB
    FieldRanking("mlrc", "cub", "map@r", "map@r"), FieldRanking("mlrc", "cub", "recall@1", "recall@1"),
    FieldRanking("mlrc", "cars196", "map@r", "map@r"), FieldRanking("mlrc", "cars196", "recall@1", "recall@1"),
    FieldRanking("roth2020", "cub", "recall@1", "recall@1"))
REGIME_METRICS = ("map@r", "recall@1")  # two studies of this project are compared on these
COLUMNS = ["study", "against", "dataset", "metric", "their_metric", "cells", "tau", "tau_low", "tau_high", "p",
           "spread", "their_spread", "verdict", "cells_in_common"]


def published_fair(path: str | os.PathLike = PUBLISHED_FILE) -> pd.DataFrame:
    """The published fair-protocol numbers (percent), one row per number; ``loss`` and ``miner`` are '' where
    the project has no such cell."""
    table = pd.read_csv(path, dtype={"value": float}, keep_default_na=False)
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column {', '.join(missing)}; expected {', '.join(PUBLISHED_COLUMNS)}")
    return table


def published_ranking(table: pd.DataFrame, ranking: FieldRanking) -> pd.Series:
    """(loss, miner) -> the published value, for the rows of ``ranking`` that name a cell of this project."""
    rows = table[(table["protocol"] == ranking.protocol) & (table["dataset"] == ranking.dataset)
                 & (table["metric"] == ranking.metric) & (table["loss"] != "")]
    return pd.Series(rows["value"].to_numpy(float), index=pd.MultiIndex.from_arrays([rows["loss"], rows["miner"]]))


def unit_matrix(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Units (rows, 'fold f, seed s') x cells ((loss, miner) columns) of one dataset's ``metric``."""
    return with_units(runs).pivot_table(index="unit", columns=["loss", "miner"], values=metric, aggfunc="mean")


def tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``x`` against the same row of ``y`` (or against ``y`` when it is one
    ranking), as scipy's kendalltau computes it; NaN where either row is constant."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    i, j = np.triu_indices(x.shape[1], k=1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum(axis=1) / np.sqrt((sx != 0).sum(axis=1) * (sy != 0).sum(axis=1))


def _cell_means(matrix: np.ndarray, draws: list[np.ndarray]) -> np.ndarray:
    """(draws, cells): each draw's mean over its units of every cell (a unit a cell lacks is left out)."""
    return np.stack([np.nanmean(matrix[d], axis=0) for d in draws])


def agreement(ours: pd.DataFrame, theirs: pd.Series | pd.DataFrame, *, resamples: int = RESAMPLES, seed: int = 0,
              confidence: float = CONFIDENCE) -> dict:
    """Kendall's tau between the cell means of ``ours`` (:func:`unit_matrix`) and ``theirs`` over the cells in
    common: ``theirs`` is a published ranking ((loss, miner) -> value, fixed) or another study's unit matrix
    (paired by unit: only the units both ran, drawn together). The interval is a hierarchical bootstrap over
    units (folds, then seeds within each drawn fold); the spreads are max - min of the cell means, in points."""
    paired = isinstance(theirs, pd.DataFrame)
    cells = [c for c in ours.columns if c in (theirs.columns if paired else theirs.index)]
    ours = ours[cells].dropna(how="all")
    if paired:
        units = [u for u in ours.index if u in theirs.index]
        ours, theirs = ours.loc[units], theirs.loc[units, cells]
    x = ours.to_numpy(float)
    mean_x = np.nanmean(x, axis=0) if len(cells) and len(x) else np.array([])
    y = theirs.to_numpy(float) if paired else theirs[cells].to_numpy(float) / 100.0
    mean_y = (np.nanmean(y, axis=0) if len(y) else np.array([])) if paired else y
    out = {"cells": len(cells), "cells_in_common": [f"{loss} + {miner}" for loss, miner in cells],
           "tau": np.nan, "tau_low": np.nan, "tau_high": np.nan, "p": np.nan,
           "spread": 100 * float(np.ptp(mean_x)) if len(mean_x) else np.nan,
           "their_spread": 100 * float(np.ptp(mean_y)) if len(mean_y) else np.nan}
    if len(cells) < 2 or len(x) == 0:
        return out
    result = sps.kendalltau(mean_x, mean_y)
    out.update(tau=float(result.statistic), p=float(result.pvalue))
    draws = hierarchical_draws(_folds_of(ours.index), np.random.default_rng(seed), resamples)
    boot_x = _cell_means(x, draws)
    taus = tau_b(boot_x, _cell_means(y, draws) if paired else mean_y)
    taus = taus[np.isfinite(taus)]
    if len(taus):
        tail = (1 - confidence) / 2 * 100
        out.update(tau_low=float(np.percentile(taus, tail)), tau_high=float(np.percentile(taus, 100 - tail)))
    return out


def _folds_of(units) -> list[float]:
    """The fold of each unit label as dmlbench.reporting.stats.unit_label writes it ('fold 2, seed 1' -> 2.0;
    'seed 1' -> NaN: a dataset without folds)."""
    return [float(u.split(",")[0].split()[1]) if str(u).startswith("fold ") else np.nan for u in units]


def verdict(row: dict) -> str:
    """What a row's interval supports, in the protocol's words."""
    if row["cells"] < MIN_CELLS:
        return f"too few cells in common ({row['cells']}; at least {MIN_CELLS})"
    if not np.isfinite(row["tau_low"]):
        return "no interval (every draw ties the cells)"
    if row["tau_low"] <= 0 <= row["tau_high"]:
        return "no detectable agreement (the interval contains 0)"
    if not row["p"] < 1 - CONFIDENCE:  # our ranking is stable, but a tau this size over so few cells is chance
        return f"no detectable agreement (the interval excludes 0 but Kendall's p is {row['p']:.2f})"
    if row["tau_low"] > 0:
        return "agreement (the interval lies above 0 and p < 0.05)"
    return "reversed ranking (the interval lies below 0 and p < 0.05)"


def field_rows(study: str, runs: pd.DataFrame, published: pd.DataFrame | None = None, **options) -> list[dict]:
    """One row per dataset of ``runs`` and published ranking (:data:`FIELD_RANKINGS`) with a cell in common."""
    published = published_fair() if published is None else published
    rows = []
    for dataset, part in runs.groupby("dataset", sort=False):
        for ranking in FIELD_RANKINGS:
            theirs = published_ranking(published, ranking)
            stats = agreement(unit_matrix(part, ranking.ours), theirs, **options)
            if stats["cells"] == 0:
                continue
            source = published.loc[published["protocol"] == ranking.protocol, "source"].iloc[0]
            rows.append({"study": study, "against": f"{source}, {DATASET_NAMES.get(ranking.dataset, ranking.dataset)}",
                         "dataset": dataset, "metric": ranking.ours, "their_metric": ranking.metric, **stats})
    return [row | {"verdict": verdict(row)} for row in rows]


def regime_rows(study: str, runs: pd.DataFrame, reference: str, reference_runs: pd.DataFrame,
                **options) -> list[dict]:
    """One row per dataset both studies ran and metric of :data:`REGIME_METRICS`: ``study`` against
    ``reference`` over the cells both ran, paired by unit."""
    rows = []
    for dataset, part in runs.groupby("dataset", sort=False):
        other = reference_runs[reference_runs["dataset"] == dataset]
        if other.empty:
            continue
        for metric in REGIME_METRICS:
            stats = agreement(unit_matrix(part, metric), unit_matrix(other, metric), **options)
            rows.append({"study": study, "against": f"{AGAINST_STUDY} {reference}", "dataset": dataset,
                         "metric": metric, "their_metric": metric, **stats})
    return [row | {"verdict": verdict(row)} for row in rows]


YARDSTICK = "field: "  # the 'study' column of a row that sets one published ranking against another
UNTRAINED = "pretrained, no training"  # a published row that ranks no loss


def yardstick_rows(published: pd.DataFrame | None = None, protocol: str = "mlrc",
                   datasets: tuple[str, str] = ("cub", "cars196")) -> list[dict]:
    """For scale: how far the field agrees with itself. One row per metric of :data:`REGIME_METRICS`: one
    source's ranking of every loss it trained (mapped to a cell here or not) on one dataset against the other;
    Kendall's tau and its p, no interval (nothing of the published replicates is known)."""
    published = published_fair() if published is None else published
    rows = []
    for metric in REGIME_METRICS:
        mine = published[(published["protocol"] == protocol) & (published["metric"] == metric)
                         & (published["method"] != UNTRAINED)]
        first, second = (mine[mine["dataset"] == d].set_index("method")["value"] for d in datasets)
        common = [m for m in first.index if m in second.index]
        if len(common) < 2:
            continue
        result = sps.kendalltau(first[common], second[common])
        source = mine["source"].iloc[0]
        row = {"study": f"{YARDSTICK}{source}, {DATASET_NAMES.get(datasets[0], datasets[0])}",
               "against": f"{source}, {DATASET_NAMES.get(datasets[1], datasets[1])}", "dataset": datasets[0],
               "metric": metric, "their_metric": metric, "cells": len(common), "cells_in_common": common,
               "tau": float(result.statistic), "tau_low": np.nan, "tau_high": np.nan, "p": float(result.pvalue),
               "spread": float(np.ptp(first[common])), "their_spread": float(np.ptp(second[common]))}
        supported = row["p"] < 1 - CONFIDENCE
        row["verdict"] = (("agreement" if row["tau"] > 0 else "reversed ranking") + " (p < 0.05)") if supported \
            else f"no detectable agreement (p = {row['p']:.2f})"
        rows.append(row)
    return rows


def agreement_table(rows: list[dict]) -> pd.DataFrame:
    """The rows as tables/field_agreement.csv stores them (the cells in common joined by '; ')."""
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["cells_in_common"] = ["; ".join(c) if isinstance(c, list) else c for c in table["cells_in_common"]]
    return table


# ---- the studies' runs -------------------------------------------------------------------------------

def finished_runs(study, results: str | os.PathLike) -> pd.DataFrame:
    """The finished runs of ``study`` (a dmlbench.study.cells.Study) under ``results``/runs: the cells of the
    study file that are done, damaged and foreign run folders left out."""
    from ..study.cells import study_manifest
    from .runs import cell_status, load_runs

    runs_dir = Path(results) / "runs"
    if not runs_dir.is_dir():
        return load_runs(runs_dir).iloc[0:0]
    status = cell_status(study_manifest(study), runs_dir)
    runs = load_runs(runs_dir)
    return runs[runs["run_id"].isin(status.loc[status["state"] == "done", "run_id"])].reset_index(drop=True)


def shipped_results(name: str) -> Path:
    """The repository's results folder of the study named ``name`` (results/ for the default study,
    results/<name>/ for another), wherever this process writes its own."""
    from ..paths import DEFAULT_STUDY, REPO_RESULTS

    return REPO_RESULTS if name == DEFAULT_STUDY else REPO_RESULTS / name


def reference_of(study, given: str | os.PathLike | None = None):
    """The study to compare ``study`` with: ``given``, else its file's ``reference_study``, else None."""
    from ..study.cells import load_study

    path = given or getattr(study, "reference_study", None)
    return None if path is None else load_study(path, check_networks=False)


# ---- in words ------------------------------------------------------------------------------------------

def _number(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "p < 0.001" if np.isfinite(value) and value < 0.001 else f"p = {_number(value, 3)}"


def row_sentence(row: dict) -> str:
    """One row in words: the cells, tau, its interval, p, the spreads and the verdict."""
    metric = METRIC_NAMES.get(row["metric"], row["metric"])
    if str(row["study"]).startswith(YARDSTICK):
        return (f"For scale, the field against itself: {str(row['study'])[len(YARDSTICK):]} against "
                f"{row['against']} ranks the {row['cells']} losses it trained with Kendall's tau "
                f"{_number(row['tau'])} by {metric} ({_p(row['p'])}; they span {_number(row['spread'], 1)} and "
                f"{_number(row['their_spread'], 1)} points).")
    if str(row["against"]).startswith(AGAINST_STUDY + " "):
        other = f"the study '{str(row['against'])[len(AGAINST_STUDY) + 1:]}'"
        spread = f"they span {_number(row['spread'], 1)} points here and {_number(row['their_spread'], 1)} there"
    else:
        other = row["against"]
        spread = f"they span {_number(row['spread'], 1)} points here and {_number(row['their_spread'], 1)} in the paper"
    if row["cells"] < MIN_CELLS:
        return f"Against {other} ({metric}), the study '{row['study']}' shares {row['cells']} cell(s): too few to rank."
    return (f"Against {other}, the study '{row['study']}' ranks the {row['cells']} cells in common by {metric} with "
            f"Kendall's tau {_number(row['tau'])} ({CONFIDENCE:.0%} bootstrap interval over folds and seeds "
            f"{_number(row['tau_low'])} to {_number(row['tau_high'])}, {_p(row['p'])}): "
            f"{row['verdict'].split(' (')[0]}; {spread}.")


def lead_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per study the lead row against the field (MAP@R against the Reality Check on CUB, else its first), then
    every MAP@R row between two studies, then the field's MAP@R against itself (:func:`yardstick_rows`)."""
    if table.empty:
        return table
    lead = FIELD_RANKINGS[0]
    yardstick = table["study"].astype(str).str.startswith(YARDSTICK)
    field = table[~table["against"].astype(str).str.startswith(AGAINST_STUDY + " ") & ~yardstick]
    first = field[(field["metric"] == lead.ours) & (field["their_metric"] == lead.metric)
                  & field["against"].astype(str).str.endswith(DATASET_NAMES[lead.dataset])]
    chosen = [first[first["study"] == s].head(1) if (first["study"] == s).any() else part.head(1)
              for s, part in field.groupby("study", sort=False)]
    between = table[table["against"].astype(str).str.startswith(AGAINST_STUDY + " ") & (table["metric"] == "map@r")]
    scale = table[yardstick & (table["metric"] == "map@r")]
    return pd.concat([*chosen, between, scale], ignore_index=True)


def resemblance(table: pd.DataFrame, study: str) -> str:
    """Whether the miniature (``study``) resembles the field, from its lead row: only an interval above 0 says so."""
    rows = lead_rows(table)
    mine = rows[(rows["study"] == study) & ~rows["against"].astype(str).str.startswith(AGAINST_STUDY + " ")]
    if mine.empty:
        return f"The study '{study}' shares no ranked cell with the published fair-protocol comparisons."
    row = mine.iloc[0].to_dict()
    if str(row["verdict"]).startswith("agreement"):
        return f"The miniature ('{study}') resembles the field: its ranking agrees with {row['against']}."
    return (f"The miniature ('{study}') shows no detectable resemblance to the field: against {row['against']}, "
            f"{row['verdict'].split(' (')[0]} ({row['verdict'].split(' (', 1)[-1].rstrip(')')}).")


def agreement_lines(table: pd.DataFrame, study: str) -> list[str]:
    """The verdict on ``study``, then every lead row (:func:`lead_rows`) in words."""
    return [resemblance(table, study)] + [row_sentence(row) for row in lead_rows(table).to_dict("records")]


# ---- the table of a study, for the command and the report ----------------------------------------------

def comparison_table(name: str, runs: pd.DataFrame, reference=None, reference_runs: pd.DataFrame | None = None,
                     **options) -> pd.DataFrame:
    """Every row for the study ``name`` (its finished ``runs``): against the field, then, with a ``reference``
    study and its runs, the reference against the field and the study against the reference."""
    rows = field_rows(name, runs, **options) if len(runs) else []
    if reference is not None and reference_runs is not None and len(reference_runs):
        rows += field_rows(reference.name, reference_runs, **options)
        if len(runs):
            rows += regime_rows(name, runs, reference.name, reference_runs, **options)
    return agreement_table(rows + yardstick_rows() if rows else rows)


def study_file(path: str | os.PathLike, option: str):
    """The study at ``path``, listed (not run); a missing file is one line naming the studies there are."""
    from ..errors import ConfigError
    from ..study.cells import known_study_files, load_study

    if not Path(path).is_file():
        raise ConfigError(f"{option} {path}: no such study file; the studies: {', '.join(known_study_files()) or 'none'}")
    return load_study(path, check_networks=False)


def results_folder(given: str | os.PathLike | None, study, option: str) -> Path:
    """``given`` (it must be a folder), else the study's own results folder (dmlbench.paths)."""
    from ..errors import ConfigError
    from ..paths import study_results_dir

    if given is None:
        return study_results_dir(study.name) if option == "--results" else shipped_results(study.name)
    if not Path(given).is_dir():
        raise ConfigError(f"{option} {given}: no such folder; give a study's results folder (the one holding runs/)")
    return Path(given)


def command_lines(study_path, reference_path=None, results=None, reference_results=None,
                  **options) -> tuple[list[str], int]:
    """What `dmlbench agreement` prints, and its exit status (1 when neither study has a finished run)."""
    from .labels import shown_path

    study = study_file(study_path, "--study")
    folder = results_folder(results, study, "--results")
    reference = study_file(reference_path, "--reference") if reference_path else reference_of(study)
    ref_folder = results_folder(reference_results, reference, "--reference-results") if reference else None
    runs = finished_runs(study, folder)
    reference_runs = finished_runs(reference, ref_folder) if reference else None
    lines = []
    for one, its_runs, where in ((study, runs, folder), (reference, reference_runs, ref_folder)):
        if one is not None and its_runs is not None and its_runs.empty:
            lines.append(f"the study '{one.name}' has no finished run in {shown_path(where)}/runs: its rows are left out")
    table = comparison_table(study.name, runs, reference, reference_runs, **options)
    if table.empty:
        return lines + ["no row: neither study has a finished cell in common with the published rankings"], 1
    shown = table.drop(columns=["cells_in_common"])
    lines.append(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    lines += agreement_lines(table, study.name if len(runs) else reference.name)
    return lines, 0


def report_section(ctx) -> tuple[pd.DataFrame, list[str]]:
    """The report's table (written by the caller to tables/field_agreement.csv) and its sentences, for the
    study of ``ctx`` (a dmlbench.reporting.context.ReportContext) and its file's ``reference_study``."""
    reference = reference_of(ctx.study)
    reference_runs = finished_runs(reference, shipped_results(reference.name)) if reference else None
    table = comparison_table(ctx.study.name, ctx.runs, reference, reference_runs)
    lines = agreement_lines(table, ctx.study.name) if len(table) else []
    if reference is not None and (reference_runs is None or reference_runs.empty):
        lines.append(f"The reference study '{reference.name}' has no finished run yet: no comparison with it.")
    return table, lines


# ---- the README's block ----------------------------------------------------------------------------------

TRANSFER_STUDY = "transfer"  # the study whose table the README quotes: results/transfer/tables/field_agreement.csv
FIELD_BEGIN = ("<!-- field-agreement:begin (generated by 'dmlbench readme' from "
               "results/transfer/tables/field_agreement.csv; do not edit by hand) -->")
FIELD_END = "<!-- field-agreement:end -->"


def render_field_block(results: Path, lead: str | None = None) -> str:
    """The README's lines on whether the miniature resembles the field, from the transfer study's table under
    the repository's results folder ``results`` (after ``lead``, the transfer study's own answer, when given);
    a line saying it is not there yet without one."""
    path = results / TRANSFER_STUDY / "tables" / f"{TABLE_NAME}.csv"
    if not path.is_file():
        return "\n".join([FIELD_BEGIN, f"**Field agreement** (`dmlbench agreement`): the transfer study "
                          f"(`studies/{TRANSFER_STUDY}.yaml`) has no `results/{TRANSFER_STUDY}/tables/{TABLE_NAME}.csv` "
                          f"yet.", FIELD_END])
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return "\n".join([FIELD_BEGIN] + ([lead] if lead else []) + ["**Field agreement** (`dmlbench agreement`, "
                      f"`results/{TRANSFER_STUDY}/tables/{TABLE_NAME}.csv`): "
                      + " ".join(agreement_lines(table, TRANSFER_STUDY)), FIELD_END])
