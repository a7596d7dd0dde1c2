"""Names as a reader sees them: the metrics and diagnostics and their labels, table columns, cells
('loss + miner'), counted words, paths, and Markdown-escaped text.

Every other module of the report takes its names from here, so a metric is called the same in every
table, figure and sentence, and tables list the metrics in one order (DISPLAY_METRICS).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..paths import REPO_ROOT

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "nmi", "ami")
METRIC_LABELS = {"recall@1": "Recall@1", "recall@2": "Recall@2", "recall@4": "Recall@4", "recall@8": "Recall@8",
                 "r_precision": "R-Precision", "map@r": "MAP@R", "nmi": "NMI", "ami": "AMI"}
DIAGNOSTICS = ("spectral_decay", "intra_class_distance", "inter_class_distance", "intra_over_inter")
DIAGNOSTIC_LABELS = {"spectral_decay": "spectral decay (rho)", "intra_class_distance": "intra-class distance",
                     "inter_class_distance": "inter-class distance", "intra_over_inter": "intra / inter (pi ratio)"}
# The direction of the relation to Recall@1 that Roth et al. (ICML 2020) report: R@1 falls as the
# spectral decay grows (compression hurts generalisation) and rises with the intra / inter ratio
# (a less dense embedding space generalises better).
ROTH_SIGNS = {"spectral_decay": -1, "intra_over_inter": +1}

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
    "knn_recall": "k-NN recall@10", "qps_1": "queries/s, 1 thread", "qps_all": "queries/s, all cores",
    "build_s": "build time (s)", "distance_fraction": "share of distances computed",
    "median_half_width_pts": "median half-width (points)", "max_half_width_pts": "largest half-width (points)",
    "paired_sd_pts": "SD of paired differences (points)", "converged_share": "share converged",
    "training_share_of_summed_wall": "training share of summed wall time",
    "median_gain_last_quarter": "median validation gain over the last quarter", "wall_s": "wall time (s)",
    "median_cell_sd": "median SD of the cells over units", "not_converged": "not converged",
    "p_holm_vs_first": "p (Holm) against the first", "tied_with_first": "tied with the first",
    "between": "variance between folds", "within": "variance within folds", "between_share": "share between folds",
    "runner_up": "runner-up", "first_score": "first's MAP@R", "runner_up_score": "runner-up's MAP@R",
    "status": "against the best",
}
SUFFIX_WORDS = {"low": "low", "high": "high", "std": "SD", "lost": "lost"}  # after a metric's name
VERDICTS = {"better than the baseline": "better", "worse than the baseline": "worse",
            "within seed noise": "noise", "too few seeds": "too few seeds"}


def column_label(name: str) -> str:
    """A table column as the reader sees it: 'map@r' -> 'MAP@R', 'map@r_low' -> 'MAP@R low',
    'recall@1_lost' -> 'Recall@1 lost', 'training_s' -> 'training (s)', 'seeds_for_1_pts' -> 'seeds for
    a 1-point difference': no underscore and no bare key left."""
    if name in COLUMN_LABELS:
        return COLUMN_LABELS[name]
    base, _, suffix = name.rpartition("_")
    if (base in METRIC_LABELS or base.startswith("recall@")) and suffix in SUFFIX_WORDS:
        return f"{column_label(base)} {SUFFIX_WORDS[suffix]}"
    if name.startswith("recall@"):
        return "Recall@" + name.split("@", 1)[1]
    if name.startswith("seeds_for_") and suffix == "pts":
        return f"seeds for a {base[len('seeds_for_'):]}-point difference"
    if base and suffix in ("s", "pts"):
        return f"{column_label(base)} ({'s' if suffix == 's' else 'points'})"
    return name.replace("_", " ")


def recall_columns(runs: pd.DataFrame) -> list[str]:
    """The recall@K columns present, by K."""
    return sorted((c for c in runs.columns if c.startswith("recall@")), key=lambda c: int(c.split("@")[1]))


def cell_label(loss: str, miner: str) -> str:
    return f"{loss} + {miner}"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def md_escape(text: str) -> str:
    """``text`` shown as written in Markdown (error messages carry underscores and asterisks)."""
    return "".join("\\" + c if c in "\\`*_[]<>#|^~$" else c for c in str(text))


def code(text: str) -> str:
    """``text`` as a Markdown code span, shown as written whatever backticks it holds."""
    import re

    text = str(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when inside it (results/runs/...), else absolute."""
    path = Path(path).absolute()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
