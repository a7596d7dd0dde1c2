"""A study: datasets x losses x miners x seeds, each cell one papermill run of the experiment notebook.

A study file (YAML) looks like::

    name: default
    datasets: [fashion-mnist]
    losses:                      # name -> keyword arguments of the loss
      contrastive: {neg_margin: 1.0}
      triplet: {margin: 0.2}
    miners:                      # name -> keyword arguments of the miner
      none: {}
      semi-hard: {margin: 0.2}
    # datasets may also map each name to what differs for it: its own seeds, settings over the shared
    # ones, and 'grid: false' to run only the 'cells' list on it (a second dataset at a smaller cost):
    #   datasets:
    #     han-typefaces: {}
    #     fashion-mnist: {seeds: [0, 1], grid: false, settings: {P: 5, K: 16}}
    cells:                       # more (loss, miner) pairs beyond the grid, e.g. a loss with its paper's sampling
      - {loss: margin, miner: distance-weighted, loss_kwargs: {beta: 1.2}}
      - {loss: margin, miner: distance-weighted, settings: {epochs: 40}}  # settings of its own over the shared ones
    seeds: [0]
    settings:                    # any other RunConfig field, shared by every cell
      epochs: 8
      # preset: roth2020         # a reference protocol's settings (dmlbench.presets); the ones above override it
    slurm:                       # optional: how 'dmlbench study --executor slurm' submits the cells
      partition: gpu             # (every key: dmlbench.study.executors)
      timeout_min: 240
    reference_study: studies/default.yaml  # optional: the report ranks this study's cells beside that one's
                                           # and beside the published fair-protocol rankings (reporting.field)

Every cell runs on every dataset and seed (a dataset's own seeds, settings and grid when given). Every name is checked before anything runs; an unknown
one fails naming the valid choices. A loss crossed with a miner it cannot consume is not run: the
cell is listed as skipped with the reason. A pair given twice runs once.

Each cell runs in ``<results>/runs/<run id>/`` (the study's own results folder: dmlbench.paths): the
executed notebook and the metrics.json it writes. The run id embeds the configuration hash, so a
finished cell (its metrics.json exists) is never run again and a changed configuration never
overwrites an old one; a finished run of the same id in a shipped results folder is the same run,
reused where it lies (:func:`resolve_run`). A results folder belongs to one study (:func:`claim_results`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, check_setting_types, read_yaml_file
from ..errors import ConfigError, DiskFullError, IncompatibleError
from ..fileio import atomic_write_json, atomic_write_text, read_json, set_aside as set_aside_damaged
from .cluster import slurm_settings
from .kernel import KERNEL, execute_notebook
from ..paths import REPO_ROOT, notebook, results_dir, reuse_folders, runs_dir
from .preflight import check_run, check_study_data
from .footprint import compact_notebook
from ..training.record import set_aside
from ..training.rundir import CellBusy, RunDir  # noqa: F401 (CellBusy: run_config's error for a locked run folder)

log = logging.getLogger("dmlbench")

STUDY_KEYS = ("name", "description", "datasets", "losses", "miners", "cells", "seeds", "settings", "slurm", "tuning",
              "indexes", "reference_study")
CELL_KEYS = ("loss", "miner", "loss_kwargs", "miner_kwargs", "settings")
DATASET_KEYS = ("seeds", "folds", "settings", "grid")  # what a study's datasets mapping may give per dataset
AXES = ("dataset", "loss", "miner", "loss_kwargs", "miner_kwargs", "fold", "seed")
BUSY_EXIT = 3  # exit status of 'dmlbench run' when another process holds the cell's lock


@dataclass
class Cell:
    config: RunConfig
    role: str = "study"  # in a study with a tuning block: "default" (as written) or "tuned" (a search's best)
    search: str | None = None  # the search id of a tuned cell, and of a default cell that is searched
    @property
    def run_id(self) -> str:
        return self.config.run_id()

    @property
    def run_dir(self) -> Path:
        """Its folder in the study's runs/, or a shipped folder's finished run of the same id (resolve_run)."""
        return resolve_run(self.run_id)

    @property
    def folder(self) -> RunDir:
        """The run folder's files, lock and state."""
        return RunDir(self.run_dir)

    @property
    def metrics_path(self) -> Path:
        return self.folder.metrics

    def is_done(self) -> bool:
        """Finished: its metrics.json is a complete, readable record (a damaged one is run again)."""
        return self.folder.is_done(self.run_id)

    def needs_run(self) -> bool:
        """Unfinished, or finished with a damaged checkpoint.pt, which running the cell restores
        (:func:`restore_checkpoint`)."""
        return not self.is_done() or self.folder.checkpoint_problem() is not None

    def state(self) -> str:
        """'done', 'running', 'failed', 'resumable after epoch N', 'unreadable metrics.json: ...' or
        'to run' (dmlbench.training.rundir.RunDir.state)."""
        return self.folder.state(self.run_id)


@dataclass
class SkippedCell:
    dataset: str
    loss: str
    miner: str
    seed: int
    reason: str


