"""The report notebook's sections, one function per step: each writes its tables (results/tables/)
and figures (results/figures/) and shows them in the notebook, with the captions that
:mod:`dmlbench.reporting.narrative` writes. They read a :class:`dmlbench.reporting.context.ReportContext`.

A function that returns a table returns the one the notebook goes on with (for its sentences); the
others return None, so that a call at the end of a cell shows nothing of its own.
"""

from __future__ import annotations

import pandas as pd

from . import figures as fg
from . import narrative
from .htmltables import html_table, merged_miners, results_table, with_interval
from .labels import DIAGNOSTIC_LABELS, METRIC_LABELS, METRICS, column_label
from .safehtml import show_markdown
from . import findings
from .tables import (correlations, grid_order, in_result_order, pivot, pivot_with_baselines, save_table,
                     with_baselines, with_skipped)

PLURAL = {"loss": "losses", "miner": "miners"}


def _show(markdown: str | None = None, html: str | None = None) -> None:
    """Show a caption (Markdown, rendered with any HTML it holds escaped) and a table (HTML we wrote)."""
    from IPython.display import HTML, display

    if markdown is not None:
        show_markdown(markdown)
    if html is not None:
        display(HTML(html))


# ---- the first screen and the runs of the study ------------------------------------------------------

def results_table_html(ctx, dataset: str) -> str:
    """Every cell of ``dataset`` best first, the baseline cell marked, identical cells lettered, each
    cell's standing against the best, the trivial baselines as the last rows."""
    marks = narrative.identical_marks(ctx.identical[dataset])
    table, baseline_row = results_table(ctx.seed_tables[dataset], ctx.comparisons[(dataset, "map@r")], ctx.baseline,
                                        marks, tied=(ctx.tied or {}).get(dataset), baselines=ctx.baseline_rows(dataset))
    if ctx.tuned:
        table = with_untuned(ctx, dataset, table)
    return html_table(table, marked=baseline_row, scroll=True)


def first_screen_facts(ctx, dataset: str) -> dict:
    """What :func:`dmlbench.reporting.narrative.headline` leads with beside the seed table: the cells
    against the best (tied), the named claims, the baselines' rows and the dataset's convergence row."""
    table = ctx.adequacy()["convergence"]
    row = table[table["dataset"] == dataset].to_dict("records") if len(table) else []
    return {"tied": (ctx.tied or {}).get(dataset), "claims": (ctx.claims or {}).get(dataset),
            "baselines": ctx.baseline_rows(dataset), "convergence": row[0] if row else None}


def with_untuned(ctx, dataset: str, table: pd.DataFrame) -> pd.DataFrame:
    """The table of every cell of a study with a tuning block, with each cell's tuned settings and its
    MAP@R at the default settings beside the tuned one (rows as :func:`results_table` orders them)."""
    from .tables import by_result
    from .tuning import best_settings

    cells = list(zip(*(by_result(ctx.seed_tables[dataset])[k] for k in ("loss", "miner"))))
    settings = best_settings([s for s in ctx.study.searches if s.base.dataset == dataset])
    untuned = ctx.untuned_seeds(dataset)
    at_defaults = dict(zip(zip(untuned["loss"], untuned["miner"]), with_interval(untuned, "map@r"))) \
        if len(untuned) else {}
    rows = list(zip(table["loss"], table["miner"]))  # the cells, then any baseline rows (no settings)
    table.insert(list(table.columns).index("miner") + 1, "tuned settings",
                 [settings.get(cell, "not searched") if cell in cells else "" for cell in rows])
    table.insert(list(table.columns).index("map@r") + 1, "MAP@R at default settings",
                 [at_defaults.get(cell, "") for cell in rows])
    return table


def cell_states(ctx) -> pd.DataFrame:
    """Writes tables/cells.csv (every cell and its state); returns the columns the report shows."""
    status = with_settings(ctx, ctx.status)
    save_table(status, "cells", ctx.tables, index=False)
    return status[["dataset", "loss", "miner", *(["settings"] if ctx.tuned else []), "seed", "state", "note", "run_id"]]


