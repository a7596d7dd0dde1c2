"""Collecting a study's runs: every finished run's record into tables (one row per run, per-epoch
histories), every cell of the study with its state (done, failed, unreadable, missing, skipped),
and what the run folders record beside the numbers (execution times, the machine).

A run folder's files are named by :class:`dmlbench.training.rundir.RunDir`; a finished run is one
whose record :func:`dmlbench.training.record.read_record` accepts, and a damaged record is never a
crash: :func:`cell_status` names it and says why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import read_json
from ..training.record import UnreadableRecord, read_record
from ..training.rundir import RunDir
from .labels import DIAGNOSTICS, METRICS, cell_label, shown_path
from .stats import unit_label, units, with_units


def _records(runs: str | os.PathLike):
    """Every finished run's record under ``runs`` (one that :func:`dmlbench.training.record.read_record`
    accepts), by folder name; damaged ones are left out here (:func:`cell_status` names them)."""
    for path in sorted(Path(runs).glob(f"*/{RunDir.METRICS}")):
        try:
            yield read_record(path, path.parent.name)  # under runs/, a run's folder is named after it
        except UnreadableRecord:
            continue


RUN_COLUMNS = ["run_id", "dataset", "loss", "miner", "fold", "seed", "unit", "config_hash", *METRICS, *DIAGNOSTICS,
               "excluded_queries", "epochs", "epochs_run", "best_epoch", "selected_by", "val_at_best", "val_map@r",
               "val_r_precision", "wall_time_s", "train_time_s",
               "images_per_s", "device", "preset", "preset_deviations", "loss_kwargs", "miner_kwargs"]


def _run_row(record: dict[str, Any]) -> dict[str, Any]:
    """One finished run's row of :func:`load_runs`."""
    config = record["config"]
    fold = config.get("fold")  # records made before han-typefaces had folds carry none
    row = {"run_id": record["run_id"], "dataset": config["dataset"], "loss": config["loss"],
           "miner": config["miner"], "fold": np.nan if fold is None else fold, "seed": config["seed"],
           "unit": unit_label(fold, config["seed"]), "config_hash": record["config_hash"]}
    row.update({m: record["test"].get(m, np.nan) for m in METRICS})
    row.update({d: (record.get("diagnostics") or {}).get(d, np.nan) for d in DIAGNOSTICS})
    row.update({"excluded_queries": record["test"].get("num_excluded_queries"),
                "epochs": config["epochs"], "best_epoch": record["best_epoch"],
                # epochs trained: fewer than ``epochs`` when the run stopped on a validation plateau (patience)
                "epochs_run": max((h["epoch"] for h in record["history"]), default=0),
                "selected_by": record["selected_by"],
                "val_at_best": record["val_at_best"].get(record["selected_by"]),
                # the validation scores at the selected epoch, named as the baselines' records name them
                "val_map@r": record["val_at_best"].get("val_map@r", np.nan),
                "val_r_precision": record["val_at_best"].get("val_r_precision", np.nan),
                "wall_time_s": record["wall_time_s"], "train_time_s": record["train_time_s"],
                "images_per_s": record["images_per_s"], "device": record["device"],
                "preset": config.get("preset"),
                "preset_deviations": "; ".join((record.get("preset") or {}).get("deviations", [])),
                "loss_kwargs": json.dumps(config["loss_kwargs"], sort_keys=True),
                "miner_kwargs": json.dumps(config["miner_kwargs"], sort_keys=True)})
    row.update({m: v for m, v in record["test"].items() if m.startswith("recall@") and m not in row})
    return row