@dataclass
class Study:
    path: Path
    name: str
    description: str
    cells: list[Cell] = field(default_factory=list)
    skipped: list[SkippedCell] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)  # checked Slurm settings (dmlbench.study.executors)
    tuning: Any = None  # the tuning block (dmlbench.study.tuning.TuningSpec), or None
    searches: list = field(default_factory=list)  # one dmlbench.study.tuning.Search per searched cell
    indexes: Any = None  # the indexes block (dmlbench.study.indexes.IndexPlan), or None
    # another study file whose cells the report ranks beside this one's (dmlbench.reporting.field), or None
    reference_study: Path | None = None

    @property
    def pending(self) -> list:
        """The searches whose budget is not spent yet: their tuned cells are not known yet."""
        return [search for search in self.searches if not search.is_done()]

    def search(self, search_id: str):
        for search in self.searches:
            if search.search_id == search_id:
                return search
        ids = [s.search_id for s in self.searches] or ["(none: the study has no tuning block)"]
        raise ConfigError(f"{self.path}: no search {search_id!r}; its searches: {', '.join(ids)}")

    def cell(self, run_id: str) -> Cell:
        for cell in self.cells:
            if cell.run_id == run_id:
                return cell
        import difflib

        ids = [c.run_id for c in self.cells]
        close = difflib.get_close_matches(str(run_id), ids, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{self.path}: no cell {run_id!r}{hint}; its cells: {', '.join(ids)}")


def _named_kwargs(study_path: Path, key: str, value: Any) -> dict[str, dict[str, Any]]:
    """``[a, b]`` or ``{a: {kw: v}, b: null}`` -> ``{a: {...}, b: {}}``."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v: {} for v in value}
    if isinstance(value, dict):
        out = {}
        for name, kwargs in value.items():
            if kwargs is None:
                kwargs = {}
            if not isinstance(kwargs, dict):
                raise ConfigError(f"{study_path}: {key}: {name}: expected a mapping of keyword arguments, got {kwargs!r}")
            out[str(name)] = kwargs
        return out
    raise ConfigError(f"{study_path}: {key}: expected a list of names or a mapping name -> keyword arguments, got {value!r}")


class _Everything(set):
    """A set that contains everything: passed as ``checked_models``, it makes validation skip networks."""

    def __contains__(self, item) -> bool:
        return True


def load_study(path: str | os.PathLike, *, check_networks: bool = True) -> Study:
    """Read and validate a study file; every cell's configuration is checked before returning.
    ``check_networks=False`` skips building the networks (pretrained weights need not be present) and
    the checks against the data (dmlbench.study.preflight), for a study that is listed, not run."""
    path = Path(path)
    raw = _read_study_file(path)
    slurm = slurm_settings(path, raw.get("slurm"))
    _check_axes_given(path, raw)
    per_dataset = _datasets(path, raw["datasets"])
    grid, extra = _grid_pairs(path, raw), _extra_pairs(path, raw.get("cells") or [])
    seeds = _seeds(path, raw.get("seeds", [0]))
    shared = raw.get("settings") or {}
    _check_names(path, list(per_dataset), grid + extra)
    study = Study(path=path, name=str(raw.get("name") or path.stem), description=str(raw.get("description") or ""),
                  slurm=slurm, indexes=_index_plan(path, raw), reference_study=_reference_study(path, raw))
    seeds_of = {}
    for dataset, own in per_dataset.items():
        if not isinstance(shared, dict):
            raise ConfigError(f"{path}: settings: expected a mapping, got {shared!r}")
        settings = _settings(path, {**shared, **own.get("settings", {})})
        pairs = (grid if own.get("grid", True) else []) + extra
        own_seeds = seeds_of[dataset] = _seeds(path, own["seeds"]) if "seeds" in own else seeds
        units = list(itertools.product(_folds(path, dataset, own.get("folds")), own_seeds))
        _add_cells(study, itertools.product([dataset], pairs, units), settings, check_networks=check_networks)
    if raw.get("tuning") is not None:
        _add_tuned_cells(study, raw["tuning"], seeds_of, check_networks=check_networks)
    if not study.cells:
        raise ConfigError(f"{path}: no runnable cell (every loss x miner pair is incompatible)")
    if check_networks:  # a study to run, not one to list, prepare data for, estimate or report on
        check_study_data(study)  # P, K and the sampler against each dataset's training split (dmlbench.study.preflight)
    return study


def _index_plan(path: Path, raw: dict[str, Any]):
    """The study's indexes block (dmlbench.study.indexes), or None without one."""
    if "indexes" not in raw:
        return None
    from .indexes import parse_plan

    return parse_plan(path, {} if raw["indexes"] is None else raw["indexes"])


def known_study_files() -> list[str]:
    """The repository's study files, as paths from the repository (what an error about a study names)."""
    return sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "studies").glob("*.yaml"))


def _reference_study(path: Path, raw: dict[str, Any]) -> Path | None:
    """The study file that ``reference_study`` names (relative to the folder the command runs in, else to the
    repository), or None without one; not read here, only found."""
    if raw.get("reference_study") is None:
        return None
    value, known = raw["reference_study"], ", ".join(known_study_files())
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: reference_study: expected the path of another study file, got {value!r}; "
                          f"the studies: {known}")
    found = next((p for p in (Path(value), REPO_ROOT / value) if p.is_file()), None)
    if found is None:
        raise ConfigError(f"{path}: reference_study: {value} is not a study file; the studies: {known}")
    if found.resolve() == path.resolve():
        raise ConfigError(f"{path}: reference_study: names the study itself; give another study file ({known})")
    return found


