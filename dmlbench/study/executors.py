"""Where a study's cells run: here, one after another or N at once; as submitit jobs on this
machine; or as a Slurm job array through submitit.

The executor only decides where a cell runs. Each cell is the same papermill execution of the
experiment notebook (``study.run_config``) writing the same files, so every executor keeps the same
promises: a finished cell is never run again; a failing cell leaves failure.json and the others
still run, and RunFailed names every failed cell at the end; a cell another process is running (its
run folder is locked) is waited for, not run twice.

    local            jobs=1: in this process, one cell after another; jobs=N: N worker processes,
                     each 'python -m dmlbench run --study S --cell ID'
    submitit-local   each cell a submitit job on this machine (its own process, its own log), N at once
    slurm            the cells as one Slurm job array (sbatch through submitit), array_parallelism at
                     once; this process waits for the array, then the report is built here

A study file's ``slurm:`` mapping holds the Slurm settings. Its keys are submitit's parameter names
(the cluster-specific ones without submitit's ``slurm_`` prefix)::

    slurm:
      partition: gpu
      account: my-project          # also: qos, constraint
      gpus_per_node: 1             # default 1 (0: a CPU-only job)
      cpus_per_task: 8             # default 8
      mem_gb: 32                   # default: the partition's
      timeout_min: 240             # default 240; a cell out of time is requeued (3 times at most)
      array_parallelism: 16        # cells running at once; default all (up to submitit's 256); --jobs wins
      job_name: dmlbench-default   # default dmlbench-<study name>
      log_folder: /shared/jobs     # submitit's job files and logs, also for submitit-local;
                                   # default build/jobs/<study name> (a relative path: in the repository)
      setup: [module load cuda, source .venv/bin/activate]   # shell lines run before each job
      additional_parameters: {mail-type: END}                 # any other sbatch option
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from submitit.helpers import Checkpointable

from ..errors import ConfigError, DiskFullError
from ..fileio import disk_full_error, is_disk_full
from ..paths import REPO_ROOT, results_dir
from ..training.rundir import RunDir
from .cluster import EXECUTORS, SLURM_DEFAULTS, SLURM_SETTINGS, _is_int, slurm_settings  # noqa: F401 (public here too)

if TYPE_CHECKING:  # dmlbench.study.cells imports torch, which a job's submission does not need
    from .cells import Cell, Study

log = logging.getLogger("dmlbench")

DONE, BUSY, FAILED = "done", "busy", "failed"
POLL_S = 1.0  # how often the running jobs are looked at
# submitit's LocalExecutor stops a job after its timeout (2 minutes unless told); a local cell runs as
# long as it takes.
LOCAL_TIMEOUT_MIN = 60 * 24 * 365


def _set_environ(environ: dict[str, str | None]) -> None:
    """A job's variables, set in the job before anything else (None: unset)."""
    for name, value in environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class CellJob(Checkpointable):
    """One cell as a submitit job: reloads the study in the job and runs that cell.

    Returns "done", or "busy" when another process holds the cell's lock (the study then waits for
    that process); a failed cell raises, so the job is marked failed. Checkpointable: a job pre-empted
    or out of time is requeued with this same callable, which runs the cell again (from its last
    checkpoint where the training keeps one). ``environ`` is set in the job first (None: unset), so it
    sees this study's results folder and data settings whatever the cluster passes on."""

    def __init__(self, study_path: str, run_id: str, environ: dict[str, str | None]):
        self.study_path = study_path
        self.run_id = run_id
        self.environ = environ

    def __call__(self) -> str:
        from .cells import CellBusy, load_study, run_config

        _set_environ(self.environ)
        cell = load_study(self.study_path).cell(self.run_id)
        try:
            run_config(cell.config)
        except CellBusy:
            return BUSY
        return DONE

    def __repr__(self) -> str:
        return f"CellJob({self.study_path!r}, {self.run_id!r})"


def job_folder(study: Study) -> Path:
    """Where submitit keeps a study's job files and logs: the study's ``slurm: log_folder``, else
    build/jobs/<study name> in the repository (build/ is not tracked)."""
    folder = Path(study.slurm.get("log_folder") or Path("build") / "jobs" / study.name).expanduser()
    return folder if folder.is_absolute() else REPO_ROOT / folder


