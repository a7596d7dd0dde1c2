"""The report notebook stays thin and reviewable, and its sentences are functions of the tables.

- notebooks/report.ipynb: every code cell at most 15 lines, importing only from dmlbench.reporting
  (and IPython.display), with no f-string: text that depends on numbers comes from
  dmlbench.reporting.narrative;
- both notebooks are committed without outputs and execution counts;
- the narrative's sentences on small tables made here, their numbers those of the tables;
- summary.json as dmlbench.reporting.summary writes it, every key in its docstring's schema;
- no run-folder file name spelled in dmlbench/reporting/ (dmlbench.training.rundir.RunDir names them).
"""

from __future__ import annotations

import ast
import json
import re

import nbformat
import pandas as pd
import pytest

from dmlbench.paths import REPO_ROOT, notebook
from dmlbench.reporting import narrative, summary
from dmlbench.reporting.context import ReportContext
from dmlbench.reporting.labels import METRICS
from dmlbench.reporting.tables import over_seeds, summarise
from dmlbench.training.rundir import RunDir

MAX_CELL_LINES = 15
BASELINE = ("triplet", "semi-hard")


def code_cells(name: str):
    return [c for c in nbformat.read(str(notebook(name)), as_version=4).cells if c.cell_type == "code"]


def longest_cell(name: str) -> int:
    return max(len(c.source.splitlines()) for c in code_cells(name))


# ---- the notebooks -------------------------------------------------------------------------------

def test_every_code_cell_of_the_report_notebook_is_at_most_15_lines():
    long = {c.id: len(c.source.splitlines()) for c in code_cells("report.ipynb")
            if len(c.source.splitlines()) > MAX_CELL_LINES}
    assert not long, f"report.ipynb cells over {MAX_CELL_LINES} lines (move the work into dmlbench.reporting): {long}"
    # experiment.ipynb is not held to it: its longest cell (the training and its record) has 40 lines
    assert longest_cell("experiment.ipynb") > 0


def test_the_report_notebook_calls_the_reporting_package_and_types_no_text_with_numbers():
    imported = set()
    for cell in code_cells("report.ipynb"):
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            assert not isinstance(node, ast.JoinedStr), f"an f-string in cell {cell.id}: use a narrative function"
        if "parameters" not in cell.metadata.get("tags", []):
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
            assert calls, f"cell {cell.id} calls nothing"
    assert imported and all(m.startswith("dmlbench.reporting") or m == "IPython.display" for m in imported), imported