def with_settings(ctx, table: pd.DataFrame) -> pd.DataFrame:
    """In a study with a tuning block, ``table`` (one row per run) with the settings each run trained
    at: 'tuned', or 'defaults' (the cells as the study file writes them); unchanged otherwise."""
    if not ctx.tuned:
        return table
    from .context import role_ids

    tuned = role_ids(ctx.manifest, "tuned")
    return table.assign(settings=["tuned" if run in tuned else "defaults" if run else "" for run in table["run_id"]])


# ---- loss x miner ----------------------------------------------------------------------------------

def save_result_tables(ctx, dataset: str) -> dict[tuple[str, str], pd.DataFrame]:
    """Writes the loss x miner table of every metric of ``dataset`` (incompatible pairs marked, the
    baselines as rows of their own), summary.csv and runs.csv; returns the pivots by (dataset, metric)."""
    pivots, baselines = {}, ctx.baseline_rows(dataset)
    for metric in METRICS:
        pivots[(dataset, metric)] = pivot(ctx.summary, dataset, metric, ctx.losses, ctx.miners)
        marked = with_skipped(pivots[(dataset, metric)], ctx.skipped_pairs(dataset))
        save_table(pivot_with_baselines(marked, baselines, metric), f"{dataset}__{metric}", ctx.tables)
    save_table(ctx.summary, "summary", ctx.tables, index=False)
    save_table(ctx.runs, "runs", ctx.tables, index=False)
    return pivots


def grid_heatmaps(ctx, dataset: str, pivots: dict) -> bool:
    """The heatmaps of MAP@R and Recall@1 over the grid, rows and columns best first; False (and
    nothing drawn) when no loss of ``dataset`` ran with several miners."""
    grid = ctx.grid(dataset)
    if not grid:
        return False
    rows, columns = grid_order(pivots[(dataset, "map@r")], grid)
    for metric in ("map@r", "recall@1"):
        figure = fg.heatmap(pivots[(dataset, metric)].loc[rows, columns],
                            f"{dataset}: test {METRIC_LABELS[metric]}, mean over seeds", ctx.skipped_pairs(dataset))
        fg.save_figure(figure, f"heatmap_{dataset}__{metric}", ctx.figures)
    return True


def single_miner_cells(ctx, dataset: str) -> pd.DataFrame:
    """The seed table's rows of the losses of ``dataset`` run with one miner only."""
    table = ctx.seed_tables[dataset]
    return table[~table["loss"].isin(ctx.grid(dataset))]


def single_miner_table_html(ctx, single: pd.DataFrame) -> str:
    dataset = single["dataset"].iloc[0] if len(single) else None
    table, baseline_row = results_table(single, None, ctx.baseline, metrics=("map@r", "r_precision", "recall@1", "nmi"),
                                        baselines=ctx.baseline_rows(dataset) if dataset else None)
    return html_table(table.drop(columns="#"), marked=baseline_row)


# ---- over seeds ------------------------------------------------------------------------------------

def seed_intervals(ctx, dataset: str) -> None:
    """Writes <dataset>__seeds.csv (the cells' intervals over units, then the baselines' rows), shows
    them and draws the cells' bar charts."""
    table, confidence = ctx.seed_tables[dataset], ctx.confidence
    both = with_baselines(table, ctx.baseline_rows(dataset))
    save_table(both, f"{dataset}__seeds", ctx.tables, index=False)
    shown = both[["loss", "miner", "kind", "units", "folds", "seeds"]].copy()
    shown["miner"] = merged_miners(both)  # a group of identical cells: one row, naming the others
    for metric in ("map@r", "r_precision", "recall@1", "nmi"):
        shown[metric] = with_interval(both, metric)
    notes = findings.interval_notes(both, confidence)
    _show(narrative.seed_table_caption(dataset, confidence) + (f" {notes}" if notes else ""), html_table(shown))
    for metric in ("map@r", "recall@1"):
        figure = fg.bar_chart(table, metric, f"{dataset}: test {METRIC_LABELS[metric]}, mean and {confidence:.0%} "
                                             f"interval over seeds (orange: baseline)", ctx.baseline)
        fg.save_figure(figure, f"bars_{dataset}__{metric}", ctx.figures)


