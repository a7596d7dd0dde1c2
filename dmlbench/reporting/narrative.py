"""The report's sentences, made from the numbers: every function here takes tables (or counts) and
returns Markdown (a string, or a list of lines), so no number of the report is typed by hand and each
sentence can be tested on tables made for the purpose.

The report notebook shows them with ``IPython.display.Markdown``. The tables are those of
:mod:`dmlbench.reporting.tables` and :mod:`dmlbench.reporting.stats`: ``seeds`` a seed table (one row
per cell: the metrics' means, ``<metric>_low`` / ``_high`` interval bounds, ``seeds``), ``comparison``
a paired comparison with the baseline (``loss``, ``miner``, ``difference``, ``low``, ``high``,
``verdict``), a ranking (``rank``, ``rank_low``, ``rank_high``, ``score``, ``score_low``,
``score_high``), ``summary`` the means per cell (with ``<metric>_std`` and ``seeds``), ``runs`` one row
per run (``seed``, ``epochs``, ``best_epoch``, ...).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..training.rundir import RunDir
from .labels import DIAGNOSTIC_LABELS, METRIC_LABELS, cell_label, code, md_escape, plural
from .runs import STATES

METRIC_NAMES = {"recall@1": "Recall@1", "map@r": "MAP@R"}
from .tables import by_result, grid_losses, paper_cells, study_counts

LETTERS = "abcdefghijklmnopqrstuvwxyz"  # the marks of groups of identical cells


def joined(lines: list[str], empty: str) -> str:
    """Paragraphs, one per line; ``empty`` when there is none."""
    return "\n\n".join(lines) if lines else empty


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# ---- the study's first lines -------------------------------------------------------------------

def _cells_text(n: dict[str, Any]) -> str:
    """The cells of one dataset: loss x miner cells, and in a study with a tuning block, at which settings."""
    roles, d = n.get("roles", {}), max(1, len(n["datasets"]))
    if "default" not in roles:
        return plural(n["cells_per_dataset"], "loss x miner cell")
    default, tuned = roles["default"] // d, roles.get("tuned", 0) // d
    others = "" if tuned >= default else "; the others run at their defaults, which their search chose or has not yet replaced"
    return (f"{plural(n['cells_per_dataset'], 'cell')} ({default} loss x miner cells at their default settings, "
            f"{tuned} at their tuned settings{others})")


def _study_shape(n: dict[str, Any]) -> str:
    """How the runs multiply up: cells x seeds on the datasets."""
    d = len(n["datasets"])
    if len(n["seeds"]) == 1 and n["same_cells_per_dataset"]:
        return (f"{_cells_text(n)} x {plural(n['seeds'][0], 'seed')}"
                + (f" on 1 dataset ({n['datasets'][0]})" if d == 1 else f" x {d} datasets"))
    low, high = min(n["seeds"], default=0), max(n["seeds"], default=0)
    axes = "dataset x loss x miner" + (" x settings" if "default" in n.get("roles", {}) else "")
    return f"{plural(n['cells'], 'cell')} ({axes}), {low} to {high} seeds each, on {plural(d, 'dataset')}"


def study_header(manifest: dict[str, Any], status: pd.DataFrame) -> str:
    """The report's first lines: what the study is (counts whose product is the number of runs), how
    far it got, and every run without results, named with its error."""
    n = study_counts(manifest)
    skipped = ""
    if n["skipped"]:
        pairs = ", ".join(f"{l} + {m}" for _, l, m in n["skipped"])
        skipped = f"; {plural(len(n['skipped']), 'loss x miner pair')} skipped as incompatible ({pairs})"
    counts = status["state"].value_counts()
    done = int(counts.get("done", 0))
    state = f"**{done} of {n['runs']} runs finished**" + "".join(
        f", {int(counts[s])} {label}" for s, label in (("failed", "failed"), ("unreadable", "with an unreadable record"),
                                                        ("missing", "not run yet")) if counts.get(s, 0))
    lines = [f"Study **{md_escape(manifest['name'])}** ({code(manifest['path'])}): {plural(n['runs'], 'run')}: "
             f"{_study_shape(n)}; {plural(len(n['losses']), 'loss', 'losses')}, {plural(len(n['miners']), 'miner')}{skipped}. {state}."]
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
                path, _, why = str(row.note).partition(f"{RunDir.METRICS}: ")
                note = f": `{path}{RunDir.METRICS}`: {md_escape(why)}"
            lines.append(f"- *{label}*: {md_escape(cell_label(row.loss, row.miner))}, seed {row.seed} "
                         f"(`{row.run_id}`){note}")
        if len(part) > limit:
            lines.append(f"- *{label}*: {len(part) - limit} more, in the table of runs below")
    return ([""] + lines) if lines else []


def state_counts(counts: dict[str, int], rows: int) -> str:
    """'90 done, 3 skipped (93 rows).': the cells per state, in the order of STATES."""
    return (", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: STATES.index(kv[0])))
            + f" ({rows} rows).")


# ---- the findings ------------------------------------------------------------------------------

def _best_line(seeds: pd.DataFrame, confidence: float, tuned: bool = False) -> str:
    best = by_result(seeds).iloc[0]
    n_seeds = int(best["seeds"])
    spread = (f" ± {(best['map@r_high'] - best['map@r_low']) / 2:.4f} ({confidence:.0%} t-interval, "
              f"{plural(n_seeds, 'seed')})" if np.isfinite(best["map@r_low"]) else f" ({plural(n_seeds, 'seed')}, no interval)")
    line = (f"Best by test MAP@R{' at tuned settings' if tuned else ''}: **{cell_label(best['loss'], best['miner'])}**, "
            f"{best['map@r']:.4f}{spread}")
    by_r1 = by_result(seeds, "recall@1").iloc[0]
    if (by_r1["loss"], by_r1["miner"]) != (best["loss"], best["miner"]):
        line += f"; by Recall@1: **{cell_label(by_r1['loss'], by_r1['miner'])}** ({by_r1['recall@1']:.1%})"
    return line + "."


def _named(part: pd.DataFrame) -> str:
    """' (a + b +0.0123, c + d +0.0045, ...)': the first two cells of ``part`` with their differences."""
    shown = ", ".join(f"{cell_label(r.loss, r.miner)} {r.difference:+.4f}" for r in part.head(2).itertuples())
    return f" ({shown}{', ...' if len(part) > 2 else ''})" if len(part) else ""


def _baseline_line(comparison: pd.DataFrame | None, baseline: tuple[str, str]) -> str:
    if comparison is None or comparison.empty:
        return f"The baseline {cell_label(*baseline)} has no finished run: no paired comparison."
    verdicts = comparison["verdict"].value_counts()
    better = comparison[comparison["verdict"] == "better than the baseline"].sort_values("difference", ascending=False)
    worse = comparison[comparison["verdict"] == "worse than the baseline"].sort_values("difference")
    line = (f"Against the baseline **{cell_label(*baseline)}** (paired by unit, Holm-adjusted, "
            f"{plural(len(comparison), 'cell')}): **{len(better)} better** beyond seed noise{_named(better)}, "
            f"**{len(worse)} worse**{_named(worse)}, {int(verdicts.get('within seed noise', 0))} within noise")
    if verdicts.get("too few seeds", 0):
        line += f", {int(verdicts['too few seeds'])} with too few seeds to tell"
    return line + "."


def _loss_ranking_line(ranking: pd.DataFrame | None) -> str | None:
    if ranking is None or len(ranking) <= 1:
        return None
    top = ranking.iloc[0]
    shared = ranking[ranking["rank_low"] <= top["rank_high"]].iloc[1:]
    return (f"Losses ranked (each with its paper's sampling, bootstrap over units): **{top['loss']}** first"
            + (f", but its ranks ({top['rank_low']}-{top['rank_high']}) overlap "
               f"those of {plural(len(shared), 'other loss', 'other losses')}: no clear first."
               if len(shared) else ", and no other loss's range of ranks reaches its own."))


def _grid_line(seeds: pd.DataFrame, dataset: str) -> str | None:
    grid = grid_losses(seeds, dataset)
    part = seeds[seeds["loss"].isin(grid)]
    per_miner = part.groupby("miner")["map@r"].mean()
    per_loss = part.groupby("loss")["map@r"].mean()
    if len(per_miner) <= 1 or len(per_loss) <= 1:
        return None
    spread_miner, spread_loss = per_miner.max() - per_miner.min(), per_loss.max() - per_loss.min()
    axis, other = ("miner", "loss") if spread_miner > spread_loss else ("loss", "miner")
    return (f"On the grid ({', '.join(grid)} x miners) the {axis} moves mean MAP@R more than the {other} "
            f"(range {max(spread_miner, spread_loss):.4f} against {min(spread_miner, spread_loss):.4f}); "
            f"highest mean there: **{per_miner.idxmax()}** (whether it is best: the named claims).")


def _caveats_line(runs: pd.DataFrame, identical: list[list[str]], n_seeds: int,
                  convergence: dict | None = None) -> str | None:
    caveats = []
    if convergence:  # the convergence table's row of this dataset (dmlbench.reporting.adequacy.convergence)
        late = int(convergence["runs"]) - int(convergence["converged"])
        if late:
            caveats.append(f"{late} of {convergence['runs']} runs had not converged (their validation gain over the "
                           "last quarter of the budget is not below their cell's seed standard deviation)")
    if identical:
        caveats.append(f"{plural(len(identical), 'group')} of cells trained identically, each merged into one row "
                        "and counted once (notes under the table)")
    if n_seeds < 2:
        caveats.append("one seed per cell: no estimate of seed noise, so small differences rank nothing")
    return "Caveats: " + "; ".join(caveats) + "." if caveats else None


def tuned_line(untuned: pd.DataFrame | None, unranked: list[str] = ()) -> str | None:
    """In a study with a tuning block (``untuned``: its cells at their default settings, a seed table):
    that the ranking is of the tuned cells, and who leads untuned; the cells whose search has not
    finished (``unranked``) named. None in a study without a tuning block."""
    if untuned is None:
        return None
    line = ("Every cell below runs at the settings its search found best (its defaults where the search kept "
            "them): the study ranks the tuned losses")
    if len(untuned):
        lead = by_result(untuned).iloc[0]
        line += (f"; at their default settings (untuned) **{cell_label(lead['loss'], lead['miner'])}** led "
                 f"({pct(lead['map@r'])} MAP@R), and the tuning section compares every loss before and after")
    if unranked:
        line += f"; not ranked yet, their search unfinished: {', '.join(unranked)}"
    return line + "."


def headline(dataset: str, seeds: pd.DataFrame, comparison: pd.DataFrame, rankings: dict, runs: pd.DataFrame,
             baseline: tuple[str, str], confidence: float, identical: list[list[str]],
             untuned: pd.DataFrame | None = None, unranked: list[str] = (), *, tied: pd.DataFrame | None = None,
             claims: pd.DataFrame | None = None, baselines: pd.DataFrame | None = None,
             convergence: dict | None = None) -> list[str]:
    """The findings a first reader needs, one short sentence each, made from the numbers, led by MAP@R:
    the best cell with its interval and the cells tied with it (``tied``, a claims.tied_with_best
    table; without it the best cell alone), where the best and weakest cells stand against the
    trivial baselines (``baselines``, their seed-table rows), the named claims with their family
    (``claims``), the comparisons with the baseline cell beyond noise, whether the ranking singles
    out a first loss, what moves the results more (miner or loss), the caveats (``convergence``: the
    dataset's row of the convergence table); in a study with a tuning block (``untuned``, the default
    cells' seed table) that the cells are the tuned ones (:func:`tuned_line`, after the best cell)."""
    from . import findings

    n_seeds = int(by_result(seeds).iloc[0]["seeds"])
    first = (findings.tied_line(tied, seeds, confidence, untuned is not None) if tied is not None and len(tied)
             else _best_line(seeds, confidence, untuned is not None))
    lines = [first, tuned_line(untuned, unranked), findings.baselines_line(seeds, baselines),
             findings.claims_line(claims, confidence), _baseline_line(comparison, baseline),
             _loss_ranking_line(rankings.get((dataset, "loss"))), _grid_line(seeds, dataset),
             _caveats_line(runs, identical, n_seeds, convergence)]
    return [line for line in lines if line is not None]


def nothing_to_report(dataset: str) -> str:
    return f"**{dataset}**: no run has finished, so there is nothing to report yet."


def findings(lines: list[str], dataset: str | None = None) -> str:
    """The findings as a Markdown list; ``dataset`` named when the study has several."""
    return (f"**Findings{f' on {dataset}' if dataset else ''}**, from the numbers below:\n\n"
            + "\n".join(f"- {l}" for l in lines))


def results_caption(seeds: pd.DataFrame, confidence: float, dataset: str | None = None, tuned: bool = False) -> str:
    """What the table of every cell shows; ``dataset`` named when the study has several; ``tuned``: a
    study with a tuning block, whose table holds each cell at its tuned settings beside its defaults."""
    from .findings import interval_notes

    counts = sorted(set(seeds["units"] if "units" in seeds else seeds["seeds"]))
    word = "unit" if "units" in seeds and int(seeds.get("folds", pd.Series([0])).max()) > 1 else "seed"
    spread = (f"± the half-width of its {confidence:.0%} t-interval" if counts != [1] else
              f"(one {word}: no interval)")
    notes = interval_notes(seeds, confidence)
    return (f"Every cell{f' on {dataset}' if dataset else ''}{' at its tuned settings' if tuned else ''}, best first "
            f"by test MAP@R (R-Precision beside it): mean over {' to '.join(map(str, counts))} {word}"
            f"{'s' if counts != [1] else ''} {spread}. "
            + ("*MAP@R at default settings*: the same loss untuned. " if tuned else "")
            + "*vs best*: tied with the best cell or worse (paired by unit, Holm); the baselines without training are "
              "the last rows, outside the ranking. Bold: the baseline cell; *vs baseline*: the paired difference in "
              "MAP@R, and whether it exceeds the noise." + (f" {notes}" if notes else ""))


def _group_labels(group) -> list[str]:
    """A group's cells as 'loss + miner' (an IdenticalGroup, or a list of labels)."""
    return group.labels if hasattr(group, "labels") else list(group)


def _evidence(group) -> str:
    """What was equal in a group of identical cells (an :class:`dmlbench.reporting.runs.IdenticalGroup`)."""
    parts = []
    if group.same_metrics:
        parts.append("every test metric to every digit in every seed")
    if group.same_training:
        offsets = {v for v in group.loss_offsets.values()}
        loss = ("the same training loss" if offsets == {0.0} else
                "training losses that differ by one constant ("
                + ", ".join(f"{cell_label(*c)} {v:+.4f}" for c, v in group.loss_offsets.items() if v) + ")")
        parts.append(f"the validation metrics at every epoch of every seed, with {loss} at every epoch")
    return " and ".join(parts)


def identical_note(group, mark: str = "") -> str:
    """The note on a group of cells that trained identically (an IdenticalGroup): what was equal, which
    row stands for them, and why, from the known identities (KNOWN_IDENTITIES of
    :mod:`dmlbench.reporting.runs`), or that no known identity explains it."""
    labels = _group_labels(group)
    text = (f"{f'^{mark}^ ' if mark else ''}**{' and '.join(labels)} trained identically**: "
            f"{_evidence(group)}. They are one row, {labels[0]}, and "
            f"{' and '.join(labels[1:])} {'is' if len(labels) == 2 else 'are'} left out of the rankings and the "
            "paired comparisons with the baseline.")
    for identity in group.identities:
        text += (f" This follows from the definitions: {cell_label(*identity.merged)} equals "
                 f"{cell_label(*identity.kept)} because {identity.reason}, as long as {identity.condition}.")
    if not group.identities:
        text += (" No known identity of the study explains it (dmlbench.reporting.runs.KNOWN_IDENTITIES): "
                 f"only {_evidence(group)} say so.")
    return text


def identical_marks(identical: list) -> dict[tuple[str, str], str]:
    """(loss, miner) -> the letter of its group of identical cells, as the table of cells marks them."""
    return {tuple(label.split(" + ")): letter for letter, group in zip(LETTERS, identical)
            for label in _group_labels(group)}


def merged_names(identical: list) -> dict[tuple[str, str], str]:
    """(loss, miner) of each group's kept cell -> the cells its row stands for ('a + b, c + d')."""
    return {tuple(_group_labels(g)[0].split(" + ")): ", ".join(_group_labels(g)[1:]) for g in identical}


def identical_notes(identical: list) -> str:
    """The notes under the table of cells, one per group of identical cells ('' when none)."""
    return "\n\n".join(identical_note(group, letter) for letter, group in zip(LETTERS, identical))


# ---- the protocol ------------------------------------------------------------------------------

def _classes(classes) -> str:
    return f"classes {classes}" if len(classes) <= 12 else f"{len(classes):,} classes"


def typeface_line(info: dict[str, Any]) -> str:
    """han-typefaces' counts as its runs recorded them: typefaces, and typefaces per character per split."""
    counts = (info.get("source") or {}).get("counts")
    if not counts:
        return ""
    per = {part: counts[part]["typefaces_per_character"] for part in ("train", "val", "test")}
    return (f" Rendered from {counts['typefaces']} distinct typefaces (of {counts['faces_examined']} faces in the font "
            f"packages; duplicates removed by comparing renderings); typefaces per character (min / median / max): "
            + ", ".join(f"{part} {p['min']} / {p['median']:g} / {p['max']}" for part, p in per.items())
            + "; the test characters are drawn only in typefaces held out of training and validation.")


def split_line(dataset: str, info: dict[str, Any]) -> str:
    """The split sizes and classes of ``dataset`` as a run recorded them (``info``; empty: none yet)."""
    if not info:
        return f"- **{dataset}**: no finished run records the split sizes yet."
    held_out = not set(info["val_classes"]) & set(info["train_classes"])
    return (f"- **{dataset}**: {info['num_train']:,} training images of {_classes(info['train_classes'])}, "
            f"{info['num_val']:,} validation images of {_classes(info['val_classes'])} "
            f"({'held out from training and test' if held_out else 'the training classes'}), "
            f"{info['num_test']:,} test images of {_classes(info['test_classes'])} (numbers read from the runs)."
            + typeface_line(info))


def batches_line(s, dataset: str | None = None) -> str:
    """How one dataset's cells train (``s``: its first cell's RunConfig)."""
    schedule = {None: "constant", "constant": "constant", "cosine": "cosine to 0 over the budget",
                "plateau": "divided by 10 at the first validation plateau"}.get(s.lr_schedule, s.lr_schedule)
    stop = (f"; a plateau is {s.patience} epochs without a validation gain above {s.min_delta or 0:g}, and training "
            f"stops at {'the second' if s.lr_schedule == 'plateau' else 'the first'}" if s.patience else "")
    return (f"- **Batches{f' ({dataset})' if dataset else ''}**: P x K = {s.P} classes x {s.K} images; at most "
            f"{s.epochs} epochs of {s.iters_per_epoch or 'one pass of'} batches; optimiser {s.optimizer}, learning "
            f"rate {s.lr} ({schedule}), weight decay {s.weight_decay}{stop}.")


SPACE_ATTRIBUTE = "embedding_space"  # the Loss class attribute naming its space: "normalized" or "raw"
RAW_SPACES = ("raw", "unnormalised", "unnormalized")  # its values that mean: the head's output, not normalised


def loss_space(loss: str) -> str:
    """'L2-normalised' or 'raw': the embeddings ``loss`` trained on, as its class says (SPACE_ATTRIBUTE:
    a string, or True for normalised); L2-normalised where it says nothing."""
    from ..losses import LOSSES

    try:
        value = getattr(LOSSES.get(loss), SPACE_ATTRIBUTE, None)
    except Exception:  # a loss this checkout cannot import: the models' default
        value = None
    if isinstance(value, bool):
        return "L2-normalised" if value else "raw"
    return "raw" if value is not None and str(value).strip().lower() in RAW_SPACES else "L2-normalised"


def space_line(losses: list[str]) -> str:
    """Which embedding space each loss trained in."""
    spaces: dict[str, list[str]] = {}
    for loss in losses:
        spaces.setdefault(loss_space(loss), []).append(f"`{loss}`")
    if len(spaces) == 1:
        space = next(iter(spaces))
        return f"- **Embedding space**: every loss trained on the {space} embeddings."
    return "- **Embedding space** each loss trained in: " + "; ".join(
        f"{space} embeddings: {', '.join(names)}" for space, names in spaces.items()) + "."


REDUCTION_WORDS = {"mean_nonzero": "averaged over its non-zero terms", "mean": "averaged over all its terms",
                   "sum": "summed over its terms"}


def semi_hard_line(loss_kwargs: dict[str, Any], miner_kwargs: dict[str, Any]) -> str:
    """The study's choice for semi-hard mining with the triplet loss (its arguments as the study gives
    them, the classes' defaults elsewhere), and why."""
    import inspect

    from ..losses import LOSSES
    from ..miners import MINERS

    def argument(cls, given, name):
        return given.get(name, inspect.signature(cls).parameters[name].default)

    loss_cls, miner_cls = LOSSES.get("triplet"), MINERS.get("semi-hard")
    reduction = argument(loss_cls, loss_kwargs, "reduction")
    squared = bool(argument(loss_cls, loss_kwargs, "squared")) if "squared" in inspect.signature(loss_cls).parameters \
        else False
    distances = "squared Euclidean distances" if squared else "Euclidean (not squared) distances"
    why = ("FaceNet's own definition, its margin (0.2) chosen for squared distances." if squared else
           "FaceNet states its margin (0.2) on squared Euclidean distances; the study keeps that margin on Euclidean "
           "ones so that every miner of the grid shares one loss definition, and the semi-hard cells differ from "
           "the others only in the triplets they choose.")
    return (f"- **Semi-hard mining, this study's choice**: the triplet loss on {distances}, "
            f"{REDUCTION_WORDS.get(reduction, f'reduction {reduction}')}, with margin "
            f"{argument(loss_cls, loss_kwargs, 'margin')} in the loss and {argument(miner_cls, miner_kwargs, 'margin')} "
            f"in the miner: {why}")


def protocol(settings, splits: dict[str, dict[str, Any]], losses: list[str], miners: list[str],
             seeds: list[int], cell_kwargs: dict[tuple[str, str], tuple[dict, dict]] | None = None,
             per_dataset: dict[str, Any] | None = None) -> str:
    """The protocol section: the task, each dataset's splits (``splits``: dataset -> what its runs
    recorded), model selection, network, the embedding space of each loss, batches, the axes of the
    study, the choice for semi-hard mining (when ``cell_kwargs``, (loss, miner) -> their arguments,
    has triplet + semi-hard) and the metrics, from the study's settings (a RunConfig) and the
    evaluation's constants."""
    from ..evaluation import metrics as metric_defs

    s = settings
    semi_hard = (cell_kwargs or {}).get(("triplet", "semi-hard"))
    return "\n".join([
        "- **Task**: zero-shot retrieval: the network never sees the test classes during training or model selection.",
        *(split_line(dataset, info) for dataset, info in splits.items()),
        f"- **Model selection**: after every epoch the model embeds the validation split (as each dataset above "
        f"gives it); the epoch with the best validation {METRIC_LABELS.get(s.select_metric, s.select_metric)} "
        "is kept. The test split is embedded and scored **once**, on that model. Most published DML code picks the best "
        "epoch on the test set; this study does not.",
        network_line(s),
        space_line(losses),
        *([batches_line(c, d) for d, c in per_dataset.items()] if per_dataset and len(per_dataset) > 1
          else [batches_line(s)]),
        f"- **Losses** {', '.join(f'`{l}`' for l in losses)} crossed with **miners** {', '.join(f'`{m}`' for m in miners)}; "
        f"loss and miner arguments as in the study file. Seeds: {seeds}.",
        *([semi_hard_line(*semi_hard)] if semi_hard else []),
        "- **Metrics** on the test split, each query's own image removed from its ranking by index: Recall@K (a "
        "same-class image among the K nearest), R-Precision and MAP@R (over the R same-class images of the query), "
        f"and NMI between k-means clusters (faiss's k-means as pytorch-metric-learning runs it: k = number of test "
        f"classes, {metric_defs.KMEANS_ITERATIONS} iterations, seed {metric_defs.KMEANS_SEED}, at most "
        f"{metric_defs.MAX_POINTS_PER_CENTROID} training points per cluster) and the labels.",
    ])


# ---- loss x miner --------------------------------------------------------------------------------

def no_finished_cell(dataset: str) -> str:
    return f"**{dataset}**: no cell has finished yet."


def no_grid(dataset: str) -> str:
    return f"**{dataset}**: no loss ran with several miners, so there is no loss x miner grid to draw."


def single_miner_caption(dataset: str, single: pd.DataFrame, confidence: float) -> str:
    """What the table of the losses run with one miner (``single``, a seed table) shows."""
    return (f"**{dataset}**: the {plural(single['loss'].nunique(), 'loss', 'losses')} run with one "
            f"miner, best first by test MAP@R (mean ± the half-width of its {confidence:.0%} t-interval).")


# ---- over seeds ----------------------------------------------------------------------------------

def seeds_method(confidence: float, baseline: tuple[str, str]) -> str:
    """How intervals, comparisons with the baseline and rankings are made."""
    return (
        "Each cell ran on every fold and seed of its dataset: its replicate **unit** is (fold, seed), a fold fixing "
        "the characters and typefaces of each split, a seed the initialisation, the batches and the miners' draws "
        "(a dataset without folds has one unit per seed). "
        f"Intervals are two-sided {confidence:.0%} Student-t intervals of the mean over units, clipped to the "
        "metric's range [0, 1] where they would leave it. Tests are **paired t-tests over units**: two cells are "
        "compared through their per-unit differences, so the share of noise that a fold or a seed gives every cell "
        "alike cancels; the units are treated as independent pairs (no mixed model). Each cell is compared "
        f"with the baseline, {' + '.join(baseline)}, and with the best cell, Holm's method adjusting each family, and a "
        f"difference is called larger than the noise only when the adjusted p is below {1 - confidence:.2f}. Rankings "
        "come from a hierarchical bootstrap over the same units (folds drawn with replacement, then seeds within each "
        "drawn fold; the same draw for every cell), and an entry's range of ranks is widened to rank 1 where the "
        "paired test cannot separate it from the first; losses are ranked by the cell with their own paper's "
        "sampling, miners over the losses that were run with several miners.")


def no_seed_results(dataset: str) -> str:
    return f"**{dataset}**: no finished run, so no interval, comparison or ranking."


def seed_table_caption(dataset: str, confidence: float) -> str:
    return (f"**{dataset}**: mean over units (fold x seed) ± the half-width of the {confidence:.0%} t-interval, per "
            "cell, best first by MAP@R; the baselines (no training) below the cells.")


def comparison_caption(dataset: str) -> str:
    return f"**{dataset}**: each cell minus the baseline in test MAP@R, paired by unit (fold, seed), best first."


def _verdict_counts(dataset: str, comparison: pd.DataFrame, baseline: tuple[str, str], n_seeds: int) -> str:
    verdicts = comparison["verdict"].value_counts()
    better = comparison[comparison["verdict"] == "better than the baseline"]
    worse = comparison[comparison["verdict"] == "worse than the baseline"]
    return (
        f"**{dataset}**, test MAP@R against {' + '.join(baseline)} over {n_seeds} paired units: "
        f"{verdicts.get('better than the baseline', 0)} of {len(comparison)} cells are better beyond seed noise"
        + (" (" + ", ".join(f"{r.loss} + {r.miner} by {r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]"
                             for r in better.sort_values("difference", ascending=False).itertuples()) + ")"
           if len(better) else "")
        + f", {verdicts.get('worse than the baseline', 0)} worse"
        + (" (" + ", ".join(f"{r.loss} + {r.miner} by {r.difference:+.4f}" for r in worse.itertuples()) + ")"
           if len(worse) else "")
        + f", and {verdicts.get('within seed noise', 0)} within seed noise"
        + (f"; {verdicts.get('too few seeds', 0)} have too few paired seeds" if verdicts.get('too few seeds', 0) else "")
        + ".")


def comparison_lines(dataset: str, comparison: pd.DataFrame, by_recall: pd.DataFrame, baseline: tuple[str, str],
                     n_seeds: int) -> list[str]:
    """The comparisons with the baseline in MAP@R (``comparison``) and Recall@1 (``by_recall``) over
    ``n_seeds`` paired seeds: how many cells are better, worse, within seed noise."""
    if comparison.empty:
        return [f"**{dataset}**: the baseline {' + '.join(baseline)} is not among the finished cells; "
                "no paired comparison."]
    r1 = by_recall["verdict"].value_counts()
    return [_verdict_counts(dataset, comparison, baseline, n_seeds),
            f"By Recall@1 instead: {r1.get('better than the baseline', 0)} better, "
            f"{r1.get('worse than the baseline', 0)} worse, {r1.get('within seed noise', 0)} within noise."]


def ranking_what(by: str, grid: list[str]) -> str:
    """What a ranking of losses or of miners (over the losses of ``grid``) ranks."""
    return "each loss with its own paper's sampling" if by == "loss" else f"miners over {', '.join(grid)}"


def ranking_caption(dataset: str, what: str) -> str:
    return f"**{dataset}**: {what}, ranked by test MAP@R (hierarchical bootstrap over units: folds, then seeds)."


def ranking_line(ranked: pd.DataFrame, by: str, what: str) -> str:
    """The first of a bootstrap ranking, its score and range of ranks, and whether others share it."""
    top = ranked.iloc[0]
    shared = ranked[ranked["rank_low"] <= top["rank_high"]]
    return (f"Ranking {what} by test MAP@R: **{top[by]}** first ({top['score']:.4f}, interval "
            f"[{top['score_low']:.4f}, {top['score_high']:.4f}], ranks {top['rank_low']}-{top['rank_high']} "
            f"in the bootstrap); "
            + (f"its range of ranks overlaps those of {len(shared) - 1} other(s) ({', '.join(shared[by].iloc[1:])}), "
               "so the data do not single out a first place."
               if len(shared) > 1 else "no other's range of ranks reaches its own."))


# ---- the embedding diagnostics ----------------------------------------------------------------------

def too_few_diagnostics(dataset: str, runs: int) -> str:
    return f"**{dataset}**: {runs} runs with diagnostics, too few for a correlation."


def correlation_lines(dataset: str, table: pd.DataFrame, confidence: float) -> list[str]:
    """For each diagnostic whose sign Roth et al. report, whether the correlation with Recall@1 across
    the runs (a table of :func:`dmlbench.reporting.tables.correlations`) has the same sign."""
    lines = []
    for row in table.itertuples():
        if not row.roth_sign:
            continue
        direction = "falls" if row.roth_sign == "-" else "rises"
        if not np.isfinite(row.pearson_r):
            lines.append(f"**{dataset}**, {DIAGNOSTIC_LABELS[row.diagnostic]}: no correlation can be computed.")
            continue
        clear = row.r_low > 0 or row.r_high < 0
        lines.append(
            f"**{dataset}**, {DIAGNOSTIC_LABELS[row.diagnostic]}: Roth et al. report that Recall@1 {direction} "
            f"as it grows; here Pearson's r = {row.pearson_r:.2f} ({confidence:.0%} interval [{row.r_low:.2f}, {row.r_high:.2f}], "
            f"Spearman {row.spearman:.2f}, {row.runs} runs): "
            + ("the same sign" if row.same_sign_as_roth == "yes" else "the opposite sign")
            + (", and the interval excludes zero." if clear else ", but the interval includes zero.")
            + " Roth et al.'s coefficients are not recorded in the project's protocol (docs/protocol.md), so only "
              "the sign is compared.")
    return lines


# ---- what the numbers say ------------------------------------------------------------------------

def _extremes(dataset: str, summary: pd.DataFrame) -> list[str]:
    """The best and the weakest cell by MAP@R, and the first by Recall@1 where it is another."""
    ranked = by_result(summary)
    best, worst = ranked.iloc[0], ranked.iloc[-1]
    lines = [f"**{dataset}.** The best cell by test MAP@R is **{best['loss']} + {best['miner']}** "
             f"(MAP@R {best['map@r']:.4f}, Recall@1 {pct(best['recall@1'])}); the weakest is "
             f"{worst['loss']} + {worst['miner']} (MAP@R {worst['map@r']:.4f}, Recall@1 {pct(worst['recall@1'])})."]
    by_r1 = by_result(summary, "recall@1").iloc[0]
    if by_r1["loss"] != best["loss"] or by_r1["miner"] != best["miner"]:
        lines.append(f"Recall@1 ranks another cell first: {by_r1['loss']} + {by_r1['miner']} "
                     f"({pct(by_r1['recall@1'])}); the two metrics weigh the ranking differently "
                     f"(Recall@1 looks at one neighbour, MAP@R at all R same-class ones).")
    paper = paper_cells(summary)
    if len(paper) > 1:
        lines.append("Each loss with its own paper's sampling, by test MAP@R: " + "; ".join(
            f"{r['loss']} + {r['miner']} {r['map@r']:.4f} (R@1 {pct(r['recall@1'])})" for _, r in by_result(paper).iterrows()) + ".")
    return lines


def _grid_means(dataset: str, summary: pd.DataFrame, losses: list[str], lines: list[str]) -> None:
    """Appends the mean MAP@R per miner and per loss over the grid, and which of the two moves it more."""
    grid = summary[summary["loss"].isin(grid_losses(summary, dataset, losses))]
    per_miner = grid.groupby("miner")["map@r"].mean().sort_values(ascending=False)
    per_loss = grid.groupby("loss")["map@r"].mean().sort_values(ascending=False)
    if len(grid):
        lines.append("Over the losses run with several miners, mean test MAP@R per miner, best first: "
                     + ", ".join(f"{m} {v:.4f}" for m, v in per_miner.items())
                     + "; per loss, over its miners: " + ", ".join(f"{l} {v:.4f}" for l, v in per_loss.items()) + ".")
    spread_miner = per_miner.max() - per_miner.min() if len(per_miner) > 1 else math.nan
    spread_loss = per_loss.max() - per_loss.min() if len(per_loss) > 1 else math.nan
    if not math.isnan(spread_miner) and not math.isnan(spread_loss):
        axis = "miner" if spread_miner > spread_loss else "loss"
        lines[-1] += " On those,"
        lines[-1] += (f" the choice of {axis} moves MAP@R more (range {max(spread_miner, spread_loss):.4f} "
                      f"against {min(spread_miner, spread_loss):.4f} for the {'loss' if axis == 'miner' else 'miner'}).")


def _against_every_tuple(summary: pd.DataFrame, losses: list[str]) -> list[str]:
    """Per loss run with the miner 'none' and others: how many miners beat using every tuple."""
    lines = []
    for loss in losses:
        row = summary[summary["loss"] == loss].set_index("miner")["map@r"]
        if "none" in row and len(row) > 1:
            others = row.drop("none").sort_values(ascending=False)
            better = [m for m, v in others.items() if v > row["none"]]
            lines.append(f"With {loss}, {len(better)} of {len(others)} miners beat using every tuple "
                         f"(none: {row['none']:.4f}" + (f"; better: {', '.join(better)}" if better else "") + ").")
    return lines


def _training_and_noise(summary: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Where convergence is judged, and how large the noise over units (fold x seed) is."""
    lines = ["The test numbers are always those of the validation-best epoch; whether the runs had converged "
             "(their validation gain over the last quarter of the budget against their cell's seed deviation) "
             "is in the convergence table above."]
    seeds = int(summary["seeds"].min())
    if seeds < 2:
        lines.append(f"*Caution*: each cell ran with {seeds} seed, so these differences carry no estimate of seed "
                     "noise; differences of a few tenths of a percent should not be read as a ranking. More seeds "
                     "(the study's `seeds`) give means with spread.")
    else:
        noise = summary["map@r_std"].mean()
        lines.append(f"Across {seeds} units (fold x seed, or seeds where there are no folds) the mean standard "
                     f"deviation of MAP@R is {noise:.4f}: differences smaller than about twice that are within the "
                     "noise.")
    return lines


def discussion(dataset: str, summary: pd.DataFrame, runs: pd.DataFrame, losses: list[str]) -> list[str]:
    """'What the numbers say' for one dataset, from its means per cell (``summary``, the rows of
    :func:`dmlbench.reporting.tables.summarise` for ``dataset``) and its runs, losses in study order:
    the best and weakest cells, each loss with its paper's sampling, miner against loss on the grid,
    the miners against using every tuple, training length and seed noise."""
    if summary.empty:
        return [f"**{dataset}**: no finished cell to discuss."]
    lines = _extremes(dataset, summary)
    _grid_means(dataset, summary, losses, lines)
    return lines + _against_every_tuple(summary, losses) + _training_and_noise(summary, runs)


# ---- published numbers ---------------------------------------------------------------------------

def no_published_numbers(dataset: str) -> str:
    from .literature import NO_TABLE

    return NO_TABLE.get(dataset, f"No published numbers for {dataset} are recorded; its numbers are this project's own.")


def literature_caption(dataset: str, comparison: pd.DataFrame) -> str:
    """How many published numbers of ``dataset`` there are (a table of
    :func:`dmlbench.reporting.literature.compare`) and how many have our runs under their protocol."""
    same = comparison[comparison["comparison"].str.startswith("same protocol") & comparison["ours"].notna()]
    return (f"**{dataset}**: {len(comparison)} published numbers; {len(same)} of them have our runs "
            f"under the same protocol.")


# ---- can the study tell cells apart: convergence, power, cost ----------------------------------------

def adequacy_intro(confidence: float) -> str:
    return (f"Whether the study can tell its cells apart. **Convergence**: a run converged when its validation gain "
            f"over the last quarter of its epoch budget (its selection metric, best so far) is below its cell's "
            f"seed standard deviation of the validation score at the selected epoch (pooled within folds, so that "
            f"a harder fold is not counted as noise): training longer would add less than another seed moves. A run that has not converged is ranked partly by how fast it "
            f"learns. **Power**: the half-width of each cell's {confidence:.0%} t-interval over units, and the units a "
            f"paired difference of a given size needs (for its interval to exclude zero, at the median standard "
            f"deviation of the cells' paired differences with the baseline). **Cost**: where a cell's papermill time "
            f"goes.")


def convergence_lines(table: pd.DataFrame) -> list[str]:
    from .adequacy import convergence_text

    return [f"**{row['dataset']}**: {convergence_text(row)}; {row['stopped_on_plateau']} stopped on a validation "
            f"plateau before the budget; median epochs trained: {row['median_epochs_trained']:g}."
            for row in table.to_dict("records")]


def power_lines(table: pd.DataFrame, confidence: float) -> list[str]:
    lines = []
    if table.empty:
        return lines
    for dataset, part in table.groupby("dataset", sort=False):
        bits = []
        for row in part.to_dict("records"):
            need = {c: row[c] for c in part.columns if c.startswith("seeds_for_")}
            unknown = row["paired_sd_pts"] != row["paired_sd_pts"]  # NaN: no cell paired with the baseline
            wanted = "; ".join(f"{c[len('seeds_for_'):-len('_pts')]} points: "
                               f"{'more than 1000' if n is None or n != n else int(n)} seeds" for c, n in need.items())
            if unknown:
                wanted = ("any size: unknown (one seed: paired differences have no spread)" if row["seeds"] < 2
                          else "any size: unknown (no cell shares seeds with the baseline yet)")
            width = (f"median half-width {row['median_half_width_pts']:.2f} points (largest "
                     f"{row['max_half_width_pts']:.2f}) with {row['seeds']} seeds"
                     if row["median_half_width_pts"] == row["median_half_width_pts"] else
                     f"no interval with {plural(int(row['seeds']), 'seed')}")
            bits.append(f"{METRIC_NAMES.get(row['metric'], row['metric'])}: {width}; a paired difference of {wanted}")
        lines.append(f"**{dataset}** ({int(part['cells'].iloc[0])} cells, {confidence:.0%} intervals). " + ". ".join(bits) + ".")
    return lines


def cost_line(cost: pd.DataFrame) -> str:
    if cost.empty:
        return "No run has an execution record: nothing to say about its cost."
    lines = []
    for row in cost.to_dict("records"):
        lines.append(f"**{row['dataset']}** ({row['runs']} runs): training steps take "
                     f"{row['training_share_of_summed_wall']:.0%} of the summed papermill time (median per run "
                     f"{row['median_training_share']:.0%}); per run (medians) {row['wall_s']:.1f} s in all: training "
                     f"{row['training_s']:.1f} s, validation {row['validation_s']:.1f} s, kernel start and papermill "
                     f"{row['kernel_and_papermill_s']:.1f} s, set-up {row['set-up_s']:.1f} s, test evaluation, curves "
                     f"and checkpoints {row['training_cell_other_s']:.1f} s, t-SNE {row['t-SNE_s']:.1f} s, retrieval "
                     f"grid {row['retrieval grid_s']:.1f} s.")
    return "\n\n".join(lines)


def metric_line(dataset: str, verdicts: dict[str, int], seeds: pd.DataFrame, cells: int) -> str:
    """Which metric carries the findings: the one by which more cells differ from the baseline beyond seed
    noise (ties: the larger spread of cell means relative to the median interval half-width)."""
    spread = {}
    for metric in verdicts:
        half = ((seeds[f"{metric}_high"] - seeds[f"{metric}_low"]) / 2).median()
        spread[metric] = float((seeds[metric].max() - seeds[metric].min()) / half) if half and half == half else float("nan")
    best = max(verdicts, key=lambda m: (verdicts[m], spread[m] if spread[m] == spread[m] else -1))
    parts = [f"{METRIC_NAMES.get(m, m)}: {verdicts[m]} of {cells - 1} cells differ from the baseline beyond seed noise, "
             + (f"cell means spread over {spread[m]:.1f} median half-widths" if spread[m] == spread[m] else
                "no interval to measure the spread of cell means by (one seed)") for m in verdicts]
    return (f"**{dataset}**: {METRIC_NAMES.get(best, best)} carries the findings. " + "; ".join(parts) + ".")


def confusions_caption(dataset: str, cell: str, table: pd.DataFrame) -> str:
    if table.empty:
        return f"**{dataset}**, best cell ({cell}): no test query has a nearest neighbour of another class."
    top = table.iloc[0]
    return (f"**{dataset}**, best cell ({cell}): the class pairs most often confused at rank 1 (the query's class, "
            f"the class of its nearest other test image). The most frequent: {top['query class']} found as "
            f"{top['nearest class']} in {int(top['queries'])} queries ({top['share of the class']:.0%} of that class).")


def tuning_method(spec, confidence: float) -> str:
    """How the searches were made, from the study's tuning block."""
    pruner = spec.pruner
    pruned = ("none: every trial trains to its end" if pruner["name"] == "none" else
              f"the median pruner stops a trial at epoch {pruner['warmup_epochs']} or later when its validation "
              f"score falls below the median of earlier trials at that epoch (after {pruner['startup_trials']} "
              f"complete trials)" if pruner["name"] == "median" else
              f"successive halving (Optuna's asynchronous pruner) with rungs from epoch {pruner['min_epochs']}, "
              f"promoting 1 in {pruner['reduction_factor']} of the trials that reached a rung")
    metric = spec.objective.upper() if spec.objective == "map@r" else spec.objective
    if spec.budget_epochs is None:
        budget = (f"{spec.trials} trials of Optuna's TPE sampler (seed {spec.seed}; the first trial at the cell's "
                  f"defaults, then {spec.startup_trials} at random)")
    else:
        budget = (f"{spec.budget_epochs} training epochs, pruned and budget-stopped epochs counted, spent on trials "
                  f"proposed by Optuna's TPE sampler (seed {spec.seed}; the first trial at the cell's defaults, then "
                  f"{spec.startup_trials} at random), with epochs held back so that at least {spec.min_configs} "
                  f"configurations start")
    chosen = ("The best trial's settings" if not spec.finalists else
              f"Once the budget was spent, the {spec.finalists} best trials (by the epochs they reached, then their "
              f"score) and the cell's defaults trained again at full length at seeds "
              f"{', '.join(map(str, spec.rescore_seed_list))}, unpruned, and the best mean validation {metric} was "
              f"chosen (a gap to the runner-up below the seeds' pooled standard deviation is a tie). Its settings")
    return (f"Every searched cell had the same budget: {budget}; each trial trained at seed {spec.seed} on the "
            f"training classes and was scored by its best validation {metric} on the validation classes; pruning: "
            f"{pruned}. The test classes are sealed while tuning. {chosen} then ran as ordinary cells over the "
            f"study's seeds: the tuned numbers below are those cells' test scores, beside the default cells', each "
            f"with its {confidence:.0%} t-interval over seeds; the gain is tuned minus default, paired by seed. Ranks "
            f"are among the searched cells by mean test MAP@R (1: best).")


def cell_name(loss: str, miner: str) -> str:
    return f"{loss} + {miner}"


def indexes_method(plan, evaluated: int, runs: int) -> str:
    """How the runs' embeddings were indexed and measured, from the study's indexes block."""
    families = ", ".join(dict.fromkeys(spec.name for spec in plan.specs))
    return (f"{evaluated} of {runs} finished runs were served by similarity-search indexes ({families}). Each run's "
            f"network was reloaded from its checkpoint and its test split embedded again; the L2-normalised test "
            f"embeddings are the index's items, and {plan.queries:,} of them (the same ones for every run of a "
            f"dataset, drawn with seed {plan.seed}) query it, each excluding itself; the exact metric structures (ball "
            f"tree, pivot table, VP-tree, M-tree, AESA) answer the first {plan.exact_queries:,}, by k-NN and by a range "
            f"query whose radius is the median distance of their tenth neighbours, and count the distances they "
            f"compute. Each run's distance distribution gives its intrinsic dimensionality rho = mu^2 / (2 sigma^2) "
            f"(Chavez et al.) over random item pairs. Recall@1 and MAP@R are computed from each index's "
            f"answers as the evaluation computes them, and compared with the exact answers for the same queries; "
            f"k-NN recall@10 is the share of an index's ten answers at least as close as the true tenth neighbour. "
            f"Speed is batch throughput on one thread and on every core, the best of up to three searches. "
            f"'At matched speed', HNSW and IVF count at their most accurate setting that is at least as fast on one "
            f"thread as brute force (the flat index); an index that cannot be is shown as missing.")


def network_line(s) -> str:
    """The network and how it starts: from scratch, or a pretrained trunk fine-tuned (its learning rates)."""
    if s.model == "pretrained-glyphnet" or s.model_kwargs.get("pretrained"):
        trunk = f"the trunk at lr {s.trunk_lr:g}" if s.trunk_lr is not None else "the trunk at the same lr"
        frozen = ", BatchNorm frozen" if s.model_kwargs.get("freeze_bn") else ""
        return (f"- **Network**: `{s.model}` {s.model_kwargs or ''} with a new {s.embedding_dim}-d head, fine-tuned "
                f"from pretrained weights (the head at lr {s.lr:g}, {trunk}{frozen}; pretraining: "
                f"docs/transfer.md).")
    return f"- **Network**: `{s.model}` {s.model_kwargs or ''} with a {s.embedding_dim}-d embedding, trained from scratch."
