"""Real papermill executions of the experiment and report notebooks on the tiny dataset."""

import json
import os
import re
import subprocess
import sys
from importlib import metadata

import nbformat
import torch
import papermill
import pytest
import yaml

from dmlbench.config import RunConfig
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.miners import MINERS
from dmlbench.models import MODELS as MODELS
from dmlbench.paths import REPO_ROOT, notebook
from dmlbench.reporting.readme import render_block
from dmlbench.study.cells import emit_makefile, load_study, run_config
from dmlbench.study.executors import run_study

from ..support import BROKEN_LOSS, tiny_settings, user_module

PARAMETERS = dict(tiny_settings(), tsne_points=60)


def outputs_of(path, kind):
    nb = nbformat.read(str(path), as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


def no_time(history):
    return [{k: v for k, v in h.items() if k not in ("time_s", "val_time_s")} for h in history]


def test_experiment_notebook_writes_metrics_and_is_deterministic(isolated):
    # The determinism promise is for the CPU (CUDA kernels may reorder float sums).
    config = RunConfig(**tiny_settings(device="cpu"), loss="triplet", miner="semi-hard")
    path = run_config(config)
    record = json.loads(path.read_text())
    assert record["config_hash"] == config.config_hash() and record["run_id"] == config.run_id()
    assert path.parent.name == config.run_id()
    assert record["config"]["loss"] == "triplet" and record["seed"] == 0 and record["device"] == "cpu"
    assert record["machine"]["cpu_count"] >= 1
    assert set(record["test"]) >= {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"}
    assert len(record["history"]) == config.epochs + 1 and record["best_epoch"] >= 1
    assert record["versions"]["torch"] == metadata.version("torch") and record["wall_time_s"] > 0
    executed = path.parent / "experiment.ipynb"
    assert executed.is_file() and (path.parent / "execution.json").is_file()
    assert len(outputs_of(executed, "image/png")) >= 3  # curves, t-SNE, retrieval grid
    checkpoint = torch.load(path.parent / "checkpoint.pt")
    assert checkpoint["epoch"] == record["best_epoch"] and checkpoint["config"] == record["config"]
    model = MODELS.create(config.model, embedding_dim=config.embedding_dim, **config.model_kwargs)
    model.load_state_dict(checkpoint["model"])  # strict: the whole network of the selected epoch
    assert not (path.parent / "experiment.running.ipynb").exists()

    # finished: not run again, not touched
    mtime = path.stat().st_mtime_ns
    assert run_config(config) == path and path.stat().st_mtime_ns == mtime

    # same seed, another process: identical numbers
    other = run_config(config, run_dir=isolated / "again")
    again = json.loads(other.read_text())
    assert again["test"] == record["test"]
    assert no_time(again["history"]) == no_time(record["history"])


def execute(tmp_path, **parameters):
    output = tmp_path / "out.ipynb"
    run_dir = tmp_path / "run"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(notebook("experiment.ipynb")), str(output), kernel_name="python3",
                                   parameters={**PARAMETERS, "run_dir": str(run_dir), **parameters},
                                   cwd=str(REPO_ROOT), progress_bar=False)
    assert not (run_dir / "metrics.json").exists()
    return info.value


def test_unknown_loss_in_notebook_fails_naming_choices_without_metrics(isolated, tmp_path):
    error = execute(tmp_path, loss="lifted")
    assert "unknown loss 'lifted'" in error.evalue and "valid loss names: " + ", ".join(LOSSES.names()) in error.evalue
    with pytest.raises(ConfigError, match="valid miner names"):
        run_config(RunConfig(**tiny_settings(), miner="hardest"))


def test_missing_dataset_in_notebook_says_where_it_looked(isolated, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    error = execute(tmp_path, data_root=str(empty))
    assert error.ename == "DatasetNotFoundError"
    assert str(empty) in error.evalue and "apt-get install dataset-fashion-mnist" in error.evalue


def readme_example():
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- example:my_losses.py -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its worked example"
    return match.group(1)


def test_readme_worked_example_loss_runs_as_a_notebook_parameter(isolated, tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, "my_losses.py", readme_example())
    config = RunConfig(**tiny_settings(), loss="my_losses:SquaredTripletLoss", loss_kwargs={"margin": 0.1},
                       miner="semi-hard")
    record = json.loads(run_config(config).read_text())
    assert record["config"]["loss"] == "my_losses:SquaredTripletLoss"
    assert record["history"][1]["loss"] > 0


PAIRS_ONLY = '''
from dmlbench.miners import Miner
from dmlbench.geometry.tuples import all_pairs


class PairsOnly(Miner):
    """A miner that can only give pairs."""

    produces = ("pairs",)

    def mine(self, embeddings, labels, kind):
        return all_pairs(labels)
'''


def test_study_then_report(isolated, tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, "pairs_only.py", PAIRS_ONLY)
    study_path = tmp_path / "tiny.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "tiny", "datasets": ["fashion-mnist"], "losses": {"triplet": {"margin": 0.2}},
        "miners": ["none", "batch-hard", "pairs_only:PairsOnly"], "seeds": [0], "settings": tiny_settings()}))
    study = load_study(study_path)
    assert len(study.cells) == 2 and len(study.skipped) == 1
    assert "miners compatible with 'triplet'" in study.skipped[0].reason

    run_study(study)
    results = isolated / "results"
    # every cell finished: the generated makefile has nothing left to do
    cells_mk = tmp_path / "cells.mk"
    cells_mk.write_text(emit_makefile(study))
    assert subprocess.run(["make", "-q", "-f", str(cells_mk), "cells"], cwd=REPO_ROOT).returncode == 0

    from dmlbench.reporting.report import build_report

    html = build_report(study_path)
    text = html.read_text()
    assert "triplet + " in text and "skipped" in text and "data:image/png;base64" in text
    assert "import pandas" not in text  # code hidden
    for name in ("cells.csv", "summary.csv", "runs.csv", "fashion-mnist__recall@1.csv", "fashion-mnist__map@r.csv"):
        assert (results / "tables" / name).is_file(), name
    for name in ("heatmap_fashion-mnist__recall@1.png", "heatmap_fashion-mnist__map@r.png",
                 "training_curves_fashion-mnist.png"):
        assert (results / "figures" / name).stat().st_size > 1000, name
    cells = (results / "tables" / "cells.csv").read_text()
    assert cells.count(",done,") == 2 and cells.count(",skipped,") == 1
    summary = json.loads((results / "summary.json").read_text())
    assert summary["done"] == 2 and summary["skipped"] == 1 and summary["timing"]["cells_timed"] == 2
    block = render_block(summary)
    first = summary["table"][0]
    assert f"| {first['loss']} | {first['miner']} | {first['recall@1']:.4f}" in block


