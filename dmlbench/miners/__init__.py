"""Miners of the study, registered by name in MINERS (one miner per module)."""

from .all_tuples import AllTuples
from .base import MINERS, Miner
from .batch_hard import BatchHardMiner
from .random import RandomMiner
from .semi_hard import SemiHardMiner

__all__ = ["MINERS", "Miner", "AllTuples", "BatchHardMiner", "RandomMiner", "SemiHardMiner"]
