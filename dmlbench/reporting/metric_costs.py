"""What the exact metric structures cost each run, against its distance distribution.

Read from the study's index evaluation (:mod:`dmlbench.study.indexes`, one file per run): each run's
intrinsic dimensionality (Chavez's rho = mu^2 / 2 sigma^2 of its pairwise distances, and the local
estimate) and, for each exact structure (ball tree, pivot table, VP-tree, M-tree, AESA), the share of
brute force's distance computations it made for k-NN and for range queries.

- :func:`structure_costs`: one row per run (rho, LID, each structure's share per query type);
- :func:`rho_correlations`: per structure and query type, Spearman's correlation of the share with
  rho and with the LID over runs, with the median, lowest and highest share;
- :func:`cost_lines`: the sentences; :func:`costs_figure`: share against rho, one panel per query type;
- :func:`command_lines`: what ``dmlbench indexes --study FILE --costs`` prints.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STRUCTURES = ("ball-tree", "pivots", "vp-tree", "m-tree", "aesa")
QUERY_TYPES = ("knn", "range")


def structure_costs(results: list[dict]) -> pd.DataFrame:
    """One row per run evaluation: its cell, rho, LID and ``<structure> <query type>`` shares."""
    rows = []
    for result in results:
        stats = result.get("distribution") or {}
        row = {"run_id": result["run_id"], "dataset": result["dataset"], "loss": result["loss"],
               "miner": result["miner"], "items": result["items"], "chavez_rho": stats.get("rho", np.nan),
               "lid": stats.get("lid", np.nan)}
        for kind, key in (("knn", "rows"), ("range", "range_rows")):
            for entry in result.get(key) or []:
                if entry["family"] in STRUCTURES and entry.get("distance_fraction") is not None:
                    row[f"{entry['family']} {kind}"] = entry["distance_fraction"]
                    row[f"{entry['family']} {kind} mismatches"] = entry.get("mismatches")
        rows.append(row)
    return pd.DataFrame(rows)


def share_columns(table: pd.DataFrame) -> list[str]:
    return [f"{s} {q}" for q in QUERY_TYPES for s in STRUCTURES if f"{s} {q}" in table.columns]


def rho_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Per structure and query type: how its share of distances follows rho and the LID across runs."""
    from scipy import stats as sps

    out = []
    for column in share_columns(table):
        ok = table[["chavez_rho", "lid", column]].dropna()
        row = {"structure": column.split()[0], "query": column.split()[1], "runs": len(ok),
               "median share": ok[column].median(), "lowest": ok[column].min(), "highest": ok[column].max()}
        for name in ("chavez_rho", "lid"):
            varied = len(ok) >= 4 and ok[name].std() > 0 and ok[column].std() > 0
            rho, p = sps.spearmanr(ok[name], ok[column]) if varied else (np.nan, np.nan)
            row |= {f"spearman vs {name}": rho, f"p vs {name}": p}
        out.append(row)
    return pd.DataFrame(out)


def cost_lines(table: pd.DataFrame, correlations: pd.DataFrame, dataset: str) -> list[str]:
    """The sentences: the runs' rho range, then each structure's shares and their correlation with rho."""
    if table.empty or correlations.empty:
        return []
    lines = [f"On {dataset}, the runs' intrinsic dimensionality rho runs from {table['chavez_rho'].min():.1f} to "
             f"{table['chavez_rho'].max():.1f} (local estimate {table['lid'].min():.1f} to {table['lid'].max():.1f})."]
    for _, row in correlations.iterrows():
        follows = (f"Spearman {row['spearman vs chavez_rho']:+.2f} with rho (p = {row['p vs chavez_rho']:.2g}, {row['runs']} runs)"
                   if np.isfinite(row['spearman vs chavez_rho']) else "no correlation measurable")
        lines.append(f"{row['structure']} ({row['query']}) computes {100 * row['lowest']:.1f}% to "
                     f"{100 * row['highest']:.1f}% of brute force's distances (median "
                     f"{100 * row['median share']:.1f}%): {follows}.")
    return lines


def costs_figure(table: pd.DataFrame, dataset: str):
    """Each structure's share of distances against rho, one dot a run; k-NN left, range right."""
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, kind in zip(axes, QUERY_TYPES):
        for position, structure in enumerate(STRUCTURES):
            column = f"{structure} {kind}"
            if column in table.columns:
                axis.scatter(table["chavez_rho"], table[column], s=14, marker="os^vD"[position], label=structure)
        axis.set_xlabel("rho = mu^2 / (2 sigma^2) of the run's distances")
        axis.set_yscale("log")
        axis.set_title(f"{dataset}: {'k-NN (k=10)' if kind == 'knn' else 'range'} queries")
    axes[0].set_ylabel("share of brute force's distance computations (log)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def command_lines(results: list[dict]) -> list[str]:
    """The per-run table and the correlations, as ``dmlbench indexes --costs`` prints them."""
    table = structure_costs(results)
    if table.empty:
        return ["no finished index evaluation: run 'dmlbench indexes --study FILE' first"]
    lines = []
    for dataset, part in table.groupby("dataset", sort=False):
        columns = share_columns(part)
        shown = part[["loss", "miner", "chavez_rho", "lid", *columns]].sort_values("chavez_rho")
        lines += [f"{dataset}: {len(part)} runs; share of brute force's distance computations per query", "",
                  shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"), ""]
        correlations = rho_correlations(part)
        lines += ["how each structure's share follows the distance distribution (Spearman over runs):", "",
                  correlations.to_string(index=False, float_format=lambda v: f"{v:.3g}"), ""]
        mismatched = int(np.nansum([part[c].sum() for c in part.columns if c.endswith("mismatches")]))
        lines.append(f"queries answered differently from brute force by an exact structure: {mismatched}")
    return lines


def catalogue_facts(results: list[dict]) -> list[dict]:
    """Per family and query type (k-NN, range) over the runs: queries answered, answers that differ from
    brute force (for an exact family: none, or the test fails), the median share of distances computed
    where counted, and the recall at the family's most accurate setting (median over runs)."""
    rows: dict[tuple[str, str], dict] = {}
    for result in results:
        for kind, key, recall in (("knn", "rows", "knn_recall"), ("range", "range_rows", "range_recall")):
            best: dict[str, dict] = {}
            for entry in result.get(key) or []:
                if entry["family"] not in best or entry[recall] > best[entry["family"]][recall]:
                    best[entry["family"]] = entry
            for family, entry in best.items():
                row = rows.setdefault((family, kind), {"family": family, "query": kind, "exact": entry["exact"],
                                                       "runs": 0, "queries": 0, "mismatches": 0, "shares": [],
                                                       "recalls": []})
                row["runs"] += 1
                row["queries"] += entry["queries"]
                row["mismatches"] += entry.get("mismatches") or 0
                row["recalls"].append(entry[recall])
                if entry.get("distances_per_query") is not None:
                    row["shares"].append(entry["distances_per_query"] / result["items"])
    out = []
    for row in rows.values():
        shares, recalls = row.pop("shares"), row.pop("recalls")
        out.append(row | {"median_share": float(np.median(shares)) if shares else None,
                          "median_recall": float(np.median(recalls))})
    return out
