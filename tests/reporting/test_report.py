"""The report: damaged and failed runs reported instead of crashing it, byte-stable rebuilds, and
what a first reader sees (correct counts, every cell in one table, human metric names, best first).

Most tests work on tables and files made here; two build the real report notebook (papermill) over
runs written by hand, without training anything.
"""

import json
import os
import re

import numpy as np
import pandas as pd
import yaml

from dmlbench.reporting.figures import save_figure
from dmlbench.reporting.htmltables import html_table, results_table
from dmlbench.reporting.labels import DIAGNOSTICS, METRICS, shown_path
from dmlbench.reporting.narrative import identical_note, study_header
from dmlbench.reporting.report import INJECTED_CELL_ID, tidy_notebook
from dmlbench.reporting.runs import RUN_COLUMNS, cell_status, identical_cells, identical_groups, load_runs
from dmlbench.reporting.summary import REPORT_TIME_KEY, json_text, write_summary
from dmlbench.reporting.tables import save_table

from ..support import tiny_settings


# ---- reading a run's record --------------------------------------------------------------------

def complete_record(run_id="r", dataset="fashion-mnist", loss="triplet", miner="none", seed=0, epochs=2,
                    metrics=None, config=None):
    """A metrics.json with every key the report reads (numbers made up)."""
    metrics = metrics or {"recall@1": 0.8, "recall@2": 0.85, "recall@4": 0.9, "recall@8": 0.95,
                          "r_precision": 0.4, "map@r": 0.3, "nmi": 0.5, "ami": 0.49}
    config = config or {"dataset": dataset, "loss": loss, "miner": miner, "seed": seed, "epochs": epochs,
                        "loss_kwargs": {}, "miner_kwargs": {}}
    history = [{"epoch": e, "loss": None if e == 0 else 1.0 / e, "time_s": 0.0,
                "val_recall@1": 0.5 + 0.1 * e, "val_map@r": 0.2 + 0.05 * e} for e in range(epochs + 1)]
    return {"schema": 1, "run_id": run_id, "config_hash": "0" * 10, "config": config,
            "dataset": {"name": dataset, "num_train": 400, "num_val": 100, "num_test": 200, "train_classes": [0, 1],
                        "val_classes": [0, 1], "test_classes": [2, 3]},
            "test": {**metrics, "num_queries": 200, "num_excluded_queries": 0},
            "diagnostics": {"spectral_decay": 0.1, "intra_class_distance": 0.3, "inter_class_distance": 0.9,
                            "intra_over_inter": 0.33},
            "best_epoch": epochs, "selected_by": "val_map@r", "val_at_best": {"val_map@r": 0.3, "val_recall@1": 0.7},
            "history": history, "wall_time_s": 10.0, "train_time_s": 8.0, "images_per_s": 100.0, "device": "cpu",
            "machine": {"cpu": "test cpu", "cpu_count": 2, "device": "cpu", "torch_threads": 1}}


def test_damaged_and_failed_runs_are_listed_and_the_others_still_load(tmp_path):
    runs = tmp_path / "runs"
    manifest = {"name": "s", "path": "s.yaml", "skipped": [], "cells": [
        {"run_id": f"run{i}", "dataset": "d", "loss": "triplet", "miner": "none", "seed": i} for i in range(6)]}
    for i in range(6):
        (runs / f"run{i}").mkdir(parents=True)
    (runs / "run0" / "metrics.json").write_text(json.dumps(complete_record("run0")))
    (runs / "run1" / "metrics.json").write_text('{"run_id": "run1",\n "config": {\n')  # truncated
    (runs / "run2" / "failure.json").write_text(json.dumps({"error": "RuntimeError: planted\nmore lines"}))
    (runs / "run4" / "metrics.json").write_text(json.dumps({k: v for k, v in complete_record("run4").items()
                                                             if k != "test"}))
    (runs / "run5" / "metrics.json").write_bytes(b"")
    status = cell_status(manifest, runs)
    assert list(status["state"]) == ["done", "unreadable", "failed", "missing", "unreadable", "unreadable"]
    assert re.fullmatch(r".*runs/run1/metrics\.json: not valid JSON \(.* at line 3, column \d+\).*", status["note"][1])
    assert status["note"][2] == "RuntimeError: planted" and status["note"][3] == "not run yet"
    assert "runs/run4/metrics.json: " in status["note"][4] and "'test'" in status["note"][4]
    assert "runs/run5/metrics.json: not valid JSON" in status["note"][5]
    loaded = load_runs(runs)
    assert list(loaded["run_id"]) == ["run0"] and loaded["map@r"][0] == 0.3
    assert set(DIAGNOSTICS) <= set(loaded.columns)
    empty = load_runs(tmp_path / "nothing")  # every column, no row: the report's sections say "no data"
    assert empty.empty and set(RUN_COLUMNS) <= set(empty.columns)
    assert empty.dropna(subset=list(DIAGNOSTICS)).empty
    header = study_header(manifest, status)
    assert "**1 of 6 runs finished**, 1 failed, 3 with an unreadable record, 1 not run yet" in header
    assert "*failed*: triplet + none, seed 2 (`run2`): RuntimeError: planted" in header
    assert "*unreadable*: triplet + none, seed 1 (`run1`): `" in header and "metrics.json`: not valid JSON" in header


# ---- what a first reader sees ------------------------------------------------------------------

def default_like_manifest(seeds=(0, 1, 2)):
    """The default study's shape: 2 losses x 10 miners (one pair incompatible) plus 11 single-cell losses."""
    grid = [(l, m) for l in ("contrastive", "triplet") for m in [f"miner{j}" for j in range(10)]
            if (l, m) != ("triplet", "miner9")]
    single = [(f"loss{j}", "miner0") for j in range(11)]
    cells = [{"run_id": f"{l}-{m}-{s}", "dataset": "fashion-mnist", "loss": l, "miner": m, "seed": s}
             for l, m in grid + single for s in seeds]
    skipped = [{"dataset": "fashion-mnist", "loss": "triplet", "miner": "miner9", "seed": s, "reason": "pairs only"}
               for s in seeds]
    return {"name": "default", "path": "studies/default.yaml", "cells": cells, "skipped": skipped}


def test_the_header_counts_multiply_to_the_number_of_runs():
    manifest = default_like_manifest()
    status = pd.DataFrame({"state": ["done"] * len(manifest["cells"])})
    header = study_header(manifest, status)
    assert ("90 runs: 30 loss x miner cells x 3 seeds on 1 dataset (fashion-mnist); 13 losses, 10 miners; "
            "1 loss x miner pair skipped as incompatible (triplet + miner9). **90 of 90 runs finished**.") in header
    two = default_like_manifest()
    two["cells"] += [dict(c, dataset="cub", run_id=c["run_id"] + "-cub") for c in two["cells"]]
    assert "180 runs: 30 loss x miner cells x 3 seeds x 2 datasets;" in study_header(two, status)
    uneven = default_like_manifest()
    uneven["cells"] = uneven["cells"][:-1]
    assert "89 runs: 30 cells (dataset x loss x miner), 2 to 3 seeds each, on 1 dataset" in study_header(uneven, status)


def seed_table(n=30, seeds=3):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        row = {"dataset": "d", "loss": f"loss{i % 7}", "miner": f"miner{i}", "seeds": seeds}
        for metric in METRICS:
            mean = rng.uniform(0.2, 0.9)
            row |= {metric: mean, f"{metric}_low": mean - 0.01, f"{metric}_high": mean + 0.01}
        rows.append(row)
    rows.append({**rows[0], "loss": "triplet", "miner": "semi-hard", "map@r": 0.5})
    return pd.DataFrame(rows)


