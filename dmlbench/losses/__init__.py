"""Losses of the study, registered by name in LOSSES (one loss per module)."""

from .base import LOSSES, REDUCTIONS, Loss, reduce
from .contrastive import ContrastiveLoss
from .pml import PMLLoss, pml_loss
from .triplet import TripletMarginLoss

__all__ = ["LOSSES", "REDUCTIONS", "Loss", "reduce", "ContrastiveLoss", "PMLLoss", "TripletMarginLoss", "pml_loss"]
