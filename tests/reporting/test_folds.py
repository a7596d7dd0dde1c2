"""The report's statistics over a fold x seed protocol, on run records written here (real metrics.json
files, read back by the report's own loader) with planted effects whose answers are known:

- the runs table carries each run's fold and its replicate unit (fold, seed); old records have none;
- the group tied with the best cell (paired by unit, Holm), when the best is separable and when not;
- rank intervals never say "1-1" when the first two cannot be told apart;
- intervals clipped to [0, 1], and said so; two replicates said to be 12.7 standard errors wide;
- the share of variance between folds on data with a known between-fold component;
- convergence: the validation gain over the last quarter of the budget against the cell's seed deviation;
- Kendall's tau of validation against test over the best cells;
- the baselines as rows of the results tables, in summary.json and in the README block.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dmlbench.reporting import claims, findings, readme
from dmlbench.reporting.adequacy import convergence, last_quarter_gain, run_convergence, seed_sd
from dmlbench.reporting.htmltables import results_table
from dmlbench.reporting.runs import load_histories, load_runs
from dmlbench.reporting.stats import ranking, seed_summary
from dmlbench.reporting.tables import baseline_table, pivot_with_baselines, pivot, summarise, with_baselines
from dmlbench.training.rundir import RunDir

from .test_report import complete_record

FOLDS, SEEDS = (0, 1, 2), (0, 1, 2, 3)


def write_runs(root, effects: dict, fold_sd=0.02, noise=0.004, seed=0, folds=FOLDS, seeds=SEEDS,
               validation: dict | None = None) -> pd.DataFrame:
    """One metrics.json per (cell, fold, seed) under root/runs: MAP@R = 0.5 + the cell's effect + a
    shift per fold shared by every cell + noise; validation MAP@R at the selected epoch = 0.4 + the
    cell's ``validation`` effect (its test effect when not given). Returns load_runs of them."""
    rng = np.random.default_rng(seed)
    shifts = {f: rng.normal(0, fold_sd) for f in folds}
    for (loss, miner), effect in effects.items():
        for f in folds:
            for s in seeds:
                value = float(np.clip(0.5 + effect + shifts[f] + rng.normal(0, noise), 0, 1))
                run_id = f"{loss}-{miner}-f{f}-s{s}"
                record = complete_record(run_id, "han-typefaces", loss, miner, s, epochs=8,
                                         metrics={"recall@1": 0.9, "recall@2": 0.92, "recall@4": 0.94,
                                                  "recall@8": 0.96, "r_precision": value + 0.05, "map@r": value,
                                                  "nmi": 0.7, "ami": 0.69})
                record["config"]["fold"] = f
                val = 0.4 + (validation or effects)[(loss, miner)] + rng.normal(0, noise / 4)
                record["val_at_best"] = {"val_map@r": val, "val_recall@1": 0.8}
                folder = RunDir(root / "runs" / run_id)
                folder.path.mkdir(parents=True)
                folder.metrics.write_text(json.dumps(record))
    return load_runs(root / "runs")


def test_runs_carry_their_fold_and_unit_and_old_records_read_as_seeds(tmp_path):
    runs = write_runs(tmp_path, {("triplet", "none"): 0.0}, folds=(1,), seeds=(2,))
    old = RunDir(tmp_path / "runs" / "old")
    old.path.mkdir()
    old.metrics.write_text(json.dumps(complete_record("old", seed=3)))  # made before folds: no "fold"
    runs = load_runs(tmp_path / "runs").set_index("run_id")
    assert runs.loc["triplet-none-f1-s2", "fold"] == 1 and runs.loc["triplet-none-f1-s2", "unit"] == "fold 1, seed 2"
    assert np.isnan(runs.loc["old", "fold"]) and runs.loc["old", "unit"] == "seed 3"
    assert runs.loc["triplet-none-f1-s2", "val_map@r"] == pytest.approx(0.4, abs=0.01)
    histories = load_histories(tmp_path / "runs")
    assert set(histories.loc[histories["run_id"] == "triplet-none-f1-s2", "fold"]) == {1}