def submitit_executor(study: Study, cluster: str, *, jobs: int | None = None):
    """submitit's executor for ``cluster`` ("local" or "slurm") with the study's settings. Slurm: each
    job's files in a folder named by its id; local: one folder per call (local job ids are process
    ids, which come back)."""
    import submitit

    if cluster == "slurm":
        missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
        if missing:
            raise ConfigError(f"executor slurm: no {' or '.join(missing)} here: run it where Slurm's commands are "
                              f"(a cluster's login node); 'submitit-local' runs the same jobs on this machine")
        folder = job_folder(study) / "%j"
        settings = {**SLURM_DEFAULTS, "job_name": f"dmlbench-{study.name}", **study.slurm}
        if jobs is not None:  # the command line wins over the study file
            settings["array_parallelism"] = jobs
        if settings["gpus_per_node"] == 0:
            settings["gpus_per_node"] = None  # no --gpus-per-node line: a CPU-only job
        parameters = {SLURM_SETTINGS[key][2]: value for key, value in settings.items() if SLURM_SETTINGS[key][2]}
    else:
        folder = job_folder(study) / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        parameters = {"timeout_min": LOCAL_TIMEOUT_MIN}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**parameters)
    return executor


def _job_environ(cluster: str) -> dict[str, str | None]:
    """The variables a job sets before running its cell: this process's DMLBENCH_* ones, the results
    folder made absolute, and on this machine the GPUs this process sees (submitit's local executor
    would otherwise hide them: it exposes only the GPUs a job asks for)."""
    environ: dict[str, str | None] = {k: v for k, v in os.environ.items() if k.startswith("DMLBENCH_")}
    environ["DMLBENCH_RESULTS"] = str(results_dir().absolute())
    if cluster == "local":
        environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return environ


Outcome = tuple["Cell", str, str]  # the cell, DONE / BUSY / FAILED, what went wrong


def _in_process(study: Study, todo: list[Cell]) -> Iterator[Outcome]:
    from .cells import CellBusy, RunFailed, run_config

    for position, cell in enumerate(todo):
        try:
            run_config(cell.config)
        except OSError as error:  # a full disk ends the study here, in one line; the finished cells stay
            if not is_disk_full(error):
                raise
            raise disk_full_error(cell.run_dir, *_space_for(study, len(todo) - position)) from None
        except CellBusy:  # another study is running this cell: ours runs the rest, then waits for it
            yield cell, BUSY, ""
        except RunFailed as error:
            log.error("%s", error)
            yield cell, FAILED, str(error)
        else:
            yield cell, DONE, ""


def _space_for(study: Study, cells: int) -> tuple[int, str]:
    """About the space ``cells`` more cells need: the median size of the study's finished run folders."""
    import statistics

    sizes = [sum(f.stat().st_size for f in cell.run_dir.rglob("*") if f.is_file())
             for cell in study.cells if cell.is_done()]
    if not sizes:
        return 0, ""
    return int(statistics.median(sizes) * cells), f"{cells} cells left at the median size of its finished run folders"


def _workers(study: Study, todo: list[Cell], jobs: int) -> Iterator[Outcome]:
    from .cells import BUSY_EXIT

    pending, running, full = list(todo), [], []
    while pending or running:
        while pending and len(running) < jobs:
            cell = pending.pop(0)
            command = [sys.executable, "-m", "dmlbench", "run", "--study", str(study.path), "--cell", cell.run_id]
            running.append((cell, subprocess.Popen(command)))
        time.sleep(POLL_S / 2)
        for cell, process in list(running):
            if process.poll() is None:
                continue
            running.remove((cell, process))
            if process.returncode == 0:
                yield cell, DONE, ""
            elif process.returncode == BUSY_EXIT:
                yield cell, BUSY, ""
            elif process.returncode == DiskFullError.exit_status:  # its worker said so: no other cell starts
                full.append(cell)
                pending.clear()
            else:
                yield cell, FAILED, f"'dmlbench run' exited with status {process.returncode}"
    if full:
        left = sum(not cell.is_done() for cell in todo)
        raise disk_full_error(full[0].run_dir.parent, *_space_for(study, left))


def _local(study: Study, todo: list[Cell], jobs: int | None) -> Iterator[Outcome]:
    """One cell after another in this process, or ``jobs`` worker processes."""
    return _workers(study, todo, jobs) if (jobs or 1) > 1 else _in_process(study, todo)