# loss, its keyword arguments, miner, its keyword arguments (and, in a 'cells' entry, settings of its own)
Pair = tuple[str, dict[str, Any], str, dict[str, Any]] | tuple[str, dict[str, Any], str, dict[str, Any], dict[str, Any]]


def _read_study_file(path: Path) -> dict[str, Any]:
    """The study file's mapping, with no key beyond STUDY_KEYS."""
    raw = read_yaml_file(path)  # numbers as YAML 1.2 spells them (1e-3); a damaged file named in one line
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping with keys {', '.join(STUDY_KEYS)}")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {', '.join(map(repr, unknown))}; valid keys: {', '.join(STUDY_KEYS)}")
    return raw


def _check_axes_given(path: Path, raw: dict[str, Any]) -> None:
    """Datasets, and losses and miners unless a 'cells' list alone names the pairs."""
    if not raw.get("datasets"):
        raise ConfigError(f"{path}: 'datasets' is missing or empty")
    if "cells" not in raw or "losses" in raw or "miners" in raw:
        for key in ("losses", "miners"):
            if not raw.get(key):
                raise ConfigError(f"{path}: '{key}' is missing or empty (or give a 'cells' list instead)")


def _datasets(path: Path, value: Any) -> dict[str, dict[str, Any]]:
    """``name``, ``[names]`` or ``{name: {seeds, settings, grid}}`` -> ``{name: {...}}``, checked."""
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v: {} for v in value}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: datasets: expected a name, a list of names or a mapping name -> "
                          f"{{{', '.join(DATASET_KEYS)}}}, got {value!r}")
    out = {}
    for name, own in value.items():
        own = own or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{path}: datasets: {name}: expected a mapping with keys {', '.join(DATASET_KEYS)} "
                              f"(or nothing), got {own!r}")
        bad = sorted(set(own) - set(DATASET_KEYS))
        if bad:
            raise ConfigError(f"{path}: datasets: {name}: unknown key {', '.join(map(repr, bad))}; valid keys: "
                              f"{', '.join(DATASET_KEYS)}")
        if not isinstance(own.get("settings", {}), dict) or not isinstance(own.get("grid", True), bool):
            raise ConfigError(f"{path}: datasets: {name}: settings must be a mapping and grid true or false")
        check_setting_types(own.get("settings", {}), f"{path}: datasets: {name}: settings")
        out[str(name)] = own
    return out


def _grid_pairs(path: Path, raw: dict[str, Any]) -> list[Pair]:
    """Every loss with every miner of the study's grid."""
    losses = _named_kwargs(path, "losses", raw["losses"]) if raw.get("losses") else {}
    miners = _named_kwargs(path, "miners", raw["miners"]) if raw.get("miners") else {}
    return [(loss, lk, miner, mk) for (loss, lk), (miner, mk) in itertools.product(losses.items(), miners.items())]


def _extra_pairs(path: Path, extra: Any) -> list[Pair]:
    """The 'cells' list: (loss, miner) pairs beyond the grid, each with its keyword arguments."""
    if not isinstance(extra, list):
        raise ConfigError(f"{path}: cells: expected a list of {{loss, miner, loss_kwargs, miner_kwargs}}, got {extra!r}")
    pairs = []
    for i, entry in enumerate(extra):
        if not isinstance(entry, dict) or "loss" not in entry or "miner" not in entry:
            raise ConfigError(f"{path}: cells[{i}]: expected a mapping with 'loss' and 'miner', got {entry!r}")
        bad = sorted(set(entry) - set(CELL_KEYS))
        if bad:
            raise ConfigError(f"{path}: cells[{i}]: unknown key {', '.join(map(repr, bad))}; valid keys: {', '.join(CELL_KEYS)}")
        for key in ("loss_kwargs", "miner_kwargs", "settings"):
            if not isinstance(entry.get(key) or {}, dict):
                raise ConfigError(f"{path}: cells[{i}]: {key}: expected a mapping, got {entry[key]!r}")
        own = entry.get("settings") or {}
        bad = sorted(set(own) - {f for f in RunConfig.field_names() if f not in AXES})
        if bad:
            raise ConfigError(f"{path}: cells[{i}]: settings: unknown setting {', '.join(map(repr, bad))}; valid "
                              f"settings: {', '.join(f for f in RunConfig.field_names() if f not in AXES)}")
        check_setting_types(own, f"{path}: cells[{i}]: settings")
        pairs.append((str(entry["loss"]), entry.get("loss_kwargs") or {}, str(entry["miner"]),
                      entry.get("miner_kwargs") or {}, own))
    return pairs


def _seeds(path: Path, seeds: Any) -> list[int]:
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) or not seeds:
        raise ConfigError(f"{path}: seeds: expected a list of non-negative integers, got {seeds!r}")
    return seeds


def _folds(path: Path, dataset: str, folds: Any) -> list[int | None]:
    """The folds every cell of ``dataset`` runs on: all of a folded dataset's unless the study names some;
    [None] for a dataset with one split."""
    from ..datasets.base import dataset_fact

    count = int(dataset_fact(dataset, "folds", 0) or 0)
    if folds is None:
        return list(range(count)) or [None]
    folds = folds if isinstance(folds, list) else [folds]
    if not count:
        raise ConfigError(f"{path}: datasets: {dataset}: folds: {dataset} has one split, no folds; drop 'folds'")
    if not folds or not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < count for f in folds):
        raise ConfigError(f"{path}: datasets: {dataset}: folds: expected a list of folds among 0..{count - 1}, "
                          f"got {folds!r}")
    return list(dict.fromkeys(folds))


