"""Distributed evaluation sampler that never pads (no duplicated test samples under DDP)."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch.distributed as dist
from torch.utils.data import DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``R`` gets indices ``r, r + R, r + 2R, ...``: every sample exactly once over all ranks.

    Unlike ``DistributedSampler`` the ranks may get one sample more or less than each other, so metrics that
    are summed over ranks count each sample once (33 samples on 2 ranks -> 17 + 16, not 17 + 17). It subclasses
    ``DistributedSampler`` only so that Lightning (``use_distributed_sampler=True``) keeps it as it is.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} out of range: allowed [0, {num_replicas - 1}]")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples

