"""From runs to the written study: tables, figures, the executed report notebook and its HTML.

The report notebook (notebooks/report.ipynb) calls the functions here; ``build_report`` executes it
with papermill into results/report.ipynb and renders results/report.html with the code hidden. Every
number comes from the runs' metrics.json files.

- The report always builds: failed runs (their error's first line), runs whose metrics.json is
  damaged (the file named, and why) and runs not made yet are listed first, and every section says
  in one line when it has nothing to show.
- A rebuild over the same runs changes no byte: every output is written only when its content
  changes, floats are stored to SIGNIFICANT_DIGITS, figures carry no software stamp, the executed
  notebook keeps no timestamps, and summary.json keeps the report time of the build that produced
  its numbers.
- What a first reader sees comes first: the study's counts, findings made from the numbers, and
  every cell in one table, best first, metrics under their usual names (METRIC_LABELS) in one order
  (DISPLAY_METRICS).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import read_json, write_if_changed
from ..study.kernel import execute_notebook
from ..paths import REPO_ROOT, notebook, results_dir
from ..training.record import METRICS_FILE, UnreadableRecord, read_record
from ..study.cells import FAILURE_FILE

log = logging.getLogger("dmlbench")

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "nmi", "ami")
METRIC_LABELS = {"recall@1": "Recall@1", "recall@2": "Recall@2", "recall@4": "Recall@4", "recall@8": "Recall@8",
                 "r_precision": "R-Precision", "map@r": "MAP@R", "nmi": "NMI", "ami": "AMI"}
REPORT_NOTEBOOK = "report.ipynb"
SCREENSHOT = "report_first_screen.png"
REPORT_KERNEL_LOG = "report.kernel.log"  # the kernel process's own output, kept when the report fails
DIAGNOSTICS = ("spectral_decay", "intra_class_distance", "inter_class_distance", "intra_over_inter")
DIAGNOSTIC_LABELS = {"spectral_decay": "spectral decay (rho)", "intra_class_distance": "intra-class distance",
                     "inter_class_distance": "inter-class distance", "intra_over_inter": "intra / inter (pi ratio)"}
# The direction of the relation to Recall@1 that Roth et al. (ICML 2020) report: R@1 falls as the
# spectral decay grows (compression hurts generalisation) and rises with the intra / inter ratio
# (a less dense embedding space generalises better).
ROTH_SIGNS = {"spectral_decay": -1, "intra_over_inter": +1}


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when inside it (results/runs/...), else absolute."""
    path = Path(path).absolute()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _records(runs: str | os.PathLike):
    """Every finished run's record under ``runs`` (a metrics.json that :func:`dmlbench.training.record.read_record`
    accepts), by folder name; damaged ones are left out here (:func:`cell_status` names them)."""
    for path in sorted(Path(runs).glob(f"*/{METRICS_FILE}")):
        try:
            yield read_record(path, path.parent.name)  # under runs/, a run's folder is named after it
        except UnreadableRecord:
            continue


RUN_COLUMNS = ["run_id", "dataset", "loss", "miner", "seed", "config_hash", *METRICS, *DIAGNOSTICS,
               "excluded_queries", "epochs", "best_epoch", "val_at_best", "wall_time_s", "train_time_s",
               "images_per_s", "device", "preset", "preset_deviations", "loss_kwargs", "miner_kwargs"]


def load_runs(runs: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run (a readable, complete metrics.json under ``runs``); the columns are
    there even when no run is."""
    rows = []
    for record in _records(runs):
        config = record["config"]
        row = {"run_id": record["run_id"], "dataset": config["dataset"], "loss": config["loss"],
               "miner": config["miner"], "seed": config["seed"], "config_hash": record["config_hash"]}
        row.update({m: record["test"].get(m, np.nan) for m in METRICS})
        row.update({d: (record.get("diagnostics") or {}).get(d, np.nan) for d in DIAGNOSTICS})
        row.update({"excluded_queries": record["test"].get("num_excluded_queries"),
                    "epochs": config["epochs"], "best_epoch": record["best_epoch"],
                    "val_at_best": record["val_at_best"].get(record["selected_by"]),
                    "wall_time_s": record["wall_time_s"], "train_time_s": record["train_time_s"],
                    "images_per_s": record["images_per_s"], "device": record["device"],
                    "preset": config.get("preset"),
                    "preset_deviations": "; ".join((record.get("preset") or {}).get("deviations", [])),
                    "loss_kwargs": json.dumps(config["loss_kwargs"], sort_keys=True),
                    "miner_kwargs": json.dumps(config["miner_kwargs"], sort_keys=True)})
        row.update({m: v for m, v in record["test"].items() if m.startswith("recall@") and m not in row})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.reindex(columns=RUN_COLUMNS + [c for c in table.columns if c not in RUN_COLUMNS])


def load_histories(runs: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch history of every finished run, long format."""
    rows = []
    for record in _records(runs):
        for h in record["history"]:
            rows.append({"run_id": record["run_id"], "loss_name": record["config"]["loss"],
                         "miner": record["config"]["miner"], "seed": record["config"]["seed"], **h})
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "loss_name", "miner", "seed", "epoch"])


def dataset_summary(runs: str | os.PathLike, dataset: str) -> dict[str, Any]:
    """The split sizes and classes recorded by the first finished run on ``dataset``."""
    for record in _records(runs):
        if record["config"]["dataset"] == dataset and record.get("dataset"):
            return record["dataset"]
    return {}