def baseline_comparison(ctx, dataset: str) -> pd.DataFrame:
    """Writes the comparisons with the baseline (MAP@R, Recall@1) and, when there is one, draws and
    shows the MAP@R differences; returns the MAP@R comparison (empty: no baseline run)."""
    for metric in ("map@r", "recall@1"):
        save_table(ctx.comparisons[(dataset, metric)], f"{dataset}__vs_baseline__{metric}", ctx.tables, index=False)
    comparison = ctx.comparisons[(dataset, "map@r")]
    if comparison.empty:
        return comparison
    n_units = int(ctx.runs_of(dataset)["unit"].nunique())
    figure = fg.difference_figure(comparison, "map@r", f"{dataset}: each cell minus {' + '.join(ctx.baseline)}, "
                                  f"paired by unit ({n_units} units), {ctx.confidence:.0%} interval")
    fg.save_figure(figure, f"vs_baseline_{dataset}__map@r", ctx.figures)
    shown = comparison.sort_values("difference", ascending=False).drop(columns="dataset")
    _show(narrative.comparison_caption(dataset), html_table(shown.rename(columns={"difference": "MAP@R difference"})))
    return comparison


def ranking(ctx, dataset: str, by: str) -> pd.DataFrame | None:
    """Writes, draws and shows the bootstrap ranking of the losses or miners (``by``) of ``dataset``;
    returns it (None: too few to rank)."""
    ranked = ctx.rankings.get((dataset, by))
    if ranked is None:
        return None
    what = narrative.ranking_what(by, ctx.grid(dataset))
    save_table(ranked, f"{dataset}__ranking_{PLURAL[by]}", ctx.tables, index=False)
    figure = fg.ranking_figure(ranked, by, "map@r", f"{dataset}: {what} (bootstrap over units)")
    fg.save_figure(figure, f"ranking_{dataset}__{PLURAL[by]}", ctx.figures)
    _show(narrative.ranking_caption(dataset, what),
          html_table(ranked.rename(columns={"score": "MAP@R", "score_low": "low", "score_high": "high"})))
    return ranked


def tied_and_claims(ctx, dataset: str) -> None:
    """Writes and shows every cell against the best (<dataset>__tied_with_best.csv) and the named claims
    with their family (<dataset>__claims.csv)."""
    tied, claims = (ctx.tied or {}).get(dataset), (ctx.claims or {}).get(dataset)
    if tied is not None and len(tied):
        save_table(tied, f"{dataset}__tied_with_best", ctx.tables, index=False)
        _show(f"**{dataset}**: " + findings.tied_line(tied, ctx.seed_tables[dataset], ctx.confidence),
              html_table(tied.rename(columns={"difference": "MAP@R minus the best's"}), scroll=True))
    if claims is not None and len(claims):
        save_table(claims, f"{dataset}__claims", ctx.tables, index=False)
        _show(findings.claims_line(claims, ctx.confidence), html_table(claims))


def fold_share(ctx) -> pd.DataFrame:
    """Writes and shows each cell's MAP@R variance between and within folds (tables/fold_variance.csv),
    with the median share between folds per dataset; returns the table."""
    table = ctx.fold_variance()
    save_table(table, "fold_variance", ctx.tables, index=False)
    lines = [findings.variance_line(table[table["dataset"] == d], d) for d in ctx.datasets if d in ctx.seed_tables]
    _show(narrative.joined(lines, "No finished cell."), html_table(table.drop(columns="metric"), digits=6, scroll=True))
    return table


def validation_agreement(ctx) -> None:
    """Kendall's tau between validation and test MAP@R over the 15 best cells, per dataset, in a sentence,
    the cells it ranks written to <dataset>__validation_agreement.csv."""
    from .claims import agreement_cells

    lines = []
    for dataset in [d for d in ctx.datasets if d in ctx.seed_tables]:
        save_table(agreement_cells(ctx.kept(ctx.runs_of(dataset))), f"{dataset}__validation_agreement", ctx.tables,
                   index=False)
        lines.append(findings.agreement_line(ctx.agreement(dataset), dataset))
    _show(narrative.joined(lines, "No finished cell."))


# ---- curves ---------------------------------------------------------------------------------------

