"""Convergence, power and cost tables (dmlbench.reporting.adequacy) and the glyph confusions."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dmlbench.reporting import adequacy, narrative, readme
from dmlbench.reporting.sections import nearest_confusions
from dmlbench.reporting.stats import seed_summary


def _runs(rows):
    return pd.DataFrame(rows, columns=["run_id", "dataset", "loss", "miner", "seed", "epochs", "epochs_run",
                                       "best_epoch", "recall@1", "map@r", "train_time_s"])


def test_seeds_needed_is_the_smallest_n_whose_interval_is_narrower_than_the_difference():
    # t(n-1) sd / sqrt(n) < d with sd = d: t(5) = 2.571 > sqrt(6) = 2.449, t(6) = 2.447 < sqrt(7) = 2.646
    assert adequacy.seeds_needed(0.01, 0.01) == 7
    for sd, d in ((0.004, 0.01), (0.02, 0.005), (0.001, 0.02)):
        n = adequacy.seeds_needed(sd, d)
        assert sps.t.ppf(0.975, n - 1) * sd / np.sqrt(n) < d <= sps.t.ppf(0.975, n - 2) * sd / np.sqrt(n - 1) or n == 2
    assert adequacy.seeds_needed(1.0, 1e-6, most=50) is None


def test_power_reports_half_widths_in_points_and_the_paired_spread():
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        base = 0.9 + rng.normal(0, 0.003)
        rows.append((f"b{seed}", "d", "triplet", "semi-hard", seed, 10, 8, 6, base, 0.5, 1.0))
        rows.append((f"x{seed}", "d", "contrastive", "none", seed, 10, 8, 6, base + 0.01 + rng.normal(0, 0.002), 0.6, 1.0))
    runs = _runs(rows)
    seeds = {"d": seed_summary(runs, ["recall@1", "map@r"])}
    table = adequacy.power(runs, seeds, ("triplet", "semi-hard"))
    r1 = table[table["metric"] == "recall@1"].iloc[0]
    halves = (seeds["d"]["recall@1_high"] - seeds["d"]["recall@1_low"]) / 2 * 100
    assert r1["median_half_width_pts"] == pytest.approx(halves.median()) and r1["max_half_width_pts"] == pytest.approx(halves.max())
    cell = runs[runs["loss"] == "contrastive"]["recall@1"].to_numpy() - runs[runs["loss"] == "triplet"]["recall@1"].to_numpy()
    assert r1["paired_sd_pts"] == pytest.approx(np.std(cell, ddof=1) * 100)
    assert r1["seeds_for_1_pts"] == adequacy.seeds_needed(np.std(cell, ddof=1), 0.01)
    assert "median half-width" in narrative.power_lines(table, 0.95)[0]


def _executed_notebook(path, durations):
    sources = ["x = 1", "check_parameter_names(p)", "result = train(config, splits)", "tsne_figure(e)",
               "retrieval_grid(e)", "write_record(r)"]
    cells = [{"cell_type": "code", "source": [src], "metadata": {"papermill": {"duration": d}}, "outputs": []}
             for src, d in zip(sources, durations)]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_cell_profile_splits_the_papermill_time_into_its_parts(tmp_path):
    folder = tmp_path / "r1"
    folder.mkdir()
    _executed_notebook(folder / "experiment.ipynb", [0.5, 3.0, 30.0, 1.5, 1.0, 0.1])
    (folder / "execution.json").write_text(json.dumps({"notebook_wall_s": 40.0}))
    runs = _runs([("r1", "d", "l", "m", 0, 10, 10, 9, 0.9, 0.5, 20.0)])
    histories = pd.DataFrame({"run_id": ["r1"] * 3, "epoch": [0, 1, 2], "val_time_s": [np.nan, 2.0, 3.0]})
    profile = adequacy.cell_profile(tmp_path, runs, histories).iloc[0]
    assert profile["kernel_and_papermill_s"] == pytest.approx(40.0 - 36.1)
    assert profile["validation_s"] == 5.0 and profile["training_cell_other_s"] == pytest.approx(30.0 - 20.0 - 5.0)
    assert profile["t-SNE_s"] == 1.5 and profile["set-up_s"] == 3.0 and profile["test_and_tables_s"] == pytest.approx(0.5)
    assert profile["training_share"] == 0.5
    cost = adequacy.cost_summary(adequacy.cell_profile(tmp_path, runs, histories))
    assert list(cost["dataset"]) == ["d", "all"] and cost["training_share_of_summed_wall"].iloc[1] == 0.5
    assert "50% of the summed papermill time" in narrative.cost_line(cost)


def test_nearest_confusions_counts_the_pairs_confused_at_rank_one():
    # class 1's two images lie next to class 2's; class 3 is far from everything
    emb = np.array([[1, 0, 0], [1, 0.01, 0], [0.99, 0.1, 0], [0.99, 0.12, 0], [0, 0, 1], [0, 0.01, 1]], np.float32)
    labels = np.array([1, 2, 1, 2, 3, 3])
    table = nearest_confusions(emb, labels, {1: "己", 2: "已", 3: "巳"})
    assert table.iloc[0]["query class"] in ("己", "已") and table["queries"].sum() == 4
    assert set(zip(table["query class"], table["nearest class"])) == {("己", "已"), ("已", "己")}
    assert table["share of the class"].max() == 1.0


def test_readme_block_shows_every_dataset_and_its_adequacy():
    row = {"loss": "l", "miner": "m", "recall@1": 0.9, "recall@2": 0.95, "recall@4": 0.97, "recall@8": 0.98,
           "map@r": 0.5, "r_precision": 0.55, "nmi": 0.6, "seeds": 4, "recall@1_low": 0.89, "recall@1_high": 0.91,
           "map@r_low": 0.49, "map@r_high": 0.51, "identical_to": None}
    summary = {"study": "s", "dataset": "a", "done": 6, "cells": 6, "seeds": 4, "confidence": 0.95,
               "table": [row], "tables": {"a": [row], "b": [row | {"seeds": 2}]},
               "adequacy": {"a": {"runs": 4, "converged": 4, "stopped_on_plateau": 3, "not_converged": 0,
                                  "converged_share": 1.0, "epoch_budget": 40, "map@r_median_half_width_pts": 0.42,
                                  "training_share": 0.66}},
               "timing": {"cells_timed": 6, "cells_wall_s": 60.0, "cells_span_s": 30.0, "sessions": 1},
               "machine": {"cpu": "c", "cpu_count": 2, "device": "cpu", "torch_threads": 1}}
    block = readme.render_block(summary)
    assert "**a** (4 seeds per cell)" in block and "**b** (2 seeds per cell)" in block
    assert "*a*: 4 of 4 runs converged" in block and "0.42 points" in block and "66% of the papermill time" in block
