"""Identity-balanced P x K sampling for metric-learning losses (SDM, triplets, SPT)."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class IdentityBatchSampler(Sampler[list[int]]):
    """Batches of ``ids_per_batch`` identities x ``instances`` samples each.

    Identities with fewer than ``instances`` samples are drawn with replacement. Each epoch
    covers every identity about ``len(samples) / (ids * instances)`` batches' worth; the batch
    order is shared by all ranks (same ``seed + epoch``) and rank ``r`` takes batches
    ``r, r + world_size, ...`` so DDP ranks never see the same batch; every rank gets
    ``len(samples) // (ids * instances) // world_size`` batches (at least one), so steps per epoch shrink with the
    world size and no rank waits for another. Call :meth:`set_epoch`.
    """

    def __init__(
        self,
        pids: Sequence[int],
        ids_per_batch: int,
        instances: int = 4,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.groups: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.groups[int(pid)].append(index)
        if ids_per_batch > len(self.groups):
            raise ValueError(f"ids_per_batch={ids_per_batch} exceeds the {len(self.groups)} identities in the training set")
        self.ids_per_batch, self.instances = ids_per_batch, instances
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        # every rank gets the same number of batches (a rank with one more would wait forever in DDP's all-reduce)
        self.batches_per_rank = max(1, len(pids) // (ids_per_batch * instances) // num_replicas)
        self.total_batches = self.batches_per_rank * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        pids = sorted(self.groups)
        batches: list[list[int]] = []
        order: list[int] = []
        while len(batches) < self.total_batches:
            if len(order) < self.ids_per_batch:
                order += [pids[i] for i in torch.randperm(len(pids), generator=generator).tolist()]
            chosen, order = order[: self.ids_per_batch], order[self.ids_per_batch :]
            batch: list[int] = []
            for pid in chosen:
                members = self.groups[pid]
                if len(members) >= self.instances:
                    picks = torch.randperm(len(members), generator=generator)[: self.instances]
                else:
                    picks = torch.randint(len(members), (self.instances,), generator=generator)
                batch += [members[i] for i in picks.tolist()]
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        return iter(batches[self.rank :: self.num_replicas])