def identical_cells(runs: pd.DataFrame) -> list[list[str]]:
    """Groups of cells (as 'loss + miner') of one dataset whose test metrics agree to every digit in
    every seed: their training took the same steps, however different their configurations look."""
    groups = []
    for _, part in runs.groupby("dataset", sort=False):
        digits = part[list(METRICS)].round(12).astype(str).agg("|".join, axis=1)
        keys = {}
        for (loss, miner), cell in part.assign(_digits=digits).groupby(["loss", "miner"], sort=False):
            key = tuple(sorted(zip(cell["seed"], cell["_digits"])))
            keys.setdefault(key, []).append(cell_label(loss, miner))
        groups += [sorted(labels) for labels in keys.values() if len(labels) > 1]
    return groups


def still_improving(runs: pd.DataFrame) -> int:
    """Runs whose validation score was best at their last epoch (training may not have converged)."""
    return int((runs["best_epoch"] == runs["epochs"]).sum())


STATES = ("done", "failed", "unreadable", "missing", "skipped")  # the states of a cell, as cell_status gives them


def cell_status(manifest: dict[str, Any], runs: str | os.PathLike) -> pd.DataFrame:
    """Every cell of the study with its state: done, failed (the error's first line), unreadable (the
    damaged metrics.json named, and why), missing (not run yet), or skipped as incompatible."""
    runs = Path(runs)
    rows = []
    for cell in manifest["cells"]:
        run_dir = runs / cell["run_id"]
        state, note = "missing", "not run yet"
        if (run_dir / METRICS_FILE).exists():
            try:
                read_record(run_dir / METRICS_FILE, cell["run_id"])
                state, note = "done", ""
            except UnreadableRecord as damaged:
                state, note = "unreadable", f"{shown_path(damaged.path)}: {damaged.reason}"
        elif (run_dir / FAILURE_FILE).is_file():
            state, note = "failed", failure_line(run_dir / FAILURE_FILE)
        elif (run_dir / "experiment.failed.ipynb").is_file():
            state, note = "failed", failure_message(run_dir / "experiment.failed.ipynb")
        rows.append({**{k: cell[k] for k in ("dataset", "loss", "miner", "seed", "run_id")}, "state": state, "note": note})
    for skip in manifest["skipped"]:
        rows.append({"dataset": skip["dataset"], "loss": skip["loss"], "miner": skip["miner"], "seed": skip["seed"],
                     "run_id": "", "state": "skipped", "note": skip["reason"]})
    return pd.DataFrame(rows, columns=["dataset", "loss", "miner", "seed", "run_id", "state", "note"])


