"""Evaluation cost: dmlbench.evaluation.metrics.evaluate against pytorch-metric-learning's AccuracyCalculator.

Both evaluate the same synthetic clustered embeddings (the generator of ../shared/bench/pml_eval.py:
``classes`` random centres, labels drawn uniformly, Gaussian noise of scale 1.5, L2-normalised) at
the real datasets' test-set sizes, in this one process, one after the other. For each we time the
retrieval metrics (Recall@K / precision_at_1, R-Precision, MAP@R, k = the largest class) and NMI
separately, record the peak resident memory of the process over the whole evaluation (the kernel's
high-water mark, reset before each evaluator), and compare every metric. Both evaluators run once
on a small set before timing, so imports and thread start-up are not counted.

    python -m dmlbench bench eval                      # CUB and SOP sizes on the CPU
    python -m dmlbench bench eval --size 20000x128x500 --device cuda
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..datasets import DATASETS
from .timing import machine_line, save_table, synchronize

EMBEDDING_DIM = 512


def _test_size(name: str) -> tuple[int, int, int]:
    """(test images, embedding dim, test classes) of dataset ``name``, from its class's published facts."""
    cls = DATASETS.get(name)
    return cls.split_sizes[1], EMBEDDING_DIM, cls.num_classes[1]


SIZES = {name: _test_size(name) for name in ("cub", "sop")}


@dataclass
class Measurement:
    evaluator: str
    retrieval_s: float
    nmi_s: float
    peak_rss_gb: float
    metrics: dict
    ami_s: float = math.nan
    peak_gpu_gb: float = math.nan  # torch's CUDA allocator high-water mark (CUDA runs only)

    @property
    def total_s(self) -> float:
        return self.retrieval_s + self.nmi_s


def parse_size(text: str) -> tuple[str, tuple[int, int, int]]:
    if text in SIZES:
        return text, SIZES[text]
    match = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: use one of {sorted(SIZES)} or NxDIMxCLASSES, e.g. 2000x64x50")
    n, dim, classes = (int(v) for v in match.groups())
    if n < 2 or dim < 1 or not 2 <= classes <= n:
        raise argparse.ArgumentTypeError(f"size {text!r}: need n >= 2, dim >= 1 and 2 <= classes <= n")
    return text, (n, dim, classes)


