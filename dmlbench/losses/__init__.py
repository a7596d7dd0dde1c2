"""Losses of the study, registered by name in LOSSES (one loss per module)."""

from .angular import AngularLoss
from .arcface import ArcFaceLoss
from .base import LOSSES, REDUCTIONS, Loss, reduce
from .center import CenterLoss
from .contrastive import ContrastiveLoss
from .f_statistic import FStatisticLoss
from .lifted import LiftedStructureLoss
from .margin import MarginLoss
from .multi_similarity import MultiSimilarityLoss
from .normalized_softmax import NormalizedSoftmaxLoss
from .npairs import NPairsLoss
from .pml import PMLLoss, pml_loss
from .proxy_anchor import ProxyAnchorLoss
from .proxy_nca import ProxyNCALoss
from .triplet import TripletMarginLoss

__all__ = ["LOSSES", "REDUCTIONS", "Loss", "reduce", "AngularLoss", "ArcFaceLoss", "CenterLoss", "ContrastiveLoss",
           "FStatisticLoss", "LiftedStructureLoss", "MarginLoss", "MultiSimilarityLoss", "NormalizedSoftmaxLoss",
           "NPairsLoss", "PMLLoss", "ProxyAnchorLoss", "ProxyNCALoss", "TripletMarginLoss", "pml_loss"]