def failure_line(path: Path) -> str:
    """The first line of the error a failed cell's failure.json records."""
    try:
        error = str(read_json(path)["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"failed ({shown_path(path)} unreadable)"
    return error.strip().splitlines()[0] if error.strip() else "failed"


def failure_message(path: Path) -> str:
    """The error a failed executed notebook ended with."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "failed (notebook unreadable)"
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename')}: {output.get('evalue')}"
    return "failed"


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean (and standard deviation, seeds count) of every metric per dataset x loss x miner."""
    if runs.empty:
        return pd.DataFrame()
    grouped = runs.groupby(["dataset", "loss", "miner"], sort=True)
    mean = grouped[list(METRICS)].mean()
    std = grouped[list(METRICS)].std(ddof=1).add_suffix("_std")
    out = pd.concat([mean, std], axis=1)
    out["seeds"] = grouped.size()
    out["wall_time_s"] = grouped["wall_time_s"].mean()
    return out.reset_index()


def pivot(summary: pd.DataFrame, dataset: str, metric: str, losses: list[str] | None = None,
          miners: list[str] | None = None) -> pd.DataFrame:
    """loss x miner table of one metric (mean over seeds), rows and columns in study order."""
    table = summary[summary["dataset"] == dataset].pivot(index="loss", columns="miner", values=metric)
    if losses:
        table = table.reindex([l for l in losses if l in table.index])
    if miners:
        table = table.reindex(columns=[m for m in miners if m in table.columns])
    return table


def grid_losses(runs: pd.DataFrame, dataset: str, losses: list[str] | None = None) -> list[str]:
    """The losses of ``dataset`` run with more than one miner (the loss x miner grid), in ``losses``'
    order (else alphabetical)."""
    part = runs[runs["dataset"] == dataset]
    several = set(part.groupby("loss")["miner"].nunique().loc[lambda n: n > 1].index)
    return [l for l in (losses or sorted(several)) if l in several]


def by_result(table: pd.DataFrame, metric: str = "map@r") -> pd.DataFrame:
    """Rows best first by ``metric`` (ties: by Recall@1, then as they came)."""
    keys = [metric] + (["recall@1"] if metric != "recall@1" and "recall@1" in table else [])
    return table.sort_values(keys, ascending=False, kind="stable", na_position="last")


def heatmap(table: pd.DataFrame, title: str, skipped: set[tuple[str, str]] = frozenset()):
    """A compact loss x miner heatmap with the values written in the cells; (loss, miner) pairs in
    ``skipped`` (incompatible) are marked as such, other empty cells are not in the study."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(0.95 * max(len(table.columns), 2) + 2.2, 0.45 * max(len(table.index), 1) + 1.9))
    sns.heatmap(table.astype(float), annot=True, fmt=".3f", cmap="viridis", annot_kws={"fontsize": 8},
                cbar_kws={"fraction": 0.03, "pad": 0.015}, linewidths=0.5, linecolor="white", ax=ax)
    for row, loss in enumerate(table.index):
        for col, miner in enumerate(table.columns):
            if (loss, miner) in skipped:
                ax.text(col + 0.5, row + 0.5, "skipped:\nincompatible", ha="center", va="center", fontsize=7,
                        color="gray")
    ax.set(title=title, xlabel="miner", ylabel="loss")
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.tick_params(axis="y", labelrotation=0)
    fig.tight_layout()
    return fig


def curves_figure(histories: pd.DataFrame, key: str = "val_recall@1", columns: int = 4,
                  order: list[str] | None = None, ylabel: str | None = None):
    """Validation curves: one panel per loss (wrapped into rows, in ``order``), one line per miner,
    mean over seeds."""
    from matplotlib import pyplot as plt

    present = set(histories["loss_name"])
    losses = [l for l in order if l in present] if order else sorted(present)
    rows = -(-len(losses) // columns)
    cols = min(columns, len(losses))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=key != "loss")
    for ax in axes.flat[len(losses):]:
        ax.set_visible(False)
    for ax, loss in zip(axes.flat, losses):
        part = histories[histories["loss_name"] == loss]
        for miner, lines in part.groupby("miner", sort=False):
            mean = lines.groupby("epoch")[key].mean().dropna()  # epoch 0 has no training loss
            ax.plot(mean.index, mean.values, marker="o", markersize=3, label=miner)
        ax.set(title=loss, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel or f"validation {METRIC_LABELS.get(key[4:], key)}")
    fig.tight_layout()
    return fig


def figure_description(fig, fallback: str = "") -> str:
    """What a figure shows, for its alternative text: its overall title, else its panels' titles."""
    titles = [fig.get_suptitle()] if fig.get_suptitle() else []
    titles += [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    return "; ".join(list(dict.fromkeys(titles))[:4]) or fallback


def save_figure(fig, name: str, figures: Path, *, show: bool = True, alt: str | None = None) -> Path:
    """Save as PNG under results/figures/ (rewritten only when its bytes change: no date or software
    version in it), show the same picture in the notebook with alternative text, and close the figure."""
    import base64
    import html
    import io as _io

    from matplotlib import pyplot as plt

    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    path = figures / f"{name}.png"
    write_if_changed(path, buffer.getvalue())
    if show:
        from IPython.display import HTML, display

        text = html.escape(alt or figure_description(fig, name.replace("_", " ")), quote=True)
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        display(HTML(f'<img src="data:image/png;base64,{data}" alt="{text}" style="max-width: 100%">'))
    plt.close(fig)
    return path


SIGNIFICANT_DIGITS = 12  # floats are stored to this many digits: sums whose order varies with the
                         # machine's vector units differ in the 16th-17th digit, and must not show


def rounded(value: Any) -> Any:
    """``value`` with every float rounded to SIGNIFICANT_DIGITS (NaN and infinity as None), numpy
    scalars as Python numbers, in dicts, lists and tuples too."""
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}") if np.isfinite(value) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def save_table(table: pd.DataFrame, name: str, tables: Path, index: bool = True) -> Path:
    """Save as CSV under results/tables/, floats to SIGNIFICANT_DIGITS; rewritten only when it changes."""
    path = tables / f"{name}.csv"
    floats = table.map(lambda v: float(f"{v:.{SIGNIFICANT_DIGITS}g}") if isinstance(v, float) else v)
    write_if_changed(path, floats.to_csv(index=index))
    return path


def json_text(obj: Any) -> str:
    """JSON as the project writes it (indent 2, newline at the end), floats :func:`rounded`."""
    return json.dumps(rounded(obj), indent=2, sort_keys=False) + "\n"


REPORT_TIME_KEY = "report_wall_s"


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> bool:
    """results/summary.json (what the README's results block is made of), floats :func:`rounded`.
    When the numbers are those already there, the file is left as it is, with the report time it
    records (that of the build that produced them); otherwise the new summary is written without one,
    and :func:`build_report` adds this build's. Returns whether it wrote."""
    path = Path(path)
    summary = rounded(summary)
    try:
        old = read_json(path)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and REPORT_TIME_KEY in old and \
            {k: v for k, v in old.items() if k != REPORT_TIME_KEY} == json.loads(json_text(summary)):
        summary[REPORT_TIME_KEY] = old[REPORT_TIME_KEY]
    return write_if_changed(path, json_text(summary))


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
        return _build_report(study_path, results)


def _build_report(study_path, results: Path) -> Path:
    import nbformat

    running = results / "report.running.ipynb"
    started = time.time()
    shown = shown_path(results.resolve())  # relative to the repository (the kernel's working directory) when inside it
    try:
        execute_notebook(notebook(REPORT_NOTEBOOK), running, parameters={"study": str(study_path), "results": shown},
                         cwd=REPO_ROOT, kernel_log=results / REPORT_KERNEL_LOG)
    except BaseException:
        if running.exists():
            os.replace(running, results / "report.failed.ipynb")
        raise
    nb = tidy_notebook(nbformat.read(str(running), as_version=4), shown_path(notebook(REPORT_NOTEBOOK)),
                       f"{shown}/{REPORT_NOTEBOOK}")
    write_if_changed(results / REPORT_NOTEBOOK, nbformat.writes(nb) + "\n")
    running.unlink()
    for stale in (results / "report.failed.ipynb", results / REPORT_KERNEL_LOG):  # an earlier build's
        stale.unlink(missing_ok=True)
    write_if_changed(results / "report.html", render_html(nb, f"dmlbench report: {Path(study_path).stem}"))
    try:  # what a reader sees first, as Chromium shows it
        from .browser import screenshot

        screenshot(results / "report.html", results / "figures" / SCREENSHOT)
    except Exception as error:  # noqa: BLE001 - no browser here: the report stands without its screenshot
        log.warning("no screenshot of the report: %s", error)
    summary_path = results / "summary.json"
    if summary_path.is_file():
        summary = read_json(summary_path)
        if REPORT_TIME_KEY not in summary:  # new numbers: this build's time goes with them
            summary[REPORT_TIME_KEY] = round(time.time() - started, 1)
            write_if_changed(summary_path, json_text(summary))
    return results / "report.html"


def recall_columns(runs: pd.DataFrame) -> list[str]:
    """The recall@K columns present, by K."""
    return sorted((c for c in runs.columns if c.startswith("recall@")), key=lambda c: int(c.split("@")[1]))


def cell_label(loss: str, miner: str) -> str:
    return f"{loss} + {miner}"


def bar_chart(summary: pd.DataFrame, metric: str, title: str, baseline: tuple[str, str] | None = None):
    """Every cell's mean with its confidence interval (``<metric>_low`` / ``_high``), best on top."""
    from matplotlib import pyplot as plt

    part = summary.sort_values(metric)
    labels = [cell_label(l, m) for l, m in zip(part["loss"], part["miner"])]
    low = (part[metric] - part[f"{metric}_low"]).clip(lower=0).fillna(0)
    high = (part[f"{metric}_high"] - part[metric]).clip(lower=0).fillna(0)
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(part) + 1.2))
    colors = ["tab:orange" if baseline and (l, m) == baseline else "tab:blue" for l, m in zip(part["loss"], part["miner"])]
    ax.barh(labels, part[metric], xerr=[low, high], color=colors, alpha=0.8, error_kw={"elinewidth": 1, "capsize": 2})
    lo = np.nanmin(part[f"{metric}_low"].fillna(part[metric]))
    hi = np.nanmax(part[f"{metric}_high"].fillna(part[metric]))
    ax.set_xlim(max(0.0, lo - 0.1 * (hi - lo + 1e-9)), hi + 0.1 * (hi - lo + 1e-9))
    ax.set(title=title, xlabel=METRIC_LABELS.get(metric, metric))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def difference_figure(comparison: pd.DataFrame, metric: str, title: str):
    """Paired differences to the baseline with their intervals, coloured by the verdict."""
    from matplotlib import pyplot as plt

    part = comparison.sort_values("difference")
    colors = {"better than the baseline": "tab:green", "worse than the baseline": "tab:red"}
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(part) + 1.2))
    y = np.arange(len(part))
    err = [(part["difference"] - part["low"]).fillna(0), (part["high"] - part["difference"]).fillna(0)]
    ax.errorbar(part["difference"], y, xerr=err, fmt="none", ecolor="gray", elinewidth=1, capsize=2)
    ax.scatter(part["difference"], y, c=[colors.get(v, "tab:gray") for v in part["verdict"]], zorder=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [cell_label(l, m) for l, m in zip(part["loss"], part["miner"])])
    ax.set(title=title, xlabel=f"difference in {METRIC_LABELS.get(metric, metric)} (same seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def ranking_figure(table: pd.DataFrame, by: str, metric: str, title: str):
    """Scores with bootstrap intervals, and the range of ranks, one row per loss or miner."""
    from matplotlib import pyplot as plt

    part = table.sort_values("rank", ascending=False)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.3 * len(part) + 1.3), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(part))
    left.errorbar(part["score"], y, xerr=[part["score"] - part["score_low"], part["score_high"] - part["score"]],
                  fmt="o", capsize=2)
    left.set_yticks(y, part[by])
    left.set(xlabel=f"{METRIC_LABELS.get(metric, metric)} (mean over cells)", title=title)
    right.hlines(y, part["rank_low"], part["rank_high"], color="tab:purple", linewidth=4, alpha=0.5)
    right.scatter(part["rank"], y, color="tab:purple", zorder=3)
    right.set(xlabel="rank (95% bootstrap range)", xlim=(0.5, len(part) + 0.5))
    right.invert_xaxis()
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def recall_curve_figure(runs: pd.DataFrame, dataset: str, highlight: list[tuple[str, str]], title: str):
    """Recall@K over K (log scale), mean over seeds: every cell in grey, ``highlight`` cells in colour."""
    from matplotlib import pyplot as plt

    part = runs[runs["dataset"] == dataset]
    columns = [c for c in recall_columns(part) if part[c].notna().all()]
    ks = [int(c.split("@")[1]) for c in columns]
    means = part.groupby(["loss", "miner"])[columns].mean()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (loss, miner), row in means.iterrows():
        if (loss, miner) not in highlight:
            ax.plot(ks, row.values, color="lightgray", linewidth=0.8)
    for loss, miner in highlight:
        if (loss, miner) in means.index:
            ax.plot(ks, means.loc[(loss, miner)].values, marker="o", markersize=3, label=cell_label(loss, miner))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="K", ylabel="Recall@K", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def correlations(runs: pd.DataFrame, metric: str = "recall@1", confidence: float = 0.95) -> pd.DataFrame:
    """Pearson (with a Fisher-z interval) and Spearman correlation of ``metric`` with each diagnostic
    across runs, per dataset, and whether the sign agrees with Roth et al.'s."""
    from scipy import stats as sps

    rows = []
    for dataset, part in runs.groupby("dataset"):
        for name in DIAGNOSTICS:
            ok = part[[metric, name]].dropna()
            n = len(ok)
            r = rho = low = high = p = np.nan
            if n >= 4 and ok[name].std() > 0 and ok[metric].std() > 0:
                r, p = sps.pearsonr(ok[name], ok[metric])
                rho = sps.spearmanr(ok[name], ok[metric]).statistic
                z, se = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1 / np.sqrt(n - 3)
                q = sps.norm.ppf(0.5 + confidence / 2)
                low, high = np.tanh(z - q * se), np.tanh(z + q * se)
            sign = ROTH_SIGNS.get(name)
            agrees = "" if sign is None or np.isnan(r) else ("yes" if np.sign(r) == sign else "no")
            rows.append({"dataset": dataset, "diagnostic": name, "runs": n, "pearson_r": r, "r_low": low,
                         "r_high": high, "p": p, "spearman": rho,
                         "roth_sign": {1: "+", -1: "-"}.get(sign, ""), "same_sign_as_roth": agrees})
    return pd.DataFrame(rows)