def training_curves(ctx) -> None:
    """Per dataset (never averaged over datasets: their runs train for different numbers of epochs),
    validation Recall@1 and the training loss per epoch, one panel per loss."""
    if ctx.histories.empty:
        _show("No finished run, so no training curves.")
        return
    for dataset, part in ctx.histories.groupby("dataset", sort=False):
        figure = fg.curves_figure(part, "val_recall@1", order=ctx.losses,
                                  title=f"{dataset}: validation Recall@1 per epoch, mean over seeds")
        fg.save_figure(figure, f"training_curves_{dataset}", ctx.figures,
                       alt=f"{dataset}: validation Recall@1 per epoch, one panel per loss, one line per miner")
        figure = fg.curves_figure(part, "loss", order=ctx.losses, ylabel="training loss (mean over the epoch)",
                                  title=f"{dataset}: mean training loss per epoch, mean over seeds")
        fg.save_figure(figure, f"training_loss_{dataset}", ctx.figures,
                       alt=f"{dataset}: mean training loss per epoch, one panel per loss, one line per miner")


def recall_curves(ctx, dataset: str) -> None:
    """Recall@K over K: every cell in grey, the best, the baseline and the worst in colour."""
    table = ctx.seed_tables.get(dataset)
    if table is None:
        _show(f"**{dataset}**: no finished run, so no Recall@K curve.")
        return
    highlight = list(dict.fromkeys([tuple(table.iloc[0][["loss", "miner"]]), ctx.baseline,
                                    tuple(table.iloc[-1][["loss", "miner"]])]))
    figure = fg.recall_curve_figure(ctx.runs, dataset, highlight, f"{dataset}: test Recall@K")
    fg.save_figure(figure, f"recall_at_k_{dataset}", ctx.figures)


# ---- the best and the worst cell up close -------------------------------------------------------------

def _test_splits(ctx, dataset: str):
    """The splits of ``dataset`` as the study's first cell on it loads them; None (and why, shown)
    when they cannot be loaded here."""
    first = ctx.study.cells[[c.config.dataset for c in ctx.study.cells].index(dataset)].config
    try:
        return first.load_splits()
    except Exception as error:  # the report stands without these pictures
        _show(f"**{dataset}**: the test images cannot be loaded here ({type(error).__name__}: {error}), "
              "so no t-SNE map or retrieval grid.")
        return None


def _reload_fault(ctx, run, error: Exception) -> str:
    """Why a run's network could not be reloaded, in one line naming its checkpoint (as code, so the
    run id's double underscores stay as written)."""
    from ..training.rundir import RunDir

    checkpoint = str(RunDir(ctx.runs_dir / run["run_id"]).checkpoint)
    text = " ".join(str(error).split())
    said = text if checkpoint in text else f"{checkpoint}: {type(error).__name__}: {text}"
    return said.replace(checkpoint, f"`{checkpoint}`")


def _up_close(ctx, dataset: str, which: str, row, splits) -> str | None:
    """The t-SNE map and retrieval grid of the first seed of one cell (``row`` of the seed table); the
    run id whose checkpoint was reloaded, or None when it could not be."""
    from ..training.embed import embed_test_split
    from .plots import retrieval_grid, tsne_figure, tsne_source

    part = ctx.runs_of(dataset)
    run = part[(part["loss"] == row["loss"]) & (part["miner"] == row["miner"])].sort_values("seed").iloc[0]
    try:
        embeddings, labels = embed_test_split(ctx.runs_dir / run["run_id"], splits)
    except Exception as error:  # a missing or damaged checkpoint: say so, naming it, and go on
        _show(f"**{dataset}**, {which} cell: its network cannot be reloaded ({_reload_fault(ctx, run, error)}).")
        return None
    name = f"{row['loss']} + {row['miner']}, seed {run['seed']}"
    drawing = {"max_points": 1000, "seed": 0, "title": f"{dataset}, {which} cell: {name} (test MAP@R {run['map@r']:.4f})"}
    figure = tsne_figure(embeddings, labels, splits.class_names, **drawing)
    fg.save_figure(figure, f"tsne_{dataset}__{which}", ctx.figures,  # kept while its source is the same: see plots
                   drawn_from=tsne_source(ctx.runs_dir / run["run_id"], splits.test, **drawing))
    if splits.gallery is None:
        figure = retrieval_grid(splits.test.images, labels, embeddings, num_queries=6, k=8, seed=0,
                                title=f"{dataset}, {which} cell: {name}")
        fg.save_figure(figure, f"retrieval_{dataset}__{which}", ctx.figures)
        if which == "best":  # the hard negatives even the best cell falls for
            _confusions(ctx, dataset, name, embeddings, labels, splits)
    return run["run_id"]


