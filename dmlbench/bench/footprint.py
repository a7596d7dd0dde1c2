"""What the shipped results cost the repository: the tracked tree now, and what a rerun adds for good.

    python -m dmlbench bench footprint              # measure; results/bench/footprint.{json,txt}
    python -m dmlbench bench footprint --rerun 2    # re-execute 2 shipped cells for the rerun estimate
    python -m dmlbench bench footprint --compact    # compact the results' executed notebooks (a make all step)
    python -m dmlbench bench footprint --check      # exit 1 when either budget is exceeded

The tracked tree is measured as ``git ls-files`` lists it, by kind of file. What a full rerun of the
shipped studies adds to the history is measured, not guessed: ``--rerun N`` executes N shipped cells
again exactly as they ran (same settings, one thread per cell, as make all runs them) into a
scratch folder, and git packs each new executed notebook and metrics.json as a delta against the
shipped one; the mean over the sample, times the shipped runs, is the runs' share. Everything else
a rerun rewrites (reports, summaries, tables, figures, index evaluations, searches) is counted at
its full compressed size, as if nothing of it could be delta-compressed: an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import zlib
from pathlib import Path

from ..fileio import atomic_write_bytes, atomic_write_json, read_json
from ..paths import REPO_ROOT, results_dir
from ..study.footprint import MIB, RERUN_BUDGET, TRACKED_BUDGET, compact_folder

KINDS = (  # (kind, test on the path relative to the repository), first match wins
    ("checkpoints", lambda p: p.name == "checkpoint.pt"),
    ("run notebooks", lambda p: p.name == "experiment.ipynb"),
    ("run records", lambda p: "runs" in p.parts and p.parts[0] == "results"),
    ("reports", lambda p: p.name.startswith("report.")),
    ("figures", lambda p: "figures" in p.parts),
    ("index evaluations", lambda p: "indexes" in p.parts),
    ("searches", lambda p: "tuning" in p.parts),
    ("other results", lambda p: p.parts[0] == "results"),
    ("code, docs, tests", lambda p: True),
)


def tracked_files(repo: Path = REPO_ROOT) -> list[Path]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [Path(name) for name in out.decode().split("\0") if name and (repo / name).is_file()]


def kind_of(path: Path) -> str:
    return next(kind for kind, test in KINDS if test(path))


def tracked_sizes(repo: Path = REPO_ROOT) -> dict[str, int]:
    """kind -> bytes on disk of the tracked files of that kind, and "total"."""
    sizes = {kind: 0 for kind, _ in KINDS}
    for path in tracked_files(repo):
        sizes[kind_of(path)] += (repo / path).stat().st_size
    return sizes | {"total": sum(sizes.values())}


def _pack_size(git_dir: str, ids: list[str]) -> int:
    done = subprocess.run(["git", "--git-dir", git_dir, "pack-objects", "--stdout", "-q", "--window=10", "--depth=50"],
                          input=("\n".join(ids) + "\n").encode(), capture_output=True, check=True)
    return len(done.stdout)


def delta_size(old: Path, new: Path) -> int:
    """The bytes git's pack adds for ``new`` when ``old`` is already in the history."""
    with tempfile.TemporaryDirectory(prefix="dmlbench-footprint-") as tmp:
        subprocess.run(["git", "init", "-q", "--bare", tmp], check=True)
        ids = [subprocess.run(["git", "--git-dir", tmp, "hash-object", "-w", str(p)], capture_output=True, text=True,
                              check=True).stdout.strip() for p in (old, new)]
        return _pack_size(tmp, ids) - _pack_size(tmp, ids[:1])


def shipped_runs(repo: Path = REPO_ROOT) -> list[Path]:
    """The tracked run folders (each with its metrics.json), in path order."""
    return sorted({(repo / p).parent for p in tracked_files(repo) if p.name == "metrics.json" and "runs" in p.parts})


