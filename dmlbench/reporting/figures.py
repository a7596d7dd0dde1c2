"""The study's figures: loss x miner heatmaps, bar charts with intervals, differences to the baseline,
rankings, training curves, Recall@K curves and Recall@1 against the embedding diagnostics (a run's
own figures, t-SNE maps and retrieval grids, are in :mod:`dmlbench.reporting.plots`); and saving a
figure under results/figures/ while showing it in the notebook with alternative text.

Each drawing function returns a matplotlib Figure. A saved PNG carries no software stamp and is
rewritten only when its bytes change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..fileio import compact_png, write_if_changed
from .labels import DIAGNOSTIC_LABELS, DIAGNOSTICS, METRIC_LABELS, cell_label, recall_columns
from .tables import correlations

# One colour per loss, the same in every figure of every report: the project's losses have fixed ones
# (no two alike, none pale on white); a loss added later takes the next unused one, in the order of
# its name, so adding it never recolours the others.
LOSS_COLOURS = {
    "angular": "#1f77b4", "arcface": "#ff7f0e", "center": "#2ca02c", "contrastive": "#d62728",
    "f-statistic": "#9467bd", "lifted-structure": "#8c564b", "margin": "#e377c2", "multi-similarity": "#7f7f7f",
    "n-pairs": "#bcbd22", "normalized-softmax": "#17becf", "proxy-anchor": "#000075", "proxy-nca": "#800000",
    "triplet": "#000000",
}
SPARE_COLOURS = ("#469990", "#f032e6", "#e6b400", "#4363d8", "#9a6324", "#3cb44b", "#ff6f91")


def loss_colours(losses) -> dict[str, str]:
    """loss -> its colour (:data:`LOSS_COLOURS`; a loss not listed there: a spare one, then evenly spaced
    hues, in the order of the names), distinct for every loss given."""
    from matplotlib.colors import hsv_to_rgb, to_hex

    others = sorted(set(losses) - set(LOSS_COLOURS))
    spare = list(SPARE_COLOURS) + [to_hex(hsv_to_rgb((i / max(1, len(others)), 0.8, 0.75)))
                                   for i in range(max(0, len(others) - len(SPARE_COLOURS)))]
    return {**LOSS_COLOURS, **dict(zip(others, spare))}


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
                  order: list[str] | None = None, ylabel: str | None = None, title: str = ""):
    """Validation curves of one dataset: one panel per loss (wrapped into rows, in ``order``), one line
    per miner, mean over seeds. Runs of several datasets are refused: their epochs differ in number and
    length, and a mean over them draws jumps where the shorter runs end."""
    from matplotlib import pyplot as plt

    if "dataset" in histories and histories["dataset"].nunique() > 1:
        raise ValueError(f"curves_figure draws one dataset at a time, got {sorted(histories['dataset'].unique())}")
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_description(fig, fallback: str = "") -> str:
    """What a figure shows, for its alternative text: its overall title, else its panels' titles."""
    titles = [fig.get_suptitle()] if fig.get_suptitle() else []
    titles += [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    return "; ".join(list(dict.fromkeys(titles))[:4]) or fallback


def save_figure(fig, name: str, figures: Path, *, show: bool = True, alt: str | None = None,
                drawn_from: str | None = None) -> Path:
    """Save as PNG under results/figures/ (rewritten only when its bytes change: no date or software
    version in it), show the same picture in the notebook with alternative text, and close the figure.
    With ``drawn_from`` (a digest of what the figure shows, :func:`.plots.tsne_source`) the PNG records
    it, and a saved PNG recording the same is kept and shown as it is (:func:`.plots.kept_or_marked`)."""
    import base64
    import html
    import io as _io

    from matplotlib import pyplot as plt

    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    png = compact_png(buffer.getvalue())  # indexed colour: the same picture in about 40% of the bytes
    path = figures / f"{name}.png"
    if drawn_from is not None:
        from .plots import kept_or_marked

        png = kept_or_marked(path, png, drawn_from)
    write_if_changed(path, png)
    if show:
        from IPython.display import HTML, display

        text = html.escape(alt or figure_description(fig, name.replace("_", " ")), quote=True)
        data = base64.b64encode(png).decode("ascii")
        display(HTML(f'<img src="data:image/png;base64,{data}" alt="{text}" style="max-width: 100%">'))
    plt.close(fig)
    return path


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


def diagnostics_figure(runs: pd.DataFrame, metric: str = "recall@1", title: str = ""):
    """Recall@1 against each diagnostic, one point per run, coloured by loss, with Pearson's r."""
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(4.0 * len(DIAGNOSTICS), 3.6), sharey=True)
    table, colours = correlations(runs, metric), loss_colours(runs["loss"])
    for ax, name in zip(axes, DIAGNOSTICS):
        for loss, part in runs.groupby("loss"):
            ax.scatter(part[name], part[metric], s=14, alpha=0.8, label=loss, color=colours[loss])
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
