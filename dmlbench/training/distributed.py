"""Several processes training one run (torch.distributed): the global batch seen by every rank.

With a batch split across ranks, each rank embeds its own share. Mining and the loss need the whole
batch, so that a rank's anchors meet negatives from every rank. ``gather_batch`` concatenates the
embeddings (and labels) of all ranks in rank order, and the rank's own slice stays the tensor it
computed, so gradients flow back through the local part only. Every rank then computes the same loss on
the same global batch. Each rank's backward pass yields the gradient of that loss through its own
samples; the sum over ranks is the gradient on the whole batch. DistributedDataParallel averages
over ranks, so ``loss_scale()`` (the world size) restores the sum: a run on N processes takes the
same steps as one process on the concatenated batch.

``shard(batch, rank, world)`` is a rank's contiguous share of a batch of indices.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous share of ``batch``; the shares concatenated in rank order give ``batch``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if len(batch) % world_size:
        raise ValueError(f"a batch of {len(batch)} does not split evenly over {world_size} processes; "
                         f"choose P x K divisible by the number of processes")
    size = len(batch) // world_size
    return list(batch[rank * size:(rank + 1) * size])


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_local, D), (B_local,) on each rank -> (B_global, D), (B_global,) in rank order; gradients flow
    to this rank's own slice. Outside torch.distributed, the inputs unchanged."""
    if not is_distributed():
        return embeddings, labels
    rank, size = world()
    parts = [torch.empty_like(embeddings) for _ in range(size)]
    dist.all_gather(parts, embeddings.detach().contiguous())
    parts[rank] = embeddings  # the local slice keeps its autograd history
    label_parts = [torch.empty_like(labels) for _ in range(size)]
    dist.all_gather(label_parts, labels.contiguous())
    return torch.cat(parts), torch.cat(label_parts)


def loss_scale() -> float:
    """Factor on the loss before backward so that DDP's average of the ranks' gradients is the whole
    batch's gradient (each rank holds only its own samples' share of it)."""
    return float(world()[1])
