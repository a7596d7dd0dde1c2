"""From runs to the written study: tables, figures, the executed report notebook and its HTML.

The report notebook (notebooks/report.ipynb) calls the functions here; ``build_report`` executes it
with papermill into results/report.ipynb and renders results/report.html with the code hidden. Every
number comes from the runs' metrics.json files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import atomic_write_bytes, atomic_write_json, read_json
from .paths import REPO_ROOT, notebook, results_dir
from .record import METRICS_FILE

log = logging.getLogger("dmlbench")

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "nmi", "ami")
METRIC_LABELS = {"recall@1": "Recall@1", "recall@2": "Recall@2", "recall@4": "Recall@4", "recall@8": "Recall@8",
                 "r_precision": "R-Precision", "map@r": "MAP@R", "nmi": "NMI", "ami": "AMI"}
REPORT_NOTEBOOK = "report.ipynb"


def load_runs(runs: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run (a metrics.json under ``runs``)."""
    rows = []
    for path in sorted(Path(runs).glob(f"*/{METRICS_FILE}")):
        record = read_json(path)
        config = record["config"]
        row = {"run_id": record["run_id"], "dataset": config["dataset"], "loss": config["loss"],
               "miner": config["miner"], "seed": config["seed"], "config_hash": record["config_hash"]}
        row.update({m: record["test"].get(m, np.nan) for m in METRICS})
        row.update({"excluded_queries": record["test"].get("num_excluded_queries"),
                    "epochs": config["epochs"], "best_epoch": record["best_epoch"],
                    "val_at_best": record["val_at_best"].get(record["selected_by"]),
                    "wall_time_s": record["wall_time_s"], "train_time_s": record["train_time_s"],
                    "images_per_s": record["images_per_s"], "device": record["device"],
                    "preset": config.get("preset"),
                    "preset_deviations": "; ".join(record.get("preset", {}).get("deviations", [])),
                    "loss_kwargs": json.dumps(config["loss_kwargs"], sort_keys=True),
                    "miner_kwargs": json.dumps(config["miner_kwargs"], sort_keys=True)})
        rows.append(row)
    columns = ["run_id", "dataset", "loss", "miner", "seed", "config_hash", *METRICS]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def load_histories(runs: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch history of every finished run, long format."""
    rows = []
    for path in sorted(Path(runs).glob(f"*/{METRICS_FILE}")):
        record = read_json(path)
        for h in record["history"]:
            rows.append({"run_id": record["run_id"], "loss_name": record["config"]["loss"],
                         "miner": record["config"]["miner"], "seed": record["config"]["seed"], **h})
    return pd.DataFrame(rows)


def dataset_summary(runs: str | os.PathLike, dataset: str) -> dict[str, Any]:
    """The split sizes and classes recorded by the first finished run on ``dataset``."""
    for path in sorted(Path(runs).glob(f"*/{METRICS_FILE}")):
        record = read_json(path)
        if record["config"]["dataset"] == dataset:
            return record["dataset"]
    return {}


def identical_cells(runs: pd.DataFrame) -> list[list[str]]:
    """Groups of runs (as 'loss + miner') of one dataset and seed whose test metrics agree to every
    digit: their training took the same steps, however different their configurations look."""
    groups = []
    for _, part in runs.groupby(["dataset", "seed"]):
        key = part[list(METRICS)].round(12).astype(str).agg("|".join, axis=1)
        for _, same in part.groupby(key):
            if len(same) > 1:
                groups.append([f"{r.loss} + {r.miner}" for r in same.itertuples()])
    return groups


def still_improving(runs: pd.DataFrame) -> int:
    """Runs whose validation score was best at their last epoch (training may not have converged)."""
    return int((runs["best_epoch"] == runs["epochs"]).sum())


def cell_status(manifest: dict[str, Any], runs: str | os.PathLike) -> pd.DataFrame:
    """Every cell of the study with its state: done, failed (with the error), missing, or skipped."""
    runs = Path(runs)
    rows = []
    for cell in manifest["cells"]:
        run_dir = runs / cell["run_id"]
        if (run_dir / METRICS_FILE).is_file():
            state, note = "done", ""
        elif (run_dir / "experiment.failed.ipynb").is_file():
            state, note = "failed", failure_message(run_dir / "experiment.failed.ipynb")
        else:
            state, note = "missing", "not run yet"
        rows.append({**{k: cell[k] for k in ("dataset", "loss", "miner", "seed", "run_id")}, "state": state, "note": note})
    for skip in manifest["skipped"]:
        rows.append({"dataset": skip["dataset"], "loss": skip["loss"], "miner": skip["miner"], "seed": skip["seed"],
                     "run_id": "", "state": "skipped", "note": skip["reason"]})
    return pd.DataFrame(rows, columns=["dataset", "loss", "miner", "seed", "run_id", "state", "note"])


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


def heatmap(table: pd.DataFrame, title: str, skipped: set[tuple[str, str]] = frozenset()):
    """A loss x miner heatmap with the values written in the cells; (loss, miner) pairs in
    ``skipped`` (incompatible) are marked as such, other empty cells are not in the study."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * max(len(table.columns), 2) + 2, 0.6 * max(len(table.index), 2) + 1.2))
    sns.heatmap(table.astype(float), annot=True, fmt=".3f", cmap="viridis", cbar_kws={"shrink": 0.8}, ax=ax)
    for row, loss in enumerate(table.index):
        for col, miner in enumerate(table.columns):
            if (loss, miner) in skipped:
                ax.text(col + 0.5, row + 0.5, "skipped:\nincompatible", ha="center", va="center", fontsize=7,
                        color="gray")
    ax.set(title=title, xlabel="miner", ylabel="loss")
    fig.tight_layout()
    return fig


def curves_figure(histories: pd.DataFrame, key: str = "val_recall@1", columns: int = 4,
                  order: list[str] | None = None):
    """Validation curves: one panel per loss (wrapped into rows, in ``order``), one line per miner,
    mean over seeds."""
    from matplotlib import pyplot as plt

    present = set(histories["loss_name"])
    losses = [l for l in order if l in present] if order else sorted(present)
    rows = -(-len(losses) // columns)
    cols = min(columns, len(losses))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(losses):]:
        ax.set_visible(False)
    for ax, loss in zip(axes.flat, losses):
        part = histories[histories["loss_name"] == loss]
        for miner, lines in part.groupby("miner", sort=False):
            mean = lines.groupby("epoch")[key].mean()
            ax.plot(mean.index, mean.values, marker="o", markersize=3, label=miner)
        ax.set(title=loss, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"validation {METRIC_LABELS.get(key[4:], key)}")
    fig.tight_layout()
    return fig


def save_figure(fig, name: str, figures: Path) -> Path:
    """Save as PNG atomically under results/figures/."""
    import io as _io

    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    path = figures / f"{name}.png"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_table(table: pd.DataFrame, name: str, tables: Path, index: bool = True) -> Path:
    path = tables / f"{name}.csv"
    atomic_write_bytes(path, table.to_csv(index=index).encode())
    return path


def render_html(executed: Path, html_path: Path) -> None:
    """The executed report notebook as HTML with code cells hidden."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(str(executed), as_version=4))
    atomic_write_bytes(html_path, body.encode("utf-8"))


def build_report(study_path: str | os.PathLike, *, results: str | os.PathLike | None = None) -> Path:
    """Execute notebooks/report.ipynb for a study into results/report.ipynb and render report.html."""
    import papermill

    from .study import KERNEL

    results = Path(results) if results else results_dir()
    results.mkdir(parents=True, exist_ok=True)
    running = results / "report.running.ipynb"
    started = time.time()
    shown = results.resolve()  # relative to the repository (the kernel's working directory) when inside it
    shown = shown.relative_to(REPO_ROOT) if shown.is_relative_to(REPO_ROOT) else shown
    try:
        papermill.execute_notebook(str(notebook(REPORT_NOTEBOOK)), str(running),
                                   parameters={"study": str(study_path), "results": str(shown)},
                                   kernel_name=KERNEL, cwd=str(REPO_ROOT), progress_bar=False)
    except BaseException:
        if running.exists():
            os.replace(running, results / "report.failed.ipynb")
        raise
    executed = results / "report.ipynb"
    os.replace(running, executed)
    render_html(executed, results / "report.html")
    summary_path = results / "summary.json"
    if summary_path.is_file():
        summary = read_json(summary_path)
        summary["report_wall_s"] = time.time() - started
        atomic_write_json(summary_path, summary)
    return results / "report.html"
