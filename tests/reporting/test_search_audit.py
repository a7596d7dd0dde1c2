"""The audit of a tuned study's searches (dmlbench.reporting.search_audit, `dmlbench tuning`): epochs per
search, each choice's gap against the seeds' noise, winners' places in their ranges, the losses tied with
the best after tuning. A real epoch-budget search on the tiny Fashion-MNIST, cells planted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from dmlbench.study.cells import load_study
from dmlbench.study.tuner import tune
from dmlbench.study.tuning import Param

from ..study.test_tuning import BUDGETED, planted_record, write_tuned_study


def test_a_winner_s_place_in_its_range_is_read_on_the_range_s_scale():
    from dmlbench.reporting.search_audit import position

    assert position(Param("lr", low=1e-4, high=1e-2, log=True), 1e-3) == pytest.approx(0.5)
    assert position(Param("loss.margin", low=0.0, high=0.5), 0.45) == pytest.approx(0.9)
    assert position(Param("loss.margin", choices=(0.1, 0.2)), 0.1) is None


def test_the_audit_prints_equal_epochs_the_choices_against_noise_and_the_tied_group(isolated, tmp_path, monkeypatch):
    from dmlbench.reporting.search_audit import EDGE, command_lines, epochs_check, search_rows, tied_after_tuning

    path = write_tuned_study(tmp_path, BUDGETED, epochs=4, iters_per_epoch=6, lr=1e-4)
    study = yaml.safe_load(path.read_text())
    study["cells"].append({"loss": "contrastive", "miner": "none"})
    study["seeds"] = [0, 1, 2]
    study["tuning"]["space"]["losses"]["contrastive"] = {"neg_margin": {"low": 0.5, "high": 1.5}}
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("DMLBENCH_RESULTS", str(isolated / "results"))
    for search in load_study(path).searches:
        tune(search)
    study = load_study(path)
    rows = search_rows(study.searches)
    assert sorted(rows["loss"]) == ["contrastive", "triplet"] and set(rows["epochs"]) == {14}
    assert epochs_check(rows)["equal"] and all(rows["configs"] >= 6)
    for row in rows.itertuples():
        best = json.loads((study.searches[0].folder.parent / row.search_id / "best.json").read_text())
        assert row.tie == (best["gap"] < best["seed_sd"]) and row.winner_val == best["value"]
        assert row.at_edge == [k for k, v in row.positions.items() if v is not None and min(v, 1 - v) < EDGE]
    planted = {"triplet": 0.30, "contrastive": 0.50}  # contrastive far ahead: triplet is worse at every seed
    for cell in study.cells:
        record = planted_record(cell, planted[cell.config.loss] + 0.01 * cell.config.seed
                                + (0.001 if cell.role == "tuned" else 0.0))
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        (cell.run_dir / "metrics.json").write_text(json.dumps(record))
    table = tied_after_tuning(load_study(path))
    assert list(table["loss"]) == ["contrastive", "triplet"] and list(table["units"]) == [3, 3]
    assert table.loc[0, "status"] == "best" and np.isclose(table.loc[1, "difference"], -0.2)
    lines, status = command_lines(path, isolated / "results")
    text = "\n".join(lines)
    assert status == 0 and "the searches trained 14 to 14 epochs: a spread of 0.0% of the most, equal within 5%" in text
    assert "searches end in a tie" in text and "tied with the best after tuning: 1 (contrastive + none)" in text

    # the report and the docs' table say the same, from summary.json
    from dmlbench.reporting.readme import render_tuned_block, render_tuned_table
    from dmlbench.reporting.report import build_report

    for cell in load_study(path).cells:
        (cell.run_dir / "execution.json").write_text(json.dumps({"notebook_wall_s": 1.0, "started": 0.0, "finished": 1.0}))
    html = build_report(path).read_text()
    summary = json.loads((isolated / "results" / "summary.json").read_text())
    tuning = summary["tuning"]
    assert tuning["budget_epochs"] == 14 and tuning["tied_after_tuning"]["tied"] == []
    assert tuning["tied_after_tuning"]["best"] == "contrastive + none"
    rows = {row["loss"]: row for row in tuning["datasets"]["fashion-mnist"]["rows"]}
    assert rows["triplet"]["epochs"] == 14 and rows["triplet"]["trials"] >= 6
    assert "14 to 14 training epochs each" in tuning["datasets"]["fashion-mnist"]["verdict"]
    assert "After tuning, contrastive + none leads" in html and "After tuning, contrastive + none leads" in \
        render_tuned_block(summary)
    table = render_tuned_table(summary)
    assert "| loss | epochs | configurations | lead vs seed SD | verdict | validation gain | at an edge |" in table
    assert f"| triplet | 14 | {rows['triplet']['trials']} |" in table


def test_the_audit_refuses_a_study_without_tuning(isolated, tmp_path):
    from dmlbench.errors import ConfigError
    from dmlbench.reporting.search_audit import command_lines

    path = write_tuned_study(tmp_path)
    study = yaml.safe_load(path.read_text())
    del study["tuning"]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="no tuning block"):
        command_lines(path)
