"""Does the miniature resemble the field? (dmlbench.reporting.field) On generated run tables: Kendall's tau
is scipy's on the cell means, the bootstrap draws folds and then seeds, only cells of the project are
mapped, the verdict never claims more than its interval and p support, the command's errors are one line,
and the published numbers are those of docs/protocol.md."""

import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dmlbench.cli import main
from dmlbench.paths import REPO_ROOT, REPO_RESULTS
from dmlbench.reporting import field
from dmlbench.reporting.field import (FIELD_BEGIN, FIELD_END, FIELD_RANKINGS, agreement, agreement_lines,
                                      agreement_table, field_rows, published_fair, published_ranking,
                                      regime_rows, render_field_block, tau_b, unit_matrix, verdict)

FOLDS, SEEDS = (0, 1, 2), (0, 1)
MLRC_CUB_MAP = FIELD_RANKINGS[0]
ROTH_CUB = next(r for r in FIELD_RANKINGS if r.protocol == "roth2020")


def runs_table(scores, dataset="han-typefaces"):
    """One run per cell and unit: ``scores`` maps (loss, miner) -> a function (fold, seed) -> its score
    (used for MAP@R and, minus 0.1, for Recall@1)."""
    rows = [{"dataset": dataset, "loss": loss, "miner": miner, "fold": fold, "seed": seed,
             "map@r": score(fold, seed), "recall@1": score(fold, seed) + 0.1}
            for (loss, miner), score in scores.items() for fold in FOLDS for seed in SEEDS]
    return pd.DataFrame(rows)


def ranked_like(ranking, direction=1.0, noise=0.0, flip_fold=None, seed=0):
    """Scores for the cells of a published ranking: in its order (``direction`` -1: reversed), a unit's
    noise added; ``flip_fold`` reverses the order in that fold alone."""
    theirs = published_ranking(published_fair(), ranking)
    rng = np.random.default_rng(seed)
    jitter = {(f, s): rng.normal(0, noise, len(theirs)) for f in FOLDS for s in SEEDS}
    order = theirs.rank().to_numpy() / len(theirs)
    return {cell: (lambda f, s, i=i: 0.3 + 0.2 * order[i] * (-direction if f == flip_fold else direction)
                   + jitter[(f, s)][i]) for i, cell in enumerate(theirs.index)}


def test_tau_is_scipys_kendall_tau_on_the_cell_means():
    scores = ranked_like(MLRC_CUB_MAP, noise=0.05, seed=3)
    scores[("lifted-structure", "none")] = lambda f, s: 0.5  # not published: never among the common cells
    runs = runs_table(scores)
    row = next(r for r in field_rows("s", runs, resamples=50) if r["their_metric"] == "map@r"
               and r["against"].endswith("CUB") and "Musgrave" in r["against"])
    theirs = published_ranking(published_fair(), MLRC_CUB_MAP)
    means = runs.groupby(["loss", "miner"])["map@r"].mean().reindex(theirs.index)
    expected = sps.kendalltau(means.to_numpy(), theirs.to_numpy())
    assert row["cells"] == len(theirs) and "lifted-structure + none" not in row["cells_in_common"]
    assert row["tau"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)
    spread = 100 * (means.max() - means.min())
    assert row["spread"] == pytest.approx(spread) and row["their_spread"] == pytest.approx(theirs.max() - theirs.min())


def test_the_vectorised_tau_is_scipys_tau_b_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, size=(20, 9)).astype(float), rng.integers(0, 3, size=(20, 9)).astype(float)
    ours = tau_b(x, y)
    for a, b, t in zip(x, y, ours):
        expected = sps.kendalltau(a, b).statistic
        assert (np.isnan(t) and np.isnan(expected)) or t == pytest.approx(expected)


def test_identical_folds_give_a_zero_width_interval_and_one_flipped_fold_widens_it():
    theirs = published_ranking(published_fair(), ROTH_CUB)
    steady = agreement(unit_matrix(runs_table(ranked_like(ROTH_CUB)), "map@r"), theirs, resamples=400)
    assert steady["tau_low"] == steady["tau_high"] == pytest.approx(steady["tau"])
    flipped = agreement(unit_matrix(runs_table(ranked_like(ROTH_CUB, flip_fold=2)), "map@r"), theirs, resamples=400)
    assert flipped["tau_low"] < steady["tau_low"] - 0.5  # a draw of the flipped fold twice reverses the ranking
    assert flipped["tau_high"] - flipped["tau_low"] > 0.5


