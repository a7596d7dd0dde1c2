"""What the report works on, gathered once: a study file and its results folder become the cells'
states, the finished runs and their histories, the means per cell and the statistics over seeds
(:class:`ReportContext`, made by :func:`gather`); the report notebook's sections read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .labels import DIAGNOSTICS
from .runs import cell_status, dataset_summary, identical_groups, load_histories, load_runs, without_duplicates
from .tables import grid_losses, over_seeds, over_units, summarise


@dataclass
class ReportContext:
    """A study's runs and the tables made of them, with the folders the report writes into."""

    results: Path  # the results folder: runs/, tables/, figures/, summary.json
    study: Any  # the study (dmlbench.study.cells.Study)
    manifest: dict[str, Any]  # its cells and skipped pairs (dmlbench.study.cells.study_manifest)
    baseline: tuple[str, str]  # every cell is compared with this (loss, miner), paired by seed
    confidence: float  # of the t-intervals; comparisons at the level 1 - confidence
    status: pd.DataFrame  # every cell with its state (dmlbench.reporting.runs.cell_status)
    runs: pd.DataFrame  # one row per finished run of the study
    histories: pd.DataFrame  # their per-epoch histories
    summary: pd.DataFrame  # means per dataset x loss x miner
    seed_tables: dict  # dataset -> the cells' t-intervals, best first (one row per group of identical cells)
    comparisons: dict  # (dataset, metric) -> the paired comparison with the baseline (identical cells once)
    rankings: dict  # (dataset, "loss" | "miner") -> the bootstrap ranking (identical cells once)
    identical: dict  # dataset -> groups of cells that trained identically (runs.IdenticalGroup, kept cell first)
    tied: dict | None = None  # dataset -> every cell against the best, paired by unit, Holm (claims.tied_with_best)
    claims: dict | None = None  # dataset -> best miner / best loss against their runners-up (claims.named_claims)
    baselines: pd.DataFrame | None = None  # one row per baseline record (dmlbench.study.baselines.load_baselines)
    untuned_runs: pd.DataFrame | None = None  # a study with a tuning block: its cells at their default settings.
    # Such a study is about its tuned cells: ``runs`` (and every table above) hold each search's best settings
    # (the tuned cells, or the default ones where the search kept the defaults), and these are shown as untuned
    _adequacy: dict | None = None  # the tables of adequacy(), once computed

    @property
    def tuned(self) -> bool:
        """Whether the study has a tuning block: its runs are then each search's best settings."""
        return self.untuned_runs is not None

    @property
    def tables(self) -> Path:
        return self.results / "tables"

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def runs_dir(self) -> Path:
        return self.results / "runs"

    @property
    def settings(self):
        """The first cell's settings (a RunConfig): what the protocol section describes."""
        return self.study.cells[0].config

    @property
    def dataset_settings(self) -> dict[str, Any]:
        """dataset -> the settings (a RunConfig) of its first cell: a study may set them per dataset."""
        out: dict[str, Any] = {}
        for cell in self.study.cells:
            out.setdefault(cell.config.dataset, cell.config)
        return out

    @property
    def losses(self) -> list[str]:
        return list(dict.fromkeys(c["loss"] for c in self.manifest["cells"]))

    @property
    def miners(self) -> list[str]:
        return list(dict.fromkeys(c["miner"] for c in self.manifest["cells"]))

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(c["dataset"] for c in self.manifest["cells"]))

    @property
    def seeds(self) -> list[int]:
        return sorted(set(c["seed"] for c in self.manifest["cells"]))

    @property
    def counts(self) -> dict[str, int]:
        """The number of cells in each state."""
        return self.status["state"].value_counts().to_dict()

    def named(self, dataset: str) -> str | None:
        """``dataset`` where sentences must name it (the study has several), else None."""
        return dataset if len(self.datasets) > 1 else None

    def untuned_seeds(self, dataset: str) -> pd.DataFrame | None:
        """In a study with a tuning block, the cells of ``dataset`` at their default settings with their
        t-intervals, best first (None in a study without one)."""
        from .stats import seed_summary
        from .tables import by_result

        if self.untuned_runs is None:
            return None
        part = self.untuned_runs[self.untuned_runs["dataset"] == dataset]
        return by_result(seed_summary(part, ("map@r", "recall@1"), self.confidence)) if len(part) else part

    def unranked_searches(self, dataset: str) -> list[str]:
        """In a study with a tuning block, the cells ('loss + miner') of ``dataset`` whose search has not
        finished, so that they have no best settings to rank yet."""
        return [f"{s.base.loss} + {s.base.miner}" for s in getattr(self.study, "searches", [])
                if s.base.dataset == dataset and not s.is_done()] if self.tuned else []

    def runs_of(self, dataset: str) -> pd.DataFrame:
        return self.runs[self.runs["dataset"] == dataset]

    def summary_of(self, dataset: str) -> pd.DataFrame:
        return self.summary[self.summary["dataset"] == dataset] if not self.summary.empty else self.summary

    def kept(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` (runs, or a table of cells) without the cells merged into an identical one."""
        return without_duplicates(table, [g for groups in self.identical.values() for g in groups])

    @property
    def cell_kwargs(self) -> dict[tuple[str, str], tuple[dict, dict]]:
        """(loss, miner) -> the loss's and the miner's arguments, as the study gives them."""
        return {(c.config.loss, c.config.miner): (c.config.loss_kwargs, c.config.miner_kwargs)
                for c in self.study.cells if c.role != "tuned"}

    def with_diagnostics(self, dataset: str) -> pd.DataFrame:
        """The runs of ``dataset`` that recorded every embedding diagnostic."""
        return self.runs_of(dataset).dropna(subset=list(DIAGNOSTICS))

    def grid(self, dataset: str) -> list[str]:
        """The losses of ``dataset`` run with several miners, in study order."""
        return grid_losses(self.runs_of(dataset), dataset, self.losses)

    def skipped_pairs(self, dataset: str) -> set[tuple[str, str]]:
        """The (loss, miner) pairs of ``dataset`` skipped as incompatible."""
        return {(c["loss"], c["miner"]) for c in self.manifest["skipped"] if c["dataset"] == dataset}

    def baseline_rows(self, dataset: str) -> pd.DataFrame:
        """The baselines of ``dataset`` as rows of a seed table (empty: none recorded)."""
        from .labels import METRICS
        from .tables import baseline_table

        if self.baselines is None or self.baselines.empty:
            return pd.DataFrame()
        return baseline_table(self.baselines, dataset, METRICS, self.confidence)

    def fold_variance(self) -> pd.DataFrame:
        """Per cell (identical cells once): MAP@R's variance between and within folds (claims.fold_variance)."""
        from .claims import fold_variance

        return fold_variance(self.kept(self.runs), "map@r")

    def agreement(self, dataset: str) -> dict:
        """Kendall's tau of the cells' validation and test MAP@R over the 15 best (claims.validation_agreement)."""
        from .claims import validation_agreement

        return validation_agreement(self.kept(self.runs_of(dataset)))

    def adequacy(self) -> dict[str, pd.DataFrame]:
        """Convergence, power and cost tables (dmlbench.reporting.adequacy), computed once."""
        if self._adequacy is None:
            from . import adequacy

            profile = adequacy.cell_profile(self.runs_dir, self.runs, self.histories)
            self._adequacy = {"convergence": adequacy.convergence(self.runs, self.histories),
                              "power": adequacy.power(self.kept(self.runs), self.seed_tables, self.baseline,
                                                      self.confidence),
                              "profile": profile, "cost": adequacy.cost_summary(profile)}
        return self._adequacy

    def splits(self) -> dict[str, dict[str, Any]]:
        """dataset -> the split sizes and classes its first finished run recorded (empty: none yet)."""
        return {dataset: dataset_summary(self.runs_dir, dataset) for dataset in self.datasets}


def defaults_kept(study) -> set[str]:
    """The finished searches of ``study`` whose best values are the cell's defaults."""
    from ..fileio import read_json

    kept = set()
    for search in study.searches:
        if search.is_done():
            best = read_json(search.best_path)
            if best["values"] == best["default_values"]:
                kept.add(search.search_id)
    return kept


def role_ids(manifest: dict[str, Any], role: str) -> set[str]:
    """The run ids of the study's cells of ``role`` ("default" or "tuned" in a study with a tuning block)."""
    return {c["run_id"] for c in manifest["cells"] if c.get("role") == role}


def best_settings_ids(manifest: dict[str, Any], kept: set[str] = frozenset()) -> set[str]:
    """The run ids of each finished search's best settings in a study with a tuning block: its tuned
    cells, or its default cells where the search kept the defaults (the study adds no tuned cell then, or
    adds cells at the very same values); cells without a search count as their own best. A cell whose
    search is unfinished has no best settings yet. ``kept``: the searches whose best values are the defaults."""
    done = {s["search_id"] for s in manifest.get("searches", []) if s.get("done")}
    with_tuned = {c["search"] for c in manifest["cells"] if c.get("role") == "tuned"}

    def is_best(cell) -> bool:
        search = cell.get("search")
        if cell.get("role") == "tuned":
            return search not in kept
        return search is None or (search in done and (search in kept or search not in with_tuned))

    return {c["run_id"] for c in manifest["cells"] if c.get("role") in ("default", "tuned") and is_best(c)}


def gather(study_path: str | os.PathLike, results: str | os.PathLike, baseline: tuple[str, str],
           confidence: float) -> ReportContext:
    """Read the study file and every run folder of ``results`` once: the cells' states, the finished
    runs of the study (damaged and foreign ones left out), their histories, and the tables over seeds."""
    from ..study.cells import load_study, study_manifest

    results = Path(results)
    study = load_study(study_path)
    manifest = study_manifest(study)
    status = cell_status(manifest, results / "runs")  # done, failed, unreadable, missing, skipped
    runs = load_runs(results / "runs")
    runs = runs[runs["run_id"].isin(status.loc[status["state"] == "done", "run_id"])].reset_index(drop=True)
    untuned = None
    if any(c.get("role") == "default" for c in manifest["cells"]):  # a tuning block: the best settings ranked
        untuned = runs[runs["run_id"].isin(role_ids(manifest, "default"))].reset_index(drop=True)
        runs = runs[runs["run_id"].isin(best_settings_ids(manifest, defaults_kept(study)))].reset_index(drop=True)
    histories = load_histories(results / "runs")
    histories = histories[histories["run_id"].isin(runs["run_id"])]
    datasets = list(dict.fromkeys(c["dataset"] for c in manifest["cells"]))
    groups = identical_groups(runs, histories, tuple(baseline))  # trained identically: one row, counted once
    identical = {d: [g for g in groups if g.dataset == d] for d in datasets}
    seed_tables, comparisons, rankings = over_seeds(without_duplicates(runs, groups), baseline, confidence)
    tied, claims = over_units(without_duplicates(runs, groups), confidence)
    for dataset, table in seed_tables.items():
        names = {g.kept: ", ".join(g.labels[1:]) for g in identical.get(dataset, [])}
        table["same_as"] = [names.get(cell, "") for cell in zip(table["loss"], table["miner"])]
    return ReportContext(results=results, study=study, manifest=manifest, baseline=tuple(baseline),
                         confidence=confidence, status=status, runs=runs, histories=histories,
                         summary=summarise(runs), seed_tables=seed_tables, comparisons=comparisons,
                         rankings=rankings, identical=identical, tied=tied, claims=claims,
                         baselines=read_baselines(results), untuned_runs=untuned)


def read_baselines(results: Path) -> pd.DataFrame:
    """The baseline records under ``results`` (raw pixels, the untrained network), an empty frame when
    there are none (or the checkout cannot compute them)."""
    try:
        from ..study.baselines import load_baselines
    except ImportError:  # a checkout without baselines: the tables show the cells alone
        return pd.DataFrame()
    return load_baselines(results)