def synthetic(n: int, dim: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings ../shared/bench/pml_eval.py times the reference on."""
    torch.manual_seed(0)
    labels = torch.randint(0, classes, (n,))
    centers = torch.randn(classes, dim)
    embeddings = torch.nn.functional.normalize(centers[labels] + 1.5 * torch.randn(n, dim), dim=1)
    return embeddings, labels


def reset_peak_rss() -> bool:
    """Reset the process's resident-memory high-water mark (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def reset_peak_gpu(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else math.nan


def peak_rss_gb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_ours(embeddings: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Measurement:
    """evaluate() as the study calls it, its two parts timed apart (AMI, which the reference does
    not compute, apart again)."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    from ..evaluation.metrics import evaluate, kmeans_clusters

    reset_peak_rss()
    reset_peak_gpu(device)
    start = time.perf_counter()
    metrics = evaluate(embeddings, labels, device=device, nmi=False)
    synchronize(device)
    retrieval = time.perf_counter() - start
    start = time.perf_counter()
    x = torch.nn.functional.normalize(embeddings.to(device), dim=1)
    y = labels.numpy()
    clusters = kmeans_clusters(x, len(np.unique(y)), device=device)
    metrics["nmi"] = normalized_mutual_info_score(y, clusters)
    nmi = time.perf_counter() - start
    start = time.perf_counter()
    metrics["ami"] = adjusted_mutual_info_score(y, clusters)
    ami = time.perf_counter() - start
    return Measurement("dmlbench", retrieval, nmi, peak_rss_gb(), metrics, ami, peak_gpu_gb(device))


def run_reference(embeddings: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Measurement:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    embeddings, labels = embeddings.to(device), labels.to(device)
    reset_peak_rss()
    reset_peak_gpu(device)
    times, metrics = [], {}
    for include in [("precision_at_1", "r_precision", "mean_average_precision_at_r"), ("NMI",)]:
        calculator = AccuracyCalculator(include=include, k="max_bin_count", device=device)
        start = time.perf_counter()
        metrics.update(calculator.get_accuracy(embeddings, labels, embeddings, labels, ref_includes_query=True))
        synchronize(device)
        times.append(time.perf_counter() - start)
    renamed = {"recall@1": metrics["precision_at_1"], "r_precision": metrics["r_precision"],
               "map@r": metrics["mean_average_precision_at_r"], "nmi": metrics["NMI"]}
    return Measurement("pytorch-metric-learning", times[0], times[1], peak_rss_gb(), renamed,
                       peak_gpu_gb=peak_gpu_gb(device))


COMPARED = ("recall@1", "r_precision", "map@r", "nmi")


def bench(sizes: list[tuple[str, tuple[int, int, int]]], device: torch.device, *, reference: bool = True,
          log=print) -> pd.DataFrame:
    rows = []
    # One small evaluation each first, so imports and thread pools are not billed to the first size.
    warm_x, warm_y = synthetic(400, 16, 10)
    run_ours(warm_x, warm_y, device)
    if reference:
        run_reference(warm_x, warm_y, device)
    for name, (n, dim, classes) in sizes:
        embeddings, labels = synthetic(n, dim, classes)
        results = [run_ours(embeddings, labels, device)]
        log(f"{name}: dmlbench {results[0].retrieval_s:.1f} s retrieval + {results[0].nmi_s:.1f} s NMI "
            f"(+ {results[0].ami_s:.1f} s AMI), peak {results[0].peak_rss_gb:.2f} GB")
        if reference:
            results.append(run_reference(embeddings, labels, device))
            log(f"{name}: reference {results[1].retrieval_s:.1f} s retrieval + {results[1].nmi_s:.1f} s NMI, "
                f"peak {results[1].peak_rss_gb:.2f} GB")
        ours = results[0]
        for result in results:
            diff = max(abs(float(result.metrics[key]) - float(ours.metrics[key])) for key in COMPARED)
            rows.append({
                "size": name, "n": n, "dim": dim, "classes": classes, "device": str(device),
                "evaluator": result.evaluator, "retrieval_s": round(result.retrieval_s, 2),
                "nmi_s": round(result.nmi_s, 2), "total_s": round(result.total_s, 2),
                "ami_s": round(result.ami_s, 2),
                "peak_rss_gb": round(result.peak_rss_gb, 2),
                **({"peak_gpu_gb": round(result.peak_gpu_gb, 2)} if device.type == "cuda" else {}),
                **{key: round(float(result.metrics[key]), 6) for key in COMPARED},
                "max_metric_diff": float(f"{diff:.3g}"),
                "time_vs_dmlbench": round(result.total_s / ours.total_s, 2),
            })
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", type=parse_size, default=None,
                        help="cub, sop or NxDIMxCLASSES (repeatable; default: cub and sop)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--no-reference", action="store_true", help="time dmlbench alone")
    parser.add_argument("--no-save", action="store_true", help="print only, do not write results/bench/")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: use cpu or cuda")
    sizes = args.size or [parse_size("cub"), parse_size("sop")]
    table = bench(sizes, device, reference=not args.no_reference)
    header = (f"Evaluation time, dmlbench vs pytorch-metric-learning AccuracyCalculator; {machine_line(device)}\n"
              "retrieval = Recall@1/P@1 + R-Precision + MAP@R (k = largest class); nmi = k-means + NMI; total = the two; "
              "ami_s = scikit-learn's AMI on the same clusters (dmlbench only, not in total); peak_rss_gb = process "
              "high-water mark over everything (peak_gpu_gb: torch's CUDA allocator's, on CUDA); max_metric_diff = largest |difference| to dmlbench over recall@1, "
              "r_precision, map@r, nmi")
    print(header)
    print(table.to_string(index=False))
    if not args.no_save:
        print("written:", save_table(table, f"eval-{device.type}", header))
    return 0 if not math.isnan(table["total_s"].sum()) else 1