def test_the_best_is_alone_when_the_paired_test_separates_it(tmp_path):
    effects = {("a", "x"): 0.06, ("b", "x"): 0.0, ("b", "y"): -0.01, ("c", "x"): -0.02}
    table = claims.tied_with_best(write_runs(tmp_path, effects))
    assert list(table["status"]) == ["best", "worse", "worse", "worse"]
    facts = claims.tied_facts(table)
    assert facts["best"] == "a + x" and facts["tied"] == [] and facts["family"] == 3
    assert facts["closest_not_tied"] == "b + x" and facts["closest_p_holm"] < 0.05 and facts["units"] == 12
    line = findings.tied_line(table, seed_summary(load_runs(tmp_path / "runs"), ["map@r"]).assign(r_precision=0.5),
                              0.95)
    assert "Holm over that family of 3" in line and "**Tied with it**" in line and ": none;" in line
    assert f"Holm-adjusted p = {facts['closest_p_holm']:.4f}" in line


def test_cells_the_paired_test_cannot_separate_are_tied_with_the_best(tmp_path):
    # a + x and b + x differ by less than the noise; the fold shift is shared and cancels in the pairs
    effects = {("a", "x"): 0.002, ("b", "x"): 0.0, ("c", "x"): -0.05}
    table = claims.tied_with_best(write_runs(tmp_path, effects, noise=0.01, fold_sd=0.05)).set_index("loss")
    assert {table.loc["a", "status"], table.loc["b", "status"]} == {"best", "tied"}  # noise picks which leads
    assert table.loc["c", "status"] == "worse"
    runner_up = "b" if table.loc["a", "status"] == "best" else "a"
    assert table.loc[runner_up, "p_holm"] >= 0.05 > table.loc["c", "p_holm"]
    # Holm: the smaller p is multiplied by the family size (2)
    assert table.loc["c", "p_holm"] == pytest.approx(min(1.0, 2 * table.loc["c", "p"]))
    # a cell still running, one unit shared with the best: no test, so it is not called worse, and said so
    runs = load_runs(tmp_path / "runs")
    early = runs[runs["loss"] == "c"].head(1).assign(loss="d")
    facts = claims.tied_facts(claims.tied_with_best(pd.concat([runs, early])))
    assert "d + x" in facts["tied"] and facts["untested"] == ["d + x"] and facts["units"] == 12


def test_no_rank_one_to_one_when_the_first_two_cannot_be_separated(tmp_path):
    runs = write_runs(tmp_path, {("a", "x"): 0.003, ("b", "x"): 0.0, ("c", "x"): -0.06}, noise=0.01)
    ranked = ranking(runs, "map@r", "loss", resamples=400).set_index("loss")
    first, second = ranked.index[0], ranked.index[1]  # a and b, in the order the noise gives them
    assert {first, second} == {"a", "b"} and ranked.loc[first, "rank_high"] >= 2
    assert ranked.loc[second, "rank_low"] == 1 and ranked.loc[second, "tied_with_first"]
    assert not ranked.loc["c", "tied_with_first"] and ranked.loc["c", "rank_low"] == 3
    separable = write_runs(tmp_path / "s", {("a", "x"): 0.08, ("b", "x"): 0.0, ("c", "x"): -0.06})
    clear = ranking(separable, "map@r", "loss", resamples=400).set_index("loss")
    assert clear.loc["a", "rank_low"] == clear.loc["a", "rank_high"] == 1
    assert clear.loc["b", "p_holm_vs_first"] < 0.05


