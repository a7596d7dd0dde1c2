"""Tuning: the tuning block's checks, the Optuna tuner (kill and restart, two tuners on one search), the
sealed test split, and the tuned cells a finished search adds to its study. Real Optuna storage, real
training on the tiny Fashion-MNIST."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from dmlbench.datasets import FashionMNIST, load_dataset
from dmlbench.datasets.base import LabelledSet, Splits, TuningSplits
from dmlbench.errors import ConfigError, SealedSplitError
from dmlbench.paths import REPO_ROOT
from dmlbench.study.cells import emit_makefile, load_study
from dmlbench.study.tuner import storage, trial_path, tune

from ..support import tiny_settings

TUNING = {"trials": 4, "seed": 7, "startup_trials": 2, "pruner": {"name": "median", "startup_trials": 1, "warmup_epochs": 1},
          "space": {"settings": {"lr": {"low": 3e-4, "high": 3e-2, "log": True}},
                    "losses": {"triplet": {"margin": {"low": 0.05, "high": 0.5}}}}}


def write_tuned_study(tmp_path, tuning=None, **settings):
    study = {"name": "tuned-t", "datasets": ["fashion-mnist"], "seeds": [0, 1],
             "cells": [{"loss": "triplet", "miner": "semi-hard", "loss_kwargs": {"margin": 0.2}}],
             "settings": tiny_settings(**{"epochs": 3, "iters_per_epoch": 4, **settings}),
             "tuning": TUNING if tuning is None else tuning}
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def with_tuning(**changes):
    tuning = json.loads(json.dumps(TUNING))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = tuning
        for key in parents:
            node = node[key]
        node[last] = value
    return tuning


@pytest.mark.parametrize("changes, message", [
    ({"space.losses.triplet": {"marginn": {"low": 0.1, "high": 0.2}}}, "takes no argument 'marginn'"),
    ({"space.settings": {"lr": {"low": 0.01, "high": 0.01}}}, "an empty range: low=0.01 is not below high=0.01"),
    ({"space.settings": {"lr": {"low": 0.0, "high": 0.01, "log": True}}}, "a log range must lie above zero"),
    ({"trials": 0}, "a budget of zero tunes nothing"),
    ({"space.settings": {"epochs": {"low": 1, "high": 4}}}, "'epochs' and it is not a tunable run setting; valid: lr"),
    ({"space.losses": {"nope": {"margin": [0.1]}}}, "unknown loss 'nope'"),
    ({"space.losses.triplet": {"margin": []}}, "an empty list of choices"),
    ({"objective": "nmi"}, "valid: map@r, recall@1"),
    ({"pruner": {"name": "hyperband"}}, "unknown pruner 'hyperband'; valid: median, successive-halving, none"),
    ({"budget": 3}, "unknown key 'budget'; valid keys: objective, trials"),
])
def test_bad_tuning_blocks_fail_before_anything_runs(isolated, tmp_path, changes, message):
    path = write_tuned_study(tmp_path, with_tuning(**changes))
    with pytest.raises(ConfigError) as info:
        load_study(path)
    assert message in str(info.value) and "tuning" in str(info.value)
    assert not (isolated / "results").exists()


def test_a_tuning_block_needs_validation_data(isolated, tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNIST, "validation", False)
    with pytest.raises(ConfigError, match="fashion-mnist has no validation split to score trials on"):
        load_study(write_tuned_study(tmp_path))


def test_a_study_with_tuning_has_default_cells_searches_then_tuned_cells(isolated, tmp_path):
    study = load_study(write_tuned_study(tmp_path))
    assert [c.role for c in study.cells] == ["default", "default"]
    (search,) = study.searches
    assert [p.name for p in search.params] == ["loss.margin", "lr"] and search.base.seed == 7
    assert search.default_values() == {"loss.margin": 0.2, "lr": 1e-3}
    assert all(c.search == search.search_id for c in study.cells)
    makefile = emit_makefile(study)
    assert f"{search.best_path}:" in makefile and f"tune --study {study.path} --search {search.search_id}" in makefile
    assert "cells: $(RUNS) tuned" in makefile and "report: tuned" in makefile

    best = tune(search)
    assert best["trials"] == 4 and search.is_done() and best["values"]["lr"] == search.apply(best["values"]).lr
    study = load_study(study.path)
    tuned = [c for c in study.cells if c.role == "tuned"]
    if best["values"] == search.default_values():  # the defaults won: the default cells are the tuned ones
        assert not tuned
    else:
        assert [c.config.seed for c in tuned] == [0, 1]
        assert all(c.config.loss_kwargs["margin"] == best["values"]["loss.margin"] and c.search == search.search_id
                   for c in tuned)
    assert "SEARCHES" not in emit_makefile(study) and "report: tuned" not in emit_makefile(study)
    records = sorted((search.folder / "trials").glob("*.json"))
    assert len(records) == 4 and (search.folder / "trials.csv").is_file()
    first = json.loads(records[0].read_text())
    assert first["values"] == search.default_values() and first["role"] == "default settings"
    assert first["state"] in ("COMPLETE", "PRUNED") and [c["epoch"] for c in first["curve"]][:2] == [0, 1]


class Tripwire(LabelledSet):
    """A split whose images and labels cannot be read without the test noticing."""

    reads: list[str] = []

    def __getattribute__(self, name):
        if name in ("images", "labels", "rows", "cache"):
            Tripwire.reads.append(name)
            raise AssertionError(f"the test split's {name} were read")
        return super().__getattribute__(name)


def tripwired(splits: Splits) -> Splits:
    return Splits(splits.name, splits.train, splits.val, Tripwire(), splits.class_names, splits.mean, splits.std,
                  splits.source, gallery=None)


def test_the_tuning_path_cannot_read_the_test_split(isolated, tmp_path, monkeypatch):
    import dmlbench.datasets

    real = load_dataset("fashion-mnist")
    sealed = TuningSplits(real)
    with pytest.raises(SealedSplitError, match="the test split is sealed while tuning"):
        sealed.test
    with pytest.raises(SealedSplitError):
        sealed.gallery
    kept = [value for value in vars(sealed).values()]
    assert not any(value is real.test or value is real.test.images or value is real.test.labels for value in kept)
    assert set(sealed.class_names) == set(real.train.classes) | set(real.val.classes)

    # the whole tuning path (loading, trials, pruning, records) on a dataset whose test split is a tripwire
    Tripwire.reads = []
    monkeypatch.setattr(dmlbench.datasets, "load_dataset", lambda *a, **k: tripwired(load_dataset("fashion-mnist")))
    (search,) = load_study(write_tuned_study(tmp_path)).searches
    best = tune(search)
    assert best is not None and Tripwire.reads == []

    # the tripwire does go off where the test split is read: an ordinary run's training and test
    from dmlbench.training.loop import train

    with pytest.raises(AssertionError, match="the test split's"):
        train(search.base, tripwired(load_dataset("fashion-mnist")), progress=False)
    assert Tripwire.reads


def tuner(study_path, results, *extra) -> subprocess.Popen:
    environ = {**os.environ, "DMLBENCH_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dmlbench", "tune", "--study", str(study_path), *extra],
                            env=environ, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trials_of(search, results, monkeypatch):
    import optuna  # here, not at the top: the GPU check collects this file where optuna is not installed

    monkeypatch.setenv("DMLBENCH_RESULTS", str(results))
    return optuna.load_study(study_name=search.search_id, storage=storage(search)).get_trials()


def test_a_killed_tuner_restarts_where_it_stopped_and_ends_as_an_uninterrupted_one(isolated, tmp_path, monkeypatch):
    # small learning rates: the tiny data is not learnt perfectly, so the trials' scores differ
    tuning = with_tuning(trials=5, **{"space.settings": {"lr": {"low": 1e-5, "high": 3e-4, "log": True}},
                                      "pruner.warmup_epochs": 2})
    path = write_tuned_study(tmp_path, tuning, epochs=4, iters_per_epoch=100, lr=3e-5)
    (search,) = load_study(path).searches
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    monkeypatch.setenv("DMLBENCH_RESULTS", str(killed))
    first = tuner(path, killed)
    record = trial_path(search, 2)
    deadline = time.time() + 300
    while not (record.is_file() and json.loads(record.read_text())["state"] == "RUNNING" and
               len(json.loads(record.read_text())["curve"]) >= 2):
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: (t.state.name, t.params, t.value) for t in trials_of(search, killed, monkeypatch)}
    assert [before[n][0] for n in (0, 1)] in (["COMPLETE", "COMPLETE"], ["COMPLETE", "PRUNED"]) and before[2][0] == "RUNNING"

    second, third = tuner(path, killed), tuner(path, whole)
    assert second.wait(timeout=300) == 0, second.communicate()[0]
    assert third.wait(timeout=300) == 0, third.communicate()[0]
    after = trials_of(search, killed, monkeypatch)
    assert {n: (t.state.name, t.params, t.value) for n, t in enumerate(after) if n < 2} == {n: before[n] for n in (0, 1)}
    assert after[2].state.name == "FAIL" and after[3].user_attrs["retry_of"] == 2 and after[3].params == before[2][1]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after) == 5 and len(after) == 6
    assert len({t.value for t in after if t.value is not None}) >= 3, "the trials' scores differ: the best is a choice"
    assert json.loads(trial_path(search, 2).read_text())["failed_because"].startswith("interrupted")
    monkeypatch.setenv("DMLBENCH_RESULTS", str(killed))
    interrupted = json.loads(search.best_path.read_text())
    monkeypatch.setenv("DMLBENCH_RESULTS", str(whole))
    uninterrupted = json.loads(search.best_path.read_text())
    assert interrupted["values"] == uninterrupted["values"] and interrupted["value"] == uninterrupted["value"]
    assert [t.params for t in trials_of(search, whole, monkeypatch)] == [t.params for t in after if t.number != 2]


def test_two_tuners_on_one_search_share_its_trials(isolated, tmp_path, monkeypatch):
    path = write_tuned_study(tmp_path, with_tuning(trials=6, storage="journal"), epochs=3, iters_per_epoch=10)
    (search,) = load_study(path).searches
    results = tmp_path / "shared"
    tuners = [tuner(path, results), tuner(path, results)]
    for process in tuners:
        assert process.wait(timeout=300) == 0, process.communicate()[0]
    trials = trials_of(search, results, monkeypatch)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and len({t.number for t in finished}) == 6
    owners = {json.loads(trial_path(search, t.number).read_text())["owner"]["pid"] for t in finished}
    assert len(owners) == 2, "both tuners ran trials"
    assert (search.folder / "trials.journal").is_file() and search.is_done()
    assert np.isfinite(json.loads(search.best_path.read_text())["value"])


def planted_record(cell, map_r: float) -> dict:
    """A finished run's metrics.json for ``cell`` with test MAP@R ``map_r`` (Recall@1 = MAP@R + 0.4)."""
    from tests.reporting.test_report import complete_record

    c = cell.config
    metrics = {"recall@1": map_r + 0.4, "recall@2": map_r + 0.45, "recall@4": map_r + 0.5, "recall@8": map_r + 0.55,
               "r_precision": map_r + 0.05, "map@r": map_r, "nmi": 0.5, "ami": 0.49}
    record = complete_record(cell.run_id, c.dataset, c.loss, c.miner, c.seed, c.epochs, metrics, c.to_dict())
    record["config_hash"] = c.config_hash()
    return record