@pytest.mark.parametrize("name", ["report.ipynb", "experiment.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    nb = nbformat.read(str(notebook(name)), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}, cell {cell.id} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{name}, cell {cell.id} has an execution count"


def test_no_run_folder_file_name_is_spelled_in_reporting():
    names = [getattr(RunDir, k) for k in dir(RunDir) if k.isupper() and isinstance(getattr(RunDir, k), str)
             and k != "LOCK"]
    assert "metrics.json" in names and "checkpoint.pt" in names
    found = [f"{path.name}: {name}" for path in sorted((REPO_ROOT / "dmlbench" / "reporting").glob("*.py"))
             for name in names if re.search(rf"(?<![\w.-]){re.escape(name)}", path.read_text())]
    # (a results-level name such as report.kernel.log is not a run folder's)
    assert not found, f"use dmlbench.training.rundir.RunDir for a run folder's files: {found}"


# ---- the narrative on small tables -------------------------------------------------------------------

def seed_table() -> pd.DataFrame:
    """Four cells of a 2 x 2 grid and one loss with one miner; the baseline has the best Recall@1."""
    rows = [("contrastive", "none", 0.40, 0.90), ("contrastive", "semi-hard", 0.36, 0.89),
            ("triplet", "none", 0.30, 0.88), ("triplet", "semi-hard", 0.35, 0.91), ("angular", "none", 0.33, 0.87)]
    return pd.DataFrame([{"dataset": "d", "loss": l, "miner": m, "seeds": 3, "map@r": v, "map@r_low": v - 0.02,
                          "map@r_high": v + 0.02, "recall@1": r, "map@r_std": std}
                         for (l, m, v, r), std in zip(rows, (0.01, 0.02, 0.03, 0.02, 0.02))])


def comparison_table() -> pd.DataFrame:
    return pd.DataFrame({"dataset": "d", "loss": ["contrastive", "contrastive", "triplet", "angular"],
                         "miner": ["none", "semi-hard", "none", "none"], "difference": [0.05, 0.01, -0.05, -0.02],
                         "low": [0.01, -0.03, -0.08, -0.06], "high": [0.09, 0.05, -0.02, 0.02],
                         "verdict": ["better than the baseline", "within seed noise", "worse than the baseline",
                                     "within seed noise"]})


def run_table() -> pd.DataFrame:
    """Four runs of 10 epochs, one of them best at its last epoch."""
    return pd.DataFrame({"dataset": "d", "epochs": 10, "best_epoch": [10, 7, 8, 9]})


def test_the_headline_is_made_from_the_tables():
    ranking = pd.DataFrame({"loss": ["contrastive", "triplet", "angular"], "rank": [1, 2, 3],
                            "rank_low": [1, 1, 3], "rank_high": [2, 3, 3]})
    lines = narrative.headline("d", seed_table(), comparison_table(), {("d", "loss"): ranking}, run_table(),
                               BASELINE, 0.95, [["triplet + none", "triplet + margin-triplets"]])
    assert lines == [
        "Best by test MAP@R: **contrastive + none**, 0.4000 ± 0.0200 (95% t-interval, 3 seeds); "
        "by Recall@1: **triplet + semi-hard** (91.0%).",
        "Against the baseline **triplet + semi-hard** (paired by unit, Holm-adjusted, 4 cells): **1 better** beyond "
        "seed noise (contrastive + none +0.0500), **1 worse** (triplet + none -0.0500), 2 within noise.",
        "Losses ranked (each with its paper's sampling, bootstrap over units): **contrastive** first, but its ranks "
        "(1-2) overlap those of 1 other loss: no clear first.",
        "On the grid (contrastive, triplet x miners) the loss moves mean MAP@R more than the miner "
        "(range 0.0550 against 0.0050); highest mean there: **semi-hard** (whether it is best: the named claims).",
        "Caveats: 1 group of cells trained identically, each merged into one row and counted once (notes under the "
        "table).",
    ]
    converged = {"runs": 4, "converged": 3}
    caveat = narrative.headline("d", seed_table(), comparison_table(), {}, run_table(), BASELINE, 0.95, [],
                                convergence=converged)[-1]
    assert caveat.startswith("Caveats: 1 of 4 runs had not converged (their validation gain over the last quarter")
    alone = narrative.headline("d", seed_table().assign(seeds=1), pd.DataFrame(), {}, run_table().assign(best_epoch=1),
                               BASELINE, 0.95, [])
    assert alone[1] == "The baseline triplet + semi-hard has no finished run: no paired comparison."
    assert alone[-1] == "Caveats: one seed per cell: no estimate of seed noise, so small differences rank nothing."
    assert narrative.findings(alone[:1], "d").startswith("**Findings on d**, from the numbers below:\n\n- Best by")


def test_comparisons_and_rankings_are_told_with_their_numbers():
    by_recall = comparison_table().assign(verdict=["within seed noise", "within seed noise", "worse than the baseline",
                                                   "within seed noise"])
    assert narrative.comparison_lines("d", comparison_table(), by_recall, BASELINE, 3) == [
        "**d**, test MAP@R against triplet + semi-hard over 3 paired units: 1 of 4 cells are better beyond seed noise "
        "(contrastive + none by +0.0500 [+0.0100, +0.0900]), 1 worse (triplet + none by -0.0500), "
        "and 2 within seed noise.",
        "By Recall@1 instead: 0 better, 1 worse, 3 within noise."]
    assert narrative.comparison_lines("d", pd.DataFrame(), by_recall, BASELINE, 3) == [
        "**d**: the baseline triplet + semi-hard is not among the finished cells; no paired comparison."]
    ranked = pd.DataFrame({"miner": ["semi-hard", "none", "random"], "score": [0.355, 0.35, 0.31],
                           "score_low": [0.34, 0.33, 0.30], "score_high": [0.37, 0.36, 0.32],
                           "rank": [1, 2, 3], "rank_low": [1, 1, 3], "rank_high": [2, 2, 3]})
    what = narrative.ranking_what("miner", ["contrastive", "triplet"])
    assert narrative.ranking_line(ranked, "miner", what) == (
        "Ranking miners over contrastive, triplet by test MAP@R: **semi-hard** first (0.3550, interval "
        "[0.3400, 0.3700], ranks 1-2 in the bootstrap); its range of ranks overlaps those of 1 other(s) (none), "
        "so the data do not single out a first place.")
    assert narrative.ranking_line(ranked.iloc[[0, 2]], "miner", what).endswith("no other's range of ranks reaches its own.")


def test_the_discussion_is_made_from_the_means_per_cell():
    lines = narrative.discussion("d", seed_table(), run_table(), ["contrastive", "triplet", "angular"])
    assert lines[0] == ("**d.** The best cell by test MAP@R is **contrastive + none** (MAP@R 0.4000, Recall@1 90.0%); "
                        "the weakest is triplet + none (MAP@R 0.3000, Recall@1 88.0%).")
    assert lines[1].startswith("Recall@1 ranks another cell first: triplet + semi-hard (91.0%);")
    assert lines[2] == ("Each loss with its own paper's sampling, by test MAP@R: contrastive + none 0.4000 (R@1 90.0%); "
                        "triplet + semi-hard 0.3500 (R@1 91.0%); angular + none 0.3300 (R@1 87.0%).")
    assert lines[3] == ("Over the losses run with several miners, mean test MAP@R per miner, best first: semi-hard 0.3550, "
                        "none 0.3500; per loss, over its miners: contrastive 0.3800, triplet 0.3250. On those, the "
                        "choice of loss moves MAP@R more (range 0.0550 against 0.0050 for the miner).")
    assert lines[4:6] == ["With contrastive, 0 of 1 miners beat using every tuple (none: 0.4000).",
                          "With triplet, 1 of 1 miners beat using every tuple (none: 0.3000; better: semi-hard)."]
    assert lines[6].startswith("The test numbers are always those of the validation-best epoch; whether the runs")
    assert lines[7].startswith("Across 3 units (fold x seed, or seeds where there are no folds) the mean standard "
                               "deviation of MAP@R is 0.0200:")
    assert len(lines) == 8
    one_seed = narrative.discussion("d", seed_table().assign(seeds=1), run_table(), ["contrastive"])
    assert one_seed[-1].startswith("*Caution*: each cell ran with 1 seed,")
    assert narrative.discussion("d", seed_table().iloc[0:0], run_table(), []) == ["**d**: no finished cell to discuss."]


def test_correlations_captions_and_counts_are_told_with_their_numbers():
    table = pd.DataFrame({"diagnostic": ["spectral_decay", "intra_class_distance", "intra_over_inter"],
                          "runs": [12, 12, 12], "pearson_r": [-0.5, 0.3, float("nan")], "r_low": [-0.8, -0.2, float("nan")],
                          "r_high": [-0.1, 0.7, float("nan")], "spearman": [-0.4, 0.2, float("nan")],
                          "roth_sign": ["-", "", "+"], "same_sign_as_roth": ["yes", "", ""]})
    assert narrative.correlation_lines("d", table, 0.95) == [
        "**d**, spectral decay (rho): Roth et al. report that Recall@1 falls as it grows; here Pearson's r = -0.50 "
        "(95% interval [-0.80, -0.10], Spearman -0.40, 12 runs): the same sign, and the interval excludes zero. "
        "Roth et al.'s coefficients are not recorded in the project's protocol (docs/protocol.md), so only the sign is compared.",
        "**d**, intra / inter (pi ratio): no correlation can be computed."]
    assert narrative.state_counts({"skipped": 3, "done": 87, "failed": 2}, 92) == "87 done, 2 failed, 3 skipped (92 rows)."
    caption = narrative.results_caption(seed_table(), 0.95)
    assert caption.startswith("Every cell, best first by test MAP@R (R-Precision beside it): mean over 3 seeds ± the "
                              "half-width of its 95% ")
    mixed = narrative.results_caption(seed_table().assign(seeds=[1, 3, 3, 2, 3]), 0.9, "d")
    assert mixed.startswith("Every cell on d, best first by test MAP@R (R-Precision beside it): mean over 1 to 2 to 3 "
                            "seeds ± the half-width of its 90% t-interval.")
    assert "12.7 standard errors" in mixed  # the row with 2 replicates
    published = pd.DataFrame({"comparison": ["same protocol", "same protocol, except: x", "differs: y"],
                              "ours": [70.1, float("nan"), 60.0]})
    assert narrative.literature_caption("cub", published) == (
        "**cub**: 3 published numbers; 1 of them have our runs under the same protocol.")
    assert narrative.single_miner_caption("d", seed_table().iloc[4:], 0.95).startswith("**d**: the 1 loss run with one")
    assert narrative.identical_marks([["a + b", "c + d"], ["e + f", "g + h"]]) == {
        ("a", "b"): "a", ("c", "d"): "a", ("e", "f"): "b", ("g", "h"): "b"}
    assert narrative.joined([], "nothing") == "nothing" and narrative.joined(["x", "y"], "") == "x\n\ny"


def test_the_protocol_names_the_settings_and_the_splits():
    from dmlbench.config import RunConfig

    settings = RunConfig(epochs=7)
    text = narrative.protocol(settings, {"d": {"num_train": 1200, "train_classes": [0, 1], "num_val": 300,
                                               "val_classes": [0, 1], "num_test": 4500, "test_classes": [2, 3]},
                                         "e": {}}, ["triplet"], ["none", "semi-hard"], [0, 1, 2])
    assert ("- **d**: 1,200 training images of classes [0, 1], 300 validation images of classes [0, 1] (the training "
            "classes), 4,500 test images of classes [2, 3] (numbers read from the runs).") in text
    assert "- **e**: no finished run records the split sizes yet." in text
    assert f"{settings.P} classes x {settings.K} images; at most 7 epochs of" in text
    assert "**miners** `none`, `semi-hard`;" in text and "Seeds: [0, 1, 2]." in text


# ---- summary.json --------------------------------------------------------------------------------

def test_summary_json_holds_what_its_schema_says(tmp_path):
    from .test_report import complete_record

    rows = [{"run_id": f"{l}-{m}-{s}", "dataset": "d", "loss": l, "miner": m, "seed": s, "wall_time_s": 10.0,
             **{k: 0.5 + 0.01 * s + (0.1 if l == "contrastive" else 0.0) for k in METRICS}}
            for l, m in (("triplet", "semi-hard"), ("contrastive", "none")) for s in (0, 1)]
    runs = pd.DataFrame(rows)
    for i, row in enumerate(rows):
        folder = RunDir(tmp_path / "runs" / row["run_id"])
        folder.path.mkdir(parents=True)
        if i == 0:
            folder.metrics.write_text(json.dumps(complete_record(row["run_id"])))
        if i < 3:  # the last run's time is not recorded
            folder.execution.write_text(json.dumps({"notebook_wall_s": 10.0 + i, "started": 100.0 + i,
                                                    "finished": 120.0 + i}))
    cells = [{k: r[k] for k in ("run_id", "dataset", "loss", "miner", "seed")} for r in rows]
    manifest = {"name": "s", "path": "s.yaml", "cells": cells, "skipped": []}
    status = pd.DataFrame({"state": ["done", "done", "done", "failed"]})
    seed_tables, comparisons, rankings = over_seeds(runs, BASELINE, 0.95)
    ctx = ReportContext(results=tmp_path, study=None, manifest=manifest, baseline=BASELINE, confidence=0.95,
                        status=status, runs=runs, histories=pd.DataFrame(), summary=summarise(runs),
                        seed_tables=seed_tables, comparisons=comparisons, rankings=rankings, identical={"d": []})
    assert summary.write_study_summary(ctx)
    written = json.loads((tmp_path / summary.SUMMARY_FILE).read_text())
    assert written["done"] == 3 and written["failed"] == 1 and written["cells"] == 4 and written["seeds"] == 2
    assert [(r["loss"], r["miner"]) for r in written["table"]] == [("triplet", "semi-hard"), ("contrastive", "none")]
    assert written["table"][1]["map@r"] == pytest.approx(0.605) and written["table"][1]["seeds"] == 2
    assert written["table"][0]["map@r_low"] < 0.505 < written["table"][0]["map@r_high"]
    assert written["timing"] == {"cells_timed": 3, "cells_wall_s": 33.0, "cells_span_s": 22.0, "sessions": 1}
    assert written["machine"] == {"cpu": "test cpu", "cpu_count": 2, "device": "cpu", "torch_threads": 1}
    schema = summary.__doc__
    documented = set(re.findall(r"^    (\w+) ", schema, re.M)) | set(re.findall(r"^        (\w+) ", schema, re.M))
    assert set(written) | {summary.REPORT_TIME_KEY} <= documented
    assert set(written["timing"]) <= documented
    for row in written["table"]:
        assert all(key in schema for key in row)
    for key in written["machine"]:
        assert key in schema