def test_named_claims_say_tied_unless_the_contrast_is_significant(tmp_path):
    effects = {("l1", "m1"): 0.05, ("l1", "m2"): 0.0, ("l2", "m1"): 0.051, ("l2", "m2"): 0.001}
    runs = write_runs(tmp_path, effects)
    table = claims.named_claims({"miner": runs, "loss": runs}).set_index("claim")
    assert table.loc["best miner", "first"] == "m1" and table.loc["best miner", "verdict"] == "best"
    assert table.loc["best loss", "verdict"] == "tied" and set(table["family"]) == {2}
    assert table.loc["best miner", "p_holm"] == pytest.approx(min(1.0, 2 * table.loc["best miner", "p"]))
    line = findings.claims_line(table.reset_index(), 0.95)
    assert "family of 2: best miner, best loss" in line and "**m1** is the best miner" in line
    assert "are tied" in line and "the best loss" not in line


def test_exact_tests_that_cannot_reach_the_level_are_named():
    assert claims.exact_floor(4) == 0.125 and claims.exact_floor(12) == pytest.approx(2 / 4096)
    assert not claims.reachable(4, 1) and claims.reachable(12, 30) and not claims.reachable(6, 30)
    assert "2/2^4 = 0.1250" in findings.reachability_line(4, 30, 0.05)
    assert findings.reachability_line(12, 2, 0.05) is None


def test_intervals_are_clipped_to_the_metric_range_and_two_replicates_are_flagged():
    runs = pd.DataFrame({"dataset": "d", "loss": ["a"] * 3 + ["b"] * 2, "miner": "x", "seed": [0, 1, 2, 0, 1],
                         "map@r": [0.99, 0.999, 0.9, 0.5, 0.52]})
    table = seed_summary(runs, ["map@r"]).set_index("loss")
    assert table.loc["a", "map@r_high"] == 1.0 and table.loc["a", "clipped"] == "map@r"
    assert table.loc["b", "clipped"] == "" and table.loc["b", "map@r_high"] < 1.0
    notes = findings.interval_notes(table.reset_index(), 0.95)
    assert "clipped to the metric's range [0, 1]: a + x (map@r)" in notes
    assert "1 row rest on 2 replicates" in notes and "12.7 standard errors" in notes


def test_the_share_of_variance_between_folds_is_recovered():
    rng = np.random.default_rng(3)
    folds = np.repeat(np.arange(6), 5)
    strong = pd.Series(np.repeat(rng.normal(0, 0.05, 6), 5) + rng.normal(0, 0.005, 30))
    assert claims.variance_components(strong, pd.Series(folds))["between_share"] > 0.9
    none = pd.Series(rng.normal(0, 0.01, 30))
    assert claims.variance_components(none, pd.Series(folds))["between_share"] < 0.3
    # balanced: between = (MS_between - MS_within) / n per fold, by hand
    y, g = pd.Series([1.0, 2.0, 4.0, 6.0]), pd.Series([0, 0, 1, 1])
    parts = claims.variance_components(y, g)
    ms_between, ms_within = 2 * ((1.5 - 3.25) ** 2 + (5 - 3.25) ** 2), (0.25 + 0.25 + 1 + 1) / 2
    assert parts["within"] == pytest.approx(ms_within) and parts["between"] == pytest.approx((ms_between - ms_within) / 2)
    assert np.isnan(claims.variance_components(y, pd.Series([0, 0, 0, 0]))["between_share"])


def test_fold_variance_table_and_sentence_on_runs_with_a_known_fold_component(tmp_path):
    runs = write_runs(tmp_path, {("a", "x"): 0.0, ("b", "x"): 0.02}, fold_sd=0.06, noise=0.003)
    table = claims.fold_variance(runs)
    assert (table["between_share"] > 0.8).all() and set(table["folds"]) == {3} and set(table["units"]) == {12}
    line = findings.variance_line(table, "han-typefaces")
    assert f"{table['between_share'].median():.0%}" in line and "3 folds" in line


def _history(run_id, values):
    return pd.DataFrame({"run_id": run_id, "epoch": range(len(values)), "val_map@r": values})


