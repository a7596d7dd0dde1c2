"""A run's folder (results/runs/<run id>/): the one place that names its files, locks the folder
and tells its state.

    metrics.json              the finished run's record (dmlbench.training.record)
    checkpoint.pt             the selected epoch's network and loss parameters
    resume.pt                 the last finished epoch's state, while the run is unfinished
    experiment.ipynb          the executed notebook of a finished run
    experiment.running.ipynb  the notebook while it runs
    experiment.failed.ipynb   the notebook of a failed attempt
    failure.json              a failed attempt's error and traceback
    kernel.log                a failed attempt's kernel output
    execution.json            the notebook's wall time and kernel
    launch_config.json, launch.log, distributed_result.pt   a torchrun launch's settings, log and result
    .lock                     held while a process runs the cell

A finished run is one whose metrics.json is a complete record (:func:`read_record` checks it; a
truncated or edited one is not finished). Its checkpoint is read only as tensors, numbers and text
(``torch.load(weights_only=True)``: a planted pickle runs nothing) and checked first against the
size and SHA-256 its record holds (runs recorded since issue 30) or, for older runs, by reading it
(:func:`read_checkpoint`); a damaged one fails naming its path. A missing checkpoint is normal: the
repository ships few. The lock is an ``fcntl.flock`` on ``.lock``: exclusive and
non-blocking for the process that runs the cell (:meth:`RunDir.lock`), shared for one that waits for
it (:meth:`RunDir.wait`).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, DamagedFileError, MissingCheckpointError
from ..fileio import read_json, sha256_file

# What every finished run's metrics.json holds; a file without them (truncated, edited, or written by
# hand) is not a finished run.
REQUIRED_KEYS = ("run_id", "config_hash", "config", "test", "best_epoch", "selected_by", "val_at_best", "history",
                 "wall_time_s", "train_time_s", "images_per_s", "device")


class UnreadableRecord(ValueError):
    """A metrics.json that is not a finished run's record; the message names the file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def read_record(path: str | os.PathLike, run_id: str | None = None) -> dict[str, Any]:
    """A run's metrics.json, checked: raises UnreadableRecord naming the file when it is not valid
    JSON, not a mapping, misses a key every finished run writes, or records another run than
    ``run_id`` (when given: a study's cell knows its id; a run folder chosen by hand has any name)."""
    path = Path(path)
    try:
        record = read_json(path)
    except json.JSONDecodeError as error:
        raise UnreadableRecord(path, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                                     f"the file is incomplete or damaged") from None
    except UnicodeDecodeError:
        raise UnreadableRecord(path, "not UTF-8 text; the file is damaged") from None
    except OSError as error:
        raise UnreadableRecord(path, f"cannot be read ({error.strerror or error})") from None
    if not isinstance(record, dict):
        raise UnreadableRecord(path, f"holds a JSON {type(record).__name__}, not a run's record (a mapping)")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise UnreadableRecord(path, f"lacks {', '.join(map(repr, missing))}; a finished run's record has "
                                     f"{', '.join(REQUIRED_KEYS)}")
    if run_id is not None and record["run_id"] != run_id:
        raise UnreadableRecord(path, f"records run {record['run_id']!r}, not {run_id!r} of its folder")
    return record


def record_problem(path: str | os.PathLike, run_id: str | None = None) -> str | None:
    """Why ``path`` is not a finished run's readable record (it is absent, or unreadable), or None."""
    path = Path(path)
    if not path.is_file():
        return "not written"
    try:
        read_record(path, run_id)
    except UnreadableRecord as error:
        return error.reason
    return None


CHECKPOINT_KEYS = ("model", "config")  # what every run's checkpoint.pt holds (dmlbench.training.record)


def _checkpoint_fault(error: Exception) -> str:
    """Why torch.load refused a checkpoint, in one line."""
    text = str(error)
    if "Weights only load failed" in text:
        return ("it holds objects other than tensors, numbers and text, so it was not loaded (a dmlbench "
                "checkpoint holds only those; this file was not written by dmlbench or was tampered with)")
    first = text.strip().splitlines()[0] if text.strip() else "the file ends too early"
    return f"cannot be read ({type(error).__name__}: {first[:160]}); the file is truncated or damaged"


class _Unusable(Exception):
    """Why a checkpoint cannot be used (the reason alone; callers add the path)."""