def _settings(path: Path, settings: Any) -> dict[str, Any]:
    """The settings every cell shares, checked, with a preset's settings beneath the ones given."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: settings: expected a mapping, got {settings!r}")
    allowed = [f for f in RunConfig.field_names() if f not in AXES]
    bad = sorted(set(settings) - set(allowed))
    if bad:
        raise ConfigError(f"{path}: settings: unknown setting {', '.join(map(repr, bad))}; valid settings: {', '.join(allowed)}")
    check_setting_types(settings, f"{path}: settings")
    if settings.get("preset") is not None:  # the protocol's settings, overridden by those written beside it
        from ..presets import apply_preset

        try:
            settings = apply_preset(settings)
        except ConfigError as error:
            raise ConfigError(f"{path}: settings: preset: {error}") from None
    return settings


def _check_names(path: Path, datasets: list[str], pairs: list[Pair]) -> None:
    """Every dataset, loss and miner named is registered (the error names the valid choices)."""
    from ..datasets import DATASETS
    from ..losses import LOSSES
    from ..miners import MINERS

    named = ((DATASETS, "datasets", datasets), (LOSSES, "losses", [p[0] for p in pairs]), (MINERS, "miners", [p[2] for p in pairs]))
    for registry, key, names in named:
        for name in names:
            try:
                registry.get(name)
            except ConfigError as error:
                raise type(error)(f"{path}: {key}: {error}") from None


def _add_cells(study: Study, combinations, settings: dict[str, Any], *, check_networks: bool) -> None:
    """One cell per (dataset, pair, (fold, seed)), each once; an incompatible loss and miner is skipped with
    the reason."""
    seen, checked_models = set(), (set() if check_networks else _Everything())
    for dataset, (loss, loss_kwargs, miner, miner_kwargs, *own), (fold, seed) in combinations:
        config = RunConfig(**(settings | (own[0] if own else {})), dataset=dataset, loss=loss, miner=miner,
                           loss_kwargs=dict(loss_kwargs), miner_kwargs=dict(miner_kwargs), fold=fold, seed=seed)
        try:
            config.check_settings()  # before the run id, which computes with the settings' values
            if config.run_id() in seen:
                continue
            seen.add(config.run_id())
            config.validate(checked_models)
        except IncompatibleError as error:
            study.skipped.append(SkippedCell(dataset, loss, miner, seed, str(error)))
            continue
        except ConfigError as error:
            unit = f"fold {fold} x seed {seed}" if fold is not None else f"seed {seed}"
            raise type(error)(f"{study.path}: cell {dataset} x {loss} x {miner} x {unit}: {error}") from None
        study.cells.append(Cell(config))


def _add_tuned_cells(study: Study, raw: Any, seeds_of: dict[str, list[int]], *, check_networks: bool) -> None:
    """A study with a tuning block: its cells are the "default" ones; each gets a search, and each
    finished search's best settings run as "tuned" cells over the dataset's seeds."""
    from ..datasets.base import dataset_fact
    from .tuning import check_ranges, parse_tuning, searches_for

    study.tuning = spec = parse_tuning(study.path, raw)
    for dataset in seeds_of:
        if not dataset_fact(dataset, "validation", True):
            raise ConfigError(f"{study.path}: tuning: {dataset} has no validation split to score trials on; "
                              f"tune on a dataset with one, or drop the tuning block")
    for cell in study.cells:
        cell.role = "default"
    study.searches = searches_for(spec, [cell.config for cell in study.cells])
    if not study.searches:
        raise ConfigError(f"{study.path}: tuning: its space names no parameter of any cell's loss or miner, "
                          f"and no setting: nothing to search")
    checked = set() if check_networks else _Everything()
    for search in study.searches:  # every range's ends and choices, before any trial (dmlbench.study.tuning)
        check_ranges(search, f"{study.path}: tuning: space", checked_models=checked, data=check_networks)
    by_base = {search.base.config_hash(): search for search in study.searches}
    for cell in study.cells:
        found = by_base.get(dataclasses.replace(cell.config, seed=spec.seed).config_hash())
        cell.search = found.search_id if found else None
    checked, known = (set() if check_networks else _Everything()), {cell.run_id for cell in study.cells}
    for search in study.searches:
        if not search.is_done():
            continue
        for seed in seeds_of[search.base.dataset]:
            config = search.apply(search.best_values(), seed=seed)
            if config.run_id() in known:  # the best settings are the defaults: one cell, run once
                continue
            known.add(config.run_id())
            try:
                config.validate(checked)
            except ConfigError as error:
                raise type(error)(f"{search.best_path}: the best settings make an invalid cell: {error}") from None
            study.cells.append(Cell(config, role="tuned", search=search.search_id))


class RunFailed(RuntimeError):
    pass


def resolve_run(run_id: str, runs: Path | None = None) -> Path:
    """The folder of run ``run_id``: in ``runs`` (default the study's runs/) when it is there in any state;
    else a finished run of that id in a reuse folder's runs/ (dmlbench.paths.reuse_folders: the same
    content hash is the same run), read there and never written; else ``runs``/<run id>, to run."""
    own = (runs or runs_dir()) / run_id
    if own.exists() or own.is_symlink():
        return own
    for folder in reuse_folders():
        found = folder / "runs" / run_id
        if found.resolve() != own.resolve() and RunDir(found).is_done(run_id):
            return found
    return own


def link_reused_runs(study: Study) -> int:
    """A link in the study's runs/ to each finished run it reuses from another folder, so that its report
    (which reads its runs/) finds them; the reused folders are not touched. Returns the links made."""
    made = 0
    for cell in study.cells:
        own, found = runs_dir() / cell.run_id, cell.run_dir
        if found != own:
            own.parent.mkdir(parents=True, exist_ok=True)
            inside = own.resolve().is_relative_to(REPO_ROOT) and found.resolve().is_relative_to(REPO_ROOT)
            own.symlink_to(os.path.relpath(found.resolve(), own.parent.resolve()) if inside else found.resolve())
            made += 1
    return made


OWNER_FILE = ".study"  # a results folder's owner before its first report writes summary.json


def results_owner(folder: Path) -> tuple[str, str] | None:
    """(the study name, the file that says so) of a results folder: its summary.json's study, else its
    .study file; None for a folder no study has written."""
    try:
        return str(read_json(folder / "summary.json")["study"]), "summary.json"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    marker = folder / OWNER_FILE
    return (marker.read_text(encoding="utf-8").strip(), OWNER_FILE) if marker.is_file() else None


def claim_results(study: Study, *, mark: bool = True) -> Path:
    """The results folder this process writes (dmlbench.paths.results_dir), checked to be ``study``'s own:
    a folder that holds another study's results is refused, naming both studies and the way out; a new
    one is marked as the study's (``mark``; not by a command that only plans, such as --emit-make).
    Returns the folder."""
    return claim_folder(study.name, study.path, mark=mark)


def claim_folder(name: str, path: str | os.PathLike, *, mark: bool = True) -> Path:
    """claim_results for the study ``name`` of file ``path``."""
    folder = results_dir()
    owner = results_owner(folder)
    if owner is None and mark:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / OWNER_FILE, name + "\n")
    elif owner is not None and owner[0] != name:
        raise ConfigError(f"{folder} holds the results of study {owner[0]!r} (its {owner[1]}); study {name!r} "
                          f"({path}) would write its runs and report there and replace them. Leave RESULTS and "
                          f"DMLBENCH_RESULTS unset to write to its own folder (results/{name}/), or name an "
                          f"empty one: make all RESULTS=DIR, DMLBENCH_RESULTS=DIR")
    return folder


def study_name(path: str | os.PathLike) -> str:
    """The name a study file gives itself (its 'name:' key, else the file's stem), read without
    loading the study: its results folder follows from it (dmlbench.paths.study_results_dir)."""
    path = Path(path)
    return str(_read_study_file(path).get("name") or path.stem)


def protocol(path: str | os.PathLike, dataset: str | None = None) -> tuple[str, dict[str, Any]]:
    """(dataset, settings): the settings a study gives its cells of ``dataset`` (default its first
    dataset), with the dataset's first seed: what an ad-hoc run of a loss uses to be comparable."""
    path = Path(path)
    raw = _read_study_file(path)
    per_dataset = _datasets(path, raw.get("datasets"))
    dataset = dataset or next(iter(per_dataset))
    if dataset not in per_dataset:
        raise ConfigError(f"{path}: study {study_name(path)!r} has no protocol for dataset {dataset!r}; its "
                          f"datasets: {', '.join(per_dataset)} (or give --study FILE of a study with {dataset})")
    own = per_dataset[dataset]
    settings = _settings(path, {**(raw.get("settings") or {}), **own.get("settings", {})})
    seeds = _seeds(path, own["seeds"] if "seeds" in own else raw.get("seeds", [0]))
    return dataset, {**settings, "dataset": dataset, "seed": seeds[0]}


def notebook_parameters(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """The notebook's parameters; the run folder relative to the repository (the kernel's working
    directory) when it lies inside it, so executed notebooks carry no machine-specific paths."""
    run_dir = run_dir.resolve()
    shown = run_dir.relative_to(REPO_ROOT) if run_dir.is_relative_to(REPO_ROOT) else run_dir
    return {**config.to_dict(), "run_dir": str(shown)}


def run_config(config: RunConfig, *, run_dir: str | os.PathLike | None = None, log_output: bool = False) -> Path:
    """Run one configuration through the experiment notebook with papermill; returns metrics.json.

    A finished run (metrics.json present) is not run again. The notebook is executed into
    ``experiment.running.ipynb`` and renamed ``experiment.ipynb`` on success or
    ``experiment.failed.ipynb`` on failure (the error is then raised as RunFailed). The run folder is
    locked meanwhile: a second process running the same cell gets CellBusy (RunDir.lock).
    """
    config.validate()
    folder = RunDir(run_dir if run_dir else resolve_run(config.run_id()))
    metrics = folder.metrics
    if folder.is_done(config.run_id()):
        damaged = folder.checkpoint_problem()
        if damaged is None:
            log.info("%s: finished already, not run again", folder.path)
        else:
            restore_checkpoint(config, folder, damaged, log_output=log_output)
        return metrics
    check_run(config)  # the data, the device and the memory, before the run folder exists (dmlbench.study.preflight)
    with folder.lock():
        problem = folder.record_problem(config.run_id())
        if problem is None:  # another process finished it between our check and the lock
            return metrics
        if metrics.exists():  # damaged (truncated, edited): kept aside, and the cell runs again
            kept = set_aside(metrics)
            log.warning("%s: %s; kept as %s, running the cell again", metrics, problem, kept.name)
        _execute(config, folder, log_output=log_output)
    problem = folder.record_problem(config.run_id())
    if problem is not None:
        raise RunFailed(f"{config.run_id()}: the notebook finished, but {metrics}: {problem}")
    return metrics


def restore_checkpoint(config: RunConfig, folder: RunDir, problem: str, *, log_output: bool = False) -> None:
    """A finished run whose checkpoint.pt is damaged: the file is set aside, the cell runs again in the
    run folder's ``restore/``, and that checkpoint takes the damaged one's place only where the rerun
    reproduced the finished record (its test metrics, and the checkpoint's recorded SHA-256 where there
    is one). The finished record is never touched; a rerun that differs is left in ``restore/`` and named."""
    check_run(config)
    with folder.lock():
        if folder.checkpoint_problem() is None:  # another process restored it meanwhile
            return
        kept = set_aside_damaged(folder.checkpoint)  # <name>.damaged-<time>, as every other damaged store
        log.warning("%s: %s; set aside as %s, running the cell again to restore it", folder.checkpoint, problem,
                    kept.name)
        scratch = RunDir(folder.path / "restore")
        shutil.rmtree(scratch.path, ignore_errors=True)  # an earlier attempt's
        scratch.path.mkdir(parents=True)
        _execute(config, scratch, log_output=log_output)
        differs = _restored_differs(folder, scratch)
        if differs:
            raise RunFailed(f"{config.run_id()}: the cell ran again to restore its damaged {RunDir.CHECKPOINT}, but "
                            f"{differs}; the finished record is kept as it was, the rerun in {scratch.path}")
        os.replace(scratch.checkpoint, folder.checkpoint)
        shutil.rmtree(scratch.path)
    log.warning("%s: restored (the rerun reproduced the finished record)", folder.checkpoint)


def _restored_differs(folder: RunDir, scratch: RunDir) -> str | None:
    """How the rerun in ``scratch`` differs from the finished run in ``folder``, or None."""
    finished, rerun = read_json(folder.metrics), read_json(scratch.metrics)
    if not scratch.checkpoint.is_file():
        return f"the rerun wrote no {RunDir.CHECKPOINT}"
    if finished.get("test") != rerun.get("test"):
        return "its test metrics differ from the finished record's (another machine, thread count or library?)"
    recorded = finished.get("checkpoint")
    if isinstance(recorded, dict) and recorded.get("sha256") not in (None, (rerun.get("checkpoint") or {}).get("sha256")):
        return f"its {RunDir.CHECKPOINT} is not the file the finished record describes"
    return None


def _execute(config: RunConfig, folder: RunDir, *, log_output: bool) -> None:
    """The experiment notebook executed into the (locked) run folder: its executed notebook and
    execution.json on success; on failure, failure.json and RunFailed."""
    running = folder.running_notebook
    started = time.time()
    try:
        # the run folder's notebook is the experiment notebook, executed
        execute_notebook(notebook(RunDir.NOTEBOOK), running, parameters=notebook_parameters(config, folder.path),
                         cwd=REPO_ROOT, log_output=log_output, kernel_log=folder.kernel_log)
    except BaseException as error:
        if running.exists():
            os.replace(running, folder.failed_notebook)
        if not isinstance(error, Exception) or isinstance(error, DiskFullError):  # Ctrl-C, a full disk: not the cell
            raise
        message = _record_failure(config, folder, error, started)
        raise RunFailed(f"{config.run_id()} failed: {message} (executed notebook: {folder.failed_notebook})") from None
    compact_notebook(running)  # indexed-colour figures: the shipped runs' footprint (dmlbench.study.footprint)
    os.replace(running, folder.notebook)
    for stale in (folder.failed_notebook, folder.failure, folder.kernel_log):  # an earlier attempt's
        stale.unlink(missing_ok=True)
    atomic_write_json(folder.execution, {
        "run_id": config.run_id(), "started": started, "finished": time.time(),
        "notebook_wall_s": time.time() - started, "kernel": KERNEL,
        "runner": {"pid": os.getpid(), "host": socket.gethostname()}})


def _record_failure(config: RunConfig, folder: RunDir, error: Exception, started: float) -> str:
    """Write the failed attempt's failure.json (error, traceback, kernel log, saved epoch); returns
    the error's one-line message."""
    import papermill

    if isinstance(error, papermill.PapermillExecutionError):  # the notebook's code raised
        message = f"{error.ename}: {error.evalue}"
        trace = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error.traceback or []))  # no colour codes
    else:  # the kernel died (killed, out of memory, a crash in native code) or could not start
        message = f"{type(error).__name__}: {error}"
        trace = "".join(traceback.format_exception(error))
    atomic_write_json(folder.failure, {
        "run_id": config.run_id(), "error": message, "traceback": trace, "started": started,
        "failed": time.time(), "executed_notebook": RunDir.FAILED_NOTEBOOK,
        "kernel_log": RunDir.KERNEL_LOG if folder.kernel_log.is_file() else None,
        "resumable_after_epoch": folder.saved_epoch()})
    return message


