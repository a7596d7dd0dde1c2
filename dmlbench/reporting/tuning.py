"""The report's tuning section: each searched cell at its default and its tuned settings.

Per dataset of a study with a tuning block (dmlbench.study.tuning):

- :func:`tuning_table`: one row per search, its loss and miner, the default and the tuned settings,
  the validation score of each (trial 0 and the best trial), the test Recall@1 and MAP@R of each over
  the study's seeds with t-intervals, the tuned-minus-default MAP@R difference paired by seed, and
  the rank of the cell among the searched cells before and after tuning;
- :func:`trials_frame`: every trial of every search (values, state, score, epochs, seconds);
- :func:`search_figure`: validation score against trial number for each search;
- :func:`tuning_verdict`: what tuning did to the untuned study's conclusions, in sentences made of the numbers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..fileio import read_json
from ..training.rundir import RunDir
from .narrative import pct
from ..study.finalists import is_defaults
from .search_audit import _records, search_row
from .stats import DIFFERENCE_RANGE, METRIC_RANGE, by_unit, t_interval


def trials_frame(searches: list) -> pd.DataFrame:
    """One row per trial of each search: dataset, loss, miner, trial number, state, values, validation
    score, epochs trained, seconds, and whether it was the defaults or a retry of a killed trial."""
    rows = []
    for search in searches:
        for record in _records(search.folder):
            curve = record.get("curve") or []
            rows.append({"dataset": search.base.dataset, "loss": search.base.loss, "miner": search.base.miner,
                         "search_id": search.search_id, "trial": record["number"], "state": record.get("state"),
                         "values": settings_text(record.get("values") or {}), "value": record.get("value"),
                         "epochs": max((c["epoch"] for c in curve), default=0), "seconds": record.get("duration_s"),
                         "defaults": record.get("role") == "default settings", "retry_of": record.get("retry_of")})
    return pd.DataFrame(rows, columns=["dataset", "loss", "miner", "search_id", "trial", "state", "values", "value",
                                       "epochs", "seconds", "defaults", "retry_of"])


def settings_text(values: dict[str, Any]) -> str:
    """``{"loss.margin": 0.1, "lr": 0.002}`` -> ``margin 0.1, lr 0.002``."""
    return ", ".join(f"{name.split('.', 1)[-1]} {value:g}" if isinstance(value, (int, float)) else
                     f"{name.split('.', 1)[-1]} {value}" for name, value in values.items())


def best_settings(searches: list) -> dict[tuple[str, str], str]:
    """(loss, miner) -> the settings each finished search found best, as text ('its defaults' where
    they are the defaults)."""
    out = {}
    for search in searches:
        if search.is_done():
            best = read_json(search.best_path)
            out[(search.base.loss, search.base.miner)] = ("its defaults" if are_defaults(search, best)
                                                          else settings_text(best["values"]))
    return out


def are_defaults(search, best: dict) -> bool:
    """Whether a search's chosen settings are its cell's own."""
    return best["values"] == best["default_values"] or is_defaults(search, best["values"])


def _cell_runs(runs: pd.DataFrame, run_ids: list[str]) -> pd.DataFrame:
    return runs[runs["run_id"].isin(run_ids)]


def _paired(default: pd.DataFrame, tuned: pd.DataFrame, metric: str, confidence: float) -> tuple[float, float, float]:
    both = by_unit(default, metric).to_frame("d").join(by_unit(tuned, metric).to_frame("t"), how="inner")
    return t_interval(both["t"] - both["d"], confidence, DIFFERENCE_RANGE)


def _search_row(search, manifest_cells: list[dict], runs: pd.DataFrame, confidence: float) -> dict[str, Any] | None:
    """The row of one search; None while it is unfinished."""
    if not search.is_done():
        return None
    best = read_json(search.best_path)
    default_ids = [c["run_id"] for c in manifest_cells if c["role"] == "default" and c["search"] == search.search_id]
    tuned_ids = [c["run_id"] for c in manifest_cells if c["role"] == "tuned" and c["search"] == search.search_id]
    same = are_defaults(search, best) or not tuned_ids  # the defaults won: one set of runs
    default, tuned = _cell_runs(runs, default_ids), _cell_runs(runs, default_ids if same else tuned_ids)
    audit = search_row(search)
    shown_defaults = {k: v for k, v in best["default_values"].items() if v is not None}
    row = {"loss": search.base.loss, "miner": search.base.miner, "default": settings_text(shown_defaults),
           "tuned": settings_text(best["values"]) + (" (the defaults)" if same else ""), "changed": not same,
           "val_default": audit["defaults_val"], "val_tuned": best["value"], "best_trial": best["best_trial"],
           "trials": audit["configs"], "pruned": best["states"].get("PRUNED", 0), "trial_s": best["trial_seconds"],
           "epochs": audit["epochs"], "gap": audit["gap"], "seed_sd": audit["seed_sd"], "tie": audit["tie"],
           "val_gain": audit["val_gain"], "val_gain_low": audit["val_gain_low"], "val_gain_high": audit["val_gain_high"],
           "at_edge": ", ".join(audit["at_edge"]),
           "seeds": int(min(default["seed"].nunique(), tuned["seed"].nunique())) if len(default) and len(tuned) else 0}
    for metric in ("recall@1", "map@r"):
        for name, part in (("default", default), ("tuned", tuned)):
            row[f"{name}_{metric}"], row[f"{name}_{metric}_low"], row[f"{name}_{metric}_high"] = \
                t_interval(part[metric], confidence, METRIC_RANGE)
        row[f"gain_{metric}"], row[f"gain_{metric}_low"], row[f"gain_{metric}_high"] = \
            _paired(default, tuned, metric, confidence) if len(default) and len(tuned) else (np.nan,) * 3
    return row


def tuning_table(ctx, dataset: str) -> pd.DataFrame:
    """One row per finished search of ``dataset``, best tuned MAP@R first, with both ranks (1: best)."""
    runs = ctx.runs if ctx.untuned_runs is None else \
        pd.concat([ctx.runs, ctx.untuned_runs]).drop_duplicates("run_id")  # the defaults kept: in both
    rows = [_search_row(s, ctx.manifest["cells"], runs, ctx.confidence) for s in ctx.study.searches
            if s.base.dataset == dataset]
    table = pd.DataFrame([r for r in rows if r is not None])
    if table.empty:
        return table
    for name in ("default", "tuned"):
        table[f"rank_{name}"] = table[f"{name}_map@r"].rank(ascending=False, method="min").astype(int)
    table["rank_change"] = table["rank_default"] - table["rank_tuned"]  # > 0: moved up
    return table.sort_values(["tuned_map@r", "loss"], ascending=[False, True]).reset_index(drop=True)


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the report shows it: settings, scores in percent with the half-width of their
    interval (mean ± half-width: the t-intervals are symmetric), ranks; narrow enough for the page."""
    def interval(row, key):
        mean, low, high = row[key], row[f"{key}_low"], row[f"{key}_high"]
        return f"{pct(mean)} ± {(high - low) * 50:.1f}" if np.isfinite(low) else pct(mean)

    shown = pd.DataFrame({
        "loss": table["loss"], "miner": table["miner"], "default settings": table["default"],
        "tuned settings": table["tuned"],
        "val. MAP@R, default → tuned": [f"{pct(a)} → {pct(b)}" if a is not None and np.isfinite(a)
                                              else f"– → {pct(b)}" for a, b in zip(table["val_default"],
                                                                                     table["val_tuned"])]})
    searched = "gap" in table and table["gap"].notna().any()  # the search columns take Recall@1's place (in the csv)
    for metric, label in ((("map@r", "MAP@R"),) if searched else (("recall@1", "Recall@1"), ("map@r", "MAP@R"))):
        shown[f"test {label}, default"] = [interval(r, f"default_{metric}") for _, r in table.iterrows()]
        shown[f"test {label}, tuned"] = [interval(r, f"tuned_{metric}") for _, r in table.iterrows()]
    shown["test gain (pts, paired)"] = [points(r, "gain_map@r") for _, r in table.iterrows()]
    shown["rank, default → tuned"] = [f"{a} → {b}" for a, b in zip(table["rank_default"], table["rank_tuned"])]
    if searched:
        shown["val. gain (pts)"] = [points(r, "val_gain") for _, r in table.iterrows()]
        shown["lead vs seed SD (pts)"] = [
            f"{r['gap'] * 100:.1f} vs {r['seed_sd'] * 100:.1f}: {'tie' if r['tie'] else 'winner'}"
            if r["gap"] is not None and np.isfinite(r["gap"]) and r["seed_sd"] is not None else "–"
            for _, r in table.iterrows()]
        shown["at an edge"] = [edge if isinstance(edge, str) and edge else "none" for edge in table["at_edge"]]
        shown = shown.drop(columns=["val. MAP@R, default → tuned"])  # its difference, with an interval, is val. gain
    return shown