def test_a_run_converged_when_its_last_quarter_gain_is_below_its_cells_deviation():
    # budget 8: the last quarter starts after epoch 6; best-so-far is what selection keeps
    assert last_quarter_gain(_history("r", [0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.62, 0.65]), "val_map@r", 8) == \
        pytest.approx(0.05)
    assert last_quarter_gain(_history("r", [0.1, 0.5, 0.6, 0.55, 0.5]), "val_map@r", 8) == 0.0  # stopped early
    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "dataset": "d", "loss": ["l", "l", "l", "m"],
                         "miner": "x", "epochs": 8, "epochs_run": [8, 8, 8, 8], "best_epoch": 8,
                         "selected_by": "val_map@r", "val_at_best": [0.60, 0.62, 0.64, 0.5]})
    histories = pd.concat([_history("a", [0.0] * 6 + [0.599, 0.6, 0.6]),  # gain 0.001 < sd 0.02
                           _history("b", [0.0] * 6 + [0.50, 0.58, 0.62]),  # gain 0.12
                           _history("c", [0.0] * 6 + [0.63, 0.64, 0.64]),
                           _history("d", [0.0] * 6 + [0.5, 0.5, 0.5])])  # its cell has one unit
    judged = run_convergence(runs, histories).set_index("run_id")
    assert judged.loc["a", "cell_sd"] == pytest.approx(0.02) and judged.loc["a", "converged"] is True
    assert judged.loc["b", "converged"] is False and judged.loc["d", "converged"] is None
    row = convergence(runs, histories).iloc[0]
    assert (row["converged"], row["not_converged"], row["undetermined"]) == (2, 1, 1)
    # the deviation is between seeds within a fold: a harder fold is not noise
    values, folds = pd.Series([0.50, 0.52, 0.70, 0.72]), pd.Series([0, 0, 1, 1])
    assert seed_sd(values, folds) == pytest.approx(np.sqrt(4 * 0.01 ** 2 / 2)) and seed_sd(values, folds) < values.std()
    assert np.isnan(seed_sd(pd.Series([0.5, 0.7]), pd.Series([0, 1])))  # one seed per fold: cannot be told
    on_folds = runs.assign(fold=[0, 0, 1, 1], val_at_best=[0.60, 0.61, 0.70, 0.5])
    assert run_convergence(on_folds, histories).set_index("run_id").loc["a", "cell_sd"] == \
        pytest.approx(np.sqrt(0.01 ** 2 / 2))  # fold 0's two seeds only: fold 1 holds one run of the cell


def test_kendall_tau_of_validation_against_test_over_the_best_cells(tmp_path):
    effects = {(f"l{i}", "x"): 0.01 * i for i in range(20)}
    same = claims.validation_agreement(write_runs(tmp_path / "a", effects, folds=(0,), seeds=(0, 1)))
    assert same["cells"] == 15 and same["tau"] == pytest.approx(1.0)
    reversed_validation = {cell: -v for cell, v in effects.items()}
    flipped = claims.validation_agreement(write_runs(tmp_path / "b", effects, folds=(0,), seeds=(0, 1),
                                                     validation=reversed_validation))
    assert flipped["tau"] == pytest.approx(-1.0)
    assert "Kendall's tau" in findings.agreement_line(flipped, "d") and "-1.00" in findings.agreement_line(flipped, "d")


def write_baselines(root, dataset="han-typefaces"):
    """Baseline records as dmlbench.study.baselines writes them: raw pixels per fold, the untrained
    network per fold and seed."""
    folder = root / "baselines"
    folder.mkdir(parents=True, exist_ok=True)
    for f in FOLDS:
        for kind, seed, value in [("raw pixels", None, 0.45)] + [("untrained network", s, 0.2) for s in (0, 1)]:
            name = f"{dataset}__{kind.replace(' ', '-')}__fold{f}__seed{seed}"
            (folder / f"{name}.json").write_text(json.dumps({
                "baseline_id": name, "dataset": dataset, "kind": kind, "fold": f, "seed": seed,
                "test": {"recall@1": 0.7, "map@r": value + 0.01 * f, "r_precision": value + 0.05},
                "val": {"val_map@r": value, "val_r_precision": value + 0.05, "val_recall@1": 0.7}}))


def test_baselines_are_rows_of_every_results_table_and_of_the_first_screen(tmp_path):
    from dmlbench.reporting.context import read_baselines

    runs = write_runs(tmp_path, {("a", "x"): 0.05, ("b", "x"): -0.1})  # b + x: below raw pixels
    write_baselines(tmp_path)
    frame = read_baselines(tmp_path)
    if frame.empty:
        pytest.skip("this checkout has no dmlbench.study.baselines")
    rows = baseline_table(frame, "han-typefaces", ["map@r", "r_precision", "recall@1"], 0.95)
    assert list(rows["loss"]) == ["raw pixels", "untrained network"] and list(rows["units"]) == [3, 6]
    seeds = seed_summary(runs, ["map@r", "r_precision", "recall@1"])
    both = with_baselines(seeds, rows)
    assert list(both["kind"]) == ["cell", "cell", "baseline", "baseline"]
    shown, _ = results_table(seeds, baselines=rows, tied=claims.tied_with_best(runs))
    assert list(shown["loss"])[-2:] == ["raw pixels", "untrained network"] and list(shown["#"])[-2:] == ["", ""]
    assert list(shown["vs best"])[:2] == ["best", shown["vs best"].iloc[1]] and "worse" in shown["vs best"].iloc[1]
    pivoted = pivot_with_baselines(pivot(summarise(runs), "han-typefaces", "map@r"), rows, "map@r")
    assert pivoted.loc["raw pixels", "baseline (no training)"] == pytest.approx(0.46)
    line = findings.baselines_line(seeds, rows)
    assert "raw pixels 0.4600" in line and "**1 cell below raw pixels**: b + x" in line


def test_the_readme_block_leads_with_the_tied_group_and_the_baselines():
    row = {"loss": "a", "miner": "x", "recall@1": 0.9, "recall@2": 0.95, "recall@4": 0.97, "recall@8": 0.98,
           "map@r": 0.5, "r_precision": 0.55, "nmi": 0.6, "seeds": 4, "units": 12, "folds": 3, "map@r_low": 0.49,
           "map@r_high": 0.51, "identical_to": None}
    other = row | {"loss": "b", "map@r": 0.3, "map@r_low": 0.29, "map@r_high": 0.31}
    protocol = {"d": {"tied_with_best": {"best": "a + x", "best_map@r": 0.5, "tied": ["c + y"], "family": 2,
                                         "closest_not_tied": "b + x", "closest_p_holm": 0.0012, "units": 12,
                                         "level": 0.05, "exact_reachable": True},
                      "baselines": [{"baseline": "raw pixels", "units": 3, "map@r": 0.4, "map@r_low": 0.38,
                                     "map@r_high": 0.42, "r_precision": 0.45, "recall@1": 0.7}]}}
    summary = {"study": "s", "dataset": "d", "done": 24, "cells": 24, "seeds": 4, "confidence": 0.95,
               "table": [row, other], "tables": {"d": [row, other]}, "protocol": protocol,
               "timing": {"cells_timed": 6, "cells_wall_s": 60.0, "cells_span_s": 30.0, "sessions": 1},
               "machine": {"cpu": "c", "cpu_count": 2, "device": "cpu", "torch_threads": 1}}
    block = readme.render_block(summary)
    answer = block.split("\n")[2]
    assert answer.startswith("**The answer.** In the study's 2 cells on d at default settings, **a + x** has the highest")
    assert "12 units (3 folds x 4 seeds) per cell" in answer and "leaves 1 tied with it (not significantly worse): c + y" in answer
    assert "closest cell not tied is b + x (Holm p 0.0012)" in answer
    assert "Baselines without metric learning: raw pixels MAP@R 0.400; 1 cell below raw pixels (b + x)." in answer
    assert "| raw pixels | (baseline, no training) | 0.7000 | – | – | – | 0.4000 [0.3800, 0.4200] | 0.4500 | – |" in block


