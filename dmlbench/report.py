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
SCREENSHOT = "report_first_screen.png"
DIAGNOSTICS = ("spectral_decay", "intra_class_distance", "inter_class_distance", "intra_over_inter")
DIAGNOSTIC_LABELS = {"spectral_decay": "spectral decay (rho)", "intra_class_distance": "intra-class distance",
                     "inter_class_distance": "inter-class distance", "intra_over_inter": "intra / inter (pi ratio)"}
# The direction of the relation to Recall@1 that Roth et al. (ICML 2020) report: R@1 falls as the
# spectral decay grows (compression hurts generalisation) and rises with the intra / inter ratio
# (a less dense embedding space generalises better).
ROTH_SIGNS = {"spectral_decay": -1, "intra_over_inter": +1}


def load_runs(runs: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run (a metrics.json under ``runs``)."""
    rows = []
    for path in sorted(Path(runs).glob(f"*/{METRICS_FILE}")):
        record = read_json(path)
        config = record["config"]
        row = {"run_id": record["run_id"], "dataset": config["dataset"], "loss": config["loss"],
               "miner": config["miner"], "seed": config["seed"], "config_hash": record["config_hash"]}
        row.update({m: record["test"].get(m, np.nan) for m in METRICS})
        row.update({m: v for m, v in record["test"].items() if m.startswith("recall@") and m not in row})
        row.update({d: record.get("diagnostics", {}).get(d, np.nan) for d in DIAGNOSTICS})
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
        elif (run_dir / "failure.json").is_file():
            state, note = "failed", read_json(run_dir / "failure.json")["error"]
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
    import fcntl

    results = Path(results) if results else results_dir()
    results.mkdir(parents=True, exist_ok=True)
    with open(results / ".report.lock", "w") as lock:  # two studies finishing together: one report at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_report(study_path, results)


def _build_report(study_path, results: Path) -> Path:
    import papermill

    from .study import KERNEL

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
    try:  # what a reader sees first, as Chromium shows it
        from .browser import screenshot

        screenshot(results / "report.html", results / "figures" / SCREENSHOT)
    except Exception as error:  # noqa: BLE001 - no browser here: the report stands without its screenshot
        log.warning("no screenshot of the report: %s", error)
    summary_path = results / "summary.json"
    if summary_path.is_file():
        summary = read_json(summary_path)
        summary["report_wall_s"] = time.time() - started
        atomic_write_json(summary_path, summary)
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

    from .config import RunConfig
    from .feeds import DEFAULT_IMAGE_SIZE, forward_embed, image_tensor
    from .train import build_model

    checkpoint = torch.load(Path(run_dir) / "checkpoint.pt", map_location=device, weights_only=False)
    config = RunConfig.from_dict(checkpoint["config"], where=str(run_dir))
    # the weights come from the checkpoint: no pretrained file is read
    model = build_model(config, **({"pretrained": False} if "pretrained" in config.model_kwargs else {}))
    model.load_state_dict(checkpoint["model"])
    model = model.to(device).eval()
    dev = torch.device(device)
    if hasattr(splits.test, "cache"):  # photos: the evaluation transform, the network's normalisation
        from .datasets.transforms import eval_transform, normalize_batch

        transform = eval_transform(config.image_size or DEFAULT_IMAGE_SIZE, normalize=False)
        mean, std = getattr(model, "normalization", (splits.mean, splits.std))
        batches = (normalize_batch(torch.stack([transform(splits.test.cache[int(r)]) for r in splits.test.rows[i:i + 256]]),
                                   mean, std).to(dev) for i in range(0, len(splits.test), 256))
    else:
        x = image_tensor(splits.test.images, splits.mean, splits.std, dev)
        batches = (x[i:i + config.eval_batch_size] for i in range(0, len(x), config.eval_batch_size))
    return forward_embed(model, batches, dev).cpu(), torch.from_numpy(splits.test.labels)