def points(row, key: str) -> str:
    """A difference in points of percent, signed, with the half-width of its interval where there is one."""
    mean, low, high = (row[key] * 100, row[f"{key}_low"] * 100, row[f"{key}_high"] * 100)
    return f"{mean:+.1f} ± {(high - low) / 2:.1f}" if np.isfinite(low) else f"{mean:+.1f}"


def summary_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """summary.json's rows of a dataset's tuning table (the README's tuned-study block reads them)."""
    keys = ["loss", "miner", "default", "tuned", "changed", "val_default", "val_tuned", "seeds", "rank_default",
            "rank_tuned", "trials", "epochs", "gap", "seed_sd", "tie", "val_gain", "val_gain_low", "val_gain_high",
            "at_edge"] + [f"{kind}_{metric}{end}" for kind in ("default", "tuned", "gain")
                             for metric in ("recall@1", "map@r") for end in ("", "_low", "_high")]
    return [{key: (None if isinstance(row[key], float) and not np.isfinite(row[key]) else
                   row[key].item() if hasattr(row[key], "item") else row[key]) for key in keys if key in row}
            for _, row in table.iterrows()]


def tuning_summary(ctx) -> dict[str, Any] | None:
    """summary.json's "tuning": per dataset its rows and verdict, the budget, and the study's time."""
    if not getattr(ctx.study, "searches", None):  # no tuning block (or no study: a context made by hand)
        return None
    spec, out = ctx.study.tuning, {}
    for dataset in ctx.datasets:
        table = tuning_table(ctx, dataset)
        out[dataset] = {"rows": summary_rows(table), "verdict": tuning_verdict(table, ctx.named(dataset)),
                        "searches": sum(s.base.dataset == dataset for s in ctx.study.searches),
                        "finished": len(table)}
    return {"trials": spec.trials, "budget": spec.budget_text(), "budget_epochs": spec.budget_epochs,
            "finalists": spec.finalists, "rescore_seeds": spec.rescore_seed_list, "objective": spec.objective,
            "seed": spec.seed, "datasets": out, "tied_after_tuning": tied_summary(ctx), "timing": tuning_timing(ctx)}