def emit_makefile(study: Study, python: str = sys.executable) -> str:
    """A makefile with one target per cell's metrics.json, and the report depending on all of them."""
    dmlbench = f"{shlex.quote(python)} -m dmlbench"
    study_path = shlex.quote(str(study.path))
    results = results_dir()
    targets = [str(cell.metrics_path.relative_to(REPO_ROOT)) if cell.metrics_path.is_relative_to(REPO_ROOT)
               else str(cell.metrics_path) for cell in study.cells]
    report_html = results / "report.html"
    report_target = str(report_html.relative_to(REPO_ROOT)) if report_html.is_relative_to(REPO_ROOT) else str(report_html)
    lines = [
        f"# Generated by 'dmlbench study {study.path} --emit-make': one target per cell of study {study.name!r}.",
        "# No .DELETE_ON_ERROR here: runs write metrics.json atomically themselves, and a finished",
        "# run's results must never be deleted.",
        "SHELL := bash",
        ".SHELLFLAGS := -eu -o pipefail -c",
        "# The results folder this makefile was written for: its cells run there, whoever runs it.",
        f"export DMLBENCH_RESULTS := {shlex.quote(str(results.resolve()))}",
        f"RUNS := {' '.join(targets)}",
        "",
        ".PHONY: cells report FORCE",
        "cells: $(RUNS)",
        f"report: {report_target}",
        "",
    ]
    for cell, target in zip(study.cells, targets):
        # A damaged metrics.json is not a finished run, though make would see the file as up to date.
        # nor is a finished run whose checkpoint is damaged: running the cell restores it
        force = " FORCE" if cell.metrics_path.exists() and cell.needs_run() else ""
        lines += [f"{target}:{force}", f"\t{dmlbench} run --study {study_path} --cell {cell.run_id}", ""]
    # the report is rebuilt when its notebook, the reporting code or the study file changes
    sources = " ".join(["notebooks/report.ipynb", "$(wildcard dmlbench/reporting/*.py)", str(study.path)])
    if study.pending:
        lines = _pending_searches(study, lines, dmlbench, study_path)
        lines += [f"report: tuned", f"\t{dmlbench} report --study {study_path}", ""]
    else:
        indexes = _index_targets(study, lines, dmlbench, study_path)
        lines += [f"{report_target}: $(RUNS) {indexes}{sources}", f"\t{dmlbench} report --study {study_path}", ""]
    return "\n".join(lines)


