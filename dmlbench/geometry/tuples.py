"""What a miner hands to a loss: index tensors of pairs or triplets within one batch.

Positive pairs are ordered ``(i, j)`` with ``i != j`` and ``labels[i] == labels[j]``; negative pairs
``(i, j)`` with different labels. A triplet ``(a, p, n)`` joins a positive pair ``(a, p)`` and a
negative pair ``(a, n)``. All indices are ``int64`` tensors on the embeddings' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("pairs", "triplets")


@dataclass(frozen=True)
class Pairs:
    pos_a: torch.Tensor  # (Np,)
    pos_b: torch.Tensor  # (Np,)
    neg_a: torch.Tensor  # (Nn,)
    neg_b: torch.Tensor  # (Nn,)
    kind = "pairs"

    def __len__(self) -> int:
        return len(self.pos_a) + len(self.neg_a)


@dataclass(frozen=True)
class Triplets:
    anchor: torch.Tensor  # (T,)
    positive: torch.Tensor  # (T,)
    negative: torch.Tensor  # (T,)
    kind = "triplets"

    def __len__(self) -> int:
        return len(self.anchor)

    def to_pairs(self) -> Pairs:
        """Each triplet gives its positive pair (a, p) and its negative pair (a, n), duplicates kept."""
        return Pairs(self.anchor, self.positive, self.anchor, self.negative)


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) labels -> (positive mask, negative mask), both (B, B) bool; the diagonal is in neither."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def all_pairs(labels: torch.Tensor) -> Pairs:
    positive, negative = label_masks(labels)
    pos_a, pos_b = positive.nonzero(as_tuple=True)
    neg_a, neg_b = negative.nonzero(as_tuple=True)
    return Pairs(pos_a, pos_b, neg_a, neg_b)


def all_triplets(labels: torch.Tensor) -> Triplets:
    """Every (a, p, n), in lexicographic order; built from the P positive pairs x B candidates
    rather than a (B, B, B) mask."""
    positive, negative = label_masks(labels)
    anchor, pos = positive.nonzero(as_tuple=True)  # (P,), (P,)
    pair, neg = negative[anchor].nonzero(as_tuple=True)  # over the (P, B) negatives of each pair's anchor
    return Triplets(anchor[pair], pos[pair], neg)


def empty_like(kind: str, device: torch.device) -> Pairs | Triplets:
    none = torch.empty(0, dtype=torch.long, device=device)
    return Pairs(none, none, none, none) if kind == "pairs" else Triplets(none, none, none)