def test_the_report_compares_default_and_tuned_cells_from_their_files(isolated, tmp_path):
    from dmlbench.reporting.readme import render_tuned_block, render_tuned_table
    from dmlbench.reporting.report import build_report

    tuning = with_tuning(**{"space.settings": {"lr": {"low": 2e-3, "high": 5e-3, "log": True}},  # the default lr 1e-3 lies
                            "space.losses": {"contrastive": {"neg_margin": {"low": 0.5, "high": 1.5}}}})  # outside
    path = write_tuned_study(tmp_path, tuning, epochs=2, iters_per_epoch=3)
    study = yaml.safe_load(path.read_text())
    study["cells"].append({"loss": "contrastive", "miner": "none"})
    study["seeds"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(study))
    for search in load_study(path).searches:
        tune(search)
    study = load_study(path)
    planted = {("triplet", "default"): 0.30, ("contrastive", "default"): 0.25, ("triplet", "tuned"): 0.31,
               ("contrastive", "tuned"): 0.40}  # tuning changes the leader
    for cell in study.cells:
        record = planted_record(cell, planted[(cell.config.loss, cell.role)] + 0.002 * cell.config.seed)
        cell.run_dir.mkdir(parents=True)
        (cell.run_dir / "metrics.json").write_text(json.dumps(record))
        (cell.run_dir / "execution.json").write_text(json.dumps({"notebook_wall_s": 10.0, "started": time.time(),
                                                                 "finished": time.time() + 10.0}))
    assert sorted(c.role for c in study.cells) == ["default"] * 6 + ["tuned"] * 6

    html = build_report(path).read_text()
    summary = json.loads((isolated / "results" / "summary.json").read_text())
    rows = {row["loss"]: row for row in summary["tuning"]["datasets"]["fashion-mnist"]["rows"]}
    assert rows["contrastive"]["tuned_map@r"] == pytest.approx(0.402) and rows["contrastive"]["rank_tuned"] == 1
    assert rows["contrastive"]["default_map@r"] == pytest.approx(0.252) and rows["contrastive"]["rank_default"] == 2
    assert rows["contrastive"]["gain_map@r"] == pytest.approx(0.15) and rows["triplet"]["gain_map@r"] == pytest.approx(0.01)
    # the report is about the tuned cells: its tables rank each loss at its best settings
    assert sorted(round(r["map@r"], 4) for r in summary["table"]) == [0.312, 0.402]
    verdict = summary["tuning"]["datasets"]["fashion-mnist"]["verdict"]
    assert "tuning changes the leader: triplet leads untuned (30.2%), contrastive tuned (40.2%" in verdict
    assert "for 2 (contrastive, triplet)" in verdict or "for 2 (triplet, contrastive)" in verdict
    assert "Tuning: every loss at its defaults" in html and verdict.split(". ")[0] in html
    assert "2 → 1" in html and (isolated / "results" / "figures" / "tuning_fashion-mnist.png").is_file()
    trials = (isolated / "results" / "tables" / "fashion-mnist__trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 2 * 4
    block, table = render_tuned_block(summary), render_tuned_table(summary)
    assert verdict in block and "8 trials" in block and "12 cells" in block
    assert "| contrastive | none | neg_margin 1, lr 0.001 |" in table and "0.4020 [" in table


def test_a_study_runs_its_searches_then_its_default_and_tuned_cells(isolated, tmp_path):
    from dmlbench.study.cells import describe
    from dmlbench.study.executors import run_searches, run_study

    tuning = with_tuning(trials=2, **{"space.settings": {"lr": {"low": 2e-3, "high": 5e-3}}})
    path = write_tuned_study(tmp_path, tuning, epochs=1, iters_per_epoch=2)
    study = yaml.safe_load(path.read_text())
    study["seeds"] = [0]
    path.write_text(yaml.safe_dump(study))
    study = load_study(path)
    assert "search fashion-mnist__triplet__semi-hard__tuning__" in describe(study) and "[to run]" in describe(study)
    run_searches(study, executor="submitit-local", jobs=1)  # the search as a submitit job of its own
    (search,) = study.searches
    assert search.is_done() and "done (best trial" in describe(load_study(path))
    paths = run_study(load_study(path))
    study = load_study(path)
    assert [c.role for c in study.cells] == ["default", "tuned"] and all(c.is_done() for c in study.cells)
    assert len(paths) == 2
    tuned = json.loads(study.cells[1].metrics_path.read_text())["config"]
    assert tuned["lr"] == json.loads(search.best_path.read_text())["values"]["lr"] and 2e-3 <= tuned["lr"] <= 5e-3


def test_the_shipped_tuned_study_is_finished_and_its_cells_are_its_searches_best(monkeypatch):
    # every search spent the same epochs on at least 30 configurations, re-scored its finalists over two
    # seeds and chose the best mean; the tuned cells run exactly the chosen settings
    from dmlbench.reporting.search_audit import epochs_check, search_rows

    results = REPO_ROOT / "results" / "tuned"
    monkeypatch.setenv("DMLBENCH_RESULTS", str(results))
    monkeypatch.delenv("DMLBENCH_REUSE", raising=False)
    study = load_study(REPO_ROOT / "studies" / "tuned.yaml", check_networks=False)
    spec = study.tuning
    assert len(study.searches) == 13 and not study.pending and spec.min_configs >= 30 and spec.finalists >= 3
    for search in study.searches:
        best = json.loads(search.best_path.read_text())
        records = [json.loads(p.read_text()) for p in sorted((search.folder / "trials").glob("*.json"))]
        finished = [r for r in records if r["state"] in ("COMPLETE", "PRUNED")]
        spent = sum(max([c["epoch"] for c in r["curve"]] or [0]) for r in finished)
        assert spec.budget_epochs <= spent <= spec.budget_epochs * 1.05  # two tuners on one search may overrun by an epoch
        assert sum(not r.get("invalid") for r in finished) >= spec.min_configs and best["trials"] == len(finished)
        means = {f["key"]: np.mean(list(f["rescores"].values())) for f in best["finalists"]}
        assert len(best["finalists"]) >= spec.finalists and best["winner"] == max(means, key=means.get)
        assert all(sorted(f["rescores"]) == ["101", "102"] for f in best["finalists"])
        chosen = search.apply(best["values"])
        assert any(c.config.config_hash() == dataclasses.replace(chosen, seed=c.config.seed).config_hash()
                   and c.is_done() for c in study.cells), search.search_id
    assert all(cell.is_done() for cell in study.cells)
    assert epochs_check(search_rows(study.searches))["equal"]
    summary = json.loads((results / "summary.json").read_text())
    assert len(summary["tuning"]["datasets"]["han-typefaces"]["rows"]) == 13


BUDGETED = {"budget_epochs": 14, "min_configs": 6, "finalists": 2, "rescore_seeds": 2, "seed": 3, "startup_trials": 3,
            "pruner": {"name": "successive-halving", "min_epochs": 1, "reduction_factor": 3},
            "space": {"settings": {"lr": {"low": 1e-5, "high": 3e-3, "log": True}},
                      "losses": {"triplet": {"margin": {"low": 0.05, "high": 0.5}}}}}


def test_an_epoch_budget_is_spent_exactly_on_enough_configurations_and_finalists_are_rescored(isolated, tmp_path):
    from dmlbench.study.finalists import pooled_sd, record_path

    path = write_tuned_study(tmp_path, BUDGETED, epochs=4, iters_per_epoch=6, lr=1e-4)
    (search,) = load_study(path).searches
    best = tune(search)
    records = [json.loads(p.read_text()) for p in sorted((search.folder / "trials").glob("*.json"))]
    finished = [r for r in records if r["state"] in ("COMPLETE", "PRUNED")]
    epochs = [len(r["curve"]) - 1 for r in finished]
    assert sum(epochs) == 14 == best["epochs_spent"], "the budget is spent to the epoch, pruned epochs counted"
    assert len(finished) >= 6 == best["trials"] - (len(finished) - 6), "at least min_configs configurations"
    assert any(r.get("stopped_by") for r in finished) or sum(epochs) == 14
    # the finalists: the 2 best trials and the defaults (trial 0's settings when it is one of them), each at
    # seeds 4 and 5 (after the trials' seed 3)
    keys = [f["key"] for f in best["finalists"]]
    hashes = [search.apply(f["values"]).config_hash() for f in best["finalists"]]
    assert len(keys) == len(set(hashes)) == 3 and search.base.config_hash() in hashes  # always finalists + 1
    for entry in best["finalists"]:
        assert sorted(entry["rescores"]) == ["4", "5"]
        for seed in (4, 5):
            rescore = json.loads(record_path(search, entry["key"], seed).read_text())
            assert rescore["run_config"]["seed"] == seed and len(rescore["curve"]) == 5  # epoch 0 and 4 epochs
            assert rescore["value"] == entry["rescores"][str(seed)]
    means = {f["key"]: np.mean(list(f["rescores"].values())) for f in best["finalists"]}
    assert best["winner"] == max(means, key=means.get) and best["value"] == pytest.approx(max(means.values()))
    assert best["gap"] == pytest.approx(sorted(means.values())[-1] - sorted(means.values())[-2])
    assert best["seed_sd"] == pytest.approx(pooled_sd([list(f["rescores"].values()) for f in best["finalists"]]))
    assert best["tie"] == (best["gap"] < best["seed_sd"])
    (winner,) = [f for f in best["finalists"] if f["key"] == best["winner"]]
    if best["values"] == {}:  # the defaults won (written out by the trial that drew them): the cell itself
        from dmlbench.study.finalists import default_values

        assert search.apply(winner["values"]).config_hash() == search.apply(default_values(search)).config_hash()
    else:
        assert best["values"] == winner["values"]


def test_pooled_sd_is_the_within_group_spread():
    from dmlbench.study.finalists import pooled_sd

    assert pooled_sd([[1.0, 3.0], [10.0, 12.0]]) == pytest.approx(np.sqrt(2.0))
    assert pooled_sd([[1.0], [2.0]]) is None
    assert pooled_sd([[0.0, 2.0, 4.0], [5.0]]) == pytest.approx(2.0)


@pytest.mark.parametrize("changes, message", [
    ({"trials": 4}, "give the budget as trials or as budget_epochs, not both"),
    ({"min_configs": 20}, "20 configurations need at least 20 epochs, but budget_epochs is 14"),
    ({"finalists": 0, "rescore_seeds": 2}, "no finalists to re-score"),
])
def test_bad_epoch_budgets_fail_before_anything_runs(isolated, tmp_path, changes, message):
    path = write_tuned_study(tmp_path, {**BUDGETED, **changes})
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def _kill_when(process, ready, what: str) -> None:
    deadline = time.time() + 300
    while not ready():
        assert process.poll() is None and time.time() < deadline, f"waiting for {what}: {process.communicate()[0]}"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _running_with_epochs(path, epochs: int) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return record["state"] == "RUNNING" and len(record["curve"]) >= epochs + 1


def test_a_search_killed_in_a_trial_and_in_a_rescore_ends_as_an_uninterrupted_one(isolated, tmp_path, monkeypatch):
    # the epoch budget, successive halving and the finalists' re-scores: killed once mid-trial and once
    # mid-re-score, the search ends with the trials, epochs, re-scores and choice of an uninterrupted one
    path = write_tuned_study(tmp_path, BUDGETED, epochs=4, iters_per_epoch=40, lr=1e-4)
    (search,) = load_study(path).searches
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    monkeypatch.setenv("DMLBENCH_RESULTS", str(killed))
    _kill_when(tuner(path, killed), lambda: _running_with_epochs(trial_path(search, 2), 1), "trial 2's first epoch")
    claims = search.folder / "finalists"
    _kill_when(tuner(path, killed), lambda: claims.is_dir() and any(claims.glob("*.claim")), "a re-score")
    assert not search.is_done() and any(claims.glob("*.claim"))
    second, third = tuner(path, killed), tuner(path, whole)
    assert second.wait(timeout=300) == 0, second.communicate()[0]
    assert third.wait(timeout=300) == 0, third.communicate()[0]
    after = trials_of(search, killed, monkeypatch)
    # the kill may land just after trial 2 was pruned at its first epoch: whichever trial it stopped is retried
    failed = [t.number for t in after if t.state.name == "FAIL"]
    assert all(any(t.user_attrs.get("retry_of") == n for t in after) for n in failed)
    monkeypatch.setenv("DMLBENCH_RESULTS", str(killed))
    interrupted = json.loads(search.best_path.read_text())
    assert not any((search.folder / "finalists").glob("*.claim"))
    monkeypatch.setenv("DMLBENCH_RESULTS", str(whole))
    uninterrupted = json.loads(search.best_path.read_text())
    for key in ("values", "value", "epochs_spent", "trials", "gap", "seed_sd", "tie", "defaults_rescored"):
        assert interrupted[key] == uninterrupted[key], key

    def numbered_apart(best):  # a retried trial takes a new number: the finalists compare by settings and scores
        return [{k: v for k, v in f.items() if k not in ("key", "trial")} for f in best["finalists"]]

    assert numbered_apart(interrupted) == numbered_apart(uninterrupted)
    assert interrupted["epochs_spent"] == 14
    finished = [t for t in after if t.state.name != "FAIL"]
    assert [t.params for t in finished] == [t.params for t in trials_of(search, whole, monkeypatch)]


def test_values_that_make_no_valid_run_together_are_pruned_untrained(isolated, tmp_path):
    # each choice is valid alone (check_ranges passes), but neg_margin 0.5 below pos_margin 0.8 is not
    tuning = with_tuning(trials=4, startup_trials=4, **{
        "space.losses": {"contrastive": {"pos_margin": [0.8], "neg_margin": [0.5, 1.2]}}})
    path = write_tuned_study(tmp_path, tuning, epochs=2, iters_per_epoch=3)
    study = yaml.safe_load(path.read_text())
    study["cells"] = [{"loss": "contrastive", "miner": "none"}]
    path.write_text(yaml.safe_dump(study))
    (search,) = load_study(path).searches
    best = tune(search)
    records = [json.loads(p.read_text()) for p in sorted((search.folder / "trials").glob("*.json"))]
    invalid = [r for r in records if r.get("invalid")]
    assert invalid and all(r["state"] == "PRUNED" and r["curve"] == [] for r in invalid)
    assert all(r["values"]["loss.neg_margin"] == 0.5 for r in invalid) and "pos_margin" in invalid[0]["invalid"]
    assert best is not None and best["values"]["loss.neg_margin"] == 1.2 and len(records) == 4