def tied_after_sentence(facts: dict | None) -> str:
    """The losses tied with the best after tuning, in a sentence ('' without facts)."""
    if not facts:
        return ""
    return (f"After tuning, {facts['best']} leads (test MAP@R {facts['best_map@r']:.4f}); tied with it, each loss at "
            f"its chosen settings against it paired over {facts['units']} units with Holm over {facts['family']}: "
            f"{', '.join(facts['tied']) or 'none'}.")


def tied_summary(ctx) -> dict[str, Any] | None:
    """The losses tied with the best at their chosen settings (dmlbench.reporting.search_audit)."""
    from .claims import tied_facts
    from .search_audit import tied_after_tuning

    table = tied_after_tuning(ctx.study)
    return tied_facts(table, ctx.confidence) if not table.empty else None


def _beyond_noise(table: pd.DataFrame, metric: str) -> tuple[list[str], list[str]]:
    """Losses whose paired gain interval lies above zero, and those whose lies below."""
    up = table.loc[table[f"gain_{metric}_low"] > 0, "loss"].tolist()
    down = table.loc[table[f"gain_{metric}_high"] < 0, "loss"].tolist()
    return up, down


def _leader_line(table: pd.DataFrame, metric: str, label: str) -> str:
    before = table.sort_values(f"default_{metric}", ascending=False).iloc[0]
    after = table.sort_values(f"tuned_{metric}", ascending=False).iloc[0]
    if before["loss"] == after["loss"]:
        return (f"By test {label}, {after['loss']} leads before and after tuning "
                f"({pct(before[f'default_{metric}'])} untuned, {pct(after[f'tuned_{metric}'])} tuned).")
    overlap = after[f"tuned_{metric}_low"] <= table.loc[table["loss"] == before["loss"], f"tuned_{metric}_high"].iloc[0]
    return (f"By test {label}, tuning changes the leader: {before['loss']} leads untuned "
            f"({pct(before[f'default_{metric}'])}), {after['loss']} tuned ({pct(after[f'tuned_{metric}'])}, "
            f"{before['loss']} tuned: {pct(table.loc[table['loss'] == before['loss'], f'tuned_{metric}'].iloc[0])})"
            + ("; their intervals overlap, so the new order is within seed noise." if overlap else
               "; their intervals do not overlap."))