def _index_targets(study: Study, lines: list[str], dmlbench: str, study_path: str) -> str:
    """A study with an indexes block: its runs' index evaluations, one grouped target made after every
    cell (so no training shares the cores the evaluation times); '$(INDEXES) ' for the report, or ''."""
    if study.indexes is None:
        return ""
    paths = [study.indexes.result_path(cell.run_id) for cell in study.cells if study.indexes.serves(cell.config)]
    shown = [str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p) for p in paths]
    lines[lines.index(".PHONY: cells report FORCE")] = ".PHONY: cells report indexes FORCE"
    lines += [f"INDEXES := {' '.join(shown)}", "indexes: $(INDEXES)",
              "$(INDEXES) &: $(RUNS)", f"\t{dmlbench} indexes --study {study_path}", ""]
    return "$(INDEXES) "


def _pending_searches(study: Study, lines: list[str], dmlbench: str, study_path: str) -> list[str]:
    """A study whose searches are not all finished: one target per search's best.json; once they all
    exist, 'tuned' writes the makefile again (now with the tuned cells) and makes its cells."""
    def shown(path: Path) -> str:
        return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)

    searches = [shown(search.best_path) for search in study.pending]
    lines = [line.replace("cells: $(RUNS)", "cells: $(RUNS) tuned").replace(".PHONY: cells report FORCE",
                                                                        ".PHONY: cells report tuned FORCE")
             for line in lines if not line.startswith("report: ")]  # the report follows the tuned cells
    lines[lines.index("")] = f"SEARCHES := {' '.join(searches)}\n"
    for search, target in zip(study.pending, searches):  # a damaged best.json is remade
        force = " FORCE" if search.best_path.exists() else ""
        lines += [f"{target}:{force}", f"\t{dmlbench} tune --study {study_path} --search {search.search_id}", ""]
    after = "$(firstword $(MAKEFILE_LIST)).tuned"
    lines += ["tuned: $(SEARCHES)", f"\t{dmlbench} study {study_path} --emit-make {after}",
              f"\t$(MAKE) --no-print-directory -f {after} cells", ""]
    return lines


