"""What a study's first screen ranks and counts, and the training curves drawn per dataset.

- A study with a tuning block is about its tuned cells: the report over one (searches finished by
  hand-written best.json files, runs written by hand, nothing trained) ranks each loss at the settings
  its search found best, names the untuned leader as such, counts default and tuned cells apart, and
  says nothing as "nan" though it has one seed.
- The per-epoch histories carry their dataset, and the curves are drawn one dataset at a time.
"""

from __future__ import annotations

import html as html_lib
import json
import re

import pandas as pd
import pytest
import yaml

from dmlbench.reporting.context import ReportContext
from dmlbench.reporting.figures import curves_figure
from dmlbench.reporting.runs import load_histories
from dmlbench.training.rundir import RunDir

from ..support import tiny_settings
from .test_report import complete_record

# test MAP@R planted per (loss, settings): angular leads untuned, triplet tuned; contrastive's search
# keeps its defaults
PLANTED = {("angular", "default"): 0.40, ("triplet", "default"): 0.30, ("contrastive", "default"): 0.25,
           ("angular", "tuned"): 0.35, ("triplet", "tuned"): 0.45, ("contrastive", "tuned"): 0.25}
BEST = {"angular": {"loss.alpha": 45.0, "lr": 0.003}, "triplet": {"loss.margin": 0.3, "lr": 0.004}}


def tuned_study(tmp_path):
    """A tuned study of three cells on the tiny Fashion-MNIST with one seed, its searches finished."""
    from dmlbench.study.cells import load_study

    path = tmp_path / "tuned-first.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tuned-first", "datasets": ["fashion-mnist"], "seeds": [0], "settings": tiny_settings(),
        "cells": [{"loss": "contrastive", "miner": "none"}, {"loss": "triplet", "miner": "semi-hard"},
                  {"loss": "angular", "miner": "none"}],
        "tuning": {"trials": 4, "seed": 7, "startup_trials": 2, "pruner": {"name": "none"},
                   "space": {"settings": {"lr": {"low": 5e-4, "high": 8e-3, "log": True}},
                             "losses": {"triplet": {"margin": {"low": 0.05, "high": 0.5}},
                                        "angular": {"alpha": {"low": 30, "high": 55}},
                                        "contrastive": {"neg_margin": {"low": 0.3, "high": 1.5}}}}}}))
    for search in load_study(path).searches:
        defaults = search.current_values()
        search.folder.mkdir(parents=True)
        search.best_path.write_text(json.dumps({
            "search_id": search.search_id, "objective": "map@r", "trials": 4, "best_trial": 2,
            "value": 0.5, "values": BEST.get(search.base.loss, defaults), "default_values": defaults,
            "default_value": 0.4, "states": {"COMPLETE": 4}, "trial_seconds": 12.0}))
    study = load_study(path)
    for cell in study.cells:
        c = cell.config
        value = PLANTED[(c.loss, cell.role)]
        metrics = {"recall@1": value + 0.4, "recall@2": value + 0.45, "recall@4": value + 0.5, "recall@8": value + 0.55,
                   "r_precision": value + 0.05, "map@r": value, "nmi": 0.5, "ami": 0.49}
        record = complete_record(cell.run_id, c.dataset, c.loss, c.miner, c.seed, c.epochs, metrics, c.to_dict())
        record["config_hash"] = c.config_hash()
        RunDir(cell.run_dir).path.mkdir(parents=True)
        cell.metrics_path.write_text(json.dumps(record))
    return path, study


def prose(page: str) -> str:
    """The report's text as a reader reads it: no tags, no embedded pictures, no style sheets."""
    page = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_a_tuned_study_ranks_its_tuned_cells_and_counts_both_kinds(isolated, tmp_path):
    from dmlbench.reporting.report import build_report

    path, study = tuned_study(tmp_path)
    roles = pd.Series([c.role for c in study.cells]).value_counts()
    assert roles["default"] == 3 and roles.get("tuned", 0) >= 2
    page = build_report(path).read_text()
    first = page[:page.index('id="Protocol"')]
    text = prose(first)
    runs = len(study.cells)
    assert (f"{runs} runs: {runs} cells (3 loss x miner cells at their default settings, {roles['tuned']} at "
            "their tuned settings") in text
    assert "Best by test MAP@R at tuned settings: triplet + semi-hard , MAP@R 0.4500" in text
    assert "Tied with it (each of the other 2 cells against it, paired by unit, Holm over that family of 2" in text
    assert "at their default settings (untuned) angular + none led (40.0% MAP@R)" in text
    table = first[first.index('<table class="dml">'):]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table[:table.index("</table>")])[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row)[1:3] for row in rows]
    assert cells == [["triplet", "semi-hard"], ["angular", "none"], ["contrastive", "none"]]
    assert "margin 0.3, lr 0.004" in table and "its defaults" in table and "MAP@R at default settings" in table
    summary = json.loads((isolated / "results" / "summary.json").read_text())
    assert {r["loss"]: round(r["map@r"], 4) for r in summary["table"]} == {"triplet": 0.45, "angular": 0.35,
                                                                         "contrastive": 0.25}
    runs_table = page[page.rindex('<table class="dml">'):]
    assert ">settings<" in runs_table and ">tuned<" in runs_table and ">defaults<" in runs_table
    words = re.findall(r"\b(?:nan|NaN|None)\b", prose(page))
    assert words == [], "a missing number said as nan in the report's text"


def test_histories_carry_their_dataset_and_curves_are_drawn_one_dataset_at_a_time(tmp_path):
    from dmlbench.reporting import sections

    for dataset, epochs in (("fashion-mnist", 8), ("han-typefaces", 20)):
        for seed in (0, 1):
            run = RunDir(tmp_path / "results" / "runs" / f"{dataset}-{seed}")
            run.path.mkdir(parents=True)
            run.metrics.write_text(json.dumps(complete_record(f"{dataset}-{seed}", dataset, "angular", "none", seed,
                                                              epochs)))
    histories = load_histories(tmp_path / "results" / "runs")
    assert set(histories.groupby("dataset")["epoch"].max().items()) == {("fashion-mnist", 8), ("han-typefaces", 20)}
    with pytest.raises(ValueError, match="one dataset at a time"):
        curves_figure(histories, "loss")
    cells = [{"run_id": f"{d}-{s}", "dataset": d, "loss": "angular", "miner": "none", "seed": s}
             for d in ("fashion-mnist", "han-typefaces") for s in (0, 1)]
    ctx = ReportContext(results=tmp_path / "results", study=None, manifest={"cells": cells, "skipped": []},
                        baseline=("triplet", "semi-hard"), confidence=0.95, status=pd.DataFrame(), runs=pd.DataFrame(),
                        histories=histories, summary=pd.DataFrame(), seed_tables={}, comparisons={}, rankings={},
                        identical={})
    sections.training_curves(ctx)
    for dataset in ("fashion-mnist", "han-typefaces"):
        for kind in ("training_curves", "training_loss"):
            assert (ctx.figures / f"{kind}_{dataset}.png").stat().st_size > 1000
    figure = curves_figure(histories[histories["dataset"] == "fashion-mnist"], "loss")
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == list(range(1, 9))  # its own 8 epochs, no han-typefaces epoch in the mean
