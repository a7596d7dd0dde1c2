"""A new loss ranked among the shipped ones: ``dmlbench compare my_losses:MyLoss``.

The comparison is a study made from the shipped tuned study (studies/tuned.yaml, or ``--study FILE``):
its cells plus the new loss's cell, with the same settings, seeds and tuning block (budget, sampler
seed, pruner), the new loss searched over the shared settings and the ranges ``space`` gives for its
own arguments. Runs and searches are content-hashed, so every cell of the shipped study is found
finished in the shipped results folders and reused where it lies (dmlbench.study.cells.resolve_run):
only the new loss's default cells, its search and its tuned cells run. The derived study's file and
results go to results/compare-<loss>/ (or $DMLBENCH_RESULTS); its report is the ordinary report of
that study, which ranks the new loss among the shipped ones with the same statistics.

    derived = comparison_study("my_losses:SquaredTripletLoss", miner="semi-hard")
    path = write_study(derived, folder)            # folder/study.yaml
    print("\\n".join(plan_lines(load_study(path))))  # what runs, what is reused, how long
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..fileio import atomic_write_text, read_json
from ..paths import REPO_ROOT, results_dir

BASE_STUDY = REPO_ROOT / "studies" / "tuned.yaml"
STUDY_FILE = "study.yaml"  # the derived study, in its results folder


def slug(loss: str) -> str:
    """A loss's name as a folder name: ``my_losses:SquaredTripletLoss`` -> ``squaredtripletloss``."""
    return re.sub(r"[^a-z0-9]+", "-", loss.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower()).strip("-") or "loss"


def default_miner(loss: str) -> str:
    """The sampling of the loss's paper where it names one (``paper_miner``), else every tuple ('none')."""
    from ..losses import LOSSES

    return getattr(LOSSES.get(loss), "paper_miner", None) or "none"


def comparison_study(loss: str, *, miner: str | None = None, loss_kwargs: dict | None = None,
                     space: dict | None = None, base: str | Path = BASE_STUDY,
                     seeds: list[int] | None = None) -> dict[str, Any]:
    """The derived study's mapping: ``base``'s, named compare-<loss>, with the new loss's cell added and,
    in a base with a tuning block, ``space`` (parameter -> range) searched for it beside the shared settings."""
    base = Path(base)
    if not base.is_file():
        raise ConfigError(f"study file {base} does not exist (the study to compare against; default {BASE_STUDY})")
    from ..config import read_yaml_file

    raw = read_yaml_file(base)  # numbers as YAML 1.2 spells them (1e-3)
    if not isinstance(raw, dict) or not raw.get("datasets"):
        raise ConfigError(f"{base}: not a study file (a mapping with datasets, cells, settings)")
    name = f"compare-{slug(loss)}"
    cell = {"loss": loss, "miner": miner or default_miner(loss), "loss_kwargs": dict(loss_kwargs or {})}
    if any(c.get("loss") == loss for c in raw.get("cells") or []) or loss in (raw.get("losses") or {}):
        raise ConfigError(f"{base} has a cell of {loss!r} already: compare a loss the study does not hold")
    raw |= {"name": name, "cells": [*(raw.get("cells") or []), cell],
            "description": f"{loss} with {cell['miner']} beside the cells of {base.name}, same settings and tuning"}
    if seeds:
        raw["seeds"] = list(seeds)
    if space:
        if raw.get("tuning") is None:
            raise ConfigError(f"{base} has no tuning block: a search space for {loss} has nothing to join")
        raw["tuning"].setdefault("space", {}).setdefault("losses", {})[loss] = space
    raw.pop("indexes", None)  # the comparison ranks losses; the index evaluation stays the default study's
    return raw


def write_study(raw: dict[str, Any], folder: Path) -> Path:
    """The derived study as folder/study.yaml (the report names it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STUDY_FILE
    atomic_write_text(path, yaml.safe_dump(raw, sort_keys=False))
    return path


def plan_lines(study) -> list[str]:
    """What the comparison runs and reuses, and how long it should take, in lines to print."""
    todo = [cell for cell in study.cells if not cell.is_done()]
    done = [cell for cell in study.cells if cell.is_done()]
    pending = study.pending
    trials = sum(search.spec.trials if search.spec.trials is not None else search.spec.min_configs for search in pending)
    tuned = sum(1 for cell in study.cells for search in pending if cell.search == search.search_id)
    own = results_dir().resolve()
    elsewhere = sorted({str(cell.run_dir.parent.parent) for cell in done if cell.run_dir.parent.parent.resolve() != own})
    run_s, trial_s = typical_run_s(done), typical_trial_s(study)
    seconds = (len(todo) + tuned) * (run_s or 0) + trials * (trial_s or 0)
    lines = [f"{study.name}: {_n(len(todo), 'run')} to make now, {_n(len(pending), 'search', 'searches')} to finish "
             f"({_n(trials, 'trial')}), then up to {_n(tuned, 'tuned run')}; reused: {_n(len(done), 'finished run')} "
             f"and {_n(len(study.searches) - len(pending), 'finished search', 'finished searches')} "
             f"({', '.join(elsewhere) or 'none elsewhere'})"]
    if run_s is None:
        lines.append("estimated time: unknown (no finished run to time it by)")
    else:
        lines.append(f"estimated time: about {_duration(seconds)} (at the median run, {run_s:.0f} s, and trial, "
                     f"{trial_s or 0:.0f} s, of the reused ones, on the machine that made them)")
    return lines


def typical_run_s(cells) -> float | None:
    """The median wall time of the finished runs of ``cells`` (their metrics.json's wall_time_s)."""
    times = []
    for cell in cells:
        try:
            times.append(float(read_json(cell.metrics_path)["wall_time_s"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return statistics.median(times) if times else None


def typical_trial_s(study) -> float | None:
    """The median time per trial of the study's finished searches (best.json's trial_seconds / trials)."""
    times = []
    for search in study.searches:
        if search.is_done():
            best = read_json(search.best_path)
            if best.get("trial_seconds") and best.get("trials"):
                times.append(float(best["trial_seconds"]) / int(best["trials"]))
    return statistics.median(times) if times else None


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def ranking_lines(results: Path, loss: str) -> list[str]:
    """The report's ranking (summary.json) as lines, the new loss marked: by the tuned cells' test MAP@R
    in a study with a tuning block, else by the cells' test MAP@R."""
    summary = read_json(results / "summary.json")
    lines = []
    for dataset, part in ((summary.get("tuning") or {}).get("datasets") or {}).items():
        rows = sorted(part["rows"], key=lambda row: row.get("rank_tuned") or 1e9)
        lines.append(f"{dataset}, ranked by test MAP@R at each loss's tuned settings (untuned rank in brackets):")
        lines += [f"  {row.get('rank_tuned')}. {row['loss']} + {row['miner']}: MAP@R {row.get('tuned_map@r', float('nan')):.4f}"
                  f" ({row.get('rank_default')})" + ("   <- new" if row["loss"] == loss else "") for row in rows]
    if not lines:
        rows = sorted(summary.get("table") or [], key=lambda row: -(row.get("map@r") or 0))
        lines.append(f"{summary.get('dataset')}, ranked by test MAP@R:")
        lines += [f"  {i}. {row['loss']} + {row['miner']}: MAP@R {row['map@r']:.4f}"
                  + ("   <- new" if row["loss"] == loss else "") for i, row in enumerate(rows, 1)]
    return lines


def _n(count: int, word: str, words: str | None = None) -> str:
    """'1 run', '3 runs'."""
    return f"{count} {word if count == 1 else (words or word + 's')}"
