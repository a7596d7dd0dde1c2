"""Where a study cell's CPU time goes, and how fast its training step can be.

Two measurements, both printed and written under results/bench/:

- ``cell-steps``: one training step of the study's network (its settings from the study file), timed
  in this process on one batch already in memory, every path in turn, round after round (medians):
  the network alone (forward, backward, optimiser; the loss a fixed linear function of the
  embeddings) and the full step with a few loss and miner pairs, each in eager fp32 with contiguous
  tensors, eager fp32 channels-last (the study's path before bf16), eager bf16 autocast
  channels-last, and torch.compile'd fp32 and bf16 (the first call's compile time is reported apart;
  kernels come from the on-disk cache when an earlier run compiled them).
- ``cell-breakdown``: one whole cell of the study, executed through papermill as the study runs it
  (its experiment notebook, in a temporary run folder), once per precision, and its papermill time
  split into kernel start and shutdown, imports and set-up, training steps, validation passes, the
  test evaluation with the rest of the training cell, t-SNE, retrieval grid and records; with the
  share of training steps in the cell's time, and the cell's time over the median papermill time of
  the study's earlier runs that trained in fp32 (their execution.json).

    python -m dmlbench bench cell                                   # studies/default.yaml, han-typefaces
    python -m dmlbench bench cell --only steps --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from .timing import machine_line, save_table

DEFAULT_STUDY = "studies/default.yaml"
# (loss, miner) pairs of the study whose full step is timed beside the network alone
STEP_PAIRS = (("triplet", "semi-hard"), ("contrastive", "batch-hard"), ("multi-similarity", "multi-similarity"),
              ("proxy-anchor", "none"))
# (name, channels-last, autocast, compiled): the paths of the step
PATHS = (("eager fp32", False, None, False), ("eager fp32 channels-last", True, None, False),
         ("eager bf16 channels-last", True, torch.bfloat16, False),
         ("compiled fp32 channels-last", True, None, True), ("compiled bf16 channels-last", True, torch.bfloat16, True))
REFERENCE_PATH = "eager fp32 channels-last"


def study_cell(study_path: str, dataset: str, loss: str, miner: str):
    """The study's configuration of its (dataset, loss, miner) cell at its first seed."""
    from ..study.cells import load_study

    study = load_study(study_path)
    for cell in study.cells:
        config = cell.config
        if (config.dataset, config.loss, config.miner) == (dataset, loss, miner):
            return config
    have = sorted({(c.config.loss, c.config.miner) for c in study.cells if c.config.dataset == dataset})
    raise SystemExit(f"{study_path} has no {dataset} cell {loss} + {miner}; its {dataset} cells: "
                     f"{', '.join(f'{a} + {b}' for a, b in have) or 'none'}")


def _network_step(config, path, loss: str | None, miner: str | None, num_classes: int):
    """``step()`` runs one optimisation step of a fresh seeded network on a fixed batch; and how long
    the path's first call took (the compile, for compiled paths)."""
    from ..criterion import build_criterion
    from ..models import MODELS
    from ..training.loop import compiled, make_optimizer, optimisation_step

    _, channels_last, amp, compile_it = path
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = MODELS.create(config.model, embedding_dim=config.embedding_dim, **config.model_kwargs).to(memory_format=fmt)
    forward = compiled(model) if compile_it else model
    side = getattr(model, "default_image_size", None) or 24
    images = torch.randn(config.P * config.K, 1, side, side).contiguous(memory_format=fmt)
    labels = torch.arange(config.P).repeat_interleave(config.K)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    if loss is None:  # the network alone: a fixed linear function of the embeddings as the loss
        weights = torch.randn(config.P * config.K, config.embedding_dim)
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)

        def step() -> None:
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                embeddings = forward(images)
            optimizer.zero_grad(set_to_none=True)
            (embeddings.float() * weights).sum().backward()
            optimizer.step()
    else:
        criterion = build_criterion(loss, miner, {}, {}, seed=0, num_classes=num_classes,
                                    embedding_dim=config.embedding_dim)
        optimizer = make_optimizer(config.optimizer, [{"params": list(model.parameters())}]
                                   + criterion.param_groups(config.lr), config.lr, config.weight_decay)

        def step() -> None:
            optimisation_step(forward, criterion, optimizer, scaler, images, labels, amp)
    started = time.perf_counter()
    step()
    return step, time.perf_counter() - started