def test_the_results_table_lists_every_cell_best_first_with_human_metric_names():
    seeds = seed_table()
    comparison = pd.DataFrame({"dataset": "d", "loss": seeds["loss"][:-1], "miner": seeds["miner"][:-1],
                               "difference": seeds["map@r"][:-1] - 0.5, "verdict": "within seed noise"})
    table, marked = results_table(seeds, comparison, ("triplet", "semi-hard"))
    assert len(table) == len(seeds) == 31
    assert list(table.columns) == ["#", "loss", "miner", "map@r", "r_precision", "recall@1", "recall@2", "recall@4",
                                   "recall@8", "nmi", "ami", "vs baseline"]
    means = [float(v.split(" ")[0]) for v in table["map@r"]]
    assert means == sorted(means, reverse=True)  # best first
    assert table["map@r"][0].endswith("± 0.0100")
    baseline = table.index[table["miner"] == "semi-hard"][0]
    assert marked == {baseline} and table["vs baseline"][baseline] == "baseline"
    assert table["vs baseline"][0].endswith("(noise)")
    html = html_table(table, marked=marked)
    headers = re.findall(r"<th class=[^>]*>(.*?)</th>", html)
    assert headers == ["#", "loss", "miner", "MAP@R", "R-Precision", "Recall@1", "Recall@2", "Recall@4", "Recall@8",
                       "NMI", "AMI", "vs baseline"]
    assert html.count("<tr") == 32 and "..." not in html  # the header and every row: nothing cut


def test_a_long_table_is_shown_whole_in_a_scrolling_box():
    frame = pd.DataFrame({"run_id": [f"run{i}" for i in range(200)], "state": "done", "map@r": 0.5})
    html = html_table(frame, scroll=True)
    assert html.count("<tr") == 201 and 'class="dml-scroll"' in html and "run199" in html
    assert re.findall(r"<th class=[^>]*>(.*?)</th>", html) == ["run", "state", "MAP@R"]


def test_identical_cells_are_one_group_over_all_seeds():
    rows = []
    for seed in (0, 1, 2):
        same = {m: 0.1 * seed + 0.5 for m in METRICS}
        rows.append({"dataset": "d", "loss": "triplet", "miner": "none", "seed": seed, **same})
        rows.append({"dataset": "d", "loss": "triplet", "miner": "margin-triplets", "seed": seed, **same})
        rows.append({"dataset": "d", "loss": "contrastive", "miner": "none", "seed": seed,
                     **{m: 0.2 + 0.01 * seed for m in METRICS}})
    groups = identical_cells(pd.DataFrame(rows))
    assert groups == [["triplet + margin-triplets", "triplet + none"]]
    (group,) = identical_groups(pd.DataFrame(rows))
    assert "margin-violating triplets" in identical_note(group, "a")


# ---- byte-stable outputs -----------------------------------------------------------------------

def test_tables_and_summary_do_not_change_with_the_last_digits_of_a_sum(tmp_path):
    a = pd.DataFrame({"x": [0.1 + 0.2], "y": ["s"]})
    b = pd.DataFrame({"x": [0.3], "y": ["s"]})  # 0.30000000000000004 against 0.3
    path = save_table(a, "t", tmp_path, index=False)
    before = path.stat().st_mtime_ns
    save_table(b, "t", tmp_path, index=False)
    assert path.read_text() == "x,y\n0.3,s\n" and path.stat().st_mtime_ns == before

    summary = tmp_path / "summary.json"
    assert write_summary(summary, {"table": [{"map@r": 0.1 + 0.2}], "nan": float("nan")})
    text = json.loads(summary.read_text())
    assert text == {"table": [{"map@r": 0.3}], "nan": None}
    summary.write_text(json_text({**text, REPORT_TIME_KEY: 12.5}))  # what build_report adds
    stamp = summary.stat().st_mtime_ns
    assert not write_summary(summary, {"table": [{"map@r": 0.3}], "nan": float("nan")})  # same numbers
    assert summary.stat().st_mtime_ns == stamp and json.loads(summary.read_text())[REPORT_TIME_KEY] == 12.5
    assert write_summary(summary, {"table": [{"map@r": 0.4}], "nan": None})  # new numbers: the time goes
    assert REPORT_TIME_KEY not in json.loads(summary.read_text())


