"""Does the faster path change what the study concludes? Every cell of a study, run both ways, paired by seed.

Each cell of the study (its settings, precision "auto": bf16 autocast on a CPU with native bf16) is
matched with the same cell at precision "fp32", which has the run id the cell had before the
precision setting existed: the reference runs are the study's earlier runs, read from a results
folder or from a commit of this repository (``git:<commit>``, the runs' metrics.json as that commit
holds them). For every cell and metric (Recall@1, MAP@R) the table gives the per-seed differences'
mean (faster path minus fp32), its 95% t-interval, the paired t-test's p and Holm's adjustment over
all the cells and both metrics of a dataset; a difference is "beyond seed noise" where the adjusted p
is below 0.05. The header adds what the study's conclusions rest on: Kendall's tau between the cells'
mean scores under the two paths, and how many cells' verdicts against the study's baseline (triplet +
semi-hard, paired over seeds, Holm) read the same.

    python -m dmlbench bench equal --reference git:HEAD~1      # the default study against its fp32 runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

METRICS = ("recall@1", "map@r")
BASELINE = ("triplet", "semi-hard")


def _reader(reference: str):
    """``read(run_id)`` -> the reference run's metrics.json as a dict, or None where it has none."""
    if reference.startswith("git:"):
        commit = reference[4:]

        def read(run_id: str) -> dict | None:
            shown = subprocess.run(["git", "show", f"{commit}:results/runs/{run_id}/metrics.json"],
                                   capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
            return json.loads(shown.stdout) if shown.returncode == 0 else None
        return read
    folder = Path(reference)
    if not folder.is_dir():
        raise SystemExit(f"--reference {reference}: neither a folder of runs nor git:<commit>")

    def read_folder(run_id: str) -> dict | None:
        path = folder / run_id / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None
    return read_folder


def paired_runs(study, runs: Path, reference: str) -> pd.DataFrame:
    """One row per (cell, seed) finished both ways: the two paths' metrics and precisions."""
    read_reference = _reader(reference)
    rows = []
    for cell in study.cells:
        config = cell.config
        fast_path = runs / config.run_id() / "metrics.json"
        slow = read_reference(dataclasses.replace(config, precision="fp32").run_id())
        if not fast_path.is_file() or slow is None:
            continue
        fast = json.loads(fast_path.read_text())
        row = {"dataset": config.dataset, "loss": config.loss, "miner": config.miner, "seed": config.seed,
               "precision": fast.get("precision"), "reference_precision": slow.get("precision", "fp32")}
        for metric in METRICS:
            row[metric], row[f"{metric}_fp32"] = fast["test"][metric], slow["test"][metric]
        rows.append(row)
    return pd.DataFrame(rows)


def _paired_test(diff: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, low, high, p) of per-seed differences: t-interval and the paired t-test."""
    from ..reporting.stats import t_interval

    mean, low, high = t_interval(diff)
    if len(diff) < 2:
        return mean, low, high, float("nan")
    if np.all(diff == diff[0]):
        return mean, low, high, 1.0 if diff[0] == 0 else 0.0
    return mean, low, high, float(sps.ttest_1samp(diff, 0.0).pvalue)


def cell_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per cell and metric: seeds, mean difference, interval, p, Holm over each dataset's cells and metrics."""
    from ..reporting.stats import holm

    rows = []
    for (dataset, loss, miner), part in pairs.groupby(["dataset", "loss", "miner"], sort=False):
        for metric in METRICS:
            diff = (part[metric] - part[f"{metric}_fp32"]).to_numpy(dtype=np.float64)
            mean, low, high, p = _paired_test(diff)
            rows.append({"dataset": dataset, "loss": loss, "miner": miner, "metric": metric, "seeds": len(diff),
                         "fp32": part[f"{metric}_fp32"].mean(), "faster": part[metric].mean(), "difference": mean,
                         "low": low, "high": high, "p": p})
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for _, index in table.groupby("dataset").groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p"])
    table["beyond_seed_noise"] = table["p_holm"] < 0.05
    return table


def conclusions(pairs: pd.DataFrame) -> list[str]:
    """Per dataset and metric: Kendall's tau of the cells' means under both paths, and the verdicts
    against the baseline that agree."""
    from ..reporting.stats import paired_comparison

    lines = []
    for dataset, part in pairs.groupby("dataset", sort=False):
        for metric in METRICS:
            means = part.groupby(["loss", "miner"])[[metric, f"{metric}_fp32"]].mean()
            tau = sps.kendalltau(means[metric], means[f"{metric}_fp32"]).statistic
            ways = (part, part.drop(columns=[metric]).rename(columns={f"{metric}_fp32": metric}))
            tables = [paired_comparison(way, metric, BASELINE).set_index(["loss", "miner"]) for way in ways]
            fast, slow = tables[0], tables[1].reindex(tables[0].index)
            changed = fast.index[fast["verdict"] != slow["verdict"]]
            moved = "".join(f"; {loss} + {miner}: {slow.at[(loss, miner), 'verdict']} (Holm p "
                            f"{slow.at[(loss, miner), 'p_holm']:.3f}) -> {fast.at[(loss, miner), 'verdict']} "
                            f"({fast.at[(loss, miner), 'p_holm']:.3f})" for loss, miner in changed)
            lines.append(f"{dataset} {metric}: Kendall's tau of the {len(means)} cells' means {tau:.3f}; verdicts "
                         f"against {' + '.join(BASELINE)} the same in {len(fast) - len(changed)} of {len(fast)} "
                         f"cells{moved}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from ..paths import runs_dir
    from ..study.cells import load_study
    from .timing import save_table

    parser = argparse.ArgumentParser(prog="dmlbench bench equal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="studies/default.yaml", help="the study (default studies/default.yaml)")
    parser.add_argument("--reference", required=True, help="the fp32 runs: a runs folder, or git:<commit>")
    parser.add_argument("--no-save", action="store_true", help="print only, do not write results/bench/")
    args = parser.parse_args(argv)
    study = load_study(args.study)
    pairs = paired_runs(study, runs_dir(), args.reference)
    if pairs.empty:
        raise SystemExit(f"no cell of {args.study} is finished both ways ({runs_dir()} and {args.reference})")
    table = cell_table(pairs)
    beyond = table.groupby("dataset")["beyond_seed_noise"].sum()
    header = "\n".join([
        f"{args.study}: each cell at precision {', '.join(sorted(set(pairs.precision)))} against the same cell in fp32 "
        f"({args.reference}), paired by seed; difference = faster path - fp32 on the test split, 95% t-interval, "
        f"paired t-test, Holm over each dataset's cells and metrics",
        *(f"{d}: {int(pairs[pairs.dataset == d].groupby(['loss', 'miner']).ngroups)} cells x "
          f"{int(pairs[pairs.dataset == d].seed.nunique())} seeds; {int(n)} of "
          f"{int((table.dataset == d).sum())} differences beyond seed noise" for d, n in beyond.items()),
        *conclusions(pairs)])
    print(header, table.round(4).to_string(index=False), sep="\n")
    if not args.no_save:
        print("written:", save_table(table.round(6), "precision-pairs-cpu", header))
    return 0
