"""Evaluation cost: dmlbench.evaluation.metrics.evaluate against pytorch-metric-learning's AccuracyCalculator.

Both evaluate the same synthetic clustered embeddings (the generator of ../shared/bench/pml_eval.py:
``classes`` random centres, labels drawn uniformly, Gaussian noise of scale 1.5, L2-normalised) at
the real datasets' test-set sizes, in this one process, one after the other. Those clusters are
far apart (Recall@1 about 1), so every size also comes in a hard variant (``cub-hard``,
``2000x64x50-hard``): the same centres and noise, the noise scaled up until Recall@1 is about 0.7,
as on real test sets, where classes overlap and the exactness certificate has near ties to settle.
For each we time the retrieval metrics (Recall@K / precision_at_1, R-Precision, MAP@R, k = the
largest class) and NMI separately, record the peak resident memory of the process over the whole
evaluation (the kernel's high-water mark, reset before each evaluator), and compare every metric.
Both evaluators run once on a small set before timing, so imports and thread start-up are not
counted.

    python -m dmlbench bench eval                      # CUB and SOP sizes, plain and hard, on the CPU
    python -m dmlbench bench eval --size 20000x128x500-hard --device cuda
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..datasets import DATASETS
from .timing import LOAD_LIMIT, load_note, load_record, load_span, machine_line, save_table, synchronize

EMBEDDING_DIM = 512


def _test_size(name: str) -> tuple[int, int, int]:
    """(test images, embedding dim, test classes) of dataset ``name``, from its class's published facts."""
    cls = DATASETS.get(name)
    return cls.split_sizes[1], EMBEDDING_DIM, cls.num_classes[1]


SIZES = {name: _test_size(name) for name in ("cub", "sop")}
DEFAULT_SIZES = ("cub", "cub-hard", "sop", "sop-hard")
HARD = "-hard"  # size suffix: class-overlapping embeddings
EASY_NOISE = 1.5  # the reference script's noise scale
HARD_RECALL = 0.7  # the Recall@1 the hard variants are tuned to (real test sets: about 0.6 to 0.8)
CALIBRATION_QUERIES = 1000  # queries whose Recall@1 steers the noise scale of a hard variant
CALIBRATION_STEPS = 10  # halvings of the noise-scale bracket (in log scale)
ROUND_BUDGET_S = 30.0  # a size whose first round (both evaluators) is shorter gets up to MAX_ROUNDS
MAX_ROUNDS = 5  # interleaved rounds, and each time is their median: the machine may be shared


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


def parse_size(text: str) -> tuple[str, tuple[int, int, int, bool]]:
    """``cub``, ``sop`` or ``NxDIMxCLASSES``, each optionally followed by ``-hard``:
    (the text, (n, dim, classes, hard))."""
    base, hard = (text[:-len(HARD)], True) if text.endswith(HARD) else (text, False)
    if base in SIZES:
        return text, (*SIZES[base], hard)
    match = re.fullmatch(r"(\d+)x(\d+)x(\d+)", base)
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: use one of {sorted(SIZES)} or NxDIMxCLASSES, e.g. 2000x64x50, "
                                         f"each optionally followed by {HARD!r}")
    n, dim, classes = (int(v) for v in match.groups())
    if n < 2 or dim < 1 or not 2 <= classes <= n:
        raise argparse.ArgumentTypeError(f"size {text!r}: need n >= 2, dim >= 1 and 2 <= classes <= n")
    return text, (n, dim, classes, hard)


