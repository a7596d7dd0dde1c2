"""RunDir: a run folder's file names, its lock and its state, on real files and real processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from dmlbench.study.cells import CellBusy as CellBusyOfTheStudy
from dmlbench.training import resume
from dmlbench.training.record import UnreadableRecord, read_record, write_record
from dmlbench.training.rundir import CellBusy, RunDir

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "results" / "runs").glob("*/metrics.json"))


def shipped_run(tmp_path: Path) -> RunDir:
    """A finished run of the repository's default study, copied: its metrics.json as the study wrote it."""
    if not SHIPPED:
        pytest.skip("no results/runs/*/metrics.json in this checkout")
    source = SHIPPED[0].parent
    folder = RunDir(tmp_path / source.name)
    folder.path.mkdir()
    shutil.copy(source / RunDir.METRICS, folder.metrics)
    return folder


def test_every_file_of_a_run_folder_by_role(tmp_path):
    folder = RunDir(tmp_path / "some-run")
    names = {"metrics": "metrics.json", "checkpoint": "checkpoint.pt", "resume": "resume.pt",
             "notebook": "experiment.ipynb", "running_notebook": "experiment.running.ipynb",
             "failed_notebook": "experiment.failed.ipynb", "failure": "failure.json", "kernel_log": "kernel.log",
             "execution": "execution.json", "launch_config": "launch_config.json", "launch_log": "launch.log",
             "launch_result": "distributed_result.pt", "lock_file": ".lock"}
    for role, name in names.items():
        assert getattr(folder, role) == tmp_path / "some-run" / name, role
    assert len({getattr(folder, role) for role in names}) == len(names)  # no two roles share a file
    assert folder.run_id == "some-run" and Path(folder) == folder.path and repr(folder).startswith("RunDir(")
    # the modules that wrote these names before RunDir read them from it now
    assert resume.RESUME_FILE == RunDir.RESUME
    assert CellBusyOfTheStudy is CellBusy
    assert not folder.path.exists()  # naming files creates nothing


def test_a_missing_folder_is_to_run(tmp_path):
    folder = RunDir(tmp_path / "never-run")
    assert folder.state() == "to run" and not folder.is_done() and folder.saved_epoch() is None
    assert folder.record_problem() == "not written" and not folder.is_locked()


def test_a_finished_run_is_done(tmp_path):
    folder = shipped_run(tmp_path)
    assert folder.state(folder.run_id) == "done" and folder.is_done(folder.run_id)
    assert folder.state() == "done"  # no run id asked: any run's complete record
    # a folder holding another run's record is not this run's
    assert folder.state("another-run").startswith(
        f"unreadable metrics.json (records run {folder.run_id!r}, not 'another-run' of its folder): runs again")


def test_a_record_written_by_write_record_is_done_and_removes_resume_pt(tmp_path):
    record = json.loads(SHIPPED[0].read_text()) if SHIPPED else pytest.skip("no shipped run")
    folder = RunDir(tmp_path / record["run_id"])
    folder.path.mkdir()
    torch.save({"epoch": 2}, folder.resume)
    assert write_record(folder.path, record) == folder.metrics
    assert folder.state(record["run_id"]) == "done" and not folder.resume.exists()
    with pytest.raises(FileExistsError):
        write_record(folder, record)  # a finished run is never overwritten


