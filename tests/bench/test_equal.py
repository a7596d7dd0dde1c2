"""`dmlbench bench equal`: the faster path's runs against the same cells in fp32, paired by seed."""

import numpy as np
import pandas as pd

from dmlbench.bench.equal import cell_table, conclusions, paired_runs


def _pairs(shift: float, cells=(("triplet", "semi-hard"), ("contrastive", "none"), ("margin", "distance-weighted"))):
    rng = np.random.default_rng(0)
    rows = []
    for c, (loss, miner) in enumerate(cells):
        for seed in range(4):
            base = {"recall@1": 0.5 + 0.1 * c + 0.01 * rng.normal(), "map@r": 0.2 + 0.1 * c + 0.01 * rng.normal()}
            rows.append({"dataset": "d", "loss": loss, "miner": miner, "seed": seed, "precision": "bf16",
                         **{m: v + (shift * (1 + 0.01 * seed) if loss == "contrastive" else 0.0)
                            for m, v in base.items()},
                         **{f"{m}_fp32": v for m, v in base.items()}})
    return pd.DataFrame(rows)


def test_equal_runs_are_within_noise_and_a_consistent_shift_is_not():
    same = cell_table(_pairs(0.0))
    assert (same.difference == 0).all() and not same.beyond_seed_noise.any() and (same.p == 1).all()
    shifted = cell_table(_pairs(0.05))
    moved = shifted[shifted.loss == "contrastive"]
    assert moved.beyond_seed_noise.all() and (moved.low > 0).all()
    assert not shifted[shifted.loss != "contrastive"].beyond_seed_noise.any()


def test_the_conclusions_compare_rankings_and_verdicts():
    lines = conclusions(_pairs(0.0))
    assert lines[0].startswith("d recall@1: Kendall's tau of the 3 cells' means 1.000; verdicts against triplet + "
                               "semi-hard the same in 2 of 2 cells")
