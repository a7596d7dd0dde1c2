"""A study's index evaluation over real finished runs: the embeddings are the run's own, a rerun
computes nothing, a changed plan makes new files, a damaged file is redone, bad blocks fail early."""

import json

import numpy as np
import pytest
import yaml

from dmlbench.errors import ConfigError
from dmlbench.study.cells import emit_makefile, load_study
from dmlbench.study.indexes import IndexPlan, parse_plan, query_sample, read_results, run_indexes, run_line


def test_every_run_is_indexed_from_its_own_embeddings_and_a_rerun_computes_nothing(at_study):
    path, study, root = at_study
    counts = run_indexes(study, log=lambda line: None)
    assert counts["computed"] + counts["done"] == 2 and counts["unfinished"] == 0
    plan = study.indexes
    files = sorted(plan.folder().glob("*__*.json"))
    assert [f.stem for f in files] == sorted(cell.run_id for cell in study.cells)
    for cell in study.cells:
        result = json.loads(plan.result_path(cell.run_id).read_text())
        record = json.loads(cell.metrics_path.read_text())
        # every test image queries the others (100 < 1000 queries): the exact answers give the run's own
        # metrics, up to the last bits of a network evaluated on another number of threads (near ties swap)
        assert result["exact"]["queries"] == record["test"]["num_queries"] == 100
        assert result["exact"]["recall@1"] == pytest.approx(record["test"]["recall@1"], abs=0.011)
        assert result["exact"]["map@r"] == pytest.approx(record["test"]["map@r"], abs=1e-3)
        settings = [(row["index"], json.dumps(row["setting"])) for row in result["rows"]]
        assert len(settings) == 1 + 2 + 2 + 1 + 1 + 1 + 1 + 3 and len(set(settings)) == len(settings)
        counted = ("ball-tree", "pivots", "vp-tree", "m-tree", "aesa")
        for row in result["rows"]:
            if row["exact"]:
                assert row["knn_recall"] == 1.0 and row["mismatches"] == 0 and row["position_error"] == 0.0
            # the structures that count distances search the items without the queries' own (no label metrics)
            assert row["held_out"] == (row["family"] in counted)
            if not row["held_out"]:
                assert row["recall@1"] is not None and (not row["exact"] or row["recall@1"] == row["exact_recall@1"])
            assert row["queries"] == (25 if row["family"] in counted else 100)
    before = {f: f.stat().st_mtime_ns for f in files}
    again = run_indexes(study, log=lambda line: None)
    assert again == {"computed": 0, "done": 2, "unfinished": 0}
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert len(read_results(plan, [c.run_id for c in study.cells])) == 2


def test_each_run_records_its_distance_distribution_range_queries_and_the_structures_costs(at_study, capsys):
    from dmlbench.cli import main

    path, study, root = at_study
    run_indexes(study, log=lambda line: None)
    for cell in study.cells:
        result = json.loads(study.indexes.result_path(cell.run_id).read_text())
        stats = result["distribution"]
        assert stats["rho"] == pytest.approx(stats["mean"] ** 2 / (2 * stats["std"] ** 2))
        assert sum(stats["histogram"]["counts"]) == stats["pairs"] and stats["lid"] > 0
        ranges = {row["family"]: row for row in result["range_rows"]}
        assert set(ranges) == {"flat", "hnsw", "ivf-flat", "pq", "sq8", "ball-tree", "pivots", "vp-tree", "m-tree",
                               "aesa"}
        assert result["exact"]["radius"] > 0 and ranges["flat"]["answers"] > 0
        for family in ("flat", "ball-tree", "pivots", "vp-tree", "m-tree", "aesa"):
            assert ranges[family]["mismatches"] == 0 and ranges[family]["range_recall"] == 1.0
            assert ranges[family]["queries"] == 25
        shares = {row["family"]: row["distance_fraction"] for row in result["rows"] if row["distance_fraction"]}
        assert set(shares) == {"ball-tree", "pivots", "vp-tree", "m-tree", "aesa"}
        assert shares["aesa"] < shares["pivots"] <= 1.0  # AESA's bounds use every item as a pivot
        line = run_line(result)  # what the pass prints for each run it computes
        assert f"rho {stats['rho']:.2f}" in line and f"aesa {100 * shares['aesa']:.1f}%" in line
    assert main(["indexes", "--study", str(path), "--costs"]) == 0
    out = capsys.readouterr().out
    assert "chavez_rho" in out and "m-tree knn" in out and "vp-tree range" in out
    assert "spearman vs chavez_rho" in out
    assert "queries answered differently from brute force by an exact structure: 0" in out


def test_the_structures_correlation_with_rho_is_spearmans_over_runs():
    from dmlbench.reporting.metric_costs import rho_correlations, structure_costs

    results = [{"run_id": f"r{i}", "dataset": "d", "loss": "l", "miner": "m", "items": 100,
                "distribution": {"rho": rho, "lid": lid},
                "rows": [{"family": "pivots", "distance_fraction": share, "mismatches": 0}], "range_rows": []}
               for i, (rho, lid, share) in enumerate([(2, 3, 0.1), (5, 2, 0.3), (9, 5, 0.35), (20, 4, 0.9)])]
    table = structure_costs(results)
    row = rho_correlations(table).iloc[0]
    assert row["structure"] == "pivots" and row["query"] == "knn" and row["runs"] == 4
    assert row["spearman vs chavez_rho"] == pytest.approx(1.0)  # the shares rise with rho
    assert row["spearman vs lid"] == pytest.approx(0.6)  # ranks 2,1,4,3 against 1,2,3,4: 1 - 6 * 4 / 60
    assert row["median share"] == pytest.approx(0.325)


