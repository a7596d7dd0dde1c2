"""A finished run whose checkpoint.pt is damaged is restored by running its cell again, beside the
finished record, which stays as it was (issue 30: a truncated checkpoint was never repaired)."""

from __future__ import annotations

import json
import shutil

import pytest

from dmlbench.study.cells import RunFailed, run_config
from dmlbench.training.rundir import RunDir


def _copy_of_a_finished_run(at_study, tmp_path) -> tuple[RunDir, object]:
    path, study, root = at_study
    cell = study.cells[0]
    copy = RunDir(tmp_path / cell.run_id)
    shutil.copytree(cell.folder.path, copy.path)
    return copy, cell.config


def test_a_damaged_checkpoint_is_set_aside_and_restored_by_a_rerun(at_study, tmp_path):
    folder, config = _copy_of_a_finished_run(at_study, tmp_path)
    whole, record = folder.checkpoint.read_bytes(), folder.metrics.read_bytes()
    folder.checkpoint.write_bytes(whole[: len(whole) // 2])
    assert folder.checkpoint_problem() is not None
    run_config(config, run_dir=folder.path)
    assert folder.checkpoint_problem(thorough=True) is None and folder.read_checkpoint()["model"]
    assert folder.checkpoint.read_bytes() == whole, "the rerun reproduced the finished run's checkpoint"
    assert folder.metrics.read_bytes() == record, "the finished record is never rewritten"
    kept = [p for p in folder.path.iterdir() if p.name.startswith("checkpoint") and p.name != "checkpoint.pt"]
    assert len(kept) == 1 and kept[0].read_bytes() == whole[: len(whole) // 2], "the damaged file is kept aside"
    assert not (folder.path / "restore").exists()


def test_a_rerun_that_differs_leaves_the_finished_record_and_names_the_rerun(at_study, tmp_path):
    folder, config = _copy_of_a_finished_run(at_study, tmp_path)
    record = folder.metrics.read_text()
    data = json.loads(record)
    data["test"] = {"planted": 1, **data["test"]}  # a record the rerun cannot reproduce
    edited = json.dumps(data, separators=(",", ":")) + "\n"
    assert edited != record
    folder.metrics.write_text(edited)
    folder.checkpoint.write_bytes(folder.checkpoint.read_bytes()[:100])
    with pytest.raises(RunFailed, match="test metrics differ") as error:
        run_config(config, run_dir=folder.path)
    assert str(folder.path / "restore") in str(error.value) and "\n" not in str(error.value)
    assert folder.metrics.read_text() == edited and not folder.checkpoint.exists()
