"""results/summary.json: the study's numbers in one small file, what the README's results block is
made of (:func:`dmlbench.reporting.readme.render_block`). The report notebook writes it
(:func:`write_study_summary`); :func:`dmlbench.reporting.report.build_report` then adds the time the
build took.

Schema (one JSON object; floats rounded to 12 significant digits, NaN and infinity written as null;
indent 2, a newline at the end):

    study         str    the study's name (its file's ``name``)
    dataset       str    the study's first dataset: the one ``table`` describes
    cells         int    the runs of the study (dataset x loss x miner x seed)
    done          int    of those, finished: a complete, readable record
    failed        int    failed (the report names each error)
    missing       int    not run yet
    unreadable    int    with a damaged record (truncated, edited)
    skipped       int    (cell, seed) pairs left out as incompatible (a miner a loss cannot take)
    seeds         int    distinct seeds in the study
    confidence    float  the level of the t-intervals (0.95)
    table         list   one object per finished loss x miner cell of ``dataset``, in the study file's order
                         of losses, then miners (in a study with a tuning block: each cell at the settings
                         its search found best, the defaults where it kept them; ``tuning`` has both):
        loss, miner                                  str
        recall@1, recall@2, recall@4, recall@8,
        r_precision, map@r, nmi, ami                 float  the test metric's mean over seeds
        seeds                                        int    the seeds it ran with
        units, folds                                 int    its runs (fold x seed) and folds (0: none)
        recall@1_low, recall@1_high,
        map@r_low, map@r_high                        float | null  the t-interval's bounds (null: one seed)
        identical_to                                 str | null    the cell ('loss + miner') whose row stands
                                                     for this one: the two trained identically
                                                     (dmlbench.reporting.runs.identical_groups), so the
                                                     results tables show them as one row and rankings and
                                                     comparisons count them once; null for every other cell
    tables        object dataset -> its ``table`` (the same rows), for every dataset of the study in order
    adequacy      object dataset -> whether its runs can tell cells apart (dmlbench.reporting.adequacy):
        runs, converged, not_converged, undetermined, stopped_on_plateau   int
                                             converged: validation gain over the last quarter of the
                                             budget below the cell's seed standard deviation (within
                                             folds); undetermined: no two seeds in one fold, or no history
        converged_share                      float  converged / runs
        epoch_budget                         int    the most epochs a run may train
        median_gain_last_quarter             float  of the selection metric, over the runs (0-1 scale)
        median_cell_sd                       float  the cells' seed deviation of it at the selected epoch
        recall@1_median_half_width_pts,
        map@r_median_half_width_pts          float  median over cells of the t-interval half-width (points)
        training_share                       float  training steps / papermill wall time, summed over its runs
        median_wall_s, median_training_s     float  per run
      and "all": the training share and medians over every run
    protocol      object dataset -> the claims over units (fold, seed) (dmlbench.reporting.claims):
        tied_with_best   object  best (cell), best_map@r, tied (the cells not significantly worse than it,
                                 paired by unit, Holm), untested (those of them with too few shared units
                                 for a test), family (comparisons), closest_not_tied and closest_p_holm
                                 (null when none), units (the design's: the most a comparison had), level,
                                 exact_reachable (whether an exact sign-flip test can pass Holm's first step)
        claims           list    best miner / best loss against the runner-up: claim, first, runner_up,
                                 first_score, runner_up_score, entries, units, difference, p, p_holm,
                                 family, verdict ("best" or "tied")
        baselines        list    baseline (raw pixels, untrained network), units, map@r with map@r_low and
                                 map@r_high, r_precision, recall@1 (means over its units)
        validation_agreement  object  cells, tau (Kendall's, validation against test MAP@R over the best
                                 cells by test MAP@R), p, validation, test (the two columns compared)
        fold_variance_share   float | null  median over cells of the share of MAP@R variance between folds
    timing        object the papermill time of the finished runs, from their execution records:
        cells_timed   int    runs with a readable execution record
        cells_wall_s  float  their notebooks' wall times, summed (s)
        cells_span_s  float  from the first one's start to the last one's end, summed over the sessions
                             the runs were made in (s); 0.0 when none
        sessions      int    those sessions (an hour with no cell running separates two)
    machine       object what the first finished run recorded ({} when no run has finished):
        cpu str, cpu_count int, device str, torch_threads int   (null where that run did not record it)
    tuning        object only for a study with a tuning block (dmlbench.reporting.tuning.tuning_summary):
        trials, objective, seed          the budget per search, the validation metric, the sampler's seed
        datasets      object dataset -> {rows: one per finished search (loss, miner, default and tuned
                             settings, validation scores, test Recall@1 / MAP@R of both and their paired
                             gain with t-interval bounds, both ranks), verdict: the report's sentences,
                             searches, finished}
        timing        object trials and trials_s (their time), the cells' timing as above over default
                             and tuned cells, study_span_s: first cell's or trial's start to the last
                             one's end, summed over sessions
    indexes       object only for a study with an indexes block (dmlbench.reporting.indexes.index_summary):
        dataset -> {runs: runs evaluated, lines: the report's sentences, matched: one row per cell with its
                    seeds, exact Recall@1 and Recall@1 under each index at matched speed (means over seeds)}
    report_wall_s float  seconds the report build took that produced these numbers; absent until
                         build_report adds it, and kept as long as the numbers stay the same

A rebuild over the same runs leaves the file as it is, byte for byte (:func:`write_summary`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..fileio import read_json, write_if_changed
from .labels import METRICS
from .runs import execution_timing, run_machine
from .indexes import index_summary
from .tuning import tuning_summary
from .tables import rounded

SUMMARY_FILE = "summary.json"
REPORT_TIME_KEY = "report_wall_s"
INTERVAL_METRICS = ("recall@1", "map@r")  # the metrics whose t-interval bounds the table carries


def json_text(obj: Any) -> str:
    """JSON as the project writes it (indent 2, newline at the end), floats :func:`rounded`."""
    return json.dumps(rounded(obj), indent=2, sort_keys=False) + "\n"


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> bool:
    """results/summary.json (what the README's results block is made of), floats :func:`rounded`.
    When the numbers are those already there, the file is left as it is, with the report time it
    records (that of the build that produced them); otherwise the new summary is written without one,
    and :func:`dmlbench.reporting.report.build_report` adds this build's. Returns whether it wrote."""
    path = Path(path)
    summary = rounded(summary)
    try:
        old = read_json(path)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and REPORT_TIME_KEY in old and \
            {k: v for k, v in old.items() if k != REPORT_TIME_KEY} == json.loads(json_text(summary)):
        summary[REPORT_TIME_KEY] = old[REPORT_TIME_KEY]
    return write_if_changed(path, json_text(summary))


def add_report_time(path: str | os.PathLike, seconds: float) -> None:
    """Records the build's time in a summary written without one (new numbers); one that has a time
    keeps it (its numbers are those of the build that recorded it)."""
    path = Path(path)
    if path.is_file():
        summary = read_json(path)
        if REPORT_TIME_KEY not in summary:
            summary[REPORT_TIME_KEY] = round(seconds, 1)
            write_if_changed(path, json_text(summary))


def interval_bounds(seeds: pd.DataFrame) -> dict[tuple[str, str], dict[str, float | None]]:
    """(loss, miner) -> the t-interval bounds of INTERVAL_METRICS in a seed table (None: no interval)."""
    intervals = {}
    for _, r in seeds.iterrows():
        intervals[(r["loss"], r["miner"])] = {f"{m}_{side}": (None if pd.isna(r[f"{m}_{side}"]) else float(r[f"{m}_{side}"]))
                                              for m in INTERVAL_METRICS for side in ("low", "high")}
    return intervals


def cell_rows(summary: pd.DataFrame, dataset: str, losses: list[str], miners: list[str],
              intervals: dict[tuple[str, str], dict],
              identical_to: dict[tuple[str, str], str] | None = None) -> list[dict[str, Any]]:
    """The ``table`` of summary.json: the means per cell of ``dataset`` in study order, with their
    interval bounds and the cell each merged one is identical to (``identical_to``)."""
    if summary.empty:
        return []
    table = summary[summary["dataset"] == dataset].assign(
        _l=lambda d: d["loss"].map(losses.index), _m=lambda d: d["miner"].map(miners.index)).sort_values(["_l", "_m"])
    identical_to = identical_to or {}
    return [{k: row[k] for k in ("loss", "miner", *METRICS, "seeds", "units", "folds") if k in row}
            | intervals.get((row["loss"], row["miner"]), {})
            | {"identical_to": identical_to.get((row["loss"], row["miner"]))} for _, row in table.iterrows()]


def dataset_rows(ctx, dataset: str) -> list[dict[str, Any]]:
    """The ``table`` rows of one dataset (every cell's interval, those merged into an identical one too)."""
    from .stats import seed_summary

    part = ctx.runs_of(dataset)
    intervals = interval_bounds(seed_summary(part, INTERVAL_METRICS, ctx.confidence)) if len(part) else {}
    merged = {cell: g.labels[0] for g in ctx.identical.get(dataset, []) for cell in g.merged}
    return cell_rows(ctx.summary, dataset, ctx.losses, ctx.miners, intervals, merged)


def adequacy_summary(ctx) -> dict[str, dict[str, Any]]:
    """summary.json's ``adequacy``: per dataset (and "all") convergence, median half-widths and cost."""
    tables = ctx.adequacy()
    out: dict[str, dict[str, Any]] = {}
    for row in tables["convergence"].to_dict("records"):
        out[row["dataset"]] = {k: row[k] for k in ("runs", "converged", "converged_share", "not_converged",
                                                    "undetermined", "stopped_on_plateau", "epoch_budget",
                                                    "median_gain_last_quarter", "median_cell_sd")}
    for row in tables["power"].to_dict("records"):
        out.setdefault(row["dataset"], {})[f"{row['metric']}_median_half_width_pts"] = row["median_half_width_pts"]
    for row in tables["cost"].to_dict("records"):
        out.setdefault(row["dataset"], {}).update({"training_share": row["training_share_of_summed_wall"],
                                                   "median_wall_s": row["wall_s"],
                                                   "median_training_s": row["training_s"]})
    return out


def protocol_summary(ctx) -> dict[str, dict[str, Any]]:
    """summary.json's ``protocol``: per dataset the cells tied with the best, the named claims, the
    baselines, the validation-test agreement and the median share of variance between folds."""
    from .claims import tied_facts

    out: dict[str, dict[str, Any]] = {}
    variance = ctx.fold_variance() if len(ctx.runs) else pd.DataFrame(columns=["dataset", "between_share"])
    for dataset in ctx.datasets:
        tied, claims = (ctx.tied or {}).get(dataset), (ctx.claims or {}).get(dataset)
        baselines = ctx.baseline_rows(dataset)
        shares = variance.loc[variance["dataset"] == dataset, "between_share"].dropna()
        out[dataset] = {
            "tied_with_best": tied_facts(tied, ctx.confidence) if tied is not None else {},
            "claims": [] if claims is None else claims.drop(columns=["low", "high"]).to_dict("records"),
            "baselines": [] if baselines.empty else [
                {"baseline": r["loss"], "units": r["units"]} | {k: r.get(k) for k in BASELINE_KEYS}
                for _, r in baselines.iterrows()],
            "validation_agreement": ctx.agreement(dataset),
            "fold_variance_share": float(shares.median()) if len(shares) else None}
    return out


BASELINE_KEYS = ("map@r", "map@r_low", "map@r_high", "r_precision", "recall@1")  # a baseline's numbers in summary.json


def study_summary(ctx) -> dict[str, Any]:
    """summary.json's content (see the module's docstring) for a
    :class:`dmlbench.reporting.context.ReportContext`."""
    manifest, counts, dataset = ctx.manifest, ctx.counts, ctx.datasets[0]
    machine = {} if ctx.runs.empty else run_machine(ctx.runs_dir, ctx.runs["run_id"].iloc[0])
    tables = {name: dataset_rows(ctx, name) for name in ctx.datasets}
    return {
        "study": manifest["name"], "dataset": dataset, "cells": len(manifest["cells"]),
        "done": counts.get("done", 0), "failed": counts.get("failed", 0), "missing": counts.get("missing", 0),
        "unreadable": counts.get("unreadable", 0), "skipped": counts.get("skipped", 0),
        "seeds": len(set(c["seed"] for c in manifest["cells"])), "confidence": ctx.confidence,
        "table": tables[dataset], "tables": tables, "adequacy": adequacy_summary(ctx),
        "protocol": protocol_summary(ctx),
        "timing": execution_timing(ctx.runs_dir, ctx.runs["run_id"]), "machine": machine,
    } | ({"tuning": tuning} if (tuning := tuning_summary(ctx)) is not None else {}) \
      | ({"indexes": indexes} if (indexes := index_summary(ctx)) is not None else {})


def write_study_summary(ctx) -> bool:
    """Writes results/summary.json for the study (:func:`write_summary`); returns whether it wrote."""
    return write_summary(ctx.results / SUMMARY_FILE, study_summary(ctx))