def tuning_verdict(table: pd.DataFrame, dataset: str | None = None) -> str:
    """Sentences, made of the table's numbers, on whether tuning changed the untuned study's conclusions."""
    if table.empty:
        return "No search has finished yet: nothing to compare."
    where = f" on {dataset}" if dataset else ""
    changed = int(table["changed"].sum())
    tau = sps.kendalltau(table["rank_default"], table["rank_tuned"]).statistic if len(table) > 1 else np.nan
    up, down = _beyond_noise(table, "map@r")
    lines = [f"The searches{where} ({_budget_words(table)}) moved {changed} of {len(table)} "
             f"losses away from their defaults. Tuning raised test MAP@R beyond seed noise (paired interval above "
             f"zero) for {len(up)} ({', '.join(up) or 'none'}) and lowered it beyond noise for {len(down)} "
             f"({', '.join(down) or 'none'}); the mean change is {table['gain_map@r'].mean() * 100:+.1f} points.",
             _leader_line(table, "map@r", "MAP@R"), _leader_line(table, "recall@1", "Recall@1")]
    movers = table.loc[table["rank_change"].abs() == table["rank_change"].abs().max()]
    if np.isfinite(tau):
        moved = ", ".join(f"{r['loss']} ({r['rank_default']} → {r['rank_tuned']})" for _, r in movers.iterrows())
        lines.append(f"Kendall's tau between the untuned and the tuned ranking by MAP@R is {tau:.2f} (1: the same "
                     f"order)" + (f"; the largest moves: {moved}." if table["rank_change"].abs().max() > 0 else "."))
    verdict = ("does not change" if tau >= 0.8 and _leader_kept(table) else
               "changes" if not _leader_kept(table) else "reorders the middle of")
    lines.append(f"In short, tuning {verdict} the untuned study's ranking of the losses{where}.")
    return " ".join(lines)


def _budget_words(table: pd.DataFrame) -> str:
    """'8 trials each', or the epochs and configurations of epoch-budget searches."""
    if "epochs" not in table or table["gap"].isna().all():
        return f"{int(table['trials'].iloc[0])} trials each"
    ties = table.loc[table["tie"].astype(bool), "loss"].tolist()
    return (f"{int(table['epochs'].min())} to {int(table['epochs'].max())} training epochs each, on "
            f"{int(table['trials'].min())} to {int(table['trials'].max())} configurations; in {len(ties)} of them "
            f"({', '.join(ties) or 'none'}) the chosen finalist led the runner-up by less than the seeds' "
            f"standard deviation, a tie")


def _leader_kept(table: pd.DataFrame) -> bool:
    return (table.sort_values("default_map@r", ascending=False).iloc[0]["loss"]
            == table.sort_values("tuned_map@r", ascending=False).iloc[0]["loss"])


def search_figure(trials: pd.DataFrame, objective: str = "map@r", columns: int = 5):
    """Each search's trials: validation score by trial number (filled: complete, hollow: pruned, star:
    the defaults) and the best complete score so far."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = list(trials.groupby(["loss", "miner"], sort=False))
    rows = max(1, -(-len(groups) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.1 * rows), sharey=True, squeeze=False)
    for ax, ((loss, miner), part) in zip(axes.flat, groups):
        part = part.sort_values("trial")
        done = part[part["state"].isin(["COMPLETE", "PRUNED"])]
        complete = done["state"] == "COMPLETE"
        ax.plot(done["trial"][complete], done["value"][complete] * 100, "o", color="tab:blue", ms=4)
        ax.plot(done["trial"][~complete], done["value"][~complete] * 100, "o", mfc="none", color="tab:gray", ms=4)
        ax.plot(done["trial"][done["defaults"]], done["value"][done["defaults"]] * 100, "*", color="tab:orange", ms=9)
        best = done["value"].where(complete).cummax().ffill() * 100  # pruned trials leave the best as it was
        ax.step(done["trial"], best, where="post", color="tab:blue", lw=1)
        ax.set_title(f"{loss} + {miner}" if miner != "none" else loss, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.supxlabel("trial", fontsize=8)
    fig.supylabel(f"validation {objective.upper() if objective == 'map@r' else objective} (%)", fontsize=8)
    fig.suptitle("Each search: its trials (star: the defaults, hollow: pruned) and the best so far", fontsize=9)
    fig.tight_layout()
    return fig


def tuning_timing(ctx) -> dict[str, Any]:
    """The study's time on this machine: the searches' trials, and from the first cell's or trial's start
    to the last one's end (summed over sessions, as dmlbench.reporting.runs.execution_timing sums them)."""
    from .runs import execution_timing, sessions

    starts, ends, trial_s, trials = [], [], 0.0, 0
    for search in ctx.study.searches:
        for record in _records(search.folder):
            if record.get("finished"):
                starts.append(record["started"])
                ends.append(record["finished"])
                trial_s, trials = trial_s + record["finished"] - record["started"], trials + 1
    for run_id in [c["run_id"] for c in ctx.manifest["cells"]]:
        try:
            info = json.loads(RunDir(ctx.runs_dir / run_id).execution.read_text())
        except (OSError, ValueError):
            continue
        starts.append(info["started"])
        ends.append(info["finished"])
    spans = sessions(starts, ends)
    cells = execution_timing(ctx.runs_dir, [c["run_id"] for c in ctx.manifest["cells"]])
    return {"trials": trials, "trials_s": trial_s, **cells,
            "study_span_s": sum(last - first for first, last in spans), "sessions": len(spans)}
