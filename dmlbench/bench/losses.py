"""Forward + backward time of each loss against its pytorch-metric-learning counterpart.

Each case configures both so that they compute the same thing (the tests check they do) and feeds
them the same L2-normalised random batch: ``classes`` labels with batch/classes images each. A case
with a miner times mining + loss for both libraries.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..criterion import build_criterion
from .timing import devices, interleaved_medians, load_note, load_record, load_span, machine_line, save_table


@dataclass
class LossCase:
    label: str
    loss: str  # our registry name
    pml: str | None  # pytorch_metric_learning.losses class; None where the library has no such loss
    loss_kwargs: dict = field(default_factory=dict)
    pml_kwargs: dict = field(default_factory=dict)
    miner: str = "none"  # our miner
    miner_kwargs: dict = field(default_factory=dict)
    pml_miner: str | None = None  # pytorch_metric_learning.miners class
    pml_miner_kwargs: dict = field(default_factory=dict)
    per_class: bool = False  # the loss owns per-class parameters (num_classes, embedding_dim)


def _lp_regularizer():
    from pytorch_metric_learning.regularizers import LpRegularizer

    return LpRegularizer(p=2, power=2)


CASES = [
    LossCase("contrastive", "contrastive", "ContrastiveLoss", {"pos_margin": 0.0, "neg_margin": 1.0},
             {"pos_margin": 0.0, "neg_margin": 1.0}),
    LossCase("triplet, all triplets", "triplet", "TripletMarginLoss", {"margin": 0.2}, {"margin": 0.2}),
    LossCase("triplet + semi-hard", "triplet", "TripletMarginLoss", {"margin": 0.2}, {"margin": 0.2},
             miner="semi-hard", miner_kwargs={"margin": 0.2, "fallback": "none"}, pml_miner="TripletMarginMiner",
             pml_miner_kwargs={"margin": 0.2, "type_of_triplets": "semihard"}),
    LossCase("triplet + batch-hard", "triplet", "TripletMarginLoss", {"margin": 0.2}, {"margin": 0.2},
             miner="batch-hard", pml_miner="BatchHardMiner"),
    LossCase("lifted structure", "lifted-structure", "LiftedStructureLoss", {"margin": 1.0},
             {"neg_margin": 1.0, "pos_margin": 0.0}),
    LossCase("N-pairs", "n-pairs", "NPairsLoss", {"l2_weight": 0.002},
             {"embedding_regularizer": _lp_regularizer, "embedding_reg_weight": 0.002}),
    LossCase("angular", "angular", "AngularLoss", {"alpha": 40.0}, {"alpha": 40}),
    LossCase("margin + distance-weighted", "margin", "MarginLoss",
             {"margin": 0.2, "beta": 1.2, "nu": 0.0, "learn_beta": True, "per_class": True},
             {"margin": 0.2, "beta": 1.2, "nu": 0.0, "learn_beta": True}, miner="distance-weighted",
             pml_miner="DistanceWeightedMiner", pml_miner_kwargs={"cutoff": 0.5, "nonzero_loss_cutoff": 1.4},
             per_class=True),
    LossCase("multi-similarity + its miner", "multi-similarity", "MultiSimilarityLoss",
             {"alpha": 2.0, "beta": 50.0, "base": 0.5}, {"alpha": 2, "beta": 50, "base": 0.5},
             miner="multi-similarity", pml_miner="MultiSimilarityMiner", pml_miner_kwargs={"epsilon": 0.1}),
    LossCase("ProxyNCA", "proxy-nca", "ProxyNCALoss", {"include_positive_in_denominator": True},
             {"softmax_scale": 1}, per_class=True),
    LossCase("Proxy-Anchor", "proxy-anchor", "ProxyAnchorLoss", {"margin": 0.1, "alpha": 32.0},
             {"margin": 0.1, "alpha": 32}, per_class=True),
    LossCase("normalized softmax", "normalized-softmax", "NormalizedSoftmaxLoss", {"temperature": 0.05},
             {"temperature": 0.05}, per_class=True),
    LossCase("ArcFace", "arcface", "ArcFaceLoss", {"margin": 0.49916, "scale": 64.0},  # 28.6 degrees
             {"margin": 28.6, "scale": 64}, per_class=True),
    LossCase("center (no pml counterpart)", "center", None, per_class=True),
    LossCase("F-statistic (no pml counterpart)", "f-statistic", None),
]


def steps_for(case: LossCase, batch: int, dim: int, classes: int, device: torch.device):
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners as pml_miners

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    labels = torch.arange(classes).repeat_interleave(batch // classes).to(device)
    ours = build_criterion(case.loss, case.miner, case.loss_kwargs, case.miner_kwargs, seed=0,
                           num_classes=classes if case.per_class else None,
                           embedding_dim=dim if case.per_class else None).to(device)

    def ours_step():
        x = embeddings.detach().requires_grad_(True)
        ours(x, labels).backward()

    if case.pml is None:
        return {"dmlbench": ours_step}
    pml_kwargs = {k: v() if callable(v) else v for k, v in case.pml_kwargs.items()}
    pml_class = getattr(pml_losses, case.pml)
    if case.per_class:
        accepted = inspect.signature(pml_class.__init__).parameters
        pml_kwargs.update({k: v for k, v in (("num_classes", classes), ("embedding_size", dim)) if k in accepted})
    theirs = pml_class(**pml_kwargs).to(device)
    theirs_miner = getattr(pml_miners, case.pml_miner)(**case.pml_miner_kwargs) if case.pml_miner else None

    def pml_step():
        x = embeddings.detach().requires_grad_(True)
        mined = theirs_miner(x, labels) if theirs_miner is not None else None
        theirs(x, labels, mined).backward()

    return {"dmlbench": ours_step, "pml": pml_step}


def run(batches=(128, 256), dims=(128, 512), classes: int = 32, repeats: int = 11, only: str | None = None,
        device_names: tuple[str, ...] | None = None) -> pd.DataFrame:
    rows = []
    for device in devices():
        if device_names and device.type not in device_names:
            continue
        for case in CASES:
            if only and only not in case.label:
                continue
            for batch in batches:
                for dim in dims:
                    medians = interleaved_medians(steps_for(case, batch, dim, classes, device), device, repeats=repeats)
                    pml = medians.get("pml", float("nan"))
                    rows.append({"case": case.label, "device": device.type, "batch": batch, "dim": dim,
                                 "dmlbench_ms": 1000 * medians["dmlbench"], "pml_ms": 1000 * pml,
                                 "pml/dmlbench": pml / medians["dmlbench"]})
                    r = rows[-1]
                    print(f"{r['case']:34s} {r['device']:4s} B={batch:4d} D={dim:4d}  ours {r['dmlbench_ms']:9.2f} ms  "
                          f"pml {r['pml_ms']:9.2f} ms  x{r['pml/dmlbench']:.2f}", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench losses", description=__doc__)
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
    header = (f"forward + backward per step, medians of interleaved repetitions; pml/dmlbench > 1 means "
              f"dmlbench is faster. {machine_line(used)}; {load_note(load)}")
    print(header)
    print(table.round(3).to_string(index=False))
    if not args.no_save and not args.only:
        suffix = "-".join(sorted(set(table["device"])))
        print(save_table(table.round(4), f"losses-{suffix}", header))
    return 0