def diagnostics_figure(runs: pd.DataFrame, metric: str = "recall@1", title: str = ""):
    """Recall@1 against each diagnostic, one point per run, coloured by loss, with Pearson's r."""
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(4.0 * len(DIAGNOSTICS), 3.6), sharey=True)
    table = correlations(runs, metric)
    for ax, name in zip(axes, DIAGNOSTICS):
        for loss, part in runs.groupby("loss"):
            ax.scatter(part[name], part[metric], s=14, alpha=0.8, label=loss)
        r = table.loc[table["diagnostic"] == name, "pearson_r"]
        shown = f"r = {r.iloc[0]:.2f}" if len(r) and np.isfinite(r.iloc[0]) else "r undefined"
        ax.set(xlabel=DIAGNOSTIC_LABELS[name], title=shown)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {METRIC_LABELS.get(metric, metric)}")
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def embed_test_split(run_dir: str | os.PathLike, splits, device: str = "cpu"):
    """The test embeddings (and labels) of a finished run, recomputed from its checkpoint.pt."""
    import torch

    from ..config import RunConfig
    from ..training.feeds import DEFAULT_IMAGE_SIZE, forward_embed, image_tensor
    from ..training.loop import build_model

    checkpoint = torch.load(Path(run_dir) / "checkpoint.pt", map_location=device, weights_only=False)
    config = RunConfig.from_dict(checkpoint["config"], where=str(run_dir))
    # the weights come from the checkpoint: no pretrained file is read
    model = build_model(config, **({"pretrained": False} if "pretrained" in config.model_kwargs else {}))
    model.load_state_dict(checkpoint["model"])
    model = model.to(device).eval()
    dev = torch.device(device)
    if hasattr(splits.test, "cache"):  # photos: the evaluation transform, the network's normalisation
        from ..datasets.transforms import eval_transform, normalize_batch

        transform = eval_transform(config.image_size or DEFAULT_IMAGE_SIZE, normalize=False)
        mean, std = getattr(model, "normalization", (splits.mean, splits.std))
        batches = (normalize_batch(torch.stack([transform(splits.test.cache[int(r)]) for r in splits.test.rows[i:i + 256]]),
                                   mean, std).to(dev) for i in range(0, len(splits.test), 256))
    else:
        x = image_tensor(splits.test.images, splits.mean, splits.std, dev)
        batches = (x[i:i + config.eval_batch_size] for i in range(0, len(x), config.eval_batch_size))
    return forward_embed(model, batches, dev).cpu(), torch.from_numpy(splits.test.labels)


