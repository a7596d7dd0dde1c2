"""The training-length ablation's analysis (dmlbench.reporting.budget) on run tables built here."""

import pandas as pd

from dmlbench.reporting.budget import budget_lines, budget_table, stable_budget


def runs(scores: dict[int, list[float]]) -> pd.DataFrame:
    """Two seeds per cell and budget; cell i scores scores[epochs][i] (+-0.001 by seed)."""
    rows = []
    for epochs, values in scores.items():
        for i, value in enumerate(values):
            for seed in (0, 1):
                rows.append({"run_id": f"c{i}-{epochs}-{seed}", "loss": f"loss{i}", "miner": "none", "epochs": epochs,
                             "seed": seed, "fold": 0, "map@r": value + (0.001 if seed else -0.001),
                             "val_at_best": value - 0.05})
    return pd.DataFrame(rows)


def test_a_ranking_that_settles_is_stable_from_the_budget_where_it_matches_the_longest():
    table = runs({20: [0.5, 0.6, 0.7, 0.8], 40: [0.55, 0.65, 0.75, 0.85], 80: [0.56, 0.66, 0.76, 0.86]})
    cells, taus = budget_table(table)
    assert list(taus["tau_test"]) == [1.0, 1.0, 1.0] and stable_budget(taus) == 20
    assert set(cells["seeds"]) == {2} and cells.loc[cells["epochs"] == 80, "rank"].tolist() == [4, 3, 2, 1]
    assert "ranks the cells as the longest does" in budget_lines(cells, taus)[-1]


def test_a_ranking_that_changes_with_training_length_is_reported_as_such():
    table = runs({20: [0.8, 0.7, 0.6, 0.5], 40: [0.6, 0.7, 0.65, 0.8], 80: [0.5, 0.6, 0.7, 0.8]})
    cells, taus = budget_table(table)
    first = taus.set_index("epochs").loc[20]
    assert first["tau_test"] == -1.0 and stable_budget(taus) == 80
    assert "differently from the longest" in budget_lines(cells, taus)[-1]


def test_cells_missing_a_budget_are_left_out_of_the_comparison():
    table = runs({20: [0.5, 0.6, 0.7], 40: [0.55, 0.65, 0.75], 80: [0.56, 0.66, 0.76]})
    table = table[~((table["loss"] == "loss2") & (table["epochs"] == 80))]
    cells, taus = budget_table(table)
    assert set(cells["loss"]) == {"loss0", "loss1"} and set(taus["cells"]) == {2}