def _submitit_jobs(cluster: str) -> Callable[[Study, list[Cell], int | None], Iterator[Outcome]]:
    def run(study: Study, todo: list[Cell], jobs: int | None) -> Iterator[Outcome]:
        executor = submitit_executor(study, cluster, jobs=jobs)
        # Slurm gets every cell at once, as one array, and runs array_parallelism of them at a time;
        # locally, each batch of free slots is submitted as its jobs end.
        at_once = len(todo) if cluster == "slurm" else jobs or 1
        study_path, environ = str(study.path.absolute()), _job_environ(cluster)
        pending, running = list(todo), []
        while pending or running:
            if pending and len(running) < at_once:
                batch, pending = pending[:at_once - len(running)], pending[at_once - len(running):]
                submitted = executor.submit_array([CellJob(study_path, cell.run_id, environ) for cell in batch])
                log.info("%s: submitted %s", study.name, ", ".join(job.job_id for job in submitted))
                running += zip(batch, submitted)
            for cell, job in list(running):
                if job.done():
                    running.remove((cell, job))
                    yield _job_outcome(cell, job)
            if running:
                time.sleep(POLL_S)
    return run


def _job_outcome(cell: Cell, job) -> Outcome:
    try:
        return cell, job.result(), ""
    except Exception as error:  # submitit's FailedJobError (with the job's traceback) or UncompletedJobError
        parts = str(error).split("-" * 22)  # FailedJobError puts the traceback between two such rules
        lines = [line for line in (parts[1] if len(parts) > 2 else str(error)).splitlines() if line.strip()]
        return cell, FAILED, (f"its job {job.job_id} failed: {lines[-1].strip() if lines else type(error).__name__} "
                              f"(log: {job.paths.stderr})")


RUNNERS = {"local": _local, "submitit-local": _submitit_jobs("local"), "slurm": _submitit_jobs("slurm")}


def _failure_line(cell: Cell, detail: str) -> str:
    """A failed cell in the study's summary: the error its failure.json records, else ``detail``."""
    failure = cell.folder.failure
    if failure.is_file():
        try:
            record = json.loads(failure.read_text())
            notebook = cell.run_dir / record.get("executed_notebook", RunDir.FAILED_NOTEBOOK)
            return f"{cell.run_id} failed: {record['error']} (executed notebook: {notebook})"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged: say so, keep the summary
            return f"{cell.run_id} failed; its {failure} cannot be read"
    return detail if detail.startswith(cell.run_id) else f"{cell.run_id}: {detail}"


