"""Forward + backward time of each loss against its pytorch-metric-learning counterpart.

Each case configures both so that they compute the same thing (the tests check they do) and feeds
them the same L2-normalised random batch: ``classes`` labels with batch/classes images each. A case
with a miner times mining + loss for both libraries.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..criterion import build_criterion
from .timing import devices, interleaved_medians, machine_line, save_table


@dataclass
class LossCase:
    label: str
    loss: str  # our registry name
    pml: str  # pytorch_metric_learning.losses class
    loss_kwargs: dict = field(default_factory=dict)
    pml_kwargs: dict = field(default_factory=dict)
    miner: str = "none"  # our miner
    pml_miner: str | None = None  # pytorch_metric_learning.miners class
    pml_miner_kwargs: dict = field(default_factory=dict)
    per_class: bool = False  # the loss owns per-class parameters (num_classes, embedding_dim)


CASES = [
    LossCase("contrastive", "contrastive", "ContrastiveLoss", {"pos_margin": 0.0, "neg_margin": 1.0},
             {"pos_margin": 0.0, "neg_margin": 1.0}),
    LossCase("triplet, all triplets", "triplet", "TripletMarginLoss", {"margin": 0.2}, {"margin": 0.2}),
    LossCase("triplet + semi-hard", "triplet", "TripletMarginLoss", {"margin": 0.2}, {"margin": 0.2},
             miner="semi-hard", pml_miner="TripletMarginMiner",
             pml_miner_kwargs={"margin": 0.2, "type_of_triplets": "semihard"}),
    LossCase("triplet + batch-hard", "triplet", "TripletMarginLoss", {"margin": 0.2}, {"margin": 0.2},
             miner="batch-hard", pml_miner="BatchHardMiner"),
]


def steps_for(case: LossCase, batch: int, dim: int, classes: int, device: torch.device):
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners as pml_miners

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(device)
    labels = torch.arange(classes).repeat_interleave(batch // classes).to(device)
    ours = build_criterion(case.loss, case.miner, case.loss_kwargs, seed=0,
                           num_classes=classes if case.per_class else None,
                           embedding_dim=dim if case.per_class else None).to(device)
    pml_kwargs = dict(case.pml_kwargs)
    if case.per_class:
        pml_kwargs.update(num_classes=classes, embedding_size=dim)
    theirs = getattr(pml_losses, case.pml)(**pml_kwargs).to(device)
    theirs_miner = getattr(pml_miners, case.pml_miner)(**case.pml_miner_kwargs) if case.pml_miner else None

    def ours_step():
        x = embeddings.detach().requires_grad_(True)
        ours(x, labels).backward()

    def pml_step():
        x = embeddings.detach().requires_grad_(True)
        mined = theirs_miner(x, labels) if theirs_miner is not None else None
        theirs(x, labels, mined).backward()

    return {"dmlbench": ours_step, "pml": pml_step}


def run(batches=(128, 256), dims=(128, 512), classes: int = 32, repeats: int = 11, only: str | None = None) -> pd.DataFrame:
    rows = []
    for device in devices():
        for case in CASES:
            if only and only not in case.label:
                continue
            for batch in batches:
                for dim in dims:
                    medians = interleaved_medians(steps_for(case, batch, dim, classes, device), device, repeats=repeats)
                    rows.append({"case": case.label, "device": device.type, "batch": batch, "dim": dim,
                                 "dmlbench_ms": 1000 * medians["dmlbench"], "pml_ms": 1000 * medians["pml"],
                                 "pml/dmlbench": medians["pml"] / medians["dmlbench"]})
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
    parser.add_argument("--no-save", action="store_true", help="print only, keep results/bench/ as it is")
    args = parser.parse_args(argv)
    table = run(tuple(args.batches), tuple(args.dims), repeats=args.repeats, only=args.only)
    header = (f"forward + backward per step, medians of interleaved repetitions; pml/dmlbench > 1 means "
              f"dmlbench is faster. {machine_line(torch.device('cpu'))}")
    print(header)
    print(table.round(3).to_string(index=False))
    if not args.no_save and not args.only:
        suffix = "-".join(sorted(set(table["device"])))
        print(save_table(table.round(4), f"losses-{suffix}", header))
    return 0
