"""Each study writes only to its own results folder, reuses the finished runs and searches of the shipped
folders by their content hash, and ad-hoc runs go to adhoc/ at a study's protocol (issue 29, items 2-4)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from dmlbench import paths
from dmlbench.cli import main
from dmlbench.paths import REPO_ROOT
from dmlbench.study.cells import adhoc_config, claim_results, describe, emit_makefile, link_reused_runs, load_study
from dmlbench.training.record import REQUIRED_KEYS

from ..support import tiny_settings


def write_study(folder, name, **extra):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "datasets": ["fashion-mnist"], "losses": ["triplet", "contrastive"],
                                    "miners": ["random"], "seeds": [0], "settings": tiny_settings(), **extra}))
    return path


def finish_fake_run(folder, cell):
    """A finished run's record as the notebook writes it, in ``folder``/runs/<run id>, without training."""
    run = folder / "runs" / cell.run_id
    run.mkdir(parents=True)
    record = {key: None for key in REQUIRED_KEYS} | {"run_id": cell.run_id, "config": cell.config.to_dict()}
    (run / "metrics.json").write_text(json.dumps(record))
    return run


def snapshot(folder):
    """Every file under ``folder`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_study_defaults_to_its_own_folder_under_results(tmp_path, monkeypatch, isolated):
    # `dmlbench study my.yaml` used to write into results/, replacing the shipped report and summary.json.
    shipped = tmp_path / "repo-results"
    shipped.mkdir()
    (shipped / "summary.json").write_text(json.dumps({"study": "default"}))
    monkeypatch.setattr(paths, "REPO_RESULTS", shipped)
    monkeypatch.delenv("DMLBENCH_RESULTS")
    assert paths.study_results_dir("default") == shipped and paths.study_results_dir("mine") == shipped / "mine"
    study = write_study(tmp_path, "mine")
    makefile = tmp_path / "cells.mk"
    assert main(["study", str(study), "--emit-make", str(makefile)]) == 0
    assert f"export DMLBENCH_RESULTS := {shipped / 'mine'}\n" in makefile.read_text()
    assert "DMLBENCH_RESULTS" not in os.environ  # main() leaves the caller's environment as it was
    assert sorted(p.name for p in shipped.iterdir()) == ["summary.json"]  # planning writes nothing there
    with pytest.raises(Exception, match="'runs' cannot name its results folder"):
        paths.study_results_dir("runs")


def test_writing_into_another_studys_folder_is_refused(tmp_path, monkeypatch, isolated, capsys):
    owned = isolated / "results"
    owned.mkdir()
    (owned / "summary.json").write_text(json.dumps({"study": "default"}))
    before = snapshot(owned)
    study = write_study(tmp_path, "mine")
    for argv in (["study", str(study), "--emit-make", str(tmp_path / "x.mk")], ["report", "--study", str(study)],
                 ["run", "--study", str(study), "--cell", load_study(study).cells[0].run_id]):
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert "holds the results of study 'default'" in error and "study 'mine'" in error, error
        assert "RESULTS" in error and "results/mine/" in error
    assert snapshot(owned) == before and not (tmp_path / "x.mk").exists()
    # a new folder is marked as its first study's when that study writes there (a cell runs: claim_results;
    # planning with --emit-make only checks), and a second study is refused there before its report too
    monkeypatch.setenv("DMLBENCH_RESULTS", str(tmp_path / "fresh"))
    assert main(["study", str(study), "--emit-make", str(tmp_path / "a.mk")]) == 0
    assert not (tmp_path / "fresh").exists()
    claim_results(load_study(study))
    assert main(["study", str(write_study(tmp_path, "other")), "--emit-make", str(tmp_path / "b.mk")]) == 2
    assert "holds the results of study 'mine' (its .study)" in capsys.readouterr().err


def test_finished_runs_and_searches_of_a_shipped_folder_are_reused_read_only(tmp_path, monkeypatch, isolated):
    tuning = {"trials": 2, "seed": 7, "space": {"settings": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}}
    path = write_study(tmp_path, "mine", tuning=tuning)
    shipped = tmp_path / "shipped"
    monkeypatch.setenv("DMLBENCH_REUSE", str(shipped))
    study = load_study(path)
    first, second = [c for c in study.cells if c.role == "default"]
    finish_fake_run(shipped, first)
    for search in study.searches:  # each (loss, miner) pair searched, finished there
        (shipped / "tuning" / search.search_id).mkdir(parents=True)
        (shipped / "tuning" / search.search_id / "best.json").write_text(json.dumps(
            {"search_id": search.search_id, "values": {"lr": 0.005}, "best_trial": 1}))
    before = snapshot(shipped)
    study = load_study(path)
    by_id = {c.run_id: c for c in study.cells}
    assert by_id[first.run_id].run_dir == shipped / "runs" / first.run_id and by_id[first.run_id].is_done()
    assert by_id[second.run_id].run_dir == isolated / "results" / "runs" / second.run_id
    assert [s.folder for s in study.searches] == [shipped / "tuning" / s.search_id for s in study.searches]
    assert not study.pending and [c.config.lr for c in study.cells if c.role == "tuned"] == [0.005, 0.005]
    makefile = tmp_path / "cells.mk"  # the makefile runs the others, not the reused one
    makefile.write_text(emit_makefile(study))
    assert f"{shipped}/runs/{first.run_id}/metrics.json:" in makefile.read_text()
    dry = subprocess.run(["make", "-n", "-f", str(makefile), "cells"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and f"--cell {second.run_id}" in dry.stdout and first.run_id not in dry.stdout
    assert "(1 done, 3 to run)" in describe(study).splitlines()[0]
    assert link_reused_runs(study) == 1 and link_reused_runs(study) == 0
    link = isolated / "results" / "runs" / first.run_id
    assert link.is_symlink() and link.resolve() == (shipped / "runs" / first.run_id).resolve()
    assert snapshot(shipped) == before
    monkeypatch.setenv("DMLBENCH_REUSE", "none")  # a rerun from scratch reuses nothing
    (isolated / "results" / "runs" / first.run_id).unlink()
    assert not load_study(path).cells[0].is_done()


def test_the_shipped_tuned_study_is_finished_in_the_protocol_of_typeface_groups_and_folds(monkeypatch):
    # The tuned study runs on fold 0 of han-typefaces' typeface groups (dataset version 2): its default cells at
    # seeds 0 and 1 are the transfer study's runs (reused, read where they are), the rest are its own.
    monkeypatch.setenv("DMLBENCH_RESULTS", str(REPO_ROOT / "results" / "tuned"))
    monkeypatch.delenv("DMLBENCH_REUSE", raising=False)
    study = load_study(REPO_ROOT / "studies" / "tuned.yaml", check_networks=False)
    assert study.cells and {(c.config.dataset, c.config.fold) for c in study.cells} == {("han-typefaces", 0)}
    assert all(c.config.component_versions()["dataset"] == 2 for c in study.cells)
    assert all(c.is_done() for c in study.cells) and not study.pending
    reused = [c for c in study.cells if c.run_dir.resolve().parent.parent.name == "transfer"]  # linked from tuned/runs
    assert sorted({c.config.seed for c in reused}) == [0, 1] and all(c.role == "default" for c in reused)
    shipped = json.loads((REPO_ROOT / "results" / "tuned" / "summary.json").read_text())
    assert shipped["study"] == "tuned"


def test_status_counts_the_trials_and_tuned_cells_left(tmp_path, isolated):
    tuning = {"trials": 3, "seed": 7, "space": {"settings": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}}
    study = load_study(write_study(tmp_path, "mine", tuning=tuning, seeds=[0, 1]))
    header = describe(study).splitlines()[0]
    # 4 default cells, 2 searches of 3 trials, then up to 2 tuned cells per search
    assert "4 cells (4 to run)" in header and "2 searches to finish (6 trials to run)" in header, header
    assert "up to 4 tuned cells: 8 runs and 6 trials to run in all" in header, header


def test_estimate_covers_the_shipped_datasets(capsys):
    assert main(["study", str(REPO_ROOT / "studies" / "default.yaml"), "--estimate", "5000"]) == 0
    table = capsys.readouterr().out
    runs = len(load_study(REPO_ROOT / "studies" / "default.yaml", check_networks=False).cells)
    assert f"han-typefaces   {runs}" in table and "fashion-mnist" not in table, table


def test_an_adhoc_run_uses_the_default_studys_protocol(tmp_path, isolated, capsys):
    # It used to train at RunConfig's defaults (lr 1e-3, 60 iterations, no schedule): not the study's numbers.
    default = REPO_ROOT / "studies" / "default.yaml"
    cells = {c.run_id: c for c in load_study(default, check_networks=False).cells}
    config, note = adhoc_config(default, {"loss": "triplet", "miner": "semi-hard"})
    assert config.run_id() in cells and config.dataset == "han-typefaces" and "comparable" in note
    demo = REPO_ROOT / "studies" / "demo.yaml"
    config, note = adhoc_config(demo, {"loss": "triplet", "miner": "semi-hard", "dataset": "fashion-mnist", "epochs": 2})
    assert (config.P, config.K, config.iters_per_epoch, config.lr_schedule) == (5, 16, 100, "cosine")
    assert "epochs=2 (the study's: 4)" in note and "not comparable" in note
    # the same run as a shipped one is found there, not trained again, and nothing lands in results/runs
    assert main(["run", "--loss", "triplet", "--miner", "semi-hard"]) == 0
    out = capsys.readouterr().out
    assert f"results/runs/{adhoc_config(default, {'loss': 'triplet', 'miner': 'semi-hard'})[0].run_id()}" in out
    assert "finished already" in out and not (isolated / "results" / "runs").exists()


def test_an_adhoc_run_goes_to_adhoc_with_a_bar_of_epochs(tmp_path, isolated, capsys):
    study = write_study(tmp_path, "mine")
    assert main(["run", "--study", str(study), "--loss", "triplet", "--miner", "random"]) == 0
    out, err = capsys.readouterr()
    config = load_study(study).cells[0].config
    assert (isolated / "results" / "adhoc" / config.run_id() / "metrics.json").is_file()
    assert not (isolated / "results" / "runs").exists()
    assert "comparable with the study's fashion-mnist cells" in out and "epoch" in err, err