# ---- What a reader sees: counts, findings, tables with human names -------------------------------

# The order of the metric columns in every table of the report: the selection and ranking metric
# first, then the other retrieval metrics, then clustering.
DISPLAY_METRICS = ("map@r", "r_precision", "recall@1", "recall@2", "recall@4", "recall@8", "nmi", "ami")
COLUMN_LABELS = {
    **METRIC_LABELS, **DIAGNOSTIC_LABELS, "run_id": "run", "seeds": "seeds", "difference": "difference",
    "low": "low", "high": "high", "p": "p", "p_holm": "p (Holm)", "score": "score", "score_low": "score low",
    "score_high": "score high", "rank": "rank", "rank_low": "best rank", "rank_high": "worst rank",
    "cells": "cells", "pearson_r": "Pearson r", "r_low": "r low", "r_high": "r high", "spearman": "Spearman",
    "roth_sign": "Roth et al.'s sign", "same_sign_as_roth": "same sign", "best_epoch": "selected epoch",
    "val_at_best": "validation score there", "wall_time_s": "wall time (s)", "train_time_s": "training time (s)",
    "images_per_s": "images/s", "excluded_queries": "excluded queries",
}
VERDICTS = {"better than the baseline": "better", "worse than the baseline": "worse",
            "within seed noise": "noise", "too few seeds": "too few seeds"}


