"""The study's statistics on constructed inputs whose answers are known."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dmlbench.reporting.stats import holm, paired_comparison, ranking, seed_summary, t_interval


def test_t_interval_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    trials, covered = 4000, 0
    for _ in range(trials):
        mean, low, high = t_interval(rng.normal(0.7, 0.02, size=3))
        covered += low <= 0.7 <= high
    assert abs(covered / trials - 0.95) < 0.012  # binomial sd at 4000 trials: 0.0034


def test_t_interval_known_values_and_edge_cases():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert np.isnan(t_interval([0.5])[1]) and t_interval([0.5])[0] == 0.5
    assert np.isnan(t_interval([])[0]) and t_interval([1.0, np.nan, 3.0])[0] == 2.0


def study(effects, seeds=3, noise=0.01, seed_effect=0.03, rng=None):
    """Runs of one dataset: metric = 0.6 + the cell's effect + a per-seed shift shared by all cells + noise."""
    rng = rng or np.random.default_rng(0)
    shifts = rng.normal(0, seed_effect, size=seeds)
    rows = []
    for (loss, miner), effect in effects.items():
        for s in range(seeds):
            rows.append({"dataset": "d", "loss": loss, "miner": miner, "seed": s,
                         "map@r": 0.6 + effect + shifts[s] + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_paired_comparison_detects_a_planted_difference():
    runs = study({("triplet", "semi-hard"): 0.0, ("contrastive", "none"): 0.08, ("margin", "distance-weighted"): -0.08},
                 seeds=5, noise=0.005)
    table = paired_comparison(runs, "map@r").set_index("loss")
    assert table.loc["contrastive", "verdict"] == "better than the baseline"
    assert table.loc["margin", "verdict"] == "worse than the baseline"
    assert table.loc["contrastive", "difference"] == pytest.approx(0.08, abs=0.01)
    assert table.loc["contrastive", "low"] > 0 and table.loc["margin", "high"] < 0


def test_paired_comparison_does_not_flag_noise():
    rng = np.random.default_rng(1)
    flagged = comparisons = 0
    for _ in range(200):  # 200 studies of 6 cells with no true difference, seed effects much larger than noise
        cells = {("triplet", "semi-hard"): 0.0, **{("loss", f"m{i}"): 0.0 for i in range(5)}}
        table = paired_comparison(study(cells, rng=rng), "map@r")
        flagged += int((table["verdict"] != "within seed noise").sum())
        comparisons += len(table)
    assert flagged / comparisons < 0.02  # Holm keeps the family-wise rate under 5%, so per comparison far less


def test_pairing_removes_the_shared_seed_effect():
    runs = study({("triplet", "semi-hard"): 0.0, ("contrastive", "none"): 0.03}, seeds=4, noise=0.002,
                 seed_effect=0.05)
    row = paired_comparison(runs, "map@r").iloc[0]
    summary = seed_summary(runs, ["map@r"]).set_index("loss")
    unpaired_overlap = summary.loc["contrastive", "map@r_low"] < summary.loc["triplet", "map@r_high"]
    assert unpaired_overlap and row["verdict"] == "better than the baseline"


def test_holm_adjustment():
    assert list(holm([0.01, 0.04, 0.03, np.nan])[:3]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, np.nan])[1])


def test_ranking_orders_entries_and_gives_rank_intervals():
    runs = study({("a", "x"): 0.10, ("a", "y"): 0.08, ("b", "x"): 0.0, ("b", "y"): 0.001, ("c", "x"): 0.0005},
                 seeds=5, noise=0.002)
    losses = ranking(runs, "map@r", "loss")
    assert list(losses["loss"])[0] == "a" and losses.iloc[0]["rank_low"] == losses.iloc[0]["rank_high"] == 1
    cell_means = runs.groupby(["loss", "miner"])["map@r"].mean()
    assert losses.set_index("loss").loc["a", "score"] == pytest.approx(cell_means["a"].mean())
    tied = losses[losses["loss"] != "a"]
    assert (tied["rank_low"] == 2).all() and (tied["rank_high"] == 3).all()  # b and c cannot be told apart
    miners = ranking(runs, "map@r", "miner")
    assert set(miners["miner"]) == {"x", "y"} and miners["cells"].tolist() in ([3, 2], [2, 3])
    with pytest.raises(ValueError, match="one dataset"):
        ranking(pd.concat([runs, runs.assign(dataset="e")]), "map@r", "loss")