def test_cli_rejects_unknown_names_with_exit_code_2(isolated, tmp_path):
    run = subprocess.run([sys.executable, "-m", "dmlbench", "run", "--loss", "lifted"], capture_output=True, text=True)
    assert run.returncode == 2 and "valid loss names: " + ", ".join(LOSSES.names()) in run.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [fashion-mnist]\nlosses: [triplet]\nminers: [hardest]\n")
    run = subprocess.run([sys.executable, "-m", "dmlbench", "study", str(bad), "--status"], capture_output=True, text=True)
    assert run.returncode == 2 and "valid miner names: " + ", ".join(MINERS.names()) in run.stderr
    assert not list((isolated / "results").rglob("metrics.json")) if (isolated / "results").exists() else True


def test_every_run_setting_is_a_parameter_of_the_experiment_notebook():
    nb = nbformat.read(str(notebook("experiment.ipynb")), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = re.findall(r"^(\w+) = ", cell.source, re.M)
    assert sorted(names) == sorted(RunConfig.field_names() + ["run_dir", "tsne_points"])
    defaults = {}
    exec(cell.source, {}, defaults)  # plain values only: the defaults are RunConfig's own
    assert {k: defaults[k] for k in RunConfig.field_names()} == RunConfig().to_dict()


def test_report_markdown_types_no_number():
    """Every number a reader sees in the report comes from code run on the runs; markdown cells hold none
    (metric names such as Recall@1 aside)."""
    nb = nbformat.read(str(notebook("report.ipynb")), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = re.sub(r"\b(Recall|R|MAP|P)@(\d+|R|K)\b", "", cell.source)
            assert not re.search(r"\d", text), cell.source


def test_report_over_seeds_with_intervals_comparisons_rankings_and_diagnostics(isolated, tmp_path):
    from dmlbench.reporting.report import build_report

    study_path = tmp_path / "seeds.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "seeds", "datasets": ["fashion-mnist"], "losses": {"triplet": {"margin": 0.2}},
        "miners": {"semi-hard": {"margin": 0.2}, "none": {}},
        "cells": [{"loss": "contrastive", "miner": "none"}, {"loss": "contrastive", "miner": "semi-hard"}],
        "seeds": [0, 1], "settings": tiny_settings()}))
    study = load_study(study_path)
    assert len(study.cells) == 8
    run_study(study)
    record = json.loads(study.cells[0].metrics_path.read_text())
    assert set(record["diagnostics"]) >= {"spectral_decay", "intra_class_distance", "inter_class_distance",
                                          "intra_over_inter"}
    assert {"recall@16", "recall@32"} <= set(record["test"])
    html = build_report(study_path).read_text()
    results = isolated / "results"
    import pandas as pd

    seeds = pd.read_csv(results / "tables" / "fashion-mnist__seeds.csv")
    seeds = seeds[seeds["kind"] == "cell"]  # the baselines' rows (when recorded) follow the cells'
    assert len(seeds) == 4 and (seeds["seeds"] == 2).all()
    assert (seeds["map@r_low"] <= seeds["map@r"]).all() and (seeds["map@r"] <= seeds["map@r_high"]).all()
    versus = pd.read_csv(results / "tables" / "fashion-mnist__vs_baseline__map@r.csv")
    assert len(versus) == 3 and versus["verdict"].isin(["better than the baseline", "worse than the baseline",
                                                         "within seed noise"]).all()
    miners = pd.read_csv(results / "tables" / "fashion-mnist__ranking_miners.csv")
    assert set(miners["miner"]) == {"semi-hard", "none"} and (miners["rank_low"] <= miners["rank_high"]).all()
    correlations = pd.read_csv(results / "tables" / "diagnostics_correlations.csv")
    assert set(correlations["diagnostic"]) == {"spectral_decay", "intra_class_distance", "inter_class_distance",
                                               "intra_over_inter"} and (correlations["runs"] == 8).all()
    for name in ("bars_fashion-mnist__map@r", "vs_baseline_fashion-mnist__map@r", "ranking_fashion-mnist__miners",
                 "recall_at_k_fashion-mnist", "tsne_fashion-mnist__best", "tsne_fashion-mnist__worst",
                 "retrieval_fashion-mnist__best", "diagnostics_fashion-mnist",
                 "training_loss_fashion-mnist"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 1000, name
    assert "paired units" in html and "Roth et al. report that Recall@1" in html


def test_papermill_reads_every_parameter_of_the_experiment_notebook():
    """papermill's own parser (its parameter listing and unknown-parameter warnings) sees every setting."""
    assert set(RunConfig.field_names()) <= set(papermill.inspect_notebook(str(notebook("experiment.ipynb"))))


def test_a_failing_cell_leaves_the_others_intact_and_is_reported(isolated, tmp_path, monkeypatch, capsys):
    from dmlbench.cli import main

    user_module(tmp_path, monkeypatch, "broken_loss.py", BROKEN_LOSS)
    study_path = tmp_path / "faulty.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "faulty", "datasets": ["fashion-mnist"],
        "cells": [{"loss": "broken_loss:Broken", "miner": "semi-hard"}, {"loss": "contrastive", "miner": "none"},
                  {"loss": "triplet", "miner": "semi-hard"}],
        "seeds": [0], "settings": tiny_settings(epochs=1)}))
    study = load_study(study_path)
    assert main(["study", str(study_path)]) == 1  # non-zero, after running every cell and the report
    error = capsys.readouterr().err
    assert "1 of 3 cells failed (the others finished)" in error and "planted failure" in error
    broken, *others = study.cells
    assert all(cell.is_done() for cell in others) and not broken.is_done()
    failure = json.loads((broken.run_dir / "failure.json").read_text())
    assert failure["error"] == "RuntimeError: planted failure" and "raise RuntimeError" in failure["traceback"]
    cells = (isolated / "results" / "tables" / "cells.csv").read_text()
    assert cells.count(",done,") == 2 and ",failed,RuntimeError: planted failure" in cells
    finished = others[0].metrics_path.stat().st_mtime_ns
    assert main(["study", str(study_path), "--no-report"]) == 1  # again: only the failed cell is retried
    assert others[0].metrics_path.stat().st_mtime_ns == finished