def load_runs(runs: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run (a readable, complete record under ``runs``); the columns are there
    even when no run is. ``fold`` is NaN for a dataset without folds (and for records made before
    folds); ``unit`` names the run's replicate, (fold, seed), or its seed where there is no fold."""
    table = pd.DataFrame([_run_row(record) for record in _records(runs)])
    return table.reindex(columns=RUN_COLUMNS + [c for c in table.columns if c not in RUN_COLUMNS])


def load_histories(runs: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch history of every finished run, long format, with its dataset (datasets train for
    different numbers of epochs: their curves are never averaged together)."""
    rows = []
    for record in _records(runs):
        for h in record["history"]:
            rows.append({"run_id": record["run_id"], "dataset": record["config"]["dataset"],
                         "loss_name": record["config"]["loss"], "miner": record["config"]["miner"],
                         "seed": record["config"]["seed"], "fold": record["config"].get("fold"), **h})
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "dataset", "loss_name", "miner", "seed", "epoch"])


def dataset_summary(runs: str | os.PathLike, dataset: str) -> dict[str, Any]:
    """The split sizes and classes recorded by the first finished run on ``dataset``."""
    for record in _records(runs):
        if record["config"]["dataset"] == dataset and record.get("dataset"):
            return record["dataset"]
    return {}


def identical_cells(runs: pd.DataFrame, histories: pd.DataFrame | None = None) -> list[list[str]]:
    """Groups of cells (as 'loss + miner', by name) of one dataset that trained identically
    (:func:`identical_groups`): their test metrics agree to every digit in every seed, or their
    histories at every epoch."""
    return [sorted(g.labels) for g in identical_groups(runs, histories)]


STATES = ("done", "failed", "unreadable", "missing", "skipped")  # the states of a cell, as cell_status gives them


def _cell_state(folder: RunDir, run_id: str) -> tuple[str, str]:
    """(state, note) of one cell of the study from its run folder."""
    if folder.metrics.exists():
        try:
            read_record(folder.metrics, run_id)
            return "done", ""
        except UnreadableRecord as damaged:
            return "unreadable", f"{shown_path(damaged.path)}: {damaged.reason}"
    if folder.failure.is_file():
        return "failed", failure_line(folder.failure)
    if folder.failed_notebook.is_file():
        return "failed", failure_message(folder.failed_notebook)
    return "missing", "not run yet"


def cell_status(manifest: dict[str, Any], runs: str | os.PathLike) -> pd.DataFrame:
    """Every cell of the study with its state: done, failed (the error's first line), unreadable (the
    damaged record named, and why), missing (not run yet), or skipped as incompatible."""
    runs = Path(runs)
    rows = []
    for cell in manifest["cells"]:
        state, note = _cell_state(RunDir(runs / cell["run_id"]), cell["run_id"])
        rows.append({**{k: cell[k] for k in ("dataset", "loss", "miner", "seed", "run_id")}, "state": state, "note": note})
    for skip in manifest["skipped"]:
        rows.append({"dataset": skip["dataset"], "loss": skip["loss"], "miner": skip["miner"], "seed": skip["seed"],
                     "run_id": "", "state": "skipped", "note": skip["reason"]})
    return pd.DataFrame(rows, columns=["dataset", "loss", "miner", "seed", "run_id", "state", "note"])


def failure_line(path: Path) -> str:
    """The first line of the error a failed cell's failure record (RunDir.failure) holds."""
    try:
        error = str(read_json(path)["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"failed ({shown_path(path)} unreadable)"
    return error.strip().splitlines()[0] if error.strip() else "failed"


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


def execution_timing(runs: str | os.PathLike, run_ids) -> dict[str, Any]:
    """The papermill time of the runs ``run_ids`` from their execution records (RunDir.execution):
    how many were timed, their wall times summed, and the time from the first start to the last
    end, summed over the sessions the runs were made in (a study rerun in part adds a later
    session; an hour without any cell running separates two). A run whose record is absent or
    damaged is not counted."""
    timing = {"cells_timed": 0, "cells_wall_s": 0.0, "cells_span_s": 0.0, "sessions": 0}
    starts, ends = [], []
    for run_id in run_ids:
        try:
            info = json.loads(RunDir(Path(runs) / run_id).execution.read_text())
        except (OSError, ValueError):  # absent or damaged: this run's time is not counted
            continue
        timing["cells_timed"] += 1
        timing["cells_wall_s"] += info["notebook_wall_s"]
        starts.append(info["started"])
        ends.append(info["finished"])
    for first, last in sessions(starts, ends):
        timing["cells_span_s"] += last - first
        timing["sessions"] += 1
    return timing


SESSION_GAP_S = 3600.0  # an hour with no cell running ends a session of the study


def sessions(starts: list[float], ends: list[float], gap_s: float = SESSION_GAP_S) -> list[tuple[float, float]]:
    """(first start, last end) of each session: runs overlapping or following within ``gap_s``."""
    out: list[list[float]] = []
    for start, end in sorted(zip(starts, ends)):
        if out and start - out[-1][1] <= gap_s:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(first, last) for first, last in out]


MACHINE_KEYS = ("cpu", "cpu_count", "device", "torch_threads")


def run_machine(runs: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """The machine a finished run recorded: its CPU, core count, device and torch threads."""
    recorded = read_record(RunDir(Path(runs) / run_id).metrics).get("machine", {})
    return {key: recorded.get(key) for key in MACHINE_KEYS}


# ---- cells that trained identically ---------------------------------------------------------------

@dataclass(frozen=True)
class KnownIdentity:
    """Two cells of a study that take the same training steps by the definitions of their loss and
    miner: ``kept`` is the cell a merged row shows, ``merged`` the one it stands for. ``requires``
    lists the arguments the identity needs, as (cell, "loss" | "miner", argument, value), the value
    either a number or string or ("loss" | "miner", argument): equal to that argument of the same cell.
    An argument neither given nor a parameter of the class reads as None. ``condition`` is what must
    hold at every step, ``reason`` why the two are then the same."""

    kept: tuple[str, str]
    merged: tuple[str, str]
    condition: str
    reason: str
    requires: tuple[tuple[Any, ...], ...] = ()


KNOWN_IDENTITIES = (
    KnownIdentity(
        kept=("triplet", "batch-hard"), merged=("contrastive", "batch-hard"),
        condition="every mined triplet violates the triplet margin and every hardest negative lies within the "
                  "contrastive loss's negative margin",
        reason="with positive margin 0, on batch-hard's one positive and one negative per anchor the contrastive "
               "loss is the triplet loss plus the constant neg_margin - margin, so the two give bit-identical "
               "gradients at every step",
        requires=(("contrastive + batch-hard", "loss", "pos_margin", 0.0),
                  ("contrastive + batch-hard", "loss", "reduction", "mean_nonzero"),
                  ("triplet + batch-hard", "loss", "reduction", "mean_nonzero"),
                  ("contrastive + batch-hard", "loss", "power", 1.0),
                  ("triplet + batch-hard", "loss", "variant", "hinge"),
                  ("triplet + batch-hard", "loss", "squared", False))),
    KnownIdentity(
        kept=("triplet", "none"), merged=("triplet", "margin-triplets"),
        condition="the triplet loss averages over its non-zero terms (reduction mean_nonzero) and the miner's "
                  "margin is the loss's",
        reason="the hinge triplet loss is zero on every triplet that satisfies its margin, so keeping only the "
               "margin-violating triplets changes neither the mean over the non-zero terms nor its gradient",
        requires=(("triplet + none", "loss", "reduction", "mean_nonzero"),
                  ("triplet + margin-triplets", "loss", "reduction", "mean_nonzero"),
                  ("triplet + margin-triplets", "loss", "variant", "hinge"),
                  ("triplet + margin-triplets", "miner", "selection", "violating"),
                  ("triplet + margin-triplets", "miner", "margin", ("loss", "margin")),
                  ("triplet + margin-triplets", "miner", "squared", ("loss", "squared")))),
)


@dataclass
class IdenticalGroup:
    """Cells of one dataset that trained identically: ``cells`` (the kept one first), whether their test
    metrics agree to every digit in every seed (``same_metrics``) and their training histories at every
    epoch of every seed (``same_training``: the validation metrics equal, the training loss equal up
    to a constant, by cell in ``loss_offsets``: its loss minus the kept cell's), and the entries of
    KNOWN_IDENTITIES that hold for them (``identities``; none: no known reason)."""

    dataset: str
    cells: list[tuple[str, str]]
    same_metrics: bool
    same_training: bool
    loss_offsets: dict[tuple[str, str], float] = field(default_factory=dict)
    identities: list[KnownIdentity] = field(default_factory=list)

    @property
    def kept(self) -> tuple[str, str]:
        return self.cells[0]

    @property
    def merged(self) -> list[tuple[str, str]]:
        return self.cells[1:]

    @property
    def labels(self) -> list[str]:
        return [cell_label(*c) for c in self.cells]


METRIC_DIGITS = 6  # identical histories count when the test metrics agree to this many decimals (the same
                   # network evaluated elsewhere may differ in the last digits), never when they differ more
LOSS_TOLERANCE = 1e-6  # relative: epoch means of float32 losses that differ by a constant agree to about 1e-7


def _argument(runs: pd.DataFrame, cell: tuple[str, str], kind: str, name: str) -> Any:
    """The ``kind`` ("loss" | "miner") argument ``name`` of ``cell`` as its runs recorded it, else the
    class's default (None when neither says)."""
    import inspect

    part = runs[(runs["loss"] == cell[0]) & (runs["miner"] == cell[1])]
    column = f"{kind}_kwargs"
    if column in part and len(part) and isinstance(part[column].iloc[0], str):
        given = json.loads(part[column].iloc[0])
        if name in given:
            return given[name]
    try:
        if kind == "loss":
            from ..losses import LOSSES as registry
        else:
            from ..miners import MINERS as registry
        default = inspect.signature(registry.get(cell[0] if kind == "loss" else cell[1])).parameters[name].default
    except Exception:  # an unknown class or argument: the requirement cannot be checked
        return None
    return None if default is inspect.Parameter.empty else default


def _holds(identity: KnownIdentity, runs: pd.DataFrame) -> bool:
    for label, kind, name, value in identity.requires:
        cell = tuple(label.split(" + "))
        actual = _argument(runs, cell, kind, name)
        if isinstance(value, tuple):  # the same as another argument: absent from both is the same too
            if actual != _argument(runs, cell, *value):
                return False
        elif actual is None or actual != value:
            return False
    return True


def _metric_keys(part: pd.DataFrame, decimals: int = 12) -> dict[tuple[str, str], tuple]:
    """(loss, miner) -> its test metrics to ``decimals`` decimals in every unit (fold, seed)."""
    digits = part[list(METRICS)].round(decimals).astype(str).agg("|".join, axis=1)
    part = with_units(part)
    return {cell: tuple(sorted(zip(rows["unit"], rows["_digits"])))
            for cell, rows in part.assign(_digits=digits).groupby(["loss", "miner"], sort=False)}


def _trajectories(part: pd.DataFrame, histories: pd.DataFrame | None) -> dict[tuple[str, str], dict]:
    """(loss, miner) -> unit -> its history (epochs ascending); cells without a history are absent."""
    if histories is None or histories.empty or "run_id" not in part:
        return {}
    by_run = {run_id: h.sort_values("epoch") for run_id, h in histories.groupby("run_id", sort=False)}
    out = {}
    for cell, rows in part.groupby(["loss", "miner"], sort=False):
        seeds = {unit: by_run.get(run_id) for run_id, unit in zip(rows["run_id"], units(rows))}
        if all(h is not None and len(h) for h in seeds.values()):
            out[cell] = seeds
    return out


def same_training(a: dict, b: dict) -> float | None:
    """The constant by which the training loss of history ``a`` exceeds ``b``'s at every epoch of every
    seed (0.0: equal) when their validation metrics are equal too; None when they trained differently
    (or there is nothing to compare)."""
    if set(a) != set(b):
        return None
    differences, scale = [], 1.0
    for seed in a:
        ha, hb = a[seed], b[seed]
        if list(ha["epoch"]) != list(hb["epoch"]):
            return None
        for column in [c for c in ha.columns if c.startswith("val_")]:
            if column not in hb or not np.array_equal(ha[column].to_numpy(float).round(12),
                                                      hb[column].to_numpy(float).round(12), equal_nan=True):
                return None
        la, lb = ha["loss"].to_numpy(float) if "loss" in ha else np.array([]), \
            hb["loss"].to_numpy(float) if "loss" in hb else np.array([])
        if not np.array_equal(np.isnan(la), np.isnan(lb)):
            return None
        differences += list((la - lb)[~np.isnan(la)])
        scale = max(scale, float(np.nanmax(np.abs(la), initial=0.0)))
    if not differences:
        return None
    offset = float(np.mean(differences))
    if np.max(np.abs(np.asarray(differences) - offset)) > LOSS_TOLERANCE * scale:
        return None
    return 0.0 if abs(offset) <= LOSS_TOLERANCE * scale else offset


def _kept_first(cells: list[tuple[str, str]], identities: list[KnownIdentity],
                baseline: tuple[str, str] | None) -> list[tuple[str, str]]:
    """The group's cells with the one its merged row shows first: the baseline, else the cell a known
    identity keeps (and none merges), else the first by name."""
    cells = sorted(cells)
    merged = {i.merged for i in identities}
    kept = [i.kept for i in identities if i.kept not in merged]
    first = baseline if baseline in cells else (min(kept) if kept else cells[0])
    return [first] + [c for c in cells if c != first]


def identical_groups(runs: pd.DataFrame, histories: pd.DataFrame | None = None,
                     baseline: tuple[str, str] | None = None) -> list[IdenticalGroup]:
    """Groups of cells of each dataset that trained identically: their test metrics agree to every digit
    in every seed, or (where histories are given) their validation metrics agree at every epoch of every
    seed, their training losses are equal or differ by one constant, and their test metrics agree to
    METRIC_DIGITS decimals. Each group names the entries of
    KNOWN_IDENTITIES that hold for it; its first cell is the one a merged row shows."""
    groups = []
    for dataset, part in runs.groupby("dataset", sort=False):
        metric_keys = _metric_keys(part)
        close = _metric_keys(part, METRIC_DIGITS)  # identical histories must not contradict the test metrics
        curves = _trajectories(part, histories)
        cells = sorted(metric_keys)
        parent = {c: c for c in cells}

        def root(c):
            while parent[c] != c:
                c = parent[c]
            return c

        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
                if metric_keys[a] == metric_keys[b] or (a in curves and b in curves and close[a] == close[b] and
                                                        same_training(curves[a], curves[b]) is not None):
                    parent[root(b)] = root(a)
        members: dict[tuple[str, str], list] = {}
        for c in cells:
            members.setdefault(root(c), []).append(c)
        for group in (m for m in members.values() if len(m) > 1):
            known = [i for i in KNOWN_IDENTITIES if {i.kept, i.merged} <= set(group) and _holds(i, part)]
            ordered = _kept_first(group, known, tuple(baseline) if baseline else None)
            kept = ordered[0]
            offsets = {c: same_training(curves[c], curves[kept]) if c in curves and kept in curves else None
                       for c in ordered[1:]}
            groups.append(IdenticalGroup(
                dataset=dataset, cells=ordered, same_metrics=len({metric_keys[c] for c in ordered}) == 1,
                same_training=all(v is not None for v in offsets.values()),
                loss_offsets={c: v for c, v in offsets.items() if v is not None}, identities=known))
    return groups


def without_duplicates(table: pd.DataFrame, groups: list[IdenticalGroup]) -> pd.DataFrame:
    """The rows of ``table`` (runs, or a table of cells) without those of the cells each group merges
    into its kept one."""
    merged = {(g.dataset, *c) for g in groups for c in g.merged}
    if not merged or table.empty:
        return table
    keys = zip(table["dataset"], table["loss"], table["miner"])
    return table[[k not in merged for k in keys]]
