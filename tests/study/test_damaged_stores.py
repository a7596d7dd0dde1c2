"""Damaged tuning stores: a truncated, emptied, garbled or unreadable Optuna storage, a truncated trial
record, and a Ctrl-C in the middle of a trial. Real SQLite storage written by real Optuna trials (two
trials of a tiny network on the tiny Fashion-MNIST), damaged the way a disk or a person damages them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from dmlbench.cli import INTERRUPTED_EXIT, main
from dmlbench.errors import DamagedFileError
from dmlbench.study.cells import load_study
from dmlbench.study.tuner import storage, trial_path, tune

from ..support import tiny_settings

TUNING = {"trials": 2, "seed": 3, "startup_trials": 1, "pruner": {"name": "none"},
          "space": {"settings": {"lr": {"low": 3e-4, "high": 3e-2, "log": True}}}}


def write_study(folder, iters_per_epoch=2, storage_kind="sqlite"):
    study = {"name": "damaged-t", "datasets": ["fashion-mnist"], "seeds": [0],
             "cells": [{"loss": "triplet", "miner": "semi-hard", "loss_kwargs": {"margin": 0.2}}],
             "settings": tiny_settings(epochs=1, iters_per_epoch=iters_per_epoch),
             "tuning": {**TUNING, "storage": storage_kind}}
    path = folder / "damaged.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def finish(root, tiny_fmnist, kind) -> Path:
    """The folder of a finished two-trial search with ``kind`` of storage (its storage, records and
    best.json), made under ``root``."""
    saved = {k: os.environ.get(k) for k in ("DMLBENCH_DATA", "DMLBENCH_CACHE", "DMLBENCH_RESULTS", "DMLBENCH_DOWNLOAD")}
    os.environ.update(DMLBENCH_DATA=str(tiny_fmnist.parent), DMLBENCH_CACHE=str(root / "cache"),
                      DMLBENCH_RESULTS=str(root / "results"), DMLBENCH_DOWNLOAD="0")
    try:
        (search,) = load_study(write_study(root, storage_kind=kind)).searches
        assert tune(search) is not None
        return search.folder
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def finished_sqlite(tmp_path_factory, tiny_fmnist):
    return finish(tmp_path_factory.mktemp("finished-sqlite"), tiny_fmnist, "sqlite")


@pytest.fixture(scope="module")
def finished_journal(tmp_path_factory, tiny_fmnist):
    return finish(tmp_path_factory.mktemp("finished-journal"), tiny_fmnist, "journal")


def copied(isolated, finished: Path, kind: str):
    """A finished search, copied into this test's results folder."""
    (found,) = load_study(write_study(isolated, storage_kind=kind)).searches
    shutil.copytree(finished, found.folder)
    return found


@pytest.fixture
def search(isolated, finished_sqlite):
    return copied(isolated, finished_sqlite, "sqlite")


@pytest.fixture
def journalled(isolated, finished_journal):
    return copied(isolated, finished_journal, "journal")


def truncate(path, size):
    with open(path, "r+b") as handle:
        handle.truncate(size)


def refused(search, capsys) -> tuple[int, str]:
    """``dmlbench tune`` on the search once its best.json is gone (so it would tune): exit code, stderr."""
    search.best_path.unlink()
    code = main(["tune", "--study", str(search.folder.parents[2] / "damaged.yaml")])
    return code, capsys.readouterr().err


def aside(folder, name) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{name}.damaged-"))


