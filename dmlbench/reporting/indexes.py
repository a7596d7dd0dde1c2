"""The report's index section: which losses give embeddings that index well.

Read from the study's index evaluation (:mod:`dmlbench.study.indexes`, one file per run):

- :func:`index_frame`: one row per run x index x search setting, with the run's loss, miner, seed
  and embedding diagnostics;
- :func:`matched_speed`: each cell's Recall@1 (mean over seeds) exactly and under every index, the
  swept ones (HNSW, IVF) at their most accurate setting that answers at least as many queries per
  second on one thread as the exact flat index does (its median over the dataset's runs: an index
  slower than brute force has no reason to be used); the compressed ones (PQ, SQ8) as they are;
- :func:`costs`: per index and setting, medians over runs of k-NN recall, the Recall@1 it loses, its
  speed, build time, bytes per vector and fraction of distances computed;
- :func:`compression_correlations`: across runs, the Recall@1 lost under each compressed index
  against each embedding diagnostic (Spearman and Pearson);
- :func:`curves_figure`, :func:`compression_figure`, and :func:`index_lines`, the sentences.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metric_costs as mc
from .figures import loss_colours
from .labels import DIAGNOSTIC_LABELS, DIAGNOSTICS

SWEPT = ("hnsw", "ivf-flat", "ivf-pq")
COMPRESSED = ("pq", "sq8")
FAMILY_ORDER = ("flat", "hnsw", "ivf-flat", "ivf-pq", "pq", "sq8", "ball-tree", "pivots", "vp-tree", "m-tree", "aesa")


def setting_text(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "-"


def index_frame(ctx) -> pd.DataFrame:
    """Every (run, index, setting) measured, with the run's cell, seed and diagnostics."""
    from ..study.indexes import read_results

    plan = ctx.study.indexes
    runs = ctx.runs.set_index("run_id")
    rows = []
    for result in read_results(plan, list(runs.index), ctx.results):
        run = runs.loc[result["run_id"]]
        base = {"run_id": result["run_id"], "dataset": run["dataset"], "loss": run["loss"], "miner": run["miner"],
                "seed": int(run["seed"]), "items": result["items"], "dim": result["dim"],
                **{d: run.get(d, np.nan) for d in DIAGNOSTICS}}
        for row in result["rows"]:
            rows.append(base | {k: v for k, v in row.items() if k != "setting"} | {"setting": setting_text(row["setting"])})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["recall@1_lost"] = frame["exact_recall@1"] - frame["recall@1"]
        frame["order"] = frame["family"].map(FAMILY_ORDER.index)
    return frame


def brute_force_speed(part: pd.DataFrame) -> float:
    """The exact flat index's queries per second on one thread: median over the runs."""
    return float(part.loc[part["family"] == "flat", "qps_1"].median())


def matched_speed(part: pd.DataFrame) -> pd.DataFrame:
    """Per cell: exact Recall@1 and each index's (see the module docstring), means over seeds, best first."""
    target = brute_force_speed(part)
    per_run = {}
    for run_id, run in part.groupby("run_id"):
        values = {"loss": run["loss"].iloc[0], "miner": run["miner"].iloc[0],
                  "exact": run["exact_recall@1"].iloc[0]}
        for index, rows in run.sort_values("order").groupby("index", sort=False):
            family = rows["family"].iloc[0]
            if family in SWEPT:
                fast = rows[rows["qps_1"] >= target]
                values[index] = fast["recall@1"].max() if len(fast) else np.nan
            elif family in COMPRESSED:
                values[index] = rows["recall@1"].iloc[0]
        per_run[run_id] = values
    table = pd.DataFrame.from_dict(per_run, orient="index")
    means = table.groupby(["loss", "miner"], sort=False).mean(numeric_only=True)
    means.insert(0, "seeds", table.groupby(["loss", "miner"], sort=False).size())
    return means.sort_values("exact", ascending=False).reset_index()


def costs(part: pd.DataFrame) -> pd.DataFrame:
    """Per index and setting: medians over the runs (the sweep in its order)."""
    columns = ["knn_recall", "recall@1_lost", "relative_distance_error", "qps_1", "qps_all", "build_s",
               "bytes_per_vector", "distance_fraction"]
    grouped = part.assign(position=range(len(part))).groupby(["index", "setting"], sort=False)
    table = grouped[columns].median()
    table.insert(0, "runs", grouped.size())
    table["first"] = grouped["position"].min()
    return table.sort_values("first").drop(columns="first").reset_index()


