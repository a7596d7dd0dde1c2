"""Time of each miner against its pytorch-metric-learning counterpart on the same batch.

Both get the same L2-normalised random embeddings (``classes`` labels with batch/classes images
each) and are configured to select the same tuples (the tests check the sets agree); randomised
miners draw comparable amounts. Miners the library lacks are timed alone.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..miners import MINERS
from .timing import devices, interleaved_medians, load_note, load_record, load_span, machine_line, save_table


@dataclass
class MinerCase:
    label: str
    miner: str  # our registry name
    kind: str  # what we ask it for: "pairs" or "triplets"
    kwargs: dict = field(default_factory=dict)
    pml: str | None = None  # pytorch_metric_learning.miners class, or "all-triplets" for the library's helper
    pml_kwargs: dict = field(default_factory=dict)


CASES = [
    MinerCase("none (all triplets)", "none", "triplets", pml="all-triplets"),
    MinerCase("random", "random", "triplets"),
    MinerCase("batch-hard", "batch-hard", "triplets", pml="BatchHardMiner"),
    MinerCase("semi-hard", "semi-hard", "triplets", {"margin": 0.2, "fallback": "none"}, "TripletMarginMiner",
              {"margin": 0.2, "type_of_triplets": "semihard"}),
    MinerCase("semi-hard + FaceNet fallback", "semi-hard", "triplets", {"margin": 0.2}),
    MinerCase("margin-triplets, violating", "margin-triplets", "triplets", {"margin": 0.2}, "TripletMarginMiner",
              {"margin": 0.2, "type_of_triplets": "all"}),
    MinerCase("margin-triplets, hard", "margin-triplets", "triplets", {"margin": 0.2, "selection": "hard"},
              "TripletMarginMiner", {"margin": 0.2, "type_of_triplets": "hard"}),
    MinerCase("distance-weighted", "distance-weighted", "triplets", {}, "DistanceWeightedMiner",
              {"cutoff": 0.5, "nonzero_loss_cutoff": 1.4}),
    MinerCase("multi-similarity", "multi-similarity", "pairs", {"epsilon": 0.1}, "MultiSimilarityMiner",
              {"epsilon": 0.1}),
    MinerCase("smooth-hard", "smooth-hard", "triplets"),
    MinerCase("soft-hard", "soft-hard", "triplets"),
    MinerCase("n-pair", "n-pair", "pairs"),
    MinerCase("rho-distance", "rho-distance", "triplets"),
]


def steps_for(case: MinerCase, batch: int, dim: int, classes: int, device: torch.device):
    from pytorch_metric_learning import miners as pml_miners
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    labels = torch.arange(classes).repeat_interleave(batch // classes).to(device)
    ours = MINERS.create(case.miner, **case.kwargs).seed(0)
    steps = {"dmlbench": lambda: ours(embeddings, labels, case.kind)}
    if case.pml == "all-triplets":
        steps["pml"] = lambda: lmu.get_all_triplets_indices(labels)
    elif case.pml:
        theirs = getattr(pml_miners, case.pml)(**case.pml_kwargs)
        steps["pml"] = lambda: theirs(embeddings, labels)
    return steps


def run(batches=(128, 256), dims=(128, 512), classes: int = 32, repeats: int = 11, only: str | None = None,
        device_names: tuple[str, ...] | None = None) -> pd.DataFrame:
    rows = []
    with torch.no_grad():
        for device in devices():
            if device_names and device.type not in device_names:
                continue
            for case in CASES:
                if only and only not in case.label:
                    continue
                for batch in batches:
                    for dim in dims:
                        medians = interleaved_medians(steps_for(case, batch, dim, classes, device), device,
                                                      repeats=repeats)
                        pml = medians.get("pml", float("nan"))
                        rows.append({"case": case.label, "device": device.type, "batch": batch, "dim": dim,
                                     "dmlbench_ms": 1000 * medians["dmlbench"], "pml_ms": 1000 * pml,
                                     "pml/dmlbench": pml / medians["dmlbench"]})
                        r = rows[-1]
                        print(f"{r['case']:30s} {r['device']:4s} B={batch:4d} D={dim:4d}  ours {r['dmlbench_ms']:8.2f} ms"
                              f"  pml {r['pml_ms']:8.2f} ms  x{r['pml/dmlbench']:.2f}", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench miners", description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--only", help="run the cases whose label contains this text")
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append",
                        help="time on this device only (repeatable; default: the CPU and CUDA when present)")
    parser.add_argument("--no-save", action="store_true", help="print only, keep results/bench/ as it is")
    args = parser.parse_args(argv)
    before = load_record()
    table = run(tuple(args.batches), tuple(args.dims), repeats=args.repeats, only=args.only,
                device_names=tuple(args.device or ()))
    load = load_span(before, load_record())
    table = table.assign(**load)
    used = torch.device("cuda") if set(table["device"]) == {"cuda"} else torch.device("cpu")
    header = (f"mining one batch, medians of interleaved repetitions; pml/dmlbench > 1 means dmlbench is faster. "
              f"{machine_line(used)}; {load_note(load)}")
    print(header)
    print(table.round(3).to_string(index=False))
    if not args.no_save and not args.only:
        suffix = "-".join(sorted(set(table["device"])))
        print(save_table(table.round(4), f"miners-{suffix}", header))
    return 0