def step_table(config, *, rounds: int, steps: int, compile_paths: bool, num_classes: int = 1000) -> pd.DataFrame:
    """Median ms per step of every (path, work), the works timed in turn within each round."""
    works = [("network only", None, None)] + [(f"{loss} + {miner}", loss, miner) for loss, miner in STEP_PAIRS]
    paths = [p for p in PATHS if compile_paths or not p[3]]
    contenders, first_call = {}, {}
    for path in paths:
        for work, loss, miner in works:
            step, first = _network_step(config, path, loss, miner, num_classes)
            for _ in range(2):  # warm-up: allocator, autotuned kernels
                step()
            contenders[(path[0], work)], first_call[(path[0], work)] = step, first
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in contenders}
    for _ in range(rounds):
        for key, step in contenders.items():
            started = time.perf_counter()
            for _ in range(steps):
                step()
            samples[key].append((time.perf_counter() - started) / steps)
    rows = [{"path": path, "work": work, "ms_per_step": 1e3 * statistics.median(values),
             "first_call_s": first_call[(path, work)]} for (path, work), values in samples.items()]
    table = pd.DataFrame(rows)
    reference = table[table.path == REFERENCE_PATH].set_index("work")["ms_per_step"]
    eager = table[table.path == "eager fp32"].set_index("work")["ms_per_step"]
    table["speedup_vs_fp32_channels_last"] = reference.reindex(table.work).to_numpy() / table.ms_per_step
    table["speedup_vs_fp32_contiguous"] = eager.reindex(table.work).to_numpy() / table.ms_per_step
    network = table[table.work == "network only"].set_index("path")["ms_per_step"]
    table["network_share"] = network.reindex(table.path).to_numpy() / table.ms_per_step
    return table.round({"ms_per_step": 2, "first_call_s": 2, "speedup_vs_fp32_channels_last": 2,
                        "speedup_vs_fp32_contiguous": 2, "network_share": 2})


def _cell_durations(notebook: Path) -> list[tuple[str, float]]:
    """(source, seconds) of every executed code cell, from papermill's metadata."""
    cells = json.loads(notebook.read_text())["cells"]
    return [("".join(c["source"]), float(c["metadata"].get("papermill", {}).get("duration") or 0.0))
            for c in cells if c["cell_type"] == "code"]


def _part_of(source: str) -> str | None:
    """Which part of the breakdown an experiment-notebook cell is, by what it imports or does first."""
    for mark, part in (("_parameter_names = set(globals()) - ", "imports and set-up"),
                       ("import training_curves", "training cell"), ("import tsne_figure", "t-SNE"),
                       ("import retrieval_grid", "retrieval grid"), ("from dmlbench.training.record import", "checkpoint and records")):
        if mark in source:
            return part
    return None


def cell_breakdown(folder: Path) -> dict[str, float]:
    """Seconds of each part of the finished run in ``folder`` (its executed notebook, records)."""
    from ..training.rundir import RunDir

    run = RunDir(folder)
    record, execution = json.loads(run.metrics.read_text()), json.loads(run.execution.read_text())
    parts: dict[str, float] = {}
    cells = _cell_durations(run.notebook)
    for source, seconds in cells:
        part = _part_of(source) or "other cells"
        parts[part] = parts.get(part, 0.0) + seconds
    train = float(record["train_time_s"])
    validation = sum(float(r.get("val_time_s") or 0.0) for r in record["history"])
    in_cell = parts.pop("training cell", 0.0)
    wall = float(execution["notebook_wall_s"])
    return {"papermill": wall, "kernel start, shutdown, notebook writes": wall - sum(s for _, s in cells),
            **{k: v for k, v in parts.items() if k == "imports and set-up"},
            "training steps": train, "validation passes": validation,
            "test evaluation, curves, rest of training cell": in_cell - train - validation,
            **{k: v for k, v in parts.items() if k != "imports and set-up"}}


def earlier_runs_median(runs: Path, dataset: str) -> tuple[float, int]:
    """The median papermill time of the finished ``dataset`` runs under ``runs`` that trained in fp32
    (recorded so, or recorded before the precision setting), and their count; NaN and 0 without any."""
    times = []
    for execution in sorted(runs.glob(f"{dataset}__*/execution.json")):
        try:
            record = json.loads((execution.parent / "metrics.json").read_text())
            if record.get("precision", "fp32") == "fp32" and record.get("device") == "cpu":
                times.append(float(json.loads(execution.read_text())["notebook_wall_s"]))
        except (OSError, ValueError, KeyError):
            continue
    return (statistics.median(times), len(times)) if times else (float("nan"), 0)