def test_the_built_report_leads_with_the_tied_group_and_shows_the_baselines(isolated, tmp_path):
    """A study of three cells x three seeds, its records and baseline records written here, through the
    real report notebook: the first screen's findings and table, the new section, summary.json."""
    import yaml

    from dmlbench.reporting.report import build_report
    from dmlbench.study.cells import load_study

    from ..support import tiny_settings
    from .test_first_screen import prose

    path = tmp_path / "folds.yaml"
    path.write_text(yaml.safe_dump({
        "name": "folds", "datasets": ["fashion-mnist"], "seeds": [0, 1, 2], "settings": tiny_settings(),
        "cells": [{"loss": "contrastive", "miner": "none"}, {"loss": "triplet", "miner": "semi-hard"},
                  {"loss": "angular", "miner": "none"}]}))
    planted = {"contrastive": 0.40, "triplet": 0.30, "angular": 0.399}
    for cell in load_study(path).cells:
        c = cell.config
        value = planted[c.loss] + 0.002 * c.seed * (1 if c.loss == "angular" else -1)
        metrics = {"recall@1": 0.8, "recall@2": 0.85, "recall@4": 0.9, "recall@8": 0.95, "r_precision": value + 0.05,
                   "map@r": value, "nmi": 0.5, "ami": 0.49}
        record = complete_record(cell.run_id, c.dataset, c.loss, c.miner, c.seed, c.epochs, metrics, c.to_dict())
        record["config_hash"] = c.config_hash()
        RunDir(cell.run_dir).path.mkdir(parents=True)
        cell.metrics_path.write_text(json.dumps(record))
    write_baselines(isolated / "results", "fashion-mnist")
    page = build_report(path).read_text()
    first = prose(page[:page.index('id="Protocol"')])
    assert "Best by test MAP@R: angular + none , MAP@R 0.4010 [0.3960, 0.4060] (R-Precision 0.4510; 3 units" in first
    assert ("Holm over that family of 2; tied = not worse at 0.05): contrastive + none (1 cell); the closest cell "
            "not tied: triplet + semi-hard") in first
    assert "2/2^3 = 0.2500, above Holm's first threshold 0.05/2 = 0.0250" in first  # 3 seeds cannot reach it
    assert "angular and contrastive are tied" in first and "is the best loss" not in first
    summary = json.loads((isolated / "results" / "summary.json").read_text())
    protocol = summary["protocol"]["fashion-mnist"]
    assert protocol["tied_with_best"]["family"] == 2 and protocol["tied_with_best"]["units"] == 3
    if protocol["baselines"]:  # this checkout has dmlbench.study.baselines
        assert "Baselines without metric learning" in first and " raw pixels (baseline, no training) 0.4600" in first
        assert "The best cell, angular + none, is 0.0590 below raw pixels" in first
        assert [b["baseline"] for b in protocol["baselines"]] == ["raw pixels", "untrained network"]
    assert (isolated / "results" / "tables" / "fashion-mnist__tied_with_best.csv").is_file()
    assert (isolated / "results" / "tables" / "fold_variance.csv").is_file()
    agreement = pd.read_csv(isolated / "results" / "tables" / "fashion-mnist__validation_agreement.csv")
    assert list(agreement["loss"]) == ["angular", "contrastive", "triplet"]  # best first by test MAP@R
    assert "Kendall's tau" in prose(page) or "too few cells with a validation MAP@R" in prose(page)