def _with_bar(outcomes: Iterator[Outcome], total: int, label: str) -> Iterator[Outcome]:
    """The cells' outcomes as they come, counted on a bar on stderr: cells finished of those to run,
    and an estimate of the time left."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=f"{label}: cells", unit="cell", file=sys.stderr) as bar:
        for outcome in outcomes:
            bar.update()
            yield outcome


def run_cells(study: Study, *, executor: str = "local", jobs: int | None = None) -> list[Path]:
    """Run every unfinished cell of ``study`` with ``executor`` (one of EXECUTORS); ``jobs``: cells at
    once (local and submitit-local: default 1; slurm: default the study's array_parallelism).
    Returns the finished cells' metrics.json paths; raises RunFailed naming every failed cell."""
    from .cells import RunFailed

    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid executors: {', '.join(EXECUTORS)}")
    if jobs is not None and (not _is_int(jobs) or jobs < 1):
        raise ConfigError(f"jobs: expected a whole number of cells at once, at least 1, got {jobs!r}")
    todo = [cell for cell in study.cells if cell.needs_run()]  # a damaged checkpoint is restored by a rerun
    log.info("%s: %d cells, %d finished, %d to run, %d skipped as incompatible; executor %s", study.name,
             len(study.cells), len(study.cells) - len(todo), len(todo), len(study.skipped), executor)
    failures, busy = [], []
    for cell, outcome, detail in _with_bar(RUNNERS[executor](study, todo, jobs), len(todo), study.name) if todo else ():
        if outcome == BUSY:
            busy.append(cell)
        elif outcome == FAILED or not cell.is_done():
            failures.append(_failure_line(cell, detail or f"finished without its {RunDir.METRICS}"))
    for cell in busy:
        cell.folder.wait()
        if not cell.is_done():
            failures.append(f"{cell.run_id}: run by another process, which did not finish it")
    if failures:
        raise RunFailed(f"{len(failures)} of {len(todo)} cells failed (the others finished):\n  "
                        + "\n  ".join(failures) + f"\neach failed run folder's {RunDir.FAILURE} holds its error and traceback")
    return [cell.metrics_path for cell in study.cells if cell.is_done()]


class TuneJob(Checkpointable):
    """Trials of one search as a submitit job: reloads the study in the job and tunes at most
    ``max_trials`` (None: until the budget is spent). Several such jobs on one search share its storage
    (use ``storage: journal`` where they run on several machines); a job requeued after pre-emption
    starts a new tuner, which retries the trial it was running."""

    def __init__(self, study_path: str, search_id: str, environ: dict[str, str | None], max_trials: int | None):
        self.study_path, self.search_id, self.environ, self.max_trials = study_path, search_id, environ, max_trials

    def __call__(self) -> str:
        from .cells import load_study
        from .tuner import tune

        _set_environ(self.environ)
        tune(load_study(self.study_path).search(self.search_id), max_trials=self.max_trials)
        return DONE

    def __repr__(self) -> str:
        return f"TuneJob({self.study_path!r}, {self.search_id!r}, max_trials={self.max_trials})"


def run_searches(study: Study, *, executor: str = "local", jobs: int | None = None) -> None:
    """Spend the budget of every unfinished search: here one after another (jobs=1) or ``jobs`` tuner
    processes; as submitit jobs; on Slurm, one array task per remaining trial, all sharing the storage.
    Raises RunFailed naming every search that did not finish."""
    from .cells import RunFailed

    pending = study.pending
    if not pending:
        return
    log.info("%s: %d searches to finish (%s each)", study.name, len(pending), study.tuning.budget_text())
    if executor == "local" and (jobs or 1) == 1:
        from .tuner import tune

        for search in pending:
            tune(search)
    elif executor == "local":
        _tuner_processes(study, pending, jobs)
    else:
        _tuner_jobs(study, pending, executor, jobs)
    unfinished = [search.search_id for search in pending if not search.is_done()]
    if unfinished:
        raise RunFailed(f"{len(unfinished)} of {len(pending)} searches did not finish: {', '.join(unfinished)}; "
                        f"their trials/*.json say why, and the same command continues them")


def _tuner_processes(study: Study, pending: list, jobs: int) -> None:
    waiting, running = list(pending), []
    while waiting or running:
        while waiting and len(running) < jobs:
            search = waiting.pop(0)
            running.append(subprocess.Popen([sys.executable, "-m", "dmlbench", "tune", "--study", str(study.path),
                                             "--search", search.search_id]))
        time.sleep(POLL_S / 2)
        running = [process for process in running if process.poll() is None]


def _tuner_jobs(study: Study, pending: list, executor: str, jobs: int | None) -> None:
    """submitit-local: one job per search, ``jobs`` at once; slurm: one task per remaining trial."""
    cluster = "slurm" if executor == "slurm" else "local"
    submitter = submitit_executor(study, cluster, jobs=jobs)
    study_path, environ = str(study.path.absolute()), _job_environ(cluster)
    if cluster == "slurm":
        if study.tuning.trials is not None:  # a budget in trials: one task per trial
            tasks = [TuneJob(study_path, s.search_id, environ, 1) for s in pending for _ in range(study.tuning.trials)]
        else:  # a budget in epochs: a few tuners per search, each until the budget is spent (they share it)
            tasks = [TuneJob(study_path, s.search_id, environ, None) for s in pending for _ in range(jobs or 4)]
        submitted = submitter.submit_array(tasks)
        for job in submitted:  # a failed task's trial is retried by the next tuner on its search
            _wait_quietly(job)
        return
    for start in range(0, len(pending), jobs or 1):
        for job in submitter.submit_array([TuneJob(study_path, s.search_id, environ, None)
                                           for s in pending[start:start + (jobs or 1)]]):
            _wait_quietly(job)


def _wait_quietly(job) -> None:
    try:
        job.result()
    except Exception as error:  # the search's state says what is left; the caller names unfinished ones
        log.error("tuning job %s failed: %s (log: %s)", job.job_id, str(error).splitlines()[-1:] or error, job.paths.stderr)


def run_study(study: Study, *, jobs: int | None = None, executor: str = "local") -> list[Path]:
    """Run every unfinished cell; ``executor`` decides where ("local", the default, runs them here,
    ``jobs`` at once; "submitit-local"; "slurm").

    A cell that fails does not stop the others: its error and traceback go to ``failure.json`` in its
    run folder (beside ``experiment.failed.ipynb``), the remaining cells run, and RunFailed is raised
    at the end with every failed cell named. Finished cells' results are never touched. A cell another
    process is running (its run folder is locked) is left to it: this study runs the other cells, then
    waits for that one, so two studies started together run each cell once.

    A study with a tuning block first finishes its searches (:func:`run_searches`), then runs its
    default and tuned cells."""
    if study.pending:
        from .cells import load_study

        run_searches(study, executor=executor, jobs=jobs)
        study = load_study(study.path)
    return run_cells(study, executor=executor, jobs=jobs)