def test_the_bootstrap_draws_folds_then_seeds_within_them():
    theirs = published_ranking(published_fair(), ROTH_CUB)
    # in every fold one seed ranks as published and the other half as strongly reversed: every fold is
    # the same, so only drawing seeds within the folds moves the draws
    half = runs_table(ranked_like(ROTH_CUB))
    flipped = runs_table(ranked_like(ROTH_CUB, direction=-0.5))
    mixed = pd.concat([half[half["seed"] == 0], flipped[flipped["seed"] == 1]], ignore_index=True)
    result = agreement(unit_matrix(mixed, "map@r"), theirs, resamples=400)
    assert result["tau_high"] - result["tau_low"] > 0.5  # seeds drawn within folds spread it
    # one fold only and identical seeds: no spread at all (nothing to resample but equal rows)
    single = runs_table(ranked_like(ROTH_CUB))
    single = single[single["fold"] == 0]
    result = agreement(unit_matrix(single, "map@r"), theirs, resamples=200)
    assert result["tau_low"] == result["tau_high"]


def test_two_studies_are_compared_over_the_cells_and_units_both_ran():
    scratch = runs_table(ranked_like(ROTH_CUB, noise=0.02, seed=1))
    transfer = runs_table(ranked_like(ROTH_CUB, noise=0.02, seed=2))
    transfer = transfer[~((transfer["loss"] == "arcface") | ((transfer["fold"] == 2) & (transfer["seed"] == 1)))]
    rows = regime_rows("transfer", transfer, "default", scratch, resamples=200)
    assert [r["metric"] for r in rows] == ["map@r", "recall@1"]
    row = rows[0]
    shared = transfer.assign(u=transfer["fold"] * 10 + transfer["seed"])["u"].unique()
    a = transfer.groupby(["loss", "miner"])["map@r"].mean()
    b = scratch[(scratch["fold"] * 10 + scratch["seed"]).isin(shared)].groupby(["loss", "miner"])["map@r"].mean()
    assert row["cells"] == len(a) == len(published_ranking(published_fair(), ROTH_CUB)) - 1
    assert row["against"] == "study default" and "arcface + none" not in row["cells_in_common"]
    assert row["tau"] == pytest.approx(sps.kendalltau(a, b.reindex(a.index)).statistic)
    same = regime_rows("transfer", scratch, "default", scratch, resamples=100)[0]
    assert same["tau"] == same["tau_low"] == same["tau_high"] == pytest.approx(1.0)


def test_the_mapping_names_only_cells_of_the_project_and_only_cells_the_study_ran():
    from dmlbench.losses.base import LOSSES
    from dmlbench.miners.base import MINERS

    table = published_fair()
    named = table[table["loss"] != ""]
    assert set(named["loss"]) <= set(LOSSES.names()) and set(named["miner"]) <= set(MINERS.names())
    unmapped = set(table.loc[table["loss"] == "", "method"])
    assert {"pretrained, no training", "SoftTriple", "CosFace", "FastAP", "NT-Xent"} == unmapped
    for ranking in FIELD_RANKINGS:  # one published row per cell: a ranking never counts a cell twice
        assert published_ranking(table, ranking).index.is_unique
    runs = runs_table({("contrastive", "none"): lambda f, s: 0.2, ("triplet", "none"): lambda f, s: 0.3,
                       ("margin", "distance-weighted"): lambda f, s: 0.4})
    for row in field_rows("s", runs, resamples=20):
        cells = set(row["cells_in_common"])
        assert cells <= {"contrastive + none", "triplet + none", "margin + distance-weighted"}
        assert ("margin + distance-weighted" in cells) == row["against"].startswith("Roth")  # MLRC's margin: no miner