def column_label(name: str) -> str:
    """A table column as the reader sees it: 'map@r' -> 'MAP@R', 'map@r_low' -> 'MAP@R low'."""
    if name in COLUMN_LABELS:
        return COLUMN_LABELS[name]
    base, _, suffix = name.rpartition("_")
    if base in METRIC_LABELS and suffix in ("low", "high", "std"):
        return f"{METRIC_LABELS[base]} {suffix}"
    if name.startswith("recall@"):
        return "Recall@" + name.split("@", 1)[1]
    return name.replace("_", " ")


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def md_escape(text: str) -> str:
    """``text`` shown as written in Markdown (error messages carry underscores and asterisks)."""
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in str(text))


class Html(str):
    """A table cell already written in HTML (not escaped again)."""


TABLE_STYLE = """<style>
table.dml { border-collapse: collapse; font-size: 12px; margin: 0.2em 0 0.5em 0; }
table.dml th, table.dml td { padding: 1px 8px; line-height: 1.3; text-align: right; white-space: nowrap;
  border: none; }
table.dml sup { line-height: 0; font-size: 75%; }
table.dml thead th { border-bottom: 1px solid #888; font-weight: 600; vertical-align: bottom; }
table.dml td.text, table.dml th.text { text-align: left; }
table.dml tbody tr:nth-child(odd) { background: #f3f3f3; }
table.dml tr.marked td { font-weight: 600; }
table.dml td.wrap { white-space: normal; min-width: 22em; text-align: left; }
div.dml-scroll { max-height: 24em; max-width: 100%; overflow: auto; display: inline-block; border: 1px solid #ddd; }
</style>"""


def html_table(frame: pd.DataFrame, *, digits: int = 4, marked: set[int] = frozenset(), scroll: bool = False,
               wrap: tuple[str, ...] = ()) -> str:
    """``frame`` as a compact HTML table, every row shown (``scroll``: in a box that scrolls), columns
    named by :func:`column_label`; floats to ``digits`` decimals, NaN as an en dash; rows whose
    position is in ``marked`` in bold."""
    import html

    def cell(value) -> str:
        if isinstance(value, Html):
            return str(value)
        if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
            return "&ndash;"
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}f}"
        return html.escape(str(value))

    def is_text(value) -> bool:  # "0.3885 ± 0.0120" and "+0.0183" are numbers to the eye: right-aligned
        return isinstance(value, str) and not re.match(r"[+-]?\d", value)

    text_columns = {c for c in frame.columns if frame[c].map(is_text).any()}
    head = "".join(f'<th class="{"text" if c in text_columns else "num"}">{html.escape(column_label(c))}</th>'
                   for c in frame.columns)
    body = []
    for position, row in enumerate(frame.itertuples(index=False)):
        cells = []
        for column, value in zip(frame.columns, row):
            kind = "wrap" if column in wrap else ("text" if column in text_columns else "num")
            cells.append(f'<td class="{kind}">{cell(value)}</td>')
        opening = '<tr class="marked">' if position in marked else "<tr>"
        body.append(opening + "".join(cells) + "</tr>")
    table = f'<table class="dml"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return TABLE_STYLE + (f'<div class="dml-scroll">{table}</div>' if scroll else table)


def with_interval(table: pd.DataFrame, metric: str) -> list[str]:
    """'mean ± half-width' of ``metric``'s (symmetric t-) interval per row; the mean alone where there
    is no interval (one seed)."""
    return [f"{m:.4f}" if not (np.isfinite(lo) and np.isfinite(hi)) else f"{m:.4f} ± {(hi - lo) / 2:.4f}"
            for m, lo, hi in zip(table[metric], table[f"{metric}_low"], table[f"{metric}_high"])]


