"""Reading the report: tables that fit a 1400 px page (measured in Chromium), one colour per loss in
every figure, numbers and column names as a reader reads them, no "nan" in sentences, and citations
of the project's own protocol page."""

from __future__ import annotations

import re

import nbformat
import numpy as np
import pandas as pd

from dmlbench.paths import REPO_ROOT
from dmlbench.reporting import narrative
from dmlbench.reporting import tuning as tn
from dmlbench.reporting.browser import check_page
from dmlbench.reporting.figures import LOSS_COLOURS, diagnostics_figure, loss_colours
from dmlbench.reporting.htmltables import html_table, number_text
from dmlbench.reporting.indexes import compression_figure
from dmlbench.reporting.labels import DIAGNOSTICS, column_label
from dmlbench.reporting.report import render_html

RESULTS = REPO_ROOT / "results"
LOSSES = sorted(LOSS_COLOURS)


def wide_tables() -> dict[str, str]:
    """The report's widest tables, as its sections make them, over the shipped studies' numbers."""
    runs = pd.read_csv(RESULTS / "tables" / "runs.csv")
    runs["run_id"] = [f"{d}__{l}__{m}__seed{s}__0123456789" for d, l, m, s in
                      zip(runs["dataset"], runs["loss"], runs["miner"], runs["seed"])]
    tuning = pd.read_csv(RESULTS / "tuned" / "tables" / "han-typefaces__tuning.csv")
    return {
        "tuning": html_table(tn.shown_table(tuning), scroll=True, wrap=("default settings", "tuned settings", "at an edge")),
        "cost": html_table(pd.read_csv(RESULTS / "tables" / "cost.csv"), digits=3),
        "runs": html_table(runs[["loss", "miner", "seed", "map@r", "epochs", "best_epoch", "val_at_best", "wall_time_s",
                                 "train_time_s", "images_per_s", "device", "run_id"]], digits=3, scroll=True),
        "index costs": html_table(pd.read_csv(RESULTS / "tables" / "han-typefaces__index_costs.csv"), digits=4,
                                  scroll=True),
    }


def test_the_widest_tables_fit_a_1400_px_page(tmp_path):
    nb = nbformat.v4.new_notebook()
    tables = wide_tables()
    for table in tables.values():
        cell = nbformat.v4.new_code_cell("")
        cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": table})]
        nb.cells.append(cell)
    page = tmp_path / "tables.html"
    page.write_text(render_html(nb))  # the report's own template and style sheets
    record = check_page(page, width=1400)
    assert record["page_width"] == 1400 and len(record["tables"]) == len(tables)
    too_wide = {name: round(t["shown_width"]) for name, t in zip(tables, record["tables"]) if not t["fits"]}
    assert too_wide == {}, f"tables wider than the page at 1400 px (cut off or scrolled): {too_wide}"
    narrow = check_page(page, width=700)  # on a narrow window a table scrolls in its own box, never cut
    assert narrow["cut_tables"] == []
    assert all(t["fits"] or t["scrolls_sideways"] for t in narrow["tables"])


def index_runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"dataset": "d", "loss": loss, "miner": "none", "seed": seed, "index": "pq m=8",
                          "recall@1": rng.uniform(),
                          "recall@1_lost": rng.uniform(0, 0.2), **{d: rng.uniform() for d in DIAGNOSTICS}}
                         for loss in LOSSES for seed in range(2)])


def colours_of(axis) -> dict[str, tuple]:
    return {c.get_label(): tuple(np.round(c.get_facecolor()[0][:3], 4)) for c in axis.collections}  # alpha aside


def test_every_loss_has_its_own_colour_the_same_in_every_figure():
    assert len(LOSSES) == 13
    runs = index_runs()
    diagnostics = colours_of(diagnostics_figure(runs, "recall@1").axes[0])
    compression = colours_of(compression_figure(runs, "d", "pq m=8").axes[0])
    assert set(diagnostics) == set(LOSSES) and len(set(diagnostics.values())) == 13  # no two alike
    assert diagnostics == compression
    with_new = loss_colours(LOSSES + ["my-loss", "other-loss"])
    assert {k: with_new[k] for k in LOSSES} == LOSS_COLOURS  # a new loss recolours none of the others
    assert len(set(with_new.values())) == 15
    many = loss_colours([f"loss{i}" for i in range(30)])
    assert len({many[f"loss{i}"] for i in range(30)}) == 30


def test_numbers_and_column_names_read_as_words():
    frame = pd.DataFrame({"index": ["pq m=8"], "runs": [128], "knn_recall": [0.91234], "recall@1_lost": [0.1536],
                          "qps_1": [177610.6578], "qps_all": [1234.5], "build_s": [0.000167], "wall_s": [245.25],
                          "seeds_for_0.5_pts": [27], "images_per_s": [np.nan]})
    table = html_table(frame)
    headers = re.findall(r"<th class=[^>]*>(.*?)</th>", table)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
    assert headers == ["index", "runs", "k-NN recall@10", "Recall@1 lost", "queries/s, 1 thread",
                       "queries/s, all cores", "build time (s)", "wall time (s)", "seeds for a 0.5-point difference",
                       "images/s"]
    assert cells == ["pq m=8", "128", "0.9123", "0.1536", "177,611", "1,234", "0.0002", "245.2", "27", "–"]
    assert number_text(12345) == "12,345" and number_text(True) == "yes"
    shipped = {c for path in sorted(RESULTS.glob("**/tables/*.csv"))
               for c in pd.read_csv(path, nrows=0).columns}
    raw = sorted(c for c in shipped if "_" in column_label(c))
    assert raw == [], f"columns shown under their keys: {raw}"


def test_sentences_never_say_nan():
    one_seed_power = pd.DataFrame([{"dataset": "d", "metric": "map@r", "cells": 3, "seeds": 1,
                                    "median_half_width_pts": np.nan, "max_half_width_pts": np.nan,
                                    "paired_sd_pts": np.nan, "seeds_for_1_pts": np.nan}])
    seeds = pd.DataFrame({"loss": ["a", "b"], "miner": "none", "seeds": 1, "map@r": [0.5, 0.4],
                          "map@r_low": np.nan, "map@r_high": np.nan})
    lines = [*narrative.power_lines(one_seed_power, 0.95),
             narrative.metric_line("d", {"map@r": 0}, seeds, 2),
             narrative.results_caption(seeds, 0.95)]
    for line in lines:
        assert not re.search(r"\bnan\b", line, re.I), line
    assert "one seed: no interval" in narrative.results_caption(seeds, 0.95)


def test_the_report_cites_the_projects_protocol_page():
    sources = [p for p in sorted((REPO_ROOT / "dmlbench" / "reporting").glob("*.py")) if p.name != "readme.py"]
    sources.append(REPO_ROOT / "notebooks" / "report.ipynb")
    citing = [p.name for p in sources if "PROTOCOL.md" in p.read_text()]
    assert citing == [], f"cite docs/protocol.md, the project's own page, not an outside file: {citing}"
    assert "docs/protocol.md" in (REPO_ROOT / "notebooks" / "report.ipynb").read_text()
