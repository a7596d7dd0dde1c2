"""Miners of the study, registered by name in MINERS (one miner per module)."""

from .all_tuples import AllTuples
from .base import MINERS, Miner
from .batch_hard import BatchHardMiner
from .distance_weighted import DistanceWeightedMiner
from .multi_similarity import MultiSimilarityMiner
from .random import RandomMiner
from .semi_hard import SemiHardMiner

__all__ = ["MINERS", "Miner", "AllTuples", "BatchHardMiner", "DistanceWeightedMiner", "MultiSimilarityMiner",
           "RandomMiner", "SemiHardMiner"]