def test_figures_carry_no_software_stamp_and_are_written_once(tmp_path):
    from matplotlib import pyplot as plt
    from PIL import Image

    def figure():
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [1, 0])
        ax.set_title("a line")
        return fig

    path = save_figure(figure(), "f", tmp_path, show=False)
    stamp, data = path.stat().st_mtime_ns, path.read_bytes()
    assert "Software" not in Image.open(path).info
    save_figure(figure(), "f", tmp_path, show=False)
    assert path.stat().st_mtime_ns == stamp and path.read_bytes() == data


def test_tsne_map_does_not_depend_on_the_number_of_threads():
    import sklearn.manifold  # noqa: F401 - its BLAS and OpenMP loaded now, so the limits below reach them
    import torch
    from threadpoolctl import threadpool_limits

    from dmlbench.reporting.plots import tsne_figure

    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, 200)
    embeddings = torch.from_numpy((rng.normal(size=(200, 64)) + 3 * np.eye(64)[classes]).astype(np.float32))
    labels = torch.from_numpy(classes)
    maps = []
    for threads in (1, max(2, os.cpu_count() or 2)):  # BLAS splits its products by the number of threads
        with threadpool_limits(limits=threads):
            fig = tsne_figure(embeddings, labels, max_points=200, seed=0)
        maps.append(np.concatenate([c.get_offsets() for c in fig.axes[0].collections]))
    assert np.array_equal(maps[0], maps[1])


def test_the_executed_notebook_keeps_no_timestamps():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"start_time": "t0", "end_time": "t1", "duration": 1.0, "parameters": {"a": 1},
                                "input_path": "/somewhere/notebooks/report.ipynb", "output_path": "/x/y.ipynb"}
    cell = nbformat.v4.new_code_cell("a = 1")
    cell.metadata = {"tags": ["injected-parameters"], "execution": {"iopub.status.busy": "t"},
                     "papermill": {"start_time": "t0", "end_time": "t1", "duration": 1.0, "status": "completed"}}
    nb.cells.append(cell)
    tidy = tidy_notebook(nb, "notebooks/report.ipynb", "results/report.ipynb")
    assert tidy.metadata["papermill"] == {"parameters": {"a": 1}, "input_path": "notebooks/report.ipynb",
                                          "output_path": "results/report.ipynb"}
    assert tidy.cells[0].metadata == {"tags": ["injected-parameters"], "papermill": {"status": "completed"}}
    assert tidy.cells[0].id == INJECTED_CELL_ID


# ---- the real report notebook over runs written by hand ----------------------------------------

def write_study(tmp_path, name, **spec):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "datasets": ["fashion-mnist"], "settings": tiny_settings(), **spec}))
    from dmlbench.study.cells import load_study

    return path, load_study(path)


def test_a_study_whose_every_cell_failed_reports_each_failure(isolated, tmp_path):
    from dmlbench.reporting.report import build_report

    path, study = write_study(tmp_path, "allfail", losses=["triplet"], miners=["semi-hard", "none"], seeds=[0])
    for i, cell in enumerate(study.cells):
        cell.run_dir.mkdir(parents=True)
        (cell.run_dir / "failure.json").write_text(json.dumps({"error": f"ValueError: planted failure {i}\ndetail"}))
    html = build_report(path).read_text()  # no KeyError: it builds
    for i, cell in enumerate(study.cells):
        assert f"ValueError: planted failure {i}" in html and cell.run_id in html
    assert "0 of 2 runs finished" in html and "2 failed" in html
    assert "no run has finished" in html and "Traceback" not in html


