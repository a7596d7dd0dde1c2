"""Cells that trained identically: found from the test metrics or the histories, explained from the
table of known identities (or by a generic sentence), merged into one row, counted once in the
paired comparisons and rankings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from dmlbench.reporting import narrative, readme
from dmlbench.reporting.htmltables import results_table
from dmlbench.reporting.labels import METRICS
from dmlbench.reporting.runs import KNOWN_IDENTITIES, identical_cells, identical_groups, without_duplicates
from dmlbench.reporting.summary import cell_rows
from dmlbench.reporting.tables import over_seeds, summarise

BASELINE = ("triplet", "semi-hard")
SEEDS = (0, 1, 2)
KWARGS = {"contrastive": {"pos_margin": 0.0, "neg_margin": 1.0}, "triplet": {"margin": 0.2}}
MINER_KWARGS = {"margin-triplets": {"margin": 0.2}, "semi-hard": {"margin": 0.2}}


def cell_value(loss, miner, seed):
    """A cell's numbers: triplet + none = triplet + margin-triplets, contrastive + batch-hard = triplet +
    batch-hard; angular + none and arcface + none share theirs (no known identity)."""
    same = {("triplet", "margin-triplets"): ("triplet", "none"), ("contrastive", "batch-hard"): ("triplet", "batch-hard"),
            ("arcface", "none"): ("angular", "none")}.get((loss, miner), (loss, miner))
    return 0.3 + 0.001 * (sum(map(ord, "".join(same))) % 97) + 0.01 * seed


CELLS = [("triplet", "semi-hard"), ("triplet", "none"), ("triplet", "margin-triplets"), ("triplet", "batch-hard"),
         ("contrastive", "batch-hard"), ("contrastive", "none"), ("angular", "none"), ("arcface", "none")]


def run_table(cells=CELLS) -> pd.DataFrame:
    rows = []
    for loss, miner in cells:
        for seed in SEEDS:
            v = cell_value(loss, miner, seed)
            rows.append({"run_id": f"{loss}-{miner}-{seed}", "dataset": "d", "loss": loss, "miner": miner,
                         "seed": seed, "wall_time_s": 1.0, **{m: v for m in METRICS},
                         "loss_kwargs": json.dumps(KWARGS.get(loss, {})),
                         "miner_kwargs": json.dumps(MINER_KWARGS.get(miner, {}))})
    return pd.DataFrame(rows)


def histories(runs: pd.DataFrame, offsets=None) -> pd.DataFrame:
    """Three epochs per run: validation metrics follow the cell's numbers, the training loss too, plus
    an offset per cell (contrastive + batch-hard: the triplet's + 0.8)."""
    offsets = offsets or {("contrastive", "batch-hard"): 0.8}
    rows = []
    for r in runs.itertuples():
        v = cell_value(r.loss, r.miner, r.seed)
        for epoch in range(3):
            rows.append({"run_id": r.run_id, "epoch": epoch, "loss": None if epoch == 0 else
                         np.float32(v / (epoch + 1)) + offsets.get((r.loss, r.miner), 0.0),
                         "val_map@r": v * (1 + epoch) / 3, "val_recall@1": v})
    return pd.DataFrame(rows)


def test_groups_are_found_and_explained_from_the_known_identities():
    runs = run_table()
    groups = identical_groups(runs, histories(runs), BASELINE)
    assert [g.cells for g in groups] == [
        [("angular", "none"), ("arcface", "none")],
        [("triplet", "batch-hard"), ("contrastive", "batch-hard")],
        [("triplet", "none"), ("triplet", "margin-triplets")]]
    generic, hard, every = groups
    assert hard.identities == [KNOWN_IDENTITIES[0]] and every.identities == [KNOWN_IDENTITIES[1]]
    assert hard.same_metrics and hard.same_training
    assert abs(hard.loss_offsets[("contrastive", "batch-hard")] - 0.8) < 1e-6
    assert every.loss_offsets == {("triplet", "margin-triplets"): 0.0}
    note = narrative.identical_note(hard, "b")
    assert note.startswith("^b^ **triplet + batch-hard and contrastive + batch-hard trained identically**")
    assert KNOWN_IDENTITIES[0].reason in note and KNOWN_IDENTITIES[0].condition in note
    assert "contrastive + batch-hard +0.8000" in note
    assert KNOWN_IDENTITIES[1].reason in narrative.identical_note(every)
    assert "with the same training loss at every epoch" in narrative.identical_note(every)
    # a group not in the table: the generic sentence, naming what was equal
    text = narrative.identical_note(generic)
    assert "No known identity of the study explains it" in text
    assert "every test metric to every digit in every seed" in text and "validation metrics at every epoch" in text
    assert identical_cells(runs) == [["angular + none", "arcface + none"],
                                     ["contrastive + batch-hard", "triplet + batch-hard"],
                                     ["triplet + margin-triplets", "triplet + none"]]


def test_an_identity_whose_condition_fails_is_not_given_as_the_reason():
    runs = run_table()
    runs.loc[runs["loss"] == "contrastive", "loss_kwargs"] = json.dumps({"pos_margin": 0.1})
    hard = [g for g in identical_groups(runs) if ("contrastive", "batch-hard") in g.cells][0]
    assert hard.identities == [] and "No known identity" in narrative.identical_note(hard)


def test_identical_training_is_found_from_the_histories_alone():
    runs = run_table([("triplet", "none"), ("triplet", "margin-triplets"), ("triplet", "semi-hard")])
    runs.loc[runs["miner"] == "margin-triplets", list(METRICS)] += 1e-9  # the test metrics differ in the 9th digit
    assert identical_groups(runs) == []  # without histories: no group
    (group,) = identical_groups(runs, histories(runs))
    assert group.cells == [("triplet", "none"), ("triplet", "margin-triplets")]
    assert group.same_training and not group.same_metrics
    assert "every test metric" not in narrative.identical_note(group)
    # a training loss that differs by a varying amount: not identical
    moved = histories(runs)
    moved.loc[moved["run_id"] == "triplet-margin-triplets-1", "loss"] += 0.01
    assert identical_groups(runs, moved) == []


def test_the_baseline_is_the_kept_cell_of_its_group():
    runs = run_table([("triplet", "semi-hard"), ("triplet", "none")])
    runs.loc[runs["miner"] == "none", list(METRICS)] = runs.loc[runs["miner"] == "semi-hard", list(METRICS)].to_numpy()
    (group,) = identical_groups(runs, None, BASELINE)
    assert group.kept == BASELINE and group.merged == [("triplet", "none")]


def test_groups_are_one_row_and_counted_once_in_the_comparisons_and_rankings():
    runs = run_table()
    groups = identical_groups(runs, histories(runs), BASELINE)
    kept = without_duplicates(runs, groups)
    assert len(kept) == len(runs) - 3 * len(SEEDS)
    assert {(l, m) for l, m in zip(kept["loss"], kept["miner"])} == set(CELLS) - {
        ("arcface", "none"), ("contrastive", "batch-hard"), ("triplet", "margin-triplets")}
    _, all_comparisons, all_rankings = over_seeds(runs, BASELINE, 0.95)
    seed_tables, comparisons, rankings = over_seeds(kept, BASELINE, 0.95)
    compared = comparisons[("d", "map@r")]
    assert len(all_comparisons[("d", "map@r")]) == len(CELLS) - 1 and len(compared) == len(CELLS) - 1 - 3
    assert ("triplet", "margin-triplets") not in set(zip(compared["loss"], compared["miner"]))
    # Holm's adjustment multiplies by the number of cells compared, now 4, not 7
    smallest = compared["p"].idxmin()
    assert compared.loc[smallest, "p_holm"] == min(1.0, len(compared) * compared.loc[smallest, "p"])
    miners = rankings[("d", "miner")].set_index("miner")["cells"]
    assert miners["batch-hard"] == 1 and all_rankings[("d", "miner")].set_index("miner")["cells"]["batch-hard"] == 2
    # the table of cells: one row per group, naming the others
    seeds = seed_tables["d"].assign(same_as=lambda t: [
        {g.kept: ", ".join(g.labels[1:]) for g in groups}.get(c, "") for c in zip(t["loss"], t["miner"])])
    table, _ = results_table(seeds, compared, BASELINE, narrative.identical_marks(groups))
    assert len(table) == len(CELLS) - 3
    shown = dict(zip(zip(table["loss"], [str(m) for m in table["miner"]]), table["miner"]))
    assert str(shown[("triplet", "none<sup>c</sup> (= triplet + margin-triplets)")]).endswith("margin-triplets)")
    assert ("triplet", "batch-hard<sup>b</sup> (= contrastive + batch-hard)") in shown
    assert narrative.merged_names(groups)[("triplet", "none")] == "triplet + margin-triplets"


def test_summary_json_names_the_merged_cells_and_the_readme_block_merges_them():
    runs = run_table()
    groups = identical_groups(runs, histories(runs), BASELINE)
    merged = {cell: g.labels[0] for g in groups for cell in g.merged}
    losses, miners = ["triplet", "contrastive", "angular", "arcface"], ["semi-hard", "none", "margin-triplets",
                                                                           "batch-hard"]
    rows = cell_rows(summarise(runs), "d", losses, miners, {}, merged)
    assert len(rows) == len(CELLS)  # every cell keeps its numbers
    by_cell = {(r["loss"], r["miner"]): r for r in rows}
    assert by_cell[("triplet", "margin-triplets")]["identical_to"] == "triplet + none"
    assert by_cell[("triplet", "none")]["identical_to"] is None
    assert by_cell[("triplet", "margin-triplets")]["map@r"] == by_cell[("triplet", "none")]["map@r"]
    block = readme.render_block({"study": "s", "dataset": "d", "done": 24, "cells": 24, "seeds": 3, "table": rows,
                                 "timing": {"cells_span_s": 60.0, "cells_wall_s": 60.0, "cells_timed": 24},
                                 "machine": {"cpu": "c", "cpu_count": 2, "device": "cpu"}})
    table_rows = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table_rows) == len(CELLS) - 3
    assert any(line.startswith("| triplet | none (= triplet + margin-triplets) |") for line in table_rows)
    assert not any(line.startswith("| triplet | margin-triplets |") for line in table_rows)


def test_the_protocol_says_each_losss_embedding_space_and_the_semi_hard_choice(monkeypatch):
    from dmlbench.config import RunConfig
    from dmlbench.losses import LOSSES

    kwargs = {("triplet", "semi-hard"): ({"margin": 0.2}, {"margin": 0.2})}
    text = narrative.protocol(RunConfig(), {}, ["triplet", "angular"], ["none", "semi-hard"], [0], kwargs)
    assert "- **Embedding space**: every loss trained on the L2-normalised embeddings." in text
    assert ("the triplet loss on Euclidean (not squared) distances, averaged over its non-zero terms, with margin 0.2 "
            "in the loss and 0.2 in the miner: FaceNet states") in text and "shares one loss definition" in text
    assert "Semi-hard" not in narrative.protocol(RunConfig(), {}, ["triplet"], ["none"], [0], {})
    monkeypatch.setattr(LOSSES.get("angular"), narrative.SPACE_ATTRIBUTE, "raw", raising=False)
    text = narrative.protocol(RunConfig(), {}, ["triplet", "angular"], ["none"], [0])
    assert "- **Embedding space** each loss trained in: L2-normalised embeddings: `triplet`; raw embeddings: `angular`." \
        in text
