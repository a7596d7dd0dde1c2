"""Building the report: notebooks/report.ipynb executed with papermill over a study's results into
results/report.ipynb, then rendered as results/report.html with the code hidden, and photographed as
Chromium shows it (figures/report_first_screen.png).

The notebook does the work, calling the other modules of this package: :mod:`.context` gathers the
runs, :mod:`.sections` writes and shows the tables and figures, :mod:`.narrative` writes the
sentences, :mod:`.summary` writes results/summary.json. Every number comes from the runs' records.

- The report always builds: failed runs (their error's first line), runs whose record is damaged
  (the file named, and why) and runs not made yet are listed first, and every section says in one
  line when it has nothing to show.
- Names from the study file (the study's, its losses', miners', networks' and their arguments) are
  shown as text: the sentences are rendered with any HTML they hold escaped (:mod:`.safehtml`) and the
  tables escape every cell, so a study file you were sent cannot put a script into report.html.
- A full disk ends the build in one line (dmlbench.errors.DiskFullError); every file is then as it
  was or whole, as each is written atomically (papermill's versions of the notebook included).
- A rebuild over the same runs changes no byte: every output is written only when its content
  changes, floats are stored to 12 significant digits, figures carry no software stamp, the executed
  notebook keeps no timestamps, and summary.json keeps the report time of the build that produced
  its numbers.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..fileio import compact_png, disk_full_error, is_disk_full, write_if_changed
from ..paths import REPO_ROOT, notebook, results_dir
from ..study.kernel import execute_notebook
from .labels import shown_path
from .summary import SUMMARY_FILE, add_report_time

log = logging.getLogger("dmlbench")

REPORT_NOTEBOOK = "report.ipynb"
SCREENSHOT = "report_first_screen.png"
REPORT_KERNEL_LOG = "report.kernel.log"  # the kernel process's own output, kept when the report fails

# What papermill and the kernel record about when a cell ran: it changes with every build and says
# nothing about the study, so it is left out of results/report.ipynb (and so of report.html).
VOLATILE_PAPERMILL = ("start_time", "end_time", "duration")
INJECTED_CELL_ID = "injected-parameters"


def tidy_notebook(nb, input_path: str, output_path: str):
    """The executed report notebook without its timestamps and durations, with the cell that papermill
    injects given a fixed id (papermill draws a random one) and the paths shown as the repository's."""
    meta = nb.metadata.get("papermill", {})
    for key in VOLATILE_PAPERMILL:
        meta.pop(key, None)
    if meta:
        meta["input_path"], meta["output_path"] = input_path, output_path
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for key in VOLATILE_PAPERMILL:
            cell.metadata.get("papermill", {}).pop(key, None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = INJECTED_CELL_ID
    return nb


def render_html(nb, title: str = "dmlbench report") -> str:
    """The executed report notebook as HTML with code cells hidden."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def build_report(study_path: str | os.PathLike, *, results: str | os.PathLike | None = None) -> Path:
    """Execute notebooks/report.ipynb for a study into results/report.ipynb and render report.html.

    Every output (tables, figures, summary.json, the notebook, the HTML, the screenshot) is rewritten
    only when its content changes, so a rebuild over the same runs leaves every file as it was."""
    import fcntl

    results = Path(results) if results else results_dir()
    results.mkdir(parents=True, exist_ok=True)
    with open(results / ".report.lock", "w") as lock:  # two studies finishing together: one report at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_report(study_path, results)
        except OSError as error:  # a full disk: one line, and every file as it was or whole (atomic writes)
            if not is_disk_full(error):
                raise
            raise disk_full_error(results, getattr(error, "bytes_written", 0), "the file being written") from None


def _execute(study_path, results: Path, shown: str) -> Path:
    """Runs the report notebook into results/report.running.ipynb (kept as report.failed.ipynb, with
    the kernel's log, when it fails)."""
    running = results / "report.running.ipynb"
    try:
        execute_notebook(notebook(REPORT_NOTEBOOK), running, parameters={"study": str(study_path), "results": shown},
                         cwd=REPO_ROOT, kernel_log=results / REPORT_KERNEL_LOG, progress="report")
    except BaseException:
        if running.exists():
            os.replace(running, results / "report.failed.ipynb")
        raise
    return running


def _screenshot(results: Path) -> None:
    """What a reader sees first, as Chromium shows it; without a browser the report stands without it."""
    try:
        from .browser import screenshot

        shot, raw = results / "figures" / SCREENSHOT, results / "figures" / f".{SCREENSHOT}.raw"
        try:  # taken aside, then written in indexed colour only when its bytes change (as every figure)
            screenshot(results / "report.html", raw)
            write_if_changed(shot, compact_png(raw.read_bytes()))
        finally:
            raw.unlink(missing_ok=True)
    except Exception as error:  # noqa: BLE001 - no browser here: the report stands without its screenshot
        log.warning("no screenshot of the report: %s", error)


def _build_report(study_path, results: Path) -> Path:
    import nbformat

    started = time.time()
    shown = shown_path(results.resolve())  # relative to the repository (the kernel's working directory) when inside it
    running = _execute(study_path, results, shown)
    nb = tidy_notebook(nbformat.read(str(running), as_version=4), shown_path(notebook(REPORT_NOTEBOOK)),
                       f"{shown}/{REPORT_NOTEBOOK}")
    write_if_changed(results / REPORT_NOTEBOOK, nbformat.writes(nb) + "\n")
    running.unlink()
    for stale in (results / "report.failed.ipynb", results / REPORT_KERNEL_LOG):  # an earlier build's
        stale.unlink(missing_ok=True)
    write_if_changed(results / "report.html", render_html(nb, f"dmlbench report: {Path(study_path).stem}"))
    _screenshot(results)
    add_report_time(results / SUMMARY_FILE, time.time() - started)  # new numbers: this build's time goes with them
    return results / "report.html"
