"""A full disk, and notebooks cut short by one: no invalid file is left, and the study ends in one line.

The fault is the operating system's: ``os.write`` into a file under the chosen folder fails with
ENOSPC once the file would pass ``room`` bytes (after writing what fits, as a real full disk does).
Everything else is real: papermill, the kernel, the study's run folders, the report's files.
"""

import errno
import json
import logging
import os
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from dmlbench.errors import DiskFullError
from dmlbench.study.kernel import execute_notebook

from ..reporting.test_report import complete_record
from ..support import tiny_settings


def fill_disk(monkeypatch, root: Path | str, room: int = 0) -> None:
    """Writes into files under ``root`` fail with ENOSPC past ``room`` bytes from the file's start."""
    real, root = os.write, str(root)

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(root):
            return real(fd, data)
        fits = max(0, room - os.lseek(fd, 0, os.SEEK_CUR))
        if fits == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, bytes(data[:fits]))

    monkeypatch.setattr(os, "write", write)


def template(folder: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "template.ipynb"
    nbformat.write(nb, str(path))
    return path


def every_file_whole(root: Path) -> list[str]:
    """The files under ``root`` that are left half-written: invalid JSON or notebooks, temporary files."""
    bad = [str(p) for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".ipynb"):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                bad.append(str(path))
    return bad


def one_line(error: BaseException, folder: Path) -> str:
    text = str(error)
    assert "\n" not in text and text.startswith(f"{folder}: the disk is full"), text
    assert "rerun the same command" in text and "finished cells are kept" in text
    return text


def test_papermill_writes_every_version_of_the_executed_notebook_whole(tmp_path, monkeypatch):
    runs = tmp_path / "run"
    runs.mkdir()
    nb = template(tmp_path, "print('x' * 40000)", "print('y')")
    fill_disk(monkeypatch, runs, room=20000)  # the first versions fit, the one with the long output does not
    with pytest.raises(DiskFullError) as raised:
        execute_notebook(nb, runs / "experiment.running.ipynb", parameters={"n": 2}, cwd=tmp_path)
    assert re.search(r"about 4\d\.\d KiB more is needed \(the notebook version being written\)",
                     one_line(raised.value, runs))
    assert every_file_whole(tmp_path) == []
    kept = nbformat.read(str(runs / "experiment.running.ipynb"), as_version=4)  # the last version that fitted
    assert "n = 2" in kept.cells[1].source and kept.cells[2].outputs == []  # its long output never fitted


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])  # the disk full; the user's quota spent
def test_a_notebook_cell_that_fills_the_disk_ends_in_one_line(tmp_path, code):
    nb = template(tmp_path, f"import errno, os\nraise OSError(errno.{code}, os.strerror(errno.{code}), 'checkpoint.pt')")
    (tmp_path / "out").mkdir()
    with pytest.raises(DiskFullError) as raised:
        execute_notebook(nb, tmp_path / "out" / "report.running.ipynb", parameters={}, cwd=tmp_path)
    one_line(raised.value, tmp_path / "out")


def test_a_study_on_a_full_disk_stops_in_one_line_and_keeps_its_finished_cell(isolated, tmp_path, monkeypatch, capsys):
    from dmlbench.cli import main
    from dmlbench.study.cells import load_study

    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump({"name": "full", "datasets": ["fashion-mnist"], "settings": tiny_settings(),
                                    "losses": ["triplet"], "miners": ["none", "semi-hard"], "seeds": [0]}))
    study = load_study(path)
    finished, blocked = study.cells
    c = finished.config
    record = complete_record(finished.run_id, c.dataset, c.loss, c.miner, c.seed, c.epochs, config=c.to_dict())
    finished.run_dir.mkdir(parents=True)
    finished.metrics_path.write_text(json.dumps({**record, "config_hash": c.config_hash()}))
    assert finished.is_done() and not blocked.is_done()
    before = finished.metrics_path.read_bytes()

    fill_disk(monkeypatch, blocked.run_dir)
    assert main(["study", str(path), "--no-report"]) == DiskFullError.exit_status
    first = capsys.readouterr().err.strip().splitlines()[-1]
    assert first.startswith(f"dmlbench: {blocked.run_dir}: the disk is full") and "rerun the same command" in first
    assert "Traceback" not in first and finished.metrics_path.read_bytes() == before
    assert not blocked.folder.failure.exists()  # not the cell's failure: it runs again once there is room
    assert every_file_whole(isolated / "results") == []


