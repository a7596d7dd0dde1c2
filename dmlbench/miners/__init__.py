"""Miners of the study, registered by name in MINERS (one miner per module)."""

from .all_tuples import AllTuples
from .base import MINERS, Miner
from .batch_hard import BatchHardMiner
from .distance_weighted import DistanceWeightedMiner
from .margin_triplets import MarginTripletMiner
from .multi_similarity import MultiSimilarityMiner
from .npair import NPairMiner
from .random import RandomMiner
from .rho_distance import RhoDistanceMiner
from .semi_hard import SemiHardMiner
from .smooth_hard import SmoothHardMiner
from .soft_hard import SoftHardMiner

__all__ = ["MINERS", "Miner", "AllTuples", "BatchHardMiner", "DistanceWeightedMiner", "MarginTripletMiner",
           "MultiSimilarityMiner", "NPairMiner", "RandomMiner", "RhoDistanceMiner", "SemiHardMiner", "SmoothHardMiner",
           "SoftHardMiner"]