COUNTING_LOSS = '''
import os

from dmlbench.losses import TripletMarginLoss


class Counting(TripletMarginLoss):
    """A triplet loss that notes the process (one notebook kernel per cell execution) using it."""

    def terms(self, embeddings, labels, tuples):
        with open(os.environ["COUNT_FILE"], "a") as log:
            log.write(f"{os.getpid()}\\n")
        return super().terms(embeddings, labels, tuples)
'''


def test_two_studies_started_together_run_each_cell_once(isolated, tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, "counting_loss.py", COUNTING_LOSS)
    monkeypatch.setenv("COUNT_FILE", str(tmp_path / "count.txt"))
    study_path = tmp_path / "twice.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "twice", "datasets": ["fashion-mnist"], "losses": ["counting_loss:Counting"],
        "miners": ["semi-hard", "batch-hard", "none"], "seeds": [0], "settings": tiny_settings(epochs=1)}))
    command = [sys.executable, "-m", "dmlbench", "study", str(study_path)]
    first, second = subprocess.Popen(command), subprocess.Popen(command + ["--no-report"])  # one report is enough
    assert first.wait(timeout=600) == 0 and second.wait(timeout=600) == 0
    study = load_study(study_path)
    assert all(cell.is_done() for cell in study.cells)
    kernels = set((tmp_path / "count.txt").read_text().split())
    assert len(kernels) == 3  # three executions in all: no cell ran twice
    runners = {json.loads((c.run_dir / "execution.json").read_text())["runner"]["pid"] for c in study.cells}
    assert runners <= {first.pid, second.pid}
    assert (isolated / "results" / "report.html").is_file()
