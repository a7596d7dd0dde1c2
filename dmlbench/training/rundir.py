"""A run's folder (results/runs/<run id>/): the one place that names its files.

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
"""

from __future__ import annotations

import os
from pathlib import Path


class RunDir:
    """The files of one run folder, by role."""

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
