"""Published reference numbers (the project's protocol, docs/protocol.md) and their comparison with our runs.

Each published row names the dataset, the method as the paper describes it, the (loss, miner) cell
of this project that implements it, the protocol it was trained under and its numbers (percent).
``compare`` puts our runs beside them: a run matches a row only when it trained under the same
protocol, i.e. it carries the row's preset and departs from none of the preset's settings; what the
preset itself cannot reproduce of the paper is named (roth2020: the epoch is chosen on validation
classes, not on the test set; mlrc: the backbone, the folds, the hyperparameter search). Otherwise
the table says how the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..presets import PRESETS


@dataclass(frozen=True)
class Published:
    dataset: str
    method: str  # as the paper names it
    cell: tuple[str, str] | None  # (loss, miner) here; None when this project has no such cell
    protocol: str  # a preset name, or "paper" for the paper's own training setup
    backbone: str
    metrics: dict[str, float]  # percent; recall@1 (= P@1), r_precision, map@r
    source: str


ORIGINAL = "the paper's own training setup"
FAIR_BACKBONES = {"mlrc": "BN-Inception, 4 x 128-d concatenated", "roth2020": "ResNet-50, 128-d"}


def _fair_rows() -> list[Published]:
    """The rows of dmlbench/reporting/published_fair.csv, one per (protocol, dataset, method), its metrics
    together."""
    from .field import published_fair

    rows = []
    for (protocol, dataset, method), part in published_fair().groupby(["protocol", "dataset", "method"], sort=False):
        first = part.iloc[0]
        cell = (first["loss"], first["miner"]) if first["loss"] else None
        rows.append(Published(dataset, method, cell, protocol, FAIR_BACKBONES[protocol],
                              dict(zip(part["metric"], part["value"].astype(float))), first["source"]))
    return rows


_SONG = "Song et al., CVPR 2016"
PUBLISHED: tuple[Published, ...] = (
    # Original papers, CUB-200-2011 Recall@1.
    Published("cub", "contrastive", ("contrastive", "none"), "paper", "GoogLeNet, 64-d", {"recall@1": 26.4}, _SONG),
    Published("cub", "triplet", ("triplet", "none"), "paper", "GoogLeNet, 64-d", {"recall@1": 36.1}, _SONG),
    Published("cub", "lifted structure", ("lifted-structure", "none"), "paper", "GoogLeNet, 64-d", {"recall@1": 47.2},
              _SONG),
    Published("cub", "N-pairs", ("n-pairs", "none"), "paper", "GoogLeNet, 64-d", {"recall@1": 51.0},
              "Sohn, NeurIPS 2016"),
    Published("cub", "angular", ("angular", "none"), "paper", "GoogLeNet, 512-d", {"recall@1": 54.7},
              "Wang et al., ICCV 2017"),
    Published("cub", "margin + distance-weighted", ("margin", "distance-weighted"), "paper", "ResNet-50, 128-d",
              {"recall@1": 63.6}, "Wu et al., ICCV 2017"),
    Published("cub", "ProxyNCA", ("proxy-nca", "none"), "paper", "BN-Inception, 64-d", {"recall@1": 49.2},
              "Movshovitz-Attias et al., ICCV 2017"),
    Published("cub", "multi-similarity", ("multi-similarity", "multi-similarity"), "paper", "BN-Inception, 512-d",
              {"recall@1": 65.7}, "Wang et al., CVPR 2019"),
    Published("cub", "Proxy-Anchor", ("proxy-anchor", "none"), "paper", "BN-Inception, 512-d", {"recall@1": 68.4},
              "Kim et al., CVPR 2020"),
    # The fair-protocol numbers (the Reality Check on CUB and Cars196, Roth et al. on CUB) come from
    # published_fair.csv (dmlbench.reporting.field), one row per method and dataset here.
    *_fair_rows(),
    # Roth et al. 2020's multi-similarity, read from the authors' figures (not among the fair-protocol rows).
    Published("cub", "multi-similarity", ("multi-similarity", "multi-similarity"), "roth2020", "ResNet-50, 128-d",
              {"recall@1": 62.8}, "Roth et al., ICML 2020"),
)

NO_TABLE = {"fashion-mnist": "Fashion-MNIST has no published zero-shot DML table; its numbers are this project's own."}


def published_for(dataset: str) -> list[Published]:
    return [row for row in PUBLISHED if row.dataset == dataset]


def _how_they_differ(row: Published, ours: pd.DataFrame) -> str:
    """'same protocol', or what separates our runs of the cell from the published setup."""
    if row.cell is None:
        return "no such cell in this project"
    if ours.empty:
        return "not run"
    if row.protocol == "paper":
        return f"published with {row.backbone} under {ORIGINAL} (epoch chosen on the test set); not comparable"
    presets = set(ours["preset"].dropna())
    if presets != {row.protocol}:
        shown = ", ".join(sorted(presets)) or "no preset"
        return f"our runs follow {shown}, the paper {PRESETS[row.protocol].name}"
    deviations = sorted({d for text in ours["preset_deviations"] for d in (text.split("; ") if text else [])})
    known = list(PRESETS[row.protocol].differences)
    if deviations:
        return "differs: our settings depart from the preset (" + "; ".join(deviations) + ")" + \
            ("; and " + "; ".join(known) if known else "")
    return "same protocol" + (", except: " + "; ".join(known) if known else "")


def compare(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One row per published number of ``dataset``: theirs, ours (mean over seeds, in percent) and how
    the protocols differ. ``runs`` is :func:`dmlbench.reporting.runs.load_runs`'s table."""
    rows = []
    for row in published_for(dataset):
        if row.cell is None or runs.empty:
            ours = runs.iloc[0:0]
        else:
            ours = runs[(runs["dataset"] == dataset) & (runs["loss"] == row.cell[0]) & (runs["miner"] == row.cell[1])]
        for metric, value in row.metrics.items():
            rows.append({
                "dataset": dataset, "method": row.method, "source": row.source, "protocol": row.protocol,
                "backbone": row.backbone, "metric": metric, "published": value,
                "ours": float(100 * ours[metric].mean()) if len(ours) else np.nan, "seeds": len(ours),
                "comparison": _how_they_differ(row, ours),
            })
    return pd.DataFrame(rows, columns=["dataset", "method", "source", "protocol", "backbone", "metric", "published",
                                       "ours", "seeds", "comparison"])