def fake_runs(study, seed=0):
    """A complete metrics.json (and execution.json) for every cell of ``study``, numbers drawn from
    ``seed``; triplet + none and triplet + batch-hard get the same numbers (identical cells)."""
    rng = np.random.default_rng(seed)
    effect = {}
    for cell in study.cells:
        c = cell.config
        key = (c.loss, "none" if (c.loss, c.miner) == ("triplet", "batch-hard") else c.miner)
        base = effect.setdefault(key, rng.uniform(0.2, 0.4))
        noise = np.random.default_rng([seed, c.seed, len(c.loss), len(key[1])]).normal(0, 0.01)
        metrics = {m: float(min(1.0, base + noise + (0.5 if m.startswith("recall") else 0.1))) for m in METRICS}
        metrics["map@r"] = float(base + noise)
        record = complete_record(cell.run_id, c.dataset, c.loss, c.miner, c.seed, c.epochs, metrics, c.to_dict())
        record["config_hash"] = c.config_hash()
        record["diagnostics"] = {d: float(rng.uniform(0.1, 1.0)) for d in DIAGNOSTICS}
        cell.run_dir.mkdir(parents=True)
        (cell.run_dir / "metrics.json").write_text(json.dumps(record))
        (cell.run_dir / "execution.json").write_text(json.dumps({"notebook_wall_s": 10.0, "started": 100.0 + c.seed,
                                                                 "finished": 110.0 + c.seed}))


def snapshot(results):
    return {str(p.relative_to(results)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(results.rglob("*"))
            if p.is_file() and "runs" not in p.relative_to(results).parts and p.name != ".report.lock"}


def test_report_over_damaged_runs_builds_names_them_and_a_rebuild_changes_no_byte(isolated, tmp_path):
    from dmlbench.reporting.report import build_report

    path, study = write_study(tmp_path, "stable", losses={"triplet": {"margin": 0.2}, "contrastive": {}},
                              miners={"semi-hard": {"margin": 0.2}, "none": {}, "batch-hard": {}},
                              cells=[{"loss": "angular", "miner": "none"}], seeds=[0, 1, 2])
    assert len(study.cells) == 21
    fake_runs(study)
    damaged, failed = study.cells[0], study.cells[1]  # contrastive + semi-hard, seeds 0 and 1
    text = damaged.metrics_path.read_text()
    damaged.metrics_path.write_text(text[: len(text) // 3])  # truncated, as by a full disk
    failed.metrics_path.unlink()
    (failed.run_dir / "failure.json").write_text(json.dumps({"error": "RuntimeError: planted failure"}))

    results = isolated / "results"
    html = build_report(path).read_text()
    shown = shown_path(damaged.metrics_path)
    assert f"{shown}</code>: not valid JSON (" in html  # the damaged file, named, and why
    assert "RuntimeError: planted failure" in html
    assert "21 runs: 7 loss x miner cells x 3 seeds on 1 dataset (fashion-mnist); 3 losses, 3 miners" in html
    assert "<strong>19 of 21 runs finished</strong>, 1 failed, 1 with an unreadable record" in html
    first_table = html[html.index('<table class="dml">'):]
    first_table = first_table[:first_table.index("</table>")]
    assert first_table.count("<tr") == 7  # header and the 7 cells, triplet + none and + batch-hard in one row
    headers = re.findall(r"<th class=[^>]*>(.*?)</th>", first_table)
    assert headers[3:6] == ["MAP@R", "R-Precision", "Recall@1"] and "map@r" not in first_table
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", first_table)][1:]
    means = [float(row[3].split(" ")[0]) for row in rows]  # MAP@R
    assert len(means) == 5 and means == sorted(means, reverse=True)  # best first (the baseline's row is marked)
    assert "(= triplet + none)" in first_table
    identical = html.index("triplet + batch-hard and triplet + none trained identically")
    assert "No known identity of the study explains it" in html
    assert html.index("</table>") < identical < html.index('id="Protocol"')  # explained beside the table
    assert "Alternative text" not in html and "No description has been provided" not in html
    assert all(' alt="' in tag for tag in re.findall(r"<img [^>]*>", html))
    summary = json.loads((results / "summary.json").read_text())
    assert summary["done"] == 19 and summary["unreadable"] == 1 and REPORT_TIME_KEY in summary

    before = snapshot(results)
    assert {"report.html", "report.ipynb", "summary.json", "tables/summary.csv",
            "figures/heatmap_fashion-mnist__map@r.png"} <= set(before)
    build_report(path)
    after = snapshot(results)
    assert after.keys() == before.keys()
    changed = [name for name in before if after[name] != before[name]]
    assert changed == [], f"a rebuild over the same runs rewrote {changed}"