@pytest.mark.parametrize("damage, problem", [
    (lambda db: truncate(db, db.stat().st_size // 2), "a damaged SQLite database (database disk image is malformed)"),
    (lambda db: truncate(db, 0), "empty (0 bytes)"),
    (lambda db: db.write_bytes(b"not a database " * 300), "not an SQLite database"),
])
def test_a_damaged_storage_is_set_aside_and_never_restarts_the_search(search, capsys, damage, problem):
    db = search.folder / "trials.db"
    records = {p.name: p.read_bytes() for p in (search.folder / "trials").iterdir()}
    damage(db)
    code, err = refused(search, capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith(f"dmlbench: error: {db}: {problem}; set aside as trials.db.damaged-")
    assert "finished 2 trials (trial 0, 1" in line and f"move the folder {search.folder} away" in line
    assert len(aside(search.folder, "trials.db")) == 1 and not db.exists()
    assert {p.name: p.read_bytes() for p in (search.folder / "trials").iterdir()} == records, "no record rewritten"
    with pytest.raises(DamagedFileError, match=r"trials.db: missing; the search had finished 2 trials"):
        storage(search)  # run again: the storage is still missing, and still no trial is redone


@pytest.mark.parametrize("damage, problem", [
    (lambda journal: truncate(journal, journal.stat().st_size - 40), "its last line, {n}, is cut short"),
    (lambda journal: journal.write_bytes(journal.read_bytes().replace(b'"op_code"', b'"op_co', 1)), "line 1 is not JSON"),
])
def test_a_damaged_journal_is_set_aside_and_never_restarts_the_search(journalled, capsys, damage, problem):
    journal = journalled.folder / "trials.journal"
    lines = journal.read_bytes().count(b"\n")
    damage(journal)
    code, err = refused(journalled, capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith(f"dmlbench: error: {journal}: a damaged Optuna journal "
                                         f"({problem.format(n=lines)}); set aside as trials.journal.damaged-")
    assert "the search had finished 2 trials" in line and len(aside(journalled.folder, "trials.journal")) == 1


def test_an_unreadable_storage_is_named_and_left_in_place(search, capsys):
    db = search.folder / "trials.db"
    db.unlink()
    db.mkdir()  # unreadable as a file, whoever the user (root reads any file mode)
    code, err = refused(search, capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith(f"dmlbench: error: {db}: unreadable (Is a directory); the search had finished")
    assert db.is_dir() and not aside(search.folder, "trials.db")


def test_a_storage_emptied_and_recreated_is_refused_by_the_trial_records(search):
    import optuna

    db = search.folder / "trials.db"
    db.unlink()
    optuna.create_study(study_name=search.search_id, storage=f"sqlite:///{db}")  # a new, readable, empty storage
    with pytest.raises(DamagedFileError, match=r"trials.db: lacks 2 finished trials that its trials/ records"):
        tune(search)
    assert len(optuna.load_study(study_name=search.search_id, storage=f"sqlite:///{db}").trials) == 0


def test_a_damaged_storage_with_no_finished_trial_starts_anew(isolated, caplog):
    (fresh,) = load_study(write_study(isolated)).searches
    fresh.folder.mkdir(parents=True)
    (fresh.folder / "trials.db").write_bytes(b"")  # as another tuner starting at this moment leaves it
    storage(fresh)
    assert not caplog.text and (fresh.folder / "trials.db").stat().st_size > 0, "used, not set aside"
    (fresh.folder / "trials.db").write_bytes(b"\0" * 4096)
    storage(fresh)
    assert "not an SQLite database; set aside as trials.db.damaged-" in caplog.text and "starts anew" in caplog.text


def test_a_truncated_trial_record_is_set_aside_and_written_again_from_the_storage(search, caplog):
    best = json.loads(search.best_path.read_text())
    number = best["best_trial"]
    record = trial_path(search, number)
    whole = json.loads(record.read_text())
    truncate(record, 40)
    search.best_path.unlink()
    again = tune(search)  # the budget is spent: it only writes best.json, from the storage and the records
    assert again["values"] == best["values"] and again["value"] == best["value"]
    assert f"{record}: a damaged trial record (JSONDecodeError" in caplog.text
    assert len(aside(record.parent, record.name)) == 1
    rebuilt = json.loads(record.read_text())
    assert rebuilt["rebuilt_from_storage"] and rebuilt["values"] == whole["values"]
    assert rebuilt["state"] == whole["state"] and rebuilt["value"] == whole["value"]
    assert [c["epoch"] for c in rebuilt["curve"]] == [c["epoch"] for c in whole["curve"] if c["epoch"] >= 1]


def test_ctrl_c_during_a_trial_speaks_of_trials(isolated, capsys):
    path = write_study(isolated, iters_per_epoch=400)
    (found,) = load_study(path).searches
    record = trial_path(found, 0)

    returned = threading.Event()

    def interrupt():  # a Ctrl-C once the first trial is training (none once the tuner has returned)
        while not returned.is_set() and not (record.is_file() and '"RUNNING"' in record.read_text()):
            time.sleep(0.01)
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        code = main(["tune", "--study", str(path)])
    finally:
        returned.set()
        logging.disable(logging.NOTSET)  # main silences logging after a Ctrl-C; later tests read warnings
    err = capsys.readouterr().err.strip()
    assert code == INTERRUPTED_EXIT and "cell" not in err
    assert err.startswith("dmlbench: interrupted. Finished trials are kept in the search's storage")
    assert json.loads(record.read_text())["state"] == "FAIL"


def test_the_report_names_a_damaged_trial_record_it_leaves_out(tmp_path, caplog):
    """A record damaged after its search finished was skipped without a word: the tables then counted
    fewer trials than the search ran."""
    from dmlbench.reporting.tuning import _records

    trials = tmp_path / "trials"
    trials.mkdir()
    (trials / "0000.json").write_text('{"number": 0, "state": "COMPLETE", "value": 0.5}')
    (trials / "0001.json").write_text('{"number": 1, "sta')
    with caplog.at_level("WARNING", logger="dmlbench"):
        records = _records(tmp_path)
    assert [r["number"] for r in records] == [0]
    assert str(trials / "0001.json") in caplog.text and "dmlbench tune --study" in caplog.text


def test_a_storage_left_with_a_hot_journal_by_a_killed_tuner_is_rolled_back_not_set_aside(tmp_path):
    """A tuner killed inside an SQLite transaction leaves a hot journal beside the storage; a read-only
    check cannot roll it back ('attempt to write a readonly database'), so it was taken for damage."""
    import sqlite3
    import subprocess
    import sys

    from dmlbench.study.tuner import _storage_problem

    path = tmp_path / "trials.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE trials (id INTEGER, value REAL)")
        connection.executemany("INSERT INTO trials VALUES (?, ?)", [(i, i / 10) for i in range(2000)])
    # a one-page cache: the update spills changed pages into the database file mid-transaction, after
    # their originals went to the journal, which is then hot once the writer dies
    writer = (f"import os, sqlite3; c = sqlite3.connect({str(path)!r}, isolation_level=None); "
              f"c.execute('PRAGMA cache_size = 1'); c.execute('BEGIN IMMEDIATE'); "
              f"c.execute('UPDATE trials SET value = -1'); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", writer])
    journal = tmp_path / "trials.db-journal"
    if not journal.exists() or journal.stat().st_size == 0:
        pytest.fail("the killed writer left no hot journal: the case this test needs did not arise")
    assert _storage_problem(path) is None  # rolled back, not set aside
    with sqlite3.connect(path) as connection:  # the rollback restored the last committed state
        assert connection.execute("SELECT COUNT(*), MIN(value) FROM trials").fetchone() == (2000, 0.0)
