"""Published numbers beside ours: a match needs the same dataset, cell and protocol."""

import math

import pandas as pd

from dmlbench.reporting.literature import NO_TABLE, PUBLISHED, compare, published_for


def runs_table(rows):
    base = {"dataset": "cub", "seed": 0, "recall@1": 0.6, "r_precision": 0.3, "map@r": 0.2, "preset": "roth2020",
            "preset_deviations": ""}
    return pd.DataFrame([base | row for row in rows])


def test_a_run_under_the_papers_preset_stands_beside_its_number():
    runs = runs_table([{"loss": "triplet", "miner": "semi-hard", "seed": s, "recall@1": r}
                       for s, r in ((0, 0.60), (1, 0.62))])
    table = compare(runs, "cub")
    row = table[(table["method"] == "triplet, semi-hard") & (table["source"] == "Roth et al., ICML 2020")].iloc[0]
    assert row["published"] == 60.1 and math.isclose(row["ours"], 61.0) and row["seeds"] == 2
    assert row["comparison"].startswith("same protocol, except: the epoch is selected on validation classes")
    untouched = table[table["method"] == "triplet, random"].iloc[0]
    assert untouched["comparison"] == "not run" and math.isnan(untouched["ours"])


def test_departures_from_the_preset_and_other_protocols_are_named():
    runs = runs_table([{"loss": "triplet", "miner": "semi-hard", "preset_deviations": "epochs: 5 (preset 150)"},
                       {"loss": "contrastive", "miner": "none", "preset": None}])
    table = compare(runs, "cub")
    roth = table[(table["method"] == "triplet, semi-hard")].iloc[0]
    assert roth["comparison"].startswith("differs: our settings depart from the preset (epochs: 5 (preset 150))")
    song = table[(table["source"] == "Song et al., CVPR 2016") & (table["method"] == "contrastive")].iloc[0]
    assert "GoogLeNet, 64-d" in song["comparison"] and "not comparable" in song["comparison"]
    mlrc = table[(table["source"] == "Musgrave et al., ECCV 2020") & (table["method"] == "contrastive")]
    assert set(mlrc["metric"]) == {"recall@1", "r_precision", "map@r"}
    assert (mlrc["comparison"] == "our runs follow no preset, the paper mlrc").all()
    soft = table[table["method"] == "SoftTriple"].iloc[0]
    assert soft["comparison"] == "no such cell in this project"


def test_every_published_row_is_counted_once_per_metric_and_other_datasets_have_none():
    table = compare(runs_table([{"loss": "triplet", "miner": "random"}]), "cub")
    assert len(table) == sum(len(p.metrics) for p in published_for("cub")) == len(compare(pd.DataFrame(), "cub"))
    assert compare(runs_table([]), "fashion-mnist").empty and "fashion-mnist" in NO_TABLE
    assert all(0 < v < 100 for p in PUBLISHED for v in p.metrics.values())