def breakdown_table(config, folder: Path, *, precisions: tuple[str, ...], rounds: int,
                    reference: tuple[float, int]) -> pd.DataFrame:
    """Run the cell through papermill once per precision and round (in turn), each in a fresh run folder
    under ``folder``; one row per (precision, part) with the median seconds over rounds."""
    import dataclasses

    from ..study.cells import run_config

    seconds: dict[str, list[dict[str, float]]] = {p: [] for p in precisions}
    records: dict[str, dict] = {}
    for number in range(rounds):
        for precision in precisions:
            run_dir = folder / f"{precision}-{number}"
            run_config(dataclasses.replace(config, precision=precision), run_dir=run_dir)
            seconds[precision].append(cell_breakdown(run_dir))
            records[precision] = json.loads((run_dir / "metrics.json").read_text())
    rows = []
    for precision, measured in seconds.items():
        wall = statistics.median(m["papermill"] for m in measured)
        for part in measured[0]:
            value = statistics.median(m[part] for m in measured)
            rows.append({"precision": precision, "trained_in": records[precision].get("precision"), "part": part,
                         "seconds": value, "share_of_papermill": value / wall,
                         "of_earlier_runs_median": value / reference[0] if part == "papermill" else float("nan")})
    return pd.DataFrame(rows).round({"seconds": 2, "share_of_papermill": 3, "of_earlier_runs_median": 3})


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dmlbench bench cell", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default=DEFAULT_STUDY, help=f"the study file (default {DEFAULT_STUDY})")
    parser.add_argument("--dataset", default="han-typefaces", help="the cell's dataset (default han-typefaces)")
    parser.add_argument("--loss", default="triplet", help="the cell's loss (default triplet)")
    parser.add_argument("--miner", default="semi-hard", help="the cell's miner (default semi-hard)")
    parser.add_argument("--only", choices=("steps", "cell"), help="one of the two measurements")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step table (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timing of a path (default 20)")
    parser.add_argument("--cell-rounds", type=int, default=1, help="papermill runs of the cell per precision")
    parser.add_argument("--no-compile", action="store_true", help="leave the torch.compile paths out")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: a study's cell on a 2-core machine, two cells at once)")
    parser.add_argument("--no-save", action="store_true", help="print only, do not write results/bench/")
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.cell_rounds, args.threads) < 1:
        parser.error("--rounds, --steps, --cell-rounds and --threads must be positive")
    return args


def _with_load(measure) -> tuple[pd.DataFrame, str]:
    """``measure()``'s table with the machine's load over it as columns, and the load's phrase for a header."""
    from .timing import load_note, load_record, load_span

    before = load_record()
    table = measure()
    span = load_span(before, load_record())
    return table.assign(**span), load_note(span)


def main(argv: list[str] | None = None) -> int:
    import os

    from ..paths import runs_dir
    args = _arguments(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the cell's kernel, as `make all` starts it
    torch.set_num_threads(args.threads)
    config = study_cell(args.study, args.dataset, args.loss, args.miner)
    written = []
    if args.only in (None, "steps"):
        table, load = _with_load(lambda: step_table(config, rounds=args.rounds, steps=args.steps,
                                                    compile_paths=not args.no_compile))
        header = (f"Training step of the {args.dataset} cell's network ({config.model} {config.model_kwargs}, batch "
                  f"{config.P}x{config.K}), ms per step, medians of {args.rounds} interleaved rounds of {args.steps} "
                  f"steps; {machine_line(torch.device('cpu'))}; {load}; speedup_* = that path's time over this "
                  f"one's; network_share = the network-only step's time over this step's; first_call_s = the "
                  f"first step (torch.compile's compile, from the on-disk cache when warm)")
        print(header, table.to_string(index=False), sep="\n")
        written.append(None if args.no_save else save_table(table, "cell-steps-cpu", header))
    if args.only in (None, "cell"):
        reference = earlier_runs_median(runs_dir(), args.dataset)
        with tempfile.TemporaryDirectory(prefix="dmlbench-bench-cell-") as folder:
            table, load = _with_load(lambda: breakdown_table(config, Path(folder), precisions=("fp32", "auto"),
                                                             rounds=args.cell_rounds, reference=reference))
        header = (f"One {args.dataset} cell ({config.loss} + {config.miner}, seed {config.seed}, {args.study}) through "
                  f"papermill per precision, {args.threads} thread(s); {machine_line(torch.device('cpu'))}; {load}; "
                  f"of_earlier_runs_median = papermill time over the median ({reference[0]:.1f} s) of the "
                  f"{reference[1]} fp32 {args.dataset} runs in {runs_dir()}")
        print(header, table.to_string(index=False), sep="\n")
        written.append(None if args.no_save else save_table(table, "cell-breakdown-cpu", header))
    for path in filter(None, written):
        print("written:", path)
    return 0