def test_the_verdict_claims_agreement_only_where_interval_and_p_support_it():
    theirs = published_ranking(published_fair(), ROTH_CUB)
    strong = agreement(unit_matrix(runs_table(ranked_like(ROTH_CUB)), "map@r"), theirs, resamples=100)
    assert verdict(strong).startswith("agreement") and strong["p"] < 0.05
    reversed_ = agreement(unit_matrix(runs_table(ranked_like(ROTH_CUB, -1.0)), "map@r"), theirs, resamples=100)
    assert verdict(reversed_).startswith("reversed ranking")
    assert verdict({**strong, "tau_low": -0.1}).startswith("no detectable agreement (the interval contains 0)")
    assert verdict({**strong, "p": 0.4}).startswith("no detectable agreement (the interval excludes 0 but")
    assert verdict({**strong, "cells": 2}).startswith("too few cells")
    unclear = agreement_table(field_rows("transfer", runs_table(ranked_like(MLRC_CUB_MAP, noise=0.3, flip_fold=1)),
                                         resamples=200))
    lead = unclear.iloc[0]
    lines = agreement_lines(unclear, "transfer")
    if lead["tau_low"] <= 0 <= lead["tau_high"] or lead["p"] >= 0.05:
        assert "no detectable resemblance" in lines[0] and "no detectable agreement" in lines[1]
    assert f"{lead['tau']:.2f}" in lines[1] and f"{lead['tau_low']:.2f} to {lead['tau_high']:.2f}" in lines[1]


def test_the_report_section_writes_the_table_and_the_readme_block_quotes_it(tmp_path):
    from dmlbench.reporting.sections import field_agreement

    results = tmp_path / "results"
    tables = results / field.TRANSFER_STUDY / "tables"
    assert "has no `results/transfer/tables/field_agreement.csv` yet" in render_field_block(results)
    ctx = SimpleNamespace(study=SimpleNamespace(name="transfer", reference_study=None),
                          runs=runs_table(ranked_like(ROTH_CUB, noise=0.01)), tables=tables)
    shown = field_agreement(ctx)
    saved = pd.read_csv(tables / "field_agreement.csv")
    assert len(saved) == len(shown) >= 1 and set(saved["study"]) == {"transfer", field.YARDSTICK + "Musgrave et al., "
                                                                      "ECCV 2020, CUB"}
    block = render_field_block(results)
    assert block.startswith(FIELD_BEGIN) and block.endswith(FIELD_END) and len(block.splitlines()) == 3
    lead = field.lead_rows(saved).iloc[0]  # MAP@R against the Reality Check on CUB (3 cells in common)
    assert lead["against"] == "Musgrave et al., ECCV 2020, CUB" and lead["cells"] == 3
    assert f"tau {lead['tau']:.2f}" in block
    assert ("resembles the field" in block) == lead["verdict"].startswith("agreement")


def test_the_readme_holds_its_block_as_the_results_files_give_it():
    from dmlbench.reporting.readme import BLOCK_FILES, current_block

    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert BLOCK_FILES["field-agreement"] == "README.md"
    from dmlbench.reporting.readme import transfer_answer

    assert current_block(text, FIELD_BEGIN, FIELD_END) == render_field_block(REPO_RESULTS, transfer_answer(REPO_RESULTS))
    assert len(text.splitlines()) <= 150