def synthetic(n: int, dim: int, classes: int, *, hard: bool = False,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(embeddings, labels, noise scale), on the CPU: the embeddings ../shared/bench/pml_eval.py
    times the reference on, or with ``hard`` the same centres and noise at the scale
    :func:`hard_noise_scale` finds (searching on ``device``; exact neighbours, so the same scale)."""
    torch.manual_seed(0)
    labels = torch.randint(0, classes, (n,))
    centers = torch.randn(classes, dim)
    noise = torch.randn(n, dim)
    scale = EASY_NOISE
    if hard:
        scale = hard_noise_scale(centers[labels].to(device), noise.to(device), labels.to(device))
    return torch.nn.functional.normalize(centers[labels] + scale * noise, dim=1), labels, scale


def recall_at_1(embeddings: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> float:
    """Recall@1 of the given queries against every other item (exact neighbours)."""
    from ..evaluation.neighbours import knn

    _, nearest = knn(embeddings[queries], embeddings, 1, exclude=queries, scores=False)
    return (labels[nearest[:, 0]] == labels[queries]).double().mean().item()


def hard_noise_scale(centres: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor, *,
                     target: float = HARD_RECALL) -> float:
    """The noise scale at which ``normalize(centres + scale * noise)`` has Recall@1 about ``target``.

    Recall@1 falls as the noise grows, so the scale is found by bisection (in log scale, between
    0.25 and 16 times the centres' per-coordinate spread), each step measured on a fixed sample
    of queries that have another item of their class.
    """
    counts = torch.bincount(labels)
    eligible = (counts[labels] > 1).nonzero(as_tuple=True)[0]
    pick = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(1))[:CALIBRATION_QUERIES]
    queries = eligible[pick.to(eligible.device)]
    low, high = math.log(0.25), math.log(16.0)
    for _ in range(CALIBRATION_STEPS):
        middle = (low + high) / 2
        x = torch.nn.functional.normalize(centres + math.exp(middle) * noise, dim=1)
        if recall_at_1(x, labels, queries) > target:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


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


def bench(sizes: list[tuple[str, tuple[int, int, int, bool]]], device: torch.device, *, reference: bool = True,
          log=print) -> pd.DataFrame:
    rows = []
    # One small evaluation each first, so imports and thread pools are not billed to the first size.
    warm_x, warm_y, _ = synthetic(400, 16, 10)
    run_ours(warm_x, warm_y, device)
    if reference:
        run_reference(warm_x, warm_y, device)
    for name, (n, dim, classes, hard) in sizes:
        embeddings, labels, noise = synthetic(n, dim, classes, hard=hard, device=device)
        before = load_record()
        results, rounds = measure(embeddings, labels, device, reference)
        load = load_span(before, load_record())
        log(f"{name}: noise scale {noise:.3g}, Recall@1 {results[0].metrics['recall@1']:.3f}, "
            f"median of {rounds} round(s); {load_note(load)}")
        log(f"{name}: dmlbench {results[0].retrieval_s:.1f} s retrieval + {results[0].nmi_s:.1f} s NMI "
            f"(+ {results[0].ami_s:.1f} s AMI), peak {results[0].peak_rss_gb:.2f} GB")
        if reference:
            log(f"{name}: reference {results[1].retrieval_s:.1f} s retrieval + {results[1].nmi_s:.1f} s NMI, "
                f"peak {results[1].peak_rss_gb:.2f} GB; reference / dmlbench time: "
                f"{_ratio(results[1].total_s, results[0].total_s):.2f} in total, "
                f"{_ratio(results[1].retrieval_s, results[0].retrieval_s):.2f} retrieval, "
                f"{_ratio(results[1].nmi_s, results[0].nmi_s):.2f} NMI")
        rows += [_row(name, (n, dim, classes), noise, device, result, results[0]) | {"rounds": rounds} | load
                 for result in results]
    return pd.DataFrame(rows)


def measure(embeddings: torch.Tensor, labels: torch.Tensor, device: torch.device,
            reference: bool) -> tuple[list[Measurement], int]:
    """([dmlbench's, the reference's] measurements, rounds): evaluators run in turn, for as many
    rounds (up to MAX_ROUNDS) as ROUND_BUDGET_S allows after the first, each time the median."""
    def one_round() -> list[Measurement]:
        return [run_ours(embeddings, labels, device)] + ([run_reference(embeddings, labels, device)] if reference else [])

    rounds = [one_round()]
    spent = sum(result.total_s for result in rounds[0])
    while len(rounds) < min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(spent, 1e-9))):
        rounds.append(one_round())
    return [_median(list(same)) for same in zip(*rounds)], len(rounds)


def _median(results: list[Measurement]) -> Measurement:
    """One evaluator's rounds as one measurement: median times, the highest memory peaks."""
    def median(attr: str) -> float:
        return statistics.median(getattr(result, attr) for result in results)

    return Measurement(results[0].evaluator, median("retrieval_s"), median("nmi_s"),
                       max(result.peak_rss_gb for result in results), results[0].metrics, median("ami_s"),
                       max(result.peak_gpu_gb for result in results))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _row(name: str, size: tuple[int, int, int], noise: float, device: torch.device, result: Measurement,
         ours: Measurement) -> dict:
    """One line of the table: ``result`` and how it compares with ``ours`` (dmlbench's, same embeddings)."""
    n, dim, classes = size
    diff = max(abs(float(result.metrics[key]) - float(ours.metrics[key])) for key in COMPARED)
    return {
        "size": name, "n": n, "dim": dim, "classes": classes, "noise": round(noise, 4), "device": str(device),
        "evaluator": result.evaluator, "retrieval_s": round(result.retrieval_s, 2),
        "nmi_s": round(result.nmi_s, 2), "total_s": round(result.total_s, 2),
        "ami_s": round(result.ami_s, 2),
        "peak_rss_gb": round(result.peak_rss_gb, 2),
        **({"peak_gpu_gb": round(result.peak_gpu_gb, 2)} if device.type == "cuda" else {}),
        **{key: round(float(result.metrics[key]), 6) for key in COMPARED},
        "max_metric_diff": float(f"{diff:.3g}"),
        "time_vs_dmlbench": round(_ratio(result.total_s, ours.total_s), 2),
        "retrieval_vs_dmlbench": round(_ratio(result.retrieval_s, ours.retrieval_s), 2),
        "nmi_vs_dmlbench": round(_ratio(result.nmi_s, ours.nmi_s), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", type=parse_size, default=None,
                        help="cub, sop or NxDIMxCLASSES, each optionally with -hard (Recall@1 about 0.7); "
                             f"repeatable; default: {' '.join(DEFAULT_SIZES)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--no-reference", action="store_true", help="time dmlbench alone")
    parser.add_argument("--no-save", action="store_true", help="print only, do not write results/bench/")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: use cpu or cuda")
    sizes = args.size or [parse_size(size) for size in DEFAULT_SIZES]
    before = load_record()
    table = bench(sizes, device, reference=not args.no_reference)
    header = (f"Evaluation time, dmlbench vs pytorch-metric-learning AccuracyCalculator; {machine_line(device)}; "
              f"{load_note(load_span(before, load_record()))}\n"
              "retrieval = Recall@1/P@1 + R-Precision + MAP@R (k = largest class); nmi = k-means + NMI; total = the two; "
              "ami_s = scikit-learn's AMI on the same clusters (dmlbench only, not in total); peak_rss_gb = process "
              "high-water mark over everything (peak_gpu_gb: torch's CUDA allocator's, on CUDA); max_metric_diff = largest |difference| to dmlbench over recall@1, "
              "r_precision, map@r, nmi; noise = the noise scale (-hard sizes: tuned to Recall@1 about "
              f"{HARD_RECALL}); *_vs_dmlbench = this evaluator's time / dmlbench's, measured in the same run; "
              f"times are medians over `rounds` interleaved rounds (as many as fit in {ROUND_BUDGET_S:.0f} s, "
              f"at most {MAX_ROUNDS}); load_before/load_after = 1-minute load average around each size's "
              "measurement, others_cores = cores other processes kept busy meanwhile, under_load = more than "
              f"{LOAD_LIMIT:g} x cores (bench.timing.load_span)")
    print(header)
    print(table.to_string(index=False))
    if not args.no_save:
        print("written:", save_table(table, f"eval-{device.type}", header))
    return 0 if not math.isnan(table["total_s"].sum()) else 1
