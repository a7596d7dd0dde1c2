"""'dmlbench compare' run for real on the README's example loss against a tiny base study whose runs and
searches were made first into a folder that plays the shipped results (issue 29, item 4): only the new
loss's cells and search run, the baselines are reused where they lie, the comparison's report ranks the new
loss among them, and no file of the shipped folder changes."""

from __future__ import annotations

import hashlib
import re

import yaml

from dmlbench import paths
from dmlbench.cli import main
from dmlbench.paths import REPO_ROOT
from dmlbench.study import cells as study_cells
from dmlbench.study.cells import load_study
from dmlbench.fileio import read_json

from ..support import tiny_settings, user_module

NEW = "my_losses:SquaredTripletLoss"
BASELINES = ("triplet", "contrastive")


def readme_loss() -> str:
    """my_losses.py as the README's 'Adding a loss' section prints it."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"<!-- example:my_losses.py -->\n```python\n(.*?)```", text, re.S).group(1)


def readme_compare_options() -> list[str]:
    """The options the README's comparison command gives (its --miner and --space), without --estimate."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    line = re.search(r"^\.venv/bin/dmlbench compare (.*)$", text, re.M).group(1)
    words = [word.strip("'") for word in re.findall(r"'[^']*'|\S+", line)]
    assert words[0] == NEW, line
    return [word for word in words[1:] if word != "--estimate"]


def write_base_study(folder):
    """Two baselines, one seed, one trial per search, tiny Fashion-MNIST runs: the 'shipped' study."""
    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump({
        "name": "base", "datasets": ["fashion-mnist"], "seeds": [0],
        "cells": [{"loss": "triplet", "miner": "semi-hard", "loss_kwargs": {"margin": 0.2}},
                  {"loss": "contrastive", "miner": "none"}],
        "settings": tiny_settings(epochs=1, iters_per_epoch=3),
        "tuning": {"trials": 1, "seed": 100, "space": {"settings": {"lr": {"low": 5e-4, "high": 8e-3, "log": True}}}}}))
    return path


def digests(folder):
    """Every file under ``folder`` (links as their targets' paths) with its content's hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


def counting_runs(monkeypatch):
    """The run ids the experiment notebook is executed for, from here on (the real execution runs)."""
    executed = []
    execute = study_cells._execute

    def counted(config, folder, **kwargs):
        executed.append(config.run_id())
        return execute(config, folder, **kwargs)

    monkeypatch.setattr(study_cells, "_execute", counted)
    return executed


def test_compare_runs_only_the_new_loss_and_ranks_it_among_the_shipped_baselines(tmp_path, monkeypatch, isolated,
                                                                                capsys):
    user_module(tmp_path, monkeypatch, "my_losses.py", readme_loss())
    base = write_base_study(tmp_path)
    shipped = tmp_path / "shipped"  # the baselines' runs, searches and tuned runs, made first
    monkeypatch.setenv("DMLBENCH_RESULTS", str(shipped))
    monkeypatch.setenv("DMLBENCH_REUSE", "none")
    assert main(["study", "--study", str(base), "--no-report"]) == 0
    shipped_study = load_study(base)
    assert all(cell.is_done() for cell in shipped_study.cells) and not shipped_study.pending
    baseline_runs = {cell.run_id for cell in shipped_study.cells}
    before = digests(shipped)
    capsys.readouterr()

    # the comparison, at the default place of its results (here a repository's results/ of the test's own)
    repo_results = tmp_path / "repo-results"
    monkeypatch.setattr(paths, "REPO_RESULTS", repo_results)
    monkeypatch.delenv("DMLBENCH_RESULTS")
    monkeypatch.setenv("DMLBENCH_REUSE", str(shipped))
    executed = counting_runs(monkeypatch)
    assert main(["compare", NEW, *readme_compare_options(), "--study", str(base)]) == 0
    out = capsys.readouterr().out
    folder = repo_results / "compare-squaredtripletloss"
    assert sorted(p.name for p in repo_results.iterdir()) == [folder.name]
    monkeypatch.setenv("DMLBENCH_RESULTS", str(folder))  # where main() pointed the comparison
    study = load_study(folder / "study.yaml")

    # only the new loss's default and tuned cells ran, and its one search; every baseline was reused
    new_runs = {cell.run_id for cell in study.cells if cell.config.loss == NEW}
    assert set(executed) == new_runs and len(executed) == len(new_runs) >= 1, (executed, new_runs)
    assert {cell.run_id for cell in study.cells} == baseline_runs | new_runs
    assert "1 run to make now, 1 search to finish (1 trial)" in out and "2 finished searches" in out, out
    assert str(shipped) in out and out.index("estimated time: about") < out.index("ranked by test MAP@R"), out
    assert [p.name for p in (folder / "tuning").iterdir() if p.is_dir()] == [s.search_id for s in study.searches
                                                                             if s.base.loss == NEW]
    for run in baseline_runs:  # linked to the shipped run, not trained again
        assert (folder / "runs" / run).resolve() == (shipped / "runs" / run).resolve()

    # the ranking, printed and in the comparison's summary.json, holds the baselines and the new loss
    summary = read_json(folder / "summary.json")
    ranked = {row["loss"] for part in summary["tuning"]["datasets"].values() for row in part["rows"]}
    assert ranked == {NEW, *BASELINES}, summary["tuning"]
    ranking = out[out.index("fashion-mnist, ranked by test MAP@R"):].splitlines()
    assert len([line for line in ranking if re.match(r"  \d\. ", line)]) == 3, ranking
    assert any(NEW in line and line.endswith("<- new") for line in ranking), ranking
    assert all(any(f" {loss} + " in line for line in ranking) for loss in BASELINES), ranking
    assert (folder / "report.html").is_file()
    assert digests(shipped) == before  # no shipped file changed, none added or removed
