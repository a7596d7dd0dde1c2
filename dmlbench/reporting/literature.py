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
    # A Metric Learning Reality Check: 4 fold models concatenated to 512-d; P@1 / R-Precision / MAP@R.
    *(Published("cub", method, cell, "mlrc", "BN-Inception, 4 x 128-d concatenated",
                 {"recall@1": p1, "r_precision": rp, "map@r": mapr}, "Musgrave et al., ECCV 2020")
      for method, cell, p1, rp, mapr in (
          ("contrastive", ("contrastive", "none"), 68.13, 37.24, 26.53),
          ("triplet", ("triplet", "none"), 64.24, 34.55, 23.69),
          ("ProxyNCA", ("proxy-nca", "none"), 65.69, 35.14, 24.21),
          ("margin", ("margin", "none"), 63.60, 33.94, 23.09),
          ("ArcFace", ("arcface", "none"), 67.50, 37.31, 26.45),
          ("multi-similarity", ("multi-similarity", "none"), 65.04, 35.40, 24.70),
          ("multi-similarity + miner", ("multi-similarity", "multi-similarity"), 67.73, 37.37, 26.52),
          ("SoftTriple", None, 67.27, 37.34, 26.51),
          ("pretrained, no training", None, 51.05, 24.85, 14.21),
      )),
    # Roth et al. 2020, read from the authors' figures (about +-0.1).
    *(Published("cub", method, cell, "roth2020", "ResNet-50, 128-d", {"recall@1": r1}, "Roth et al., ICML 2020")
      for method, cell, r1 in (
          ("margin (distance sampling)", ("margin", "distance-weighted"), 63.1),
          ("multi-similarity", ("multi-similarity", "multi-similarity"), 62.8),
          ("triplet, random", ("triplet", "random"), 58.5),
          ("triplet, semi-hard", ("triplet", "semi-hard"), 60.1),
          ("triplet, distance-weighted", ("triplet", "distance-weighted"), 62.9),
          ("contrastive (distance sampling)", ("contrastive", "distance-weighted"), 61.5),
      )),
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