def describe(study: Study) -> str:
    states = [cell.state() for cell in study.cells]
    counts = {}
    for state in states:
        kind = state.split(" (")[0].split(":")[0]
        kind = "resumable" if kind.startswith("resumable") else kind
        counts[kind] = counts.get(kind, 0) + 1
    tally = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    rows = [f"study {study.name!r} ({study.path}): {len(study.cells)} cells ({tally}), {len(study.skipped)} skipped"
            + _work_left(study, counts.get("to run", 0) + counts.get("resumable", 0) + counts.get("failed", 0))]
    for cell, state in zip(study.cells, states):
        rows.append(f"  {cell.run_id}  [{state}]")
    for search in study.searches:
        rows.append(f"  search {search.search_id}  [{search_state(search)}]")
    for skip in study.skipped:
        rows.append(f"  skipped {skip.dataset} x {skip.loss} x {skip.miner} x seed {skip.seed}: {skip.reason}")
    return "\n".join(rows)


def _work_left(study: Study, cells_left: int) -> str:
    """What a study with unfinished searches still has to run: their trials, and the tuned cells that
    follow them (not cells yet: their settings are what the searches find)."""
    if not study.pending:
        return ""
    tuned = sum(1 for cell in study.cells for search in study.pending if cell.search == search.search_id)
    if study.tuning.trials is None:
        return (f"; {len(study.pending)} searches to finish ({study.tuning.budget_text()} each, then "
                f"{study.tuning.finalists} finalists and the defaults at {study.tuning.rescore_seeds} seeds), then up to "
                f"{tuned} tuned cells: {cells_left + tuned} runs in all beside the searches")
    trials = sum(search.spec.trials - min(search.spec.trials, _trials_started(search)) for search in study.pending)
    return (f"; {len(study.pending)} searches to finish ({trials} trials to run), then up to {tuned} tuned cells: "
            f"{cells_left + tuned} runs and {trials} trials to run in all")