def test_a_truncated_metrics_json_is_unreadable(tmp_path):
    folder = shipped_run(tmp_path)
    text = folder.metrics.read_text()
    folder.metrics.write_text(text[: len(text) // 2])
    state = folder.state(folder.run_id)
    assert state.startswith("unreadable metrics.json (not valid JSON") and state.endswith("): runs again")
    assert not folder.is_done(folder.run_id)
    with pytest.raises(UnreadableRecord, match="the file is incomplete or damaged"):
        read_record(folder.metrics, folder.run_id)
    torch.save({"epoch": 2}, folder.resume)  # unreadable wins over resumable: the record is looked at first
    assert folder.state(folder.run_id).startswith("unreadable metrics.json")


def test_a_record_without_every_key_is_unreadable(tmp_path):
    folder = shipped_run(tmp_path)
    record = json.loads(folder.metrics.read_text())
    del record["test"]
    folder.metrics.write_text(json.dumps(record))
    assert folder.state(folder.run_id).startswith("unreadable metrics.json (lacks 'test'; a finished run's record")


def test_a_saved_training_state_is_resumable_after_its_epoch(tmp_path):
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    # as the training loop writes it (dmlbench.training.resume.save: tensors and plain values)
    torch.save({"format": resume.FORMAT, "config_hash": "abc", "epoch": 2, "model": {"w": torch.zeros(3)},
                "history": [{"epoch": 1}, {"epoch": 2}]}, folder.resume)
    (folder.failure).write_text(json.dumps({"error": "RuntimeError: killed"}))
    assert folder.saved_epoch() == 2
    assert folder.state() == "resumable after epoch 2"  # resumable wins over failed: the restart continues
    folder.resume.write_bytes(b"not a torch file")
    assert folder.saved_epoch() is None and folder.state() == "failed: see failure.json"


def test_a_failed_attempt_is_failed(tmp_path):
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    folder.failure.write_text(json.dumps({"error": "ValueError: planted"}))
    assert folder.state() == "failed: see failure.json"


def test_the_lock_excludes_a_second_holder_and_is_released(tmp_path):
    folder = RunDir(tmp_path / "deep" / "run")
    with folder.lock() as held:
        assert held is folder and folder.lock_file.is_file()  # the folder is created for the lock
        assert folder.is_locked() and folder.state() == "running"
        with pytest.raises(CellBusy, match=f"^{folder.path} is being run by another process$"):
            with RunDir(folder.path).lock():  # another file descriptor on the same folder
                pass
    assert not folder.is_locked() and folder.state() == "to run"  # a stale .lock file is not a running run
    with folder.lock():  # released: it can be taken again
        pass
    assert issubclass(CellBusy, RuntimeError)


def test_a_finished_run_is_done_even_while_locked(tmp_path):
    folder = shipped_run(tmp_path)
    with folder.lock():
        assert folder.state(folder.run_id) == "done"


HOLDER = textwrap.dedent("""
    import sys, time
    from dmlbench.training.rundir import RunDir
    with RunDir(sys.argv[1]).lock():
        print("locked", flush=True)
        sys.stdin.readline()
        time.sleep(float(sys.argv[2]))
""")


def hold_lock(path: Path, linger_s: float = 0.0) -> subprocess.Popen:
    """Another process holding the folder's lock until a line is written to its stdin (then ``linger_s``)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(linger_s)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_another_process_holding_the_lock(tmp_path):
    folder = RunDir(tmp_path / "run")
    holder = hold_lock(folder.path)
    try:
        assert folder.is_locked() and folder.state() == "running"
        with pytest.raises(CellBusy, match="is being run by another process"):
            with folder.lock():
                pass
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0 and not folder.is_locked()
    with folder.lock():
        assert folder.state() == "running"


def test_wait_blocks_until_the_holder_lets_go(tmp_path):
    folder = RunDir(tmp_path / "run")
    holder = hold_lock(folder.path, linger_s=1.0)
    released = threading.Event()
    waiter = threading.Thread(target=lambda: (folder.wait(), released.set()), daemon=True)
    waiter.start()
    try:
        assert not released.wait(timeout=1.0)  # held by the other process: the waiter waits
        holder.stdin.write("\n")
        holder.stdin.flush()
        asked = time.monotonic()
        assert released.wait(timeout=60)
        assert time.monotonic() - asked >= 0.9  # not before the holder let go, a second after it was asked
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    waiter.join(timeout=60)
    folder.wait()  # nobody holds it: returns at once