def test_a_damaged_notebook_is_named_and_set_aside_and_the_others_compacted(tmp_path, caplog):
    from dmlbench.study.footprint import compact_folder

    good, bad = tmp_path / "runs" / "a" / "experiment.ipynb", tmp_path / "runs" / "b" / "experiment.ipynb"
    for path in (good, bad):
        path.parent.mkdir(parents=True)
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), str(path))
    bad.write_text(bad.read_text()[:40])  # cut short
    with caplog.at_level(logging.WARNING, logger="dmlbench"):
        changed, before, after = compact_folder(tmp_path)
    assert changed == 0 and before == after == good.stat().st_size
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{bad}: damaged notebook (not valid JSON") and "set aside as experiment.ipynb.damaged-" in line
    assert not bad.exists() and len(list(bad.parent.glob("experiment.ipynb.damaged-*"))) == 1


def test_a_damaged_notebook_leaves_only_its_timings_out_of_the_status(tmp_path, caplog):
    from dmlbench.reporting.adequacy import _cell_durations

    path = tmp_path / "experiment.ipynb"
    path.write_text('{"cells": [{"cell_type": "code", "metadata": {"papermill": {"dura')
    with caplog.at_level(logging.WARNING, logger="dmlbench"):
        assert _cell_durations(path) == {}
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"{path}: damaged notebook"]


@pytest.mark.parametrize("full", ["", ".report"])  # the whole results folder; only the report's notebook
def test_the_report_on_a_full_disk_ends_in_one_line(isolated, tmp_path, monkeypatch, capsys, full):
    from dmlbench.cli import main

    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump({"name": "report", "datasets": ["fashion-mnist"], "settings": tiny_settings(),
                                    "losses": ["triplet"], "miners": ["none"], "seeds": [0]}))
    results = isolated / "results"
    fill_disk(monkeypatch, str(results / full) if full else results)
    assert main(["report", "--study", str(path), "--no-readme"]) == DiskFullError.exit_status
    last = capsys.readouterr().err.splitlines()[-1]  # the report's progress bar closed before it
    assert last.startswith(f"dmlbench: {results}: the disk is full") and "rerun the same command" in last
    assert every_file_whole(isolated) == [] and not (results / "report.html").exists()


SITECUSTOMIZE = '''
"""The disk under $DMLBENCH_TEST_FULL_DISK as if full, in every Python process of the test."""
import errno
import os

_real, _root = os.write, os.environ["DMLBENCH_TEST_FULL_DISK"]


def _write(fd, data):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target.startswith(_root):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _real(fd, data)


os.write = _write
'''


def test_worker_processes_on_a_full_disk_stop_the_study_in_one_line(isolated, tmp_path, monkeypatch, capsys):
    from dmlbench.cli import main
    from dmlbench.study.cells import load_study

    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump({"name": "workers", "datasets": ["fashion-mnist"], "settings": tiny_settings(),
                                    "losses": ["triplet"], "miners": ["none", "semi-hard", "batch-hard"], "seeds": [0]}))
    injector = tmp_path / "injector"
    injector.mkdir()
    (injector / "sitecustomize.py").write_text(SITECUSTOMIZE)  # the workers and their kernels find the disk full
    runs = isolated / "results" / "runs"
    monkeypatch.setenv("PYTHONPATH", str(injector))
    monkeypatch.setenv("DMLBENCH_TEST_FULL_DISK", str(runs))
    assert main(["study", str(path), "--jobs", "2", "--no-report"]) == DiskFullError.exit_status
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"dmlbench: {runs}: the disk is full") and "rerun the same command" in last
    study = load_study(path)
    assert sum(cell.run_dir.exists() for cell in study.cells) <= 2  # the third cell never started
    assert every_file_whole(isolated / "results") == []