def study_counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a study is made of: runs, cells (dataset x loss x miner), seeds per cell, the axes."""
    cells = manifest["cells"]
    seeds_per_cell: dict[tuple, set] = {}
    for c in cells:
        seeds_per_cell.setdefault((c["dataset"], c["loss"], c["miner"]), set()).add(c["seed"])
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    per_dataset = {d: {(l, m) for (dd, l, m) in seeds_per_cell if dd == d} for d in datasets}
    skipped = list(dict.fromkeys((s["dataset"], s["loss"], s["miner"]) for s in manifest["skipped"]))
    return {"runs": len(cells), "cells": len(seeds_per_cell), "datasets": datasets,
            "losses": list(dict.fromkeys(c["loss"] for c in cells)),
            "miners": list(dict.fromkeys(c["miner"] for c in cells)),
            "seeds": sorted({len(s) for s in seeds_per_cell.values()}),
            "same_cells_per_dataset": len({frozenset(p) for p in per_dataset.values()}) <= 1,
            "cells_per_dataset": len(next(iter(per_dataset.values()), ())), "skipped": skipped}


def study_header(manifest: dict[str, Any], status: pd.DataFrame) -> str:
    """The report's first lines: what the study is (counts whose product is the number of runs), how
    far it got, and every run without results, named with its error."""
    n = study_counts(manifest)
    d = len(n["datasets"])
    if len(n["seeds"]) == 1 and n["same_cells_per_dataset"]:
        shape = (f"{plural(n['cells_per_dataset'], 'loss x miner cell')} x {plural(n['seeds'][0], 'seed')}"
                 + (f" on 1 dataset ({n['datasets'][0]})" if d == 1 else f" x {d} datasets"))
    else:
        low, high = min(n["seeds"], default=0), max(n["seeds"], default=0)
        shape = f"{plural(n['cells'], 'cell')} (dataset x loss x miner), {low} to {high} seeds each, on {plural(d, 'dataset')}"
    skipped = ""
    if n["skipped"]:
        pairs = ", ".join(f"{l} + {m}" for _, l, m in n["skipped"])
        skipped = f"; {plural(len(n['skipped']), 'loss x miner pair')} skipped as incompatible ({pairs})"
    counts = status["state"].value_counts()
    done = int(counts.get("done", 0))
    state = f"**{done} of {n['runs']} runs finished**" + "".join(
        f", {int(counts[s])} {label}" for s, label in (("failed", "failed"), ("unreadable", "with an unreadable record"),
                                                        ("missing", "not run yet")) if counts.get(s, 0))
    lines = [f"Study **{manifest['name']}** (`{manifest['path']}`): {plural(n['runs'], 'run')}: {shape}; "
             f"{plural(len(n['losses']), 'loss', 'losses')}, {plural(len(n['miners']), 'miner')}{skipped}. {state}."]
    lines += problem_lines(status)
    return "\n".join(lines)


def problem_lines(status: pd.DataFrame, limit: int = 12) -> list[str]:
    """A Markdown list of the runs without results: failed (the error's first line), unreadable (the
    file and why), not run yet; at most ``limit`` lines per kind, the rest counted."""
    lines = []
    for state, label in (("failed", "failed"), ("unreadable", "unreadable"), ("missing", "not run yet")):
        part = status[status["state"] == state]
        for row in part.head(limit).itertuples():
            note = f": {md_escape(row.note)}" if state == "failed" else ""
            if state == "unreadable":  # "<path>: <why>", the path as code
                path, _, why = str(row.note).partition(f"{METRICS_FILE}: ")
                note = f": `{path}{METRICS_FILE}`: {md_escape(why)}"
            lines.append(f"- *{label}*: {md_escape(cell_label(row.loss, row.miner))}, seed {row.seed} "
                         f"(`{row.run_id}`){note}")
        if len(part) > limit:
            lines.append(f"- *{label}*: {len(part) - limit} more, in the table of runs below")
    return ([""] + lines) if lines else []


def over_seeds(runs: pd.DataFrame, baseline: tuple[str, str], confidence: float):
    """Per dataset: the cells' t-intervals (best first), the paired comparisons with ``baseline``
    (MAP@R and Recall@1), and the bootstrap rankings of losses (each with its paper's sampling) and of
    miners (over the losses crossed with several). Returns (seed_tables, comparisons, rankings)."""
    from . import stats
    from ..losses import LOSSES

    seed_tables, comparisons, rankings = {}, {}, {}
    for dataset, part in runs.groupby("dataset", sort=False):
        seed_tables[dataset] = by_result(stats.seed_summary(part, [*METRICS, *recall_columns(part)], confidence))
        for metric in ("map@r", "recall@1"):
            comparisons[(dataset, metric)] = stats.paired_comparison(part, metric, baseline, confidence)
        paper = part[[LOSSES.get(l).paper_miner == m for l, m in zip(part["loss"], part["miner"])]]
        grid = part[part["loss"].isin(grid_losses(part, dataset))]
        for by, source in (("loss", paper), ("miner", grid)):
            if source["loss"].nunique() + source["miner"].nunique() < 3 or source[by].nunique() < 2:
                continue
            rankings[(dataset, by)] = stats.ranking(source, "map@r", by, confidence=confidence)
    return seed_tables, comparisons, rankings


def results_table(seeds: pd.DataFrame, comparison: pd.DataFrame | None = None,
                  baseline: tuple[str, str] | None = None, marks: dict[tuple[str, str], str] | None = None,
                  metrics: tuple[str, ...] = DISPLAY_METRICS) -> tuple[pd.DataFrame, set[int]]:
    """Every cell of one dataset, best first by MAP@R: MAP@R and Recall@1 with their intervals, the
    other metrics' means, and the paired difference in MAP@R to ``baseline`` with its verdict.
    Returns the table to show and the position of the baseline's row (to mark)."""
    seeds = by_result(seeds)
    out = pd.DataFrame({"#": range(1, len(seeds) + 1), "loss": list(seeds["loss"])})
    miners = [Html(f'{m}<sup>{marks[(l, m)]}</sup>') if marks and (l, m) in marks else m
              for l, m in zip(seeds["loss"], seeds["miner"])]
    out["miner"] = miners
    for metric in metrics:
        if metric not in seeds:
            continue
        out[metric] = with_interval(seeds, metric) if metric in ("map@r", "recall@1") else list(seeds[metric])
    if seeds["seeds"].nunique() > 1:  # else the caption says how many
        out["seeds"] = list(seeds["seeds"])
    if comparison is not None and baseline is not None and not comparison.empty:
        versus = comparison.set_index(["loss", "miner"])
        out["vs baseline"] = [
            "baseline" if (l, m) == tuple(baseline) else (
                f"{versus.loc[(l, m), 'difference']:+.4f} ({VERDICTS[versus.loc[(l, m), 'verdict']]})"
                if (l, m) in versus.index else "")
            for l, m in zip(seeds["loss"], seeds["miner"])]
    marked = {i for i, (l, m) in enumerate(zip(seeds["loss"], seeds["miner"])) if baseline and (l, m) == tuple(baseline)}
    return out, marked


IDENTICAL_WHY = {  # why two cells can take the same steps, when their losses and miners are these
    frozenset({"contrastive", "triplet"}): (
        "This follows from the objectives, not from the code: on one mined triplet per anchor, a contrastive "
        "loss with positive margin zero equals the triplet loss plus a constant as long as every mined negative "
        "lies inside the negative margin and every triplet violates its margin, so the two give the same "
        "gradients at every step."),
    frozenset({"none", "margin-triplets"}): (
        "This also follows from the definitions: the hinge triplet loss is zero on every triplet that satisfies "
        "its margin, and its default reduction averages over the non-zero terms only, so keeping only the "
        "margin-violating triplets (margin-triplets' default) changes neither the loss nor its gradient."),
}


def identical_note(group: list[str], mark: str = "") -> str:
    """One sentence (and the reason where it is known) for cells that gave identical numbers."""
    losses = {g.split(" + ")[0] for g in group}
    miners = {g.split(" + ")[1] for g in group}
    text = (f"{f'<sup>{mark}</sup> ' if mark else ''}**{' and '.join(group)} gave identical numbers**, every metric "
            "to every digit in every seed: their training took the same steps.")
    if losses == {"contrastive", "triplet"}:
        text += " " + IDENTICAL_WHY[frozenset(losses)]
    elif losses == {"triplet"} and miners == {"none", "margin-triplets"}:
        text += " " + IDENTICAL_WHY[frozenset(miners)]
    return text


def headline(dataset: str, seeds: pd.DataFrame, comparison: pd.DataFrame, rankings: dict, runs: pd.DataFrame,
             baseline: tuple[str, str], confidence: float, identical: list[list[str]]) -> list[str]:
    """The findings a first reader needs, one short sentence each, made from the numbers: the best
    cell with its interval, the comparisons with the baseline that seed noise cannot explain, whether
    the ranking singles out a first loss, what moves the results more (miner or loss), the caveats."""
    lines = []
    best = by_result(seeds).iloc[0]
    n_seeds = int(best["seeds"])
    spread = (f" ± {(best['map@r_high'] - best['map@r_low']) / 2:.4f} ({confidence:.0%} t-interval, "
              f"{plural(n_seeds, 'seed')})" if np.isfinite(best["map@r_low"]) else f" ({plural(n_seeds, 'seed')}, no interval)")
    line = f"Best by test MAP@R: **{cell_label(best['loss'], best['miner'])}**, {best['map@r']:.4f}{spread}"
    by_r1 = by_result(seeds, "recall@1").iloc[0]
    if (by_r1["loss"], by_r1["miner"]) != (best["loss"], best["miner"]):
        line += f"; by Recall@1: **{cell_label(by_r1['loss'], by_r1['miner'])}** ({by_r1['recall@1']:.1%})"
    lines.append(line + ".")
    if comparison is None or comparison.empty:
        lines.append(f"The baseline {cell_label(*baseline)} has no finished run: no paired comparison.")
    else:
        verdicts = comparison["verdict"].value_counts()
        better = comparison[comparison["verdict"] == "better than the baseline"].sort_values("difference", ascending=False)
        worse = comparison[comparison["verdict"] == "worse than the baseline"].sort_values("difference")

        def named(part):
            shown = ", ".join(f"{cell_label(r.loss, r.miner)} {r.difference:+.4f}" for r in part.head(2).itertuples())
            return f" ({shown}{', ...' if len(part) > 2 else ''})" if len(part) else ""

        line = (f"Against the baseline **{cell_label(*baseline)}** (paired by seed, Holm-adjusted, "
                f"{plural(len(comparison), 'cell')}): **{len(better)} better** beyond seed noise{named(better)}, "
                f"**{len(worse)} worse**{named(worse)}, {int(verdicts.get('within seed noise', 0))} within noise")
        if verdicts.get("too few seeds", 0):
            line += f", {int(verdicts['too few seeds'])} with too few seeds to tell"
        lines.append(line + ".")
    ranking = rankings.get((dataset, "loss"))
    if ranking is not None and len(ranking) > 1:
        top = ranking.iloc[0]
        shared = ranking[ranking["rank_low"] <= top["rank_high"]].iloc[1:]
        lines.append(f"Losses ranked (each with its paper's sampling, bootstrap over seeds): **{top['loss']}** first"
                     + (f", but its ranks ({top['rank_low']}-{top['rank_high']}) overlap "
                        f"those of {plural(len(shared), 'other loss', 'other losses')}: no clear first."
                        if len(shared) else ", and no other loss's range of ranks reaches its own."))
    grid = grid_losses(seeds, dataset)
    part = seeds[seeds["loss"].isin(grid)]
    per_miner = part.groupby("miner")["map@r"].mean()
    per_loss = part.groupby("loss")["map@r"].mean()
    if len(per_miner) > 1 and len(per_loss) > 1:
        spread_miner, spread_loss = per_miner.max() - per_miner.min(), per_loss.max() - per_loss.min()
        axis, other = ("miner", "loss") if spread_miner > spread_loss else ("loss", "miner")
        lines.append(f"On the grid ({', '.join(grid)} x miners) the {axis} moves mean MAP@R more than the {other} "
                     f"(range {max(spread_miner, spread_loss):.4f} against {min(spread_miner, spread_loss):.4f}); "
                     f"best miner there: **{per_miner.idxmax()}**.")
    caveats = []
    late = still_improving(runs)
    if late:
        caveats.append(f"{late} of {len(runs)} runs peaked at their last epoch (still improving)")
    if identical:
        caveats.append(f"{plural(len(identical), 'group')} of cells gave identical numbers (notes under the table)")
    if n_seeds < 2:
        caveats.append("one seed per cell: no estimate of seed noise, so small differences rank nothing")
    if caveats:
        lines.append("Caveats: " + "; ".join(caveats) + ".")
    return lines
