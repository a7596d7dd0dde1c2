"""`dmlbench bench equal` finds each study cell's fp32 counterpart by its run id."""

import dataclasses
import json
import shutil

from dmlbench.bench.equal import paired_runs


def test_each_cell_is_paired_with_its_fp32_run_id(at_study, tmp_path):
    _, study, root = at_study
    runs = root / "results" / "runs"
    reference = tmp_path / "fp32"
    for cell in study.cells:  # the same records, filed under the fp32 cell's id
        target = reference / dataclasses.replace(cell.config, precision="fp32").run_id()
        target.mkdir(parents=True)
        shutil.copy(runs / cell.config.run_id() / "metrics.json", target / "metrics.json")
    pairs = paired_runs(study, runs, str(reference))
    assert len(pairs) == len(study.cells)
    assert (pairs["map@r"] == pairs["map@r_fp32"]).all()
    assert json.loads((runs / study.cells[0].config.run_id() / "metrics.json").read_text())["precision"] in (
        "bf16", "fp32")
    assert paired_runs(study, runs, str(tmp_path)).empty  # no fp32 runs there