def test_a_damaged_result_is_computed_again_and_a_changed_plan_writes_new_files(at_study):
    path, study, root = at_study
    run_indexes(study, log=lambda line: None)
    victim = study.indexes.result_path(study.cells[0].run_id)
    victim.write_text(victim.read_text()[:100])  # truncated, as by a full disk
    assert run_indexes(study, log=lambda line: None)["computed"] == 1
    assert json.loads(victim.read_text())["run_id"] == study.cells[0].run_id
    raw = yaml.safe_load(path.read_text())
    other = parse_plan(path, {**raw["indexes"], "queries": 50})
    assert other.plan_id != study.indexes.plan_id and other.folder() != study.indexes.folder()
    assert not any(other.folder().glob("*__*.json"))


def test_the_generated_makefile_indexes_after_every_cell_and_before_the_report(at_study):
    path, study, root = at_study
    text = emit_makefile(study)
    targets = [str(study.indexes.result_path(c.run_id)) for c in study.cells]
    assert f"INDEXES := {' '.join(targets)}" in text
    assert "$(INDEXES) &: $(RUNS)\n" in text and "indexes --study" in text
    report = next(line for line in text.splitlines() if line.startswith(str(root / "results" / "report.html")))
    assert "$(INDEXES)" in report


def test_queries_are_drawn_once_among_those_with_another_item_of_their_class():
    labels = np.array([0, 0, 1, 2, 2, 2, 3])
    drawn = query_sample(labels, 10, seed=0)
    assert sorted(drawn.tolist()) == [0, 1, 3, 4, 5]  # classes 1 and 3 have one image: never queries
    assert query_sample(labels, 10, seed=0).tolist() == drawn.tolist()
    assert len(query_sample(labels, 2, seed=0)) == 2
    gallery = np.array([1, 1, 3])  # with a gallery: queries whose class it holds
    assert sorted(query_sample(labels, 10, seed=0, items=gallery).tolist()) == [2, 6]


@pytest.mark.parametrize("block,message", [
    ([1], "indexes: a mapping with keys queries, exact_queries, seed, families"),
    ({"querys": 5}, "unknown key 'querys'; valid keys: queries, exact_queries, seed, families"),
    ({"queries": 0}, "queries must be a whole number >= 1, got 0"),
    ({"families": [{"family": "lsh"}]}, "families[0]: unknown index family 'lsh'; choose from flat"),
    ({"families": []}, "a non-empty list of indexes"),
])
def test_bad_indexes_blocks_fail_when_the_study_is_read(tmp_path, block, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "datasets": ["fashion-mnist"], "losses": ["triplet"],
                                    "miners": ["none"], "indexes": block}))
    with pytest.raises(ConfigError) as error:
        load_study(path, check_networks=False)
    assert message in str(error.value)


def test_a_study_without_the_block_has_no_index_step(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "datasets": ["fashion-mnist"], "losses": ["triplet"],
                                    "miners": ["none"]}))
    study = load_study(path, check_networks=False)
    assert study.indexes is None and "INDEXES" not in emit_makefile(study)
    with pytest.raises(ConfigError, match="has no indexes: block; add 'indexes: {}'"):
        run_indexes(study)
    assert IndexPlan().plan_id == parse_plan(path, {}).plan_id  # `indexes: {}` is the defaults


def test_the_report_has_the_index_section_with_its_tables_and_figures(at_study):
    from dmlbench.reporting.report import build_report

    path, study, root = at_study
    run_indexes(study, log=lambda line: None)
    html = build_report(path).read_text()
    results = root / "results"
    section = html[html.index('id="Serving-the-embeddings:-similarity-search-indexes"'):]
    section = section[:section.index('id="What-the-numbers-say"')]
    assert "2 of 2 finished runs were served by similarity-search indexes" in section
    matched = (results / "tables" / "fashion-mnist__indexes.csv").read_text().splitlines()
    header = matched[0].split(",")
    assert header[:4] == ["loss", "miner", "seeds", "exact"] and len(matched) == 3  # two cells
    assert "hnsw M=8" in header and "pq m=4" in header and "flat" not in header  # flat is the exact column
    assert "brute force (faiss" in section
    costs = (results / "tables" / "fashion-mnist__index_costs.csv").read_text()
    assert "pivots pivots=4" in costs and "ef_search=64" in costs
    assert "m-tree" in (results / "tables" / "fashion-mnist__structure_costs.csv").read_text()
    assert "spearman vs chavez_rho" in (results / "tables" / "fashion-mnist__structure_correlations.csv").read_text()
    assert summary_structures(results)
    for name in ("indexes_fashion-mnist.png", "index_compression_fashion-mnist.png", "structure_costs_fashion-mnist.png"):
        assert (results / "figures" / name).stat().st_size > 10_000
    summary = json.loads((results / "summary.json").read_text())
    assert summary["indexes"]["fashion-mnist"]["runs"] == 2


def summary_structures(results):
    """summary.json's catalogue facts: an exact structure answered its queries as brute force does."""
    facts = json.loads((results / "summary.json").read_text())["indexes"]["fashion-mnist"]["structures"]
    vp = next(f for f in facts if f["family"] == "vp-tree" and f["query"] == "range")
    return vp["mismatches"] == 0 and vp["queries"] == 2 * 25
