"""What a study cell spends outside its training steps: the cached preflight count, and the breakdown
`dmlbench bench cell` makes of a finished run's papermill time."""

import json

import pytest

from dmlbench.bench.cell import _part_of, cell_breakdown, earlier_runs_median, step_table
from dmlbench.config import RunConfig
from dmlbench.study import preflight
from dmlbench.training.rundir import RunDir

from ..support import tiny_settings


def _count(isolated):
    preflight.activation_bytes.cache_clear()
    return preflight.activation_bytes("convnet", json.dumps({"channels": [4, 8, 8]}), 8, (1, 28, 28), 4)


def test_the_activation_count_is_kept_and_a_damaged_store_is_counted_again(isolated, monkeypatch):
    counted = _count(isolated)
    stores = list((isolated / "cache" / "preflight").glob("activations-*.json"))
    assert counted > 0 and len(stores) == 1
    calls = []
    real = preflight._activation_elements
    monkeypatch.setattr(preflight, "_activation_elements", lambda *a: calls.append(a) or real(*a))
    assert _count(isolated) == counted and calls == []  # read from the store: no meta-device pass
    stores[0].write_text("{not json")
    assert _count(isolated) == counted and len(calls) == 1  # damaged: counted again ...
    assert json.loads(stores[0].read_text())["elements"] * 4 == counted  # ... and rewritten


def test_the_stored_count_belongs_to_its_network(isolated):
    one = _count(isolated)
    preflight.activation_bytes.cache_clear()
    wider = preflight.activation_bytes("convnet", json.dumps({"channels": [8, 8, 8]}), 8, (1, 28, 28), 4)
    assert wider > one
    assert len(list((isolated / "cache" / "preflight").glob("activations-*.json"))) == 2


def test_every_part_of_the_breakdown_names_a_cell_of_the_experiment_notebook():
    from dmlbench.paths import notebook

    sources = ["".join(c["source"]) for c in json.loads(notebook("experiment.ipynb").read_text())["cells"]
               if c["cell_type"] == "code"]
    parts = {_part_of(source) for source in sources} - {None}
    assert parts == {"imports and set-up", "training cell", "t-SNE", "retrieval grid", "checkpoint and records"}


def test_the_breakdown_of_a_finished_run_adds_up_to_its_papermill_time(at_study):
    _, study, root = at_study
    folder = RunDir(root / "results" / "runs" / study.cells[0].config.run_id())
    parts = cell_breakdown(folder.path)
    record = json.loads(folder.metrics.read_text())
    assert parts["training steps"] == pytest.approx(record["train_time_s"])
    assert sum(v for k, v in parts.items() if k != "papermill") == pytest.approx(parts["papermill"])
    assert all(v >= 0 for v in parts.values())
    runs = [json.loads(RunDir(f).metrics.read_text()) for f in (root / "results" / "runs").iterdir()]
    fp32 = [r for r in runs if r["precision"] == "fp32"]
    median, count = earlier_runs_median(root / "results" / "runs", "fashion-mnist")
    assert count == len(fp32)  # only the runs that trained in fp32 are the earlier path's reference


def test_the_step_table_times_every_eager_path_and_work():
    config = RunConfig(**tiny_settings(P=4, K=2))
    table = step_table(config, rounds=1, steps=1, compile_paths=False, num_classes=10)
    assert set(table.path) == {"eager fp32", "eager fp32 channels-last", "eager bf16 channels-last"}
    assert len(table) == 3 * 5 and (table.ms_per_step > 0).all()
    reference = table[table.path == "eager fp32 channels-last"]
    assert (reference.speedup_vs_fp32_channels_last == 1).all()


def test_a_kernel_keeps_freed_memory_and_its_last_output_survives_the_quick_shutdown(tmp_path, monkeypatch):
    import nbformat

    from dmlbench.study.kernel import ALLOCATOR_ENVIRONMENT, execute_notebook

    for name in ALLOCATOR_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    template, output = tmp_path / "t.ipynb", tmp_path / "out.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import os\n"
                                                f"print({{k: os.environ.get(k) for k in {sorted(ALLOCATOR_ENVIRONMENT)}}})")]
    nbformat.write(notebook, template)
    execute_notebook(template, output, parameters={}, cwd=tmp_path)
    printed = nbformat.read(output, as_version=4).cells[0].outputs[0]["text"]
    assert printed.strip() == str({k: ALLOCATOR_ENVIRONMENT[k] for k in sorted(ALLOCATOR_ENVIRONMENT)})
    import os

    assert not any(name in os.environ for name in ALLOCATOR_ENVIRONMENT)  # this process's environment is as it was
    assert "DMLBENCH_UNATTENDED" not in os.environ