def nearest_confusions(embeddings, labels, class_names: dict, top: int = 12) -> pd.DataFrame:
    """The class pairs most often confused at rank 1: for each test query whose nearest other test image
    (cosine, ties by index) has another class, the pair (query's class, neighbour's class); counted,
    most frequent first, with the share of the query class's queries it takes."""
    import torch

    x = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    y = torch.as_tensor(labels)
    nearest = []
    for start in range(0, len(x), 2048):
        sims = x[start:start + 2048] @ x.T
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = -float("inf")
        nearest.append(sims.argmax(dim=1))
    found = y[torch.cat(nearest)]
    wrong = found != y
    pairs = pd.DataFrame({"query": y[wrong].tolist(), "found": found[wrong].tolist()})
    if pairs.empty:
        return pd.DataFrame(columns=["query class", "nearest class", "queries", "share of the class"])
    per_class = pd.Series(y.tolist()).value_counts()
    counted = pairs.value_counts().rename("queries").reset_index().head(top)
    return pd.DataFrame({"query class": [class_names.get(int(c), str(c)) for c in counted["query"]],
                         "nearest class": [class_names.get(int(c), str(c)) for c in counted["found"]],
                         "queries": counted["queries"].astype(int),
                         "share of the class": [q / per_class[c] for q, c in zip(counted["queries"], counted["query"])]})


def _confusions(ctx, dataset: str, name: str, embeddings, labels, splits) -> None:
    table = nearest_confusions(embeddings, labels, splits.class_names)
    save_table(table, f"{dataset}__confusions", ctx.tables, index=False)
    _show(narrative.confusions_caption(dataset, name, table), html_table(table, digits=3))


def best_and_worst(ctx, dataset: str) -> None:
    """The cells with the highest and the lowest mean test MAP@R, their networks reloaded and the
    test split embedded again (:func:`dmlbench.training.embed.embed_test_split`)."""
    table = ctx.seed_tables.get(dataset)
    if table is None:
        _show(f"**{dataset}**: no finished run to look at.")
        return
    splits = _test_splits(ctx, dataset)
    if splits is None:
        return
    reloaded = [(dataset, which, _up_close(ctx, dataset, which, row, splits))
                for which, row in (("best", table.iloc[0]), ("worst", table.iloc[-1]))]
    _record_reloaded(ctx, dataset, [row for row in reloaded if row[2] is not None])


def _record_reloaded(ctx, dataset: str, rows: list[tuple[str, str, str]]) -> None:
    """tables/reloaded_runs.csv: the runs whose checkpoints the report reloaded (dataset, which, run_id),
    the only checkpoints the repository ships (dmlbench.study.footprint)."""
    path = ctx.tables / "reloaded_runs.csv"
    kept = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["dataset", "which", "run_id"])
    studied = {cell.config.dataset for cell in ctx.study.cells}  # a dataset the study no longer runs is dropped
    kept = kept[kept["dataset"].isin(studied) & (kept["dataset"] != dataset)]
    table = pd.concat([kept, pd.DataFrame(rows, columns=["dataset", "which", "run_id"])])
    save_table(table.sort_values(["dataset", "which"]), "reloaded_runs", ctx.tables, index=False)


# ---- can the study tell cells apart -------------------------------------------------------------------------

def adequacy(ctx) -> None:
    """Convergence, power and cost: tabled (tables/convergence.csv, power.csv, cost.csv, cell_profile.csv)
    and said; then, per dataset, which metric carries the findings."""
    tables = ctx.adequacy()
    for name in ("convergence", "power", "cost"):
        save_table(tables[name], name, ctx.tables, index=False)
    save_table(tables["profile"], "cell_profile", ctx.tables, index=False)
    _show(narrative.joined(narrative.convergence_lines(tables["convergence"]), "No finished run."),
          html_table(tables["convergence"], digits=3))
    _show(narrative.joined(narrative.power_lines(tables["power"], ctx.confidence), "No cell has two seeds."),
          html_table(tables["power"], digits=3))
    _show(narrative.cost_line(tables["cost"]), html_table(tables["cost"], digits=3))
    lines = []
    for dataset, seeds in ctx.seed_tables.items():
        from .adequacy import metric_verdicts

        lines.append(narrative.metric_line(dataset, metric_verdicts(ctx.comparisons, dataset), seeds, len(seeds)))
    _show(narrative.joined(lines, "No dataset has results over seeds."))