def compression_correlations(part: pd.DataFrame) -> pd.DataFrame:
    """Across runs: Recall@1 lost under each compressed index against each diagnostic."""
    from scipy import stats as sps

    rows = []
    for index, runs in part[part["family"].isin(COMPRESSED)].groupby("index", sort=False):
        for name in DIAGNOSTICS:
            ok = runs[[name, "recall@1_lost"]].dropna()
            rho = p = r = np.nan
            if len(ok) >= 4 and ok[name].std() > 0 and ok["recall@1_lost"].std() > 0:
                rho, p = sps.spearmanr(ok[name], ok["recall@1_lost"])
                r = sps.pearsonr(ok[name], ok["recall@1_lost"]).statistic
            rows.append({"index": index, "diagnostic": name, "runs": len(ok), "spearman": rho, "p": p, "pearson_r": r})
    return pd.DataFrame(rows)


def _colour(position: int):
    """Twenty distinct colours (matplotlib's tab20), so that no two indexes share one."""
    from matplotlib import colormaps

    return colormaps["tab20"](position % 20)


def curves_figure(part: pd.DataFrame, dataset: str, *, cells: list[tuple[str, str]]):
    """Left: k-NN recall@10 against queries per second (one thread; median over runs), every index, as
    in ann-benchmarks. Right: Recall@1 of each listed cell under HNSW along its sweep (means over seeds)."""
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    medians = costs(part)
    for position, (index, rows) in enumerate(medians.groupby("index", sort=False)):
        left.plot(rows["qps_1"], rows["knn_recall"], marker="o", ms=4, label=index, color=_colour(position))
    target = brute_force_speed(part)
    for axis in (left, right):
        axis.axvline(target, color="grey", ls="--", lw=1)
        axis.set_xscale("log")
        axis.set_xlabel("queries per second, one thread (log)")
    left.set_ylabel("k-NN recall@10 (median over runs)")
    left.set_title(f"{dataset}: every index (dashed: brute-force speed)")
    left.legend(fontsize=7, ncol=2)
    hnsw, colours = part[part["family"] == "hnsw"], loss_colours([loss for loss, _ in cells])
    for position, (loss, miner) in enumerate(cells):
        rows = hnsw[(hnsw["loss"] == loss) & (hnsw["miner"] == miner)]
        curve = rows.groupby("setting", sort=False)[["qps_1", "recall@1"]].mean()
        right.plot(curve["qps_1"], curve["recall@1"], marker="os^vD"[position % 5], ms=4, lw=1,
                   label=f"{loss} + {miner}", color=colours[loss])
    right.set_ylabel("Recall@1 under HNSW (mean over seeds)")
    right.set_title(f"{dataset}: each loss's own cell along the HNSW sweep")
    right.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def compression_figure(part: pd.DataFrame, dataset: str, index: str):
    """Recall@1 lost under ``index`` against the spectral decay and the intra / inter ratio, one dot a run."""
    from matplotlib import pyplot as plt

    runs = part[part["index"] == index]
    colours = loss_colours(runs["loss"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, name in zip(axes, ("spectral_decay", "intra_over_inter")):
        for position, (loss, rows) in enumerate(runs.groupby("loss", sort=False)):
            axis.scatter(rows[name], rows["recall@1_lost"], s=14, label=loss, color=colours[loss],
                         marker="os^vD"[position % 5])
        axis.set_xlabel(DIAGNOSTIC_LABELS[name])
        axis.set_ylabel(f"Recall@1 lost under {index}")
        axis.axhline(0, color="grey", lw=0.8)
    axes[0].set_title(f"{dataset}: what compression costs each run")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def _at_exact(part: pd.DataFrame, family: str, tolerance: float = 0.001) -> pd.Series | None:
    """The fastest setting of ``family`` whose median Recall@1 lost is within ``tolerance``, or None."""
    table = costs(part[part["family"] == family])
    close = table[table["recall@1_lost"] <= tolerance]
    return None if close.empty else close.sort_values("qps_1", ascending=False).iloc[0]


def index_lines(part: pd.DataFrame, dataset: str, matched: pd.DataFrame, correlations: pd.DataFrame,
                named) -> list[str]:
    """The section's sentences for one dataset, from its numbers."""
    target, runs = brute_force_speed(part), part["run_id"].nunique()
    items, dim = int(part["items"].iloc[0]), int(part["dim"].iloc[0])
    lines = [f"**{dataset}** ({runs} runs; {items:,} items of {dim} dimensions): brute force (faiss's flat index) "
             f"answers {target:,.0f} queries per second on one thread."]
    for family in ("hnsw", "ivf-flat"):
        best = _at_exact(part, family)
        if best is not None:
            lines.append(f"{best['index']} gives the exact Recall@1 (median loss {best['recall@1_lost']:.4f}) at "
                         f"{best['setting']}, {best['qps_1']:,.0f} queries per second "
                         f"({best['qps_1'] / target:.1f}x brute force).")
    table = costs(part)
    for family in COMPRESSED:
        for _, row in table[table["index"].str.startswith(family)].iterrows():
            lost = part.loc[part["index"] == row["index"], "recall@1_lost"]
            lines.append(f"Under {row['index']} ({row['bytes_per_vector']:.0f} bytes per vector against {4 * dim} for "
                         f"float32) a run loses {lost.median():.4f} of Recall@1 at the median "
                         f"(from {lost.min():.4f} to {lost.max():.4f}).")
    lines += _compression_winners(matched, named) + _correlation_lines(correlations)
    for family in ("ball-tree", "pivots", "vp-tree", "m-tree", "aesa"):
        row = table[table["index"].str.startswith(family)]
        if len(row):
            row = row.iloc[0]
            nodes = " (its nodes' centres counted too)" if family == "ball-tree" else ""
            lines.append(f"The {row['index']} index is exact and computes {100 * row['distance_fraction']:.0f}% of the "
                         f"distances brute force does{nodes}, at {row['qps_1']:,.0f} queries per second on one thread.")
    return lines


def _compression_winners(matched: pd.DataFrame, named) -> list[str]:
    """Which cell loses least and most under the strongest compression measured."""
    pq = [c for c in matched.columns if c.startswith("pq")]
    if not pq or len(matched) < 2:
        return []
    strongest = min(pq, key=lambda c: int(c.split("m=")[1]) if "m=" in c else 0)
    lost = (matched["exact"] - matched[strongest]).rename("lost")
    least, most = matched.loc[lost.idxmin()], matched.loc[lost.idxmax()]
    return [f"Under {strongest}, {named(least['loss'], least['miner'])} loses least ({lost.min():.4f} of its "
            f"{least['exact']:.4f}) and {named(most['loss'], most['miner'])} most ({lost.max():.4f} of "
            f"{most['exact']:.4f})."]


def _correlation_lines(correlations: pd.DataFrame) -> list[str]:
    lines = []
    for index, rows in correlations.groupby("index", sort=False):
        shown = rows.dropna(subset=["spearman"])
        if shown.empty:
            continue
        strongest = shown.loc[shown["spearman"].abs().idxmax()]
        lines.append(f"Across runs, the Recall@1 lost under {index} follows the "
                     f"{DIAGNOSTIC_LABELS[strongest['diagnostic']]} most closely (Spearman {strongest['spearman']:+.2f}, "
                     f"p = {strongest['p']:.2g}, {int(strongest['runs'])} runs).")
    return lines


def index_summary(ctx) -> dict | None:
    """summary.json's ``indexes``: per dataset, the runs evaluated, the section's sentences and the
    matched-speed table (means over seeds, rounded); None for a study without an indexes block."""
    from .narrative import cell_name
    from .tables import rounded

    if getattr(ctx.study, "indexes", None) is None:
        return None
    frame = index_frame(ctx)
    out = {}
    for dataset in ctx.datasets:
        part = frame[frame["dataset"] == dataset] if not frame.empty else frame
        if part.empty:
            continue
        matched = matched_speed(part)
        lines = index_lines(part, dataset, matched, compression_correlations(part), cell_name)
        results = dataset_results(ctx, dataset)
        costs_table = mc.structure_costs(results)
        out[dataset] = {"runs": int(part["run_id"].nunique()), "lines": lines,
                        "matched": rounded(matched.to_dict("records")),
                        "structures": rounded(mc.catalogue_facts(results)),
                        "cost_lines": mc.cost_lines(costs_table, mc.rho_correlations(costs_table), dataset)}
    return out


def dataset_results(ctx, dataset: str) -> list[dict]:
    """The finished index evaluations of the study's runs of ``dataset``."""
    from ..study.indexes import read_results

    runs = ctx.runs[ctx.runs["dataset"] == dataset]["run_id"].tolist()
    return read_results(ctx.study.indexes, runs, ctx.results)