def _trials_started(search) -> int:
    trials = search.folder / "trials"
    return len(list(trials.glob("*.json"))) if trials.is_dir() else 0


def search_state(search) -> str:
    """'done (best trial N)', 'K of B trials finished' or 'to run'."""
    if search.is_done():
        from ..fileio import read_json

        return f"done (best trial {read_json(search.best_path)['best_trial']})"
    started = _trials_started(search)
    of = search.spec.trials if search.spec.trials is not None else f"a budget of {search.spec.budget_text()}"
    return f"{started} trials started of {of}" if started else "to run"


def study_manifest(study: Study) -> dict[str, Any]:
    """What the report needs to know of the study: expected cells and skipped ones."""
    return {
        "name": study.name, "path": str(study.path), "description": study.description,
        "cells": [{"run_id": c.run_id, "dataset": c.config.dataset, "loss": c.config.loss, "miner": c.config.miner,
                   "seed": c.config.seed, "config_hash": c.config.config_hash(), "role": c.role, "search": c.search}
                  for c in study.cells],
        "searches": [{"search_id": s.search_id, "dataset": s.base.dataset, "loss": s.base.loss, "miner": s.base.miner,
                      "folder": str(s.folder), "done": s.is_done()} for s in study.searches],
        "skipped": [vars(s) for s in study.skipped],
    }


def dump_manifest(study: Study) -> str:
    return json.dumps(study_manifest(study), indent=2)


def adhoc_config(study_path: str | os.PathLike, values: dict[str, Any]) -> tuple[RunConfig, str]:
    """An ad-hoc run ('dmlbench run --loss ...'): the study's protocol for the run's dataset (``values``'
    'dataset', else the study's first: :func:`protocol`) with ``values`` over it; and a sentence saying
    how it relates to the study's cells."""
    dataset, settings = protocol(study_path, values.get("dataset"))
    given = _study_kwargs(Path(study_path), values.get("loss"), values.get("miner"))
    settings = {**settings, **given.pop("settings", {})}  # a 'cells' entry's own settings are its protocol too
    values = {**given, **values}
    config = RunConfig.from_dict({**settings, **values}, where="--set").validate()
    cell = RunConfig.from_dict({**settings, **{k: v for k, v in values.items() if k in AXES}}, where="--set")
    changed = [f"{name}={getattr(config, name)!r} (the study's: {getattr(cell, name)!r})"
               for name in RunConfig.field_names() if name not in AXES and getattr(config, name) != getattr(cell, name)]
    where = f"the protocol of study {study_name(study_path)!r} ({study_path}) for {dataset}"
    if changed:
        return config, f"{where}, changed here: {', '.join(changed)}; its numbers are not comparable with the study's"
    return config, f"{where}: comparable with the study's {dataset} cells"


def _study_kwargs(path: Path, loss: str | None, miner: str | None) -> dict[str, Any]:
    """The keyword arguments the study gives ``loss`` and ``miner``: a 'cells' entry of that pair's (with the
    entry's own settings under "settings"), else its losses and miners mappings'."""
    raw = _read_study_file(path)
    for entry in _extra_pairs(path, raw.get("cells") or []):
        if (entry[0], entry[2]) == (loss, miner):
            return {"loss_kwargs": dict(entry[1]), "miner_kwargs": dict(entry[3]), "settings": dict(entry[4])}
    losses = _named_kwargs(path, "losses", raw["losses"]) if raw.get("losses") else {}
    miners = _named_kwargs(path, "miners", raw["miners"]) if raw.get("miners") else {}
    return {"loss_kwargs": dict(losses.get(loss, {})), "miner_kwargs": dict(miners.get(miner, {}))}


@contextlib.contextmanager
def epoch_progress(folder: RunDir, epochs: int, desc: str, every_s: float = 2.0):
    """A tqdm bar of a run's epochs while its notebook trains in the kernel, read from the state the run
    saves after each epoch (its resume.pt)."""
    from tqdm.auto import tqdm

    bar, stop = tqdm(total=epochs, desc=desc, unit="epoch"), threading.Event()

    def follow() -> None:
        seen = None
        while not stop.wait(every_s):
            try:
                stamp = folder.resume.stat().st_mtime
            except OSError:
                continue
            epoch = folder.saved_epoch() if stamp != seen else None
            seen = stamp
            if epoch is not None:
                bar.update(min(epoch, epochs) - bar.n)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    try:
        yield bar
    finally:
        stop.set()
        watcher.join()
        bar.close()