def test_the_command_names_a_missing_study_or_folder_in_one_line(capsys, tmp_path):
    assert main(["agreement", "--study", "studies/no-such-study.yaml"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no such study file" in error and "studies/default.yaml" in error
    assert main(["agreement", "--study", "studies/default.yaml", "--results", str(tmp_path / "absent")]) == 2
    error = capsys.readouterr().err
    assert "--results" in error and "no such folder" in error
    # a study without finished runs (an empty results folder) and no reference: said, and no row
    assert main(["agreement", "--study", "studies/default.yaml", "--results", str(tmp_path)]) == 1
    assert "has no finished run" in capsys.readouterr().out
    # the study without runs yet beside a reference that has them (the shipped from-scratch study): the
    # reference's rows against the field are printed
    assert main(["agreement", "--study", "studies/default.yaml", "--results", str(tmp_path), "--reference",
                 "studies/default.yaml", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "has no finished run" in out and "Musgrave et al., ECCV 2020, CUB" in out and "study default" not in out


def test_a_study_file_names_its_reference_study_or_fails_naming_the_choices(tmp_path):
    from dmlbench.errors import ConfigError
    from dmlbench.study.cells import load_study

    base = (REPO_ROOT / "studies" / "demo.yaml").read_text(encoding="utf-8")
    good = tmp_path / "good.yaml"
    good.write_text(base + "\nreference_study: studies/default.yaml\n", encoding="utf-8")
    assert load_study(good, check_networks=False).reference_study.resolve() == \
        (REPO_ROOT / "studies" / "default.yaml").resolve()
    for value, problem in (("studies/none.yaml", "is not a study file"), ("[1, 2]", "expected the path"),
                           (str(good), "names the study itself")):
        bad = tmp_path / "good.yaml" if problem == "names the study itself" else tmp_path / "bad.yaml"
        bad.write_text(base + f"\nreference_study: {value}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=problem) as raised:
            load_study(bad, check_networks=False)
        assert "studies/default.yaml" in str(raised.value)


def _protocol_table() -> dict[str, list[list[float]]]:
    """docs/protocol.md's Reality Check table: method -> its four columns of P@1 / R-Precision / MAP@R."""
    text = (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 5 and all(re.fullmatch(r"[\d.]+ / [\d.]+ / [\d.]+", c) for c in cols[1:]):
            rows[cols[0]] = [[float(v) for v in c.split(" / ")] for c in cols[1:]]
    return rows


def test_the_published_numbers_are_those_of_the_protocol_page():
    table, docs = published_fair(), _protocol_table()
    names = {"MS + miner": "multi-similarity + miner"}  # the page spells the row out
    mlrc = table[table["protocol"] == "mlrc"]
    assert len(mlrc) == 13 * 2 * 3 and set(mlrc["dataset"]) == {"cub", "cars196"}
    column = {"cub": 0, "cars196": 2}  # the concatenated 512-d columns
    metric = {"recall@1": 0, "r_precision": 1, "map@r": 2}
    for row in mlrc.itertuples():
        assert row.value == docs[names.get(row.method, row.method)][column[row.dataset]][metric[row.metric]], row
    roth_text = re.sub(r"\s+", " ", (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8"))
    for method, spelled in (("triplet, random", "triplet random"), ("ArcFace", "ArcFace"),
                            ("margin (beta 1.2), distance-weighted", "margin distance-weighted (beta 1.2)")):
        value = table[(table["protocol"] == "roth2020") & (table["method"] == method)]["value"].item()
        found = re.search(re.escape(spelled) + r" (0\.\d+) /", roth_text)
        assert found and float(found.group(1)) * 100 == pytest.approx(value), method


def test_the_field_against_itself_is_scipys_tau_over_every_loss_the_source_trained():
    table = published_fair()
    rows = field.yardstick_rows(table)
    assert [r["metric"] for r in rows] == ["map@r", "recall@1"]
    mlrc = table[(table["protocol"] == "mlrc") & (table["metric"] == "map@r") & (table["method"] != field.UNTRAINED)]
    cub, cars = (mlrc[mlrc["dataset"] == d].set_index("method")["value"] for d in ("cub", "cars196"))
    assert rows[0]["cells"] == len(cub) == 12 and "SoftTriple" in rows[0]["cells_in_common"]
    assert rows[0]["tau"] == pytest.approx(sps.kendalltau(cub, cars.reindex(cub.index)).statistic)
    assert rows[0]["verdict"].startswith("agreement") == (rows[0]["p"] < 0.05)


def test_the_readme_block_leads_with_the_transfer_studys_answer_from_its_summary(tmp_path):
    import json

    from dmlbench.reporting.readme import transfer_answer

    results = tmp_path / "results"
    assert transfer_answer(results) is None  # before the transfer study has run
    rows = [{"loss": "contrastive", "miner": "none", "map@r": 0.81, "folds": 3, "seeds": 2, "units": 6},
            {"loss": "arcface", "miner": "none", "map@r": 0.62, "folds": 3, "seeds": 2, "units": 6}]
    facts = {"best": "contrastive + none", "best_map@r": 0.81, "tied": [], "family": 1,
             "closest_not_tied": "arcface + none", "closest_p_holm": 0.031, "exact_reachable": True}
    baselines = [{"baseline": "raw pixels", "map@r": 0.19}, {"baseline": "pretrained features", "map@r": 0.70}]
    (results / "transfer").mkdir(parents=True)
    (results / "transfer" / "summary.json").write_text(json.dumps(
        {"dataset": "han-typefaces", "table": rows, "seeds": 2,
         "protocol": {"han-typefaces": {"tied_with_best": facts, "baselines": baselines}}}))
    answer = transfer_answer(results)
    assert answer.startswith("**Fine-tuned**") and "**contrastive + none**" in answer and "0.810" in answer
    assert "6 units (3 folds x 2 seeds)" in answer and "pretrained features MAP@R 0.700" in answer
    assert "0 cells below raw pixels; 1 cell below pretrained features (arcface + none)" in answer