def _load_state(path: Path, device: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file: each is named in one line
        raise _Unusable(_checkpoint_fault(error)) from None
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise _Unusable(f"not a run's checkpoint (a mapping with {', '.join(CHECKPOINT_KEYS)})")
    return state


def _compare(path: Path, expected: dict[str, Any], thorough: bool = True) -> None:
    """The file's size (and when ``thorough``, its SHA-256) against those the run recorded."""
    size = path.stat().st_size
    if size != expected.get("bytes", size):
        raise _Unusable(f"{size} bytes where the run wrote {expected['bytes']}: the file is truncated or damaged")
    if thorough and expected.get("sha256") and sha256_file(path) != expected["sha256"]:
        raise _Unusable("its SHA-256 differs from the one the run recorded: the file is damaged or was replaced")


def _zip_test(path: Path, thorough: bool = True) -> None:
    """The archive torch.save writes: its directory read, and when ``thorough`` every member read
    against its CRC (nothing is unpickled)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip() if thorough else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise _Unusable(f"not a whole checkpoint archive ({error}): the file is truncated or damaged") from None
    if bad is not None:
        raise _Unusable(f"its member {bad} fails its CRC check: the file is damaged")


def _verify(path: Path, expected: dict[str, Any] | None, thorough: bool = True) -> None:
    """The size and SHA-256 the run recorded (``{"bytes", "sha256"}``), or for older runs the archive's
    CRCs; not ``thorough``: the size, or the archive's directory (a truncated file), without reading it all."""
    _compare(path, expected, thorough) if expected else _zip_test(path, thorough)


def checkpoint_fault(path: str | os.PathLike, expected: dict[str, Any] | None = None, thorough: bool = True
                     ) -> str | None:
    """Why the checkpoint at ``path`` (it must exist) cannot be used, or None (:func:`_verify`)."""
    try:
        _verify(Path(path), expected, thorough)
    except _Unusable as fault:
        return str(fault)
    return None


def read_checkpoint(path: str | os.PathLike, device: str = "cpu", expected: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """A run's checkpoint.pt, checked (see :func:`checkpoint_fault`) and loaded as plain tensors,
    numbers and text: raises MissingCheckpointError or DamagedFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"{path}: no checkpoint there (a run keeps its network in {path.name}; "
                                     f"the repository ships few of them: run the cell again to get one)")
    try:
        _verify(path, expected)
        return _load_state(path, device)
    except _Unusable as fault:
        raise DamagedFileError(f"{path}: {fault}; {RECOVER}") from None


RECOVER = ("run its study again (or dmlbench run --study FILE --cell <run id>): the cell reruns beside its finished "
           "record and restores the file where the rerun reproduces that record; or restore it from a copy")


class CellBusy(RuntimeError):
    """Another process holds the cell's run-folder lock: it is running that cell now."""


def _flock_holders() -> set[tuple[int, int, int]] | None:
    """(device major, minor, inode) of every file an flock is held on, from Linux's /proc/locks;
    None where that file is absent (another system: who holds a lock is not known)."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    held = set()
    for line in text.splitlines():  # "1: FLOCK  ADVISORY  WRITE 11525 fe:00:2146393 0 EOF"
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK":  # a waiter's line reads "1: -> FLOCK ..."
            try:
                major, minor, inode = fields[5].split(":")
                held.add((int(major, 16), int(minor, 16), int(inode)))
            except ValueError:
                continue
    return held


class RunDir:
    """The files of one run folder, by role; its lock; its state."""

    METRICS = "metrics.json"
    CHECKPOINT = "checkpoint.pt"
    RESUME = "resume.pt"
    NOTEBOOK = "experiment.ipynb"
    RUNNING_NOTEBOOK = "experiment.running.ipynb"
    FAILED_NOTEBOOK = "experiment.failed.ipynb"
    FAILURE = "failure.json"
    KERNEL_LOG = "kernel.log"
    EXECUTION = "execution.json"
    LAUNCH_CONFIG = "launch_config.json"
    LAUNCH_LOG = "launch.log"
    LAUNCH_RESULT = "distributed_result.pt"
    LOCK = ".lock"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def resume(self) -> Path:
        return self.path / self.RESUME

    @property
    def notebook(self) -> Path:
        return self.path / self.NOTEBOOK

    @property
    def running_notebook(self) -> Path:
        return self.path / self.RUNNING_NOTEBOOK

    @property
    def failed_notebook(self) -> Path:
        return self.path / self.FAILED_NOTEBOOK

    @property
    def failure(self) -> Path:
        return self.path / self.FAILURE

    @property
    def kernel_log(self) -> Path:
        return self.path / self.KERNEL_LOG

    @property
    def execution(self) -> Path:
        return self.path / self.EXECUTION

    @property
    def launch_config(self) -> Path:
        return self.path / self.LAUNCH_CONFIG

    @property
    def launch_log(self) -> Path:
        return self.path / self.LAUNCH_LOG

    @property
    def launch_result(self) -> Path:
        return self.path / self.LAUNCH_RESULT

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    def require_folder(self) -> RunDir:
        """The folder, refused in one line when its path (or a folder above it) is a file."""
        for place in (self.path, *self.path.parents):
            if place.exists() and not place.is_dir():
                raise ConfigError(f"run folder {self.path}: {place} is a file, not a folder; give a folder "
                                  f"(it is made if absent), or leave --run-dir out for the default place")
            if place.is_dir():
                break
        return self

    # The lock ----------------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """An exclusive lock on the run folder (created if absent), held inside the ``with``: a
        second process running the same cell fails at once with CellBusy."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CellBusy(f"{self.path} is being run by another process") from None
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def wait(self) -> None:
        """Block until no process holds the folder's lock (the folder must exist)."""
        with open(self.lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            fcntl.flock(handle, fcntl.LOCK_UN)

    def is_locked(self) -> bool:
        """Whether a process (this one included) holds the folder's lock now, seen without taking it
        (Linux's /proc/locks; elsewhere, and for a folder without a lock file, False)."""
        try:
            found = os.stat(self.lock_file)
        except OSError:
            return False
        held = _flock_holders()
        return bool(held) and (os.major(found.st_dev), os.minor(found.st_dev), found.st_ino) in held

    # The state ---------------------------------------------------------------------------------

    def record_problem(self, run_id: str | None = None) -> str | None:
        """Why the folder holds no finished record of ``run_id`` (None: of any run), or None."""
        return record_problem(self.metrics, run_id)

    def is_done(self, run_id: str | None = None) -> bool:
        """Finished: its metrics.json is a complete, readable record (a damaged one is run again)."""
        return self.record_problem(run_id) is None

    def checkpoint_record(self) -> dict[str, Any] | None:
        """The checkpoint's size and SHA-256 as the run recorded them (None for older runs)."""
        try:
            found = read_json(self.metrics).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            return None
        return found if isinstance(found, dict) else None

    def read_checkpoint(self, device: str = "cpu") -> dict[str, Any]:
        """The run's checkpoint, checked against its record (:func:`read_checkpoint`)."""
        return read_checkpoint(self.checkpoint, device, self.checkpoint_record())

    def checkpoint_problem(self, thorough: bool = False) -> str | None:
        """Why the run's checkpoint.pt is damaged, or None: also when it is absent (normal for a shipped
        run). By default the quick check a study's status can afford for every cell (a truncated file);
        ``thorough`` reads it all, as loading it does (a changed byte too)."""
        if not self.checkpoint.is_file():
            return None
        return checkpoint_fault(self.checkpoint, self.checkpoint_record(), thorough)

    def saved_epoch(self) -> int | None:
        """The epoch after which the run's training state was saved (its restart continues from
        there); None without resume.pt, or when it cannot be read (the restart will say so)."""
        if not self.resume.is_file():
            return None
        import torch

        try:
            return int(torch.load(self.resume, map_location="cpu", weights_only=True)["epoch"])
        except Exception:  # unreadable: the restart will say so
            return None

    def state(self, run_id: str | None = None) -> str:
        """'done', 'running' (another process holds the lock), 'unreadable metrics.json (...): runs
        again', 'resumable after epoch N', 'failed: see failure.json' or 'to run'. ``run_id``: the
        run the record must be of (a study's cell knows it; None accepts any)."""
        problem = self.record_problem(run_id)
        if problem is None:
            damage = self.checkpoint_problem()
            return "done" if damage is None else f"done (but {self.checkpoint}: {damage}; {RECOVER})"
        if self.is_locked():
            return "running"
        if self.metrics.exists():
            return f"unreadable {self.METRICS} ({problem}): runs again"
        epoch = self.saved_epoch()
        if epoch is not None:
            return f"resumable after epoch {epoch}"
        if self.failure.is_file():
            return f"failed: see {self.FAILURE}"
        return "to run"