# ---- diagnostics, published numbers, runs ---------------------------------------------------------------

def diagnostics(ctx, dataset: str, part: pd.DataFrame) -> pd.DataFrame:
    """Recall@1 against each diagnostic over the runs ``part`` (drawn and tabled); returns the
    correlations."""
    figure = fg.diagnostics_figure(part, "recall@1", f"{dataset}: test Recall@1 against the embedding diagnostics "
                                                     f"({len(part)} runs)")
    fg.save_figure(figure, f"diagnostics_{dataset}", ctx.figures)
    table = correlations(part, "recall@1", ctx.confidence)
    _show(html=html_table(table.assign(diagnostic=table["diagnostic"].map(DIAGNOSTIC_LABELS)), digits=3))
    return table


def save_correlations(ctx, tables: list[pd.DataFrame]) -> None:
    """Writes diagnostics_correlations.csv (every dataset's), when there is any."""
    if tables:
        save_table(pd.concat(tables), "diagnostics_correlations", ctx.tables, index=False)


def literature(ctx, dataset: str) -> None:
    """Our numbers beside the published ones of ``dataset`` (written to <dataset>__literature.csv)."""
    from .literature import compare

    comparison = compare(ctx.runs, dataset)
    if comparison.empty:
        _show(narrative.no_published_numbers(dataset))
        return
    save_table(comparison, f"{dataset}__literature", ctx.tables, index=False)
    shown = comparison.drop(columns="dataset").assign(metric=lambda t: t["metric"].map(column_label))
    _show(narrative.literature_caption(dataset, comparison),
          html_table(shown[["source", "method", "metric", "published", "ours", "seeds", "protocol", "backbone",
                            "comparison"]], digits=2, wrap=("comparison",)))


def field_agreement(ctx) -> pd.DataFrame:
    """Does the miniature resemble the field? The study's ranking against the published fair-protocol
    rankings and its file's reference study (dmlbench.reporting.field; written to tables/field_agreement.csv)."""
    from .field import TABLE_NAME, report_section

    table, lines = report_section(ctx)
    if table.empty:
        _show(" ".join(lines) or "No finished cell shares a ranking with the published fair-protocol comparisons.")
        return table
    save_table(table, TABLE_NAME, ctx.tables, index=False)
    _show(" ".join(lines), html_table(table, digits=3, wrap=("verdict", "cells_in_common")))
    return table


def runs_table(ctx) -> None:
    """One row per finished run, cells best first: epochs, the selected epoch, time, throughput (in a
    study with a tuning block, each cell's runs at its tuned settings, then at its defaults)."""
    if ctx.runs.empty:
        _show("No run has finished.")
        return
    runs = ctx.runs if not ctx.tuned else pd.concat([ctx.runs, ctx.untuned_runs]).drop_duplicates("run_id")
    shown = with_settings(ctx, in_result_order(runs, ctx.seed_tables))
    if ctx.tuned:  # each cell's tuned runs, then its untuned ones
        shown = shown.sort_values(["_order", "settings", "seed"], ascending=[True, False, True], kind="stable")
    select = ctx.settings.select_metric
    _show(html=html_table(shown[["loss", "miner", *(["settings"] if ctx.tuned else []), "seed", "map@r", "epochs",
                                 "best_epoch", "val_at_best", "wall_time_s", "train_time_s", "images_per_s", "device",
                                 "run_id"]].rename(
        columns={"val_at_best": f"validation {METRIC_LABELS.get(select, select)} there"}), digits=3, scroll=True))


# ---- tuning -------------------------------------------------------------------------------------------