def rerun_sample(runs: list[Path], count: int) -> list[dict]:
    """Execute ``count`` shipped runs again (evenly spread over the list) into a scratch folder, one
    thread each; per run, the delta bytes of its new notebook and metrics.json against the shipped ones."""
    from ..config import RunConfig
    from ..study.cells import run_config

    picked = [runs[i * len(runs) // count] for i in range(count)] if count else []
    rows = []
    for shipped in picked:
        record = read_json(shipped / "metrics.json")
        config = RunConfig.from_record(record["config"], where=str(shipped)).validate()
        with tempfile.TemporaryDirectory(prefix="dmlbench-rerun-") as tmp:
            threads = str(record.get("machine", {}).get("torch_threads") or 1)
            before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "DMLBENCH_RESULTS")}
            os.environ.update({"OMP_NUM_THREADS": threads, "DMLBENCH_RESULTS": tmp})
            try:
                run_config(config, run_dir=Path(tmp) / "run")
            finally:
                for key, value in before.items():
                    os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
            new = Path(tmp) / "run"
            same = read_json(new / "metrics.json")["test"] == record["test"]
            rows.append({"run": shipped.name, "same_test_metrics": same,
                         **{name: delta_size(shipped / name, new / name) for name in ("experiment.ipynb", "metrics.json")}})
    return rows


def rerun_estimate(repo: Path, sample: list[dict]) -> dict:
    """Bytes a full rerun adds to the history: the sampled runs' mean delta times the shipped runs,
    plus every other rewritten results file compressed in full."""
    runs = shipped_runs(repo)
    per_run = (sum(r["experiment.ipynb"] + r["metrics.json"] for r in sample) / len(sample)) if sample else None
    others = sum(len(zlib.compress((repo / p).read_bytes(), 6)) for p in tracked_files(repo)
                 if p.parts[0] == "results" and kind_of(p) not in ("checkpoints", "run notebooks", "run records")
                 and "bench" not in p.parts)
    return {"sample": sample, "shipped_runs": len(runs), "per_run_delta": per_run, "other_results_compressed": others,
            "total": None if per_run is None else round(per_run * len(runs) + others)}


def report_lines(sizes: dict, estimate: dict | None) -> list[str]:
    lines = [f"tracked tree: {sizes['total'] / MIB:.1f} MiB (budget {TRACKED_BUDGET / MIB:.0f} MiB)"]
    lines += [f"  {kind:18s} {sizes[kind] / MIB:6.1f} MiB" for kind, _ in KINDS]
    if estimate and estimate["total"] is not None:
        lines.append(f"a full rerun adds about {estimate['total'] / MIB:.1f} MiB to the history (budget "
                     f"{RERUN_BUDGET / MIB:.0f} MiB): {estimate['shipped_runs']} runs x "
                     f"{estimate['per_run_delta'] / 1024:.1f} KiB measured per rerun cell, plus "
                     f"{estimate['other_results_compressed'] / MIB:.1f} MiB of reports, tables, figures and "
                     "evaluations counted in full")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench footprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rerun", type=int, default=0, help="shipped cells to execute again for the rerun estimate")
    parser.add_argument("--compact", action="store_true", help="compact every executed notebook under the results "
                        "folder (indexed-colour figures) and stop")
    parser.add_argument("--check", action="store_true", help="exit 1 when the tracked tree or the recorded rerun "
                        "estimate is over its budget")
    parser.add_argument("--out", type=Path, help="where footprint.{json,txt} go (default results/bench)")
    args = parser.parse_args(argv)
    if args.compact:
        changed, before, after = compact_folder(results_dir())
        print(f"compacted {changed} executed notebooks under {results_dir()}: {before / MIB:.1f} -> {after / MIB:.1f} MiB")
        return 0
    out = args.out or results_dir() / "bench"
    sizes = tracked_sizes()
    if args.check:
        recorded = read_json(out / "footprint.json") if (out / "footprint.json").is_file() else {}
        total = (recorded.get("rerun") or {}).get("total")
        print("\n".join(report_lines(sizes, recorded.get("rerun"))))
        return int(sizes["total"] > TRACKED_BUDGET or total is None or total > RERUN_BUDGET)
    estimate = rerun_estimate(REPO_ROOT, rerun_sample(shipped_runs(), args.rerun)) if args.rerun else None
    lines = report_lines(sizes, estimate)
    print("\n".join(lines))
    atomic_write_json(out / "footprint.json", {"tracked": sizes, "rerun": estimate,
                                               "budgets": {"tracked": TRACKED_BUDGET, "rerun": RERUN_BUDGET}})
    atomic_write_bytes(out / "footprint.txt", ("\n".join(lines) + "\n").encode())
    return 0