def tuning(ctx) -> None:
    """Per dataset of a study with a tuning block: each searched cell at its default and its tuned
    settings (tables/<dataset>__tuning.csv), every trial (tables/<dataset>__trials.csv), each search's
    trials drawn (figures/tuning_<dataset>.png), and what tuning changed, said from the numbers."""
    from . import tuning as tn

    if not ctx.study.searches:
        _show("This study has no tuning block: every cell ran at the settings its study file gives "
              "(`studies/tuned.yaml` tunes every loss with the same budget; its report is `results/tuned/report.html`).")
        return
    spec = ctx.study.tuning
    _show(narrative.tuning_method(spec, ctx.confidence))
    for dataset in ctx.datasets:
        searches = [s for s in ctx.study.searches if s.base.dataset == dataset]
        table, trials = tn.tuning_table(ctx, dataset), tn.trials_frame(searches)
        save_table(trials, f"{dataset}__trials", ctx.tables, index=False)
        if table.empty:
            _show(f"{dataset}: {len(searches) - len(ctx.study.pending)} of {len(searches)} searches finished; "
                  f"nothing to compare yet.")
            continue
        save_table(table, f"{dataset}__tuning", ctx.tables, index=False)
        _show(tn.tuning_verdict(table, ctx.named(dataset)), html_table(tn.shown_table(table), scroll=True,
                                                                  wrap=("default settings", "tuned settings", "at an edge")))
        fg.save_figure(tn.search_figure(trials, spec.objective), f"tuning_{dataset}", ctx.figures)
    tied = tn.tied_after_sentence(tn.tied_summary(ctx)) if spec.budget_epochs is not None else ""
    if tied:
        _show(tied)


# ---- similarity-search indexes ---------------------------------------------------------------------

def indexes(ctx) -> None:
    """Per dataset of a study with an indexes block: each cell's Recall@1 under every index at matched
    speed (tables/<dataset>__indexes.csv), every index's costs (<dataset>__index_costs.csv), the
    Recall@1 lost under compression against the diagnostics (<dataset>__index_correlations.csv),
    recall-against-speed curves (figures/indexes_<dataset>.png) and the compression scatter
    (figures/index_compression_<dataset>.png), with the sentences."""
    from . import indexes as ix

    plan = ctx.study.indexes
    if plan is None:
        _show("This study has no indexes block: its runs' embeddings were not served by any index "
              "(`studies/default.yaml` has one; `dmlbench indexes --study FILE` computes it).")
        return
    frame = ix.index_frame(ctx)
    _show(narrative.indexes_method(plan, frame["run_id"].nunique() if not frame.empty else 0, len(ctx.runs)))
    for dataset in ctx.datasets:
        part = frame[frame["dataset"] == dataset] if not frame.empty else frame
        if part.empty:
            continue
        matched, costs, correlations = ix.matched_speed(part), ix.costs(part), ix.compression_correlations(part)
        save_table(matched, f"{dataset}__indexes", ctx.tables, index=False)
        save_table(costs, f"{dataset}__index_costs", ctx.tables, index=False)
        save_table(correlations, f"{dataset}__index_correlations", ctx.tables, index=False)
        _show(" ".join(ix.index_lines(part, dataset, matched, correlations, narrative.cell_name)),
              html_table(matched, scroll=True))
        _show(html=html_table(costs, digits=4, scroll=True))
        own_cells = list(matched.drop_duplicates("loss")[["loss", "miner"]].itertuples(index=False, name=None))
        fg.save_figure(ix.curves_figure(part, dataset, cells=own_cells), f"indexes_{dataset}", ctx.figures)
        strongest = [name for name in costs["index"].unique() if name.startswith("pq")]
        if strongest:
            fg.save_figure(ix.compression_figure(part, dataset, strongest[len(strongest) // 2]),
                           f"index_compression_{dataset}", ctx.figures)
        _structure_costs(ctx, dataset)


def _structure_costs(ctx, dataset: str) -> None:
    """The exact structures' share of distance computations per run against its rho (tables/<dataset>__
    structure_costs.csv, __structure_correlations.csv, figures/structure_costs_<dataset>.png)."""
    from . import indexes as ix
    from . import metric_costs as mc

    table = mc.structure_costs(ix.dataset_results(ctx, dataset))
    if table.empty:
        return
    correlations = mc.rho_correlations(table)
    save_table(table, f"{dataset}__structure_costs", ctx.tables, index=False)
    save_table(correlations, f"{dataset}__structure_correlations", ctx.tables, index=False)
    _show(" ".join(mc.cost_lines(table, correlations, dataset)), html_table(correlations, digits=3, scroll=True))
    fg.save_figure(mc.costs_figure(table, dataset), f"structure_costs_{dataset}", ctx.figures)
