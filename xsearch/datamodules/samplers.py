"""Training batch samplers: the batches of an epoch are a function of ``(seed, epoch)`` only.

No sampler here draws from a global random state, so the same seed gives the same batches whatever ran before
(workers, validation, a resumed process), which is what lets :class:`~xsearch.datamodules.resumable.ResumableLoader`
continue an epoch exactly where a killed run stopped. Under DDP every rank builds the same batch list and takes
batches ``rank, rank + world, ...``; every rank gets as many batches (a rank with one more would wait forever in the
gradient all-reduce).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from xsearch.seeding import derived_seed


class EpochBatchSampler(Sampler[list[int]]):
    """Base of the training batch samplers: :meth:`_all_batches` builds every rank's batches from a generator
    seeded by ``(seed, epoch)``; this rank iterates its share. Call :meth:`set_epoch` (Lightning does)."""

    def __init__(self, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.batches_per_rank = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def _all_batches(self, generator: torch.Generator) -> list[list[int]]:
        """``batches_per_rank x num_replicas`` batches of sample indexes, in order."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches(torch.Generator().manual_seed(derived_seed(self.seed, self.epoch)))
        return iter(batches[self.rank :: self.num_replicas][: self.batches_per_rank])


class ShuffledBatchSampler(EpochBatchSampler):
    """A new permutation of the ``num_samples`` items every epoch, cut into full batches of ``batch_size`` (the
    incomplete last one dropped); ``len(samples) // batch_size // world`` batches per rank (at least one)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(seed, num_replicas, rank)
        if num_samples < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {num_samples} training samples")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.batches_per_rank = max(1, num_samples // batch_size // num_replicas)

    def _all_batches(self, generator: torch.Generator) -> list[list[int]]:
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        total = self.batches_per_rank * self.num_replicas
        if total * self.batch_size > self.num_samples:  # more ranks than full batches: wrap around
            order = (order * (total * self.batch_size // self.num_samples + 1))
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(total)]


class IdentityBatchSampler(EpochBatchSampler):
    """Batches of ``ids_per_batch`` identities x ``instances`` samples each (P x K, for SDM, triplets, SPT).

    Identities with fewer than ``instances`` samples are drawn with replacement. Each epoch covers every identity
    about ``len(samples) / (ids * instances)`` batches' worth; every rank gets
    ``len(samples) // (ids * instances) // world_size`` batches (at least one), so steps per epoch shrink with the
    world size.
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
        super().__init__(seed, num_replicas, rank)
        self.groups: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.groups[int(pid)].append(index)
        if ids_per_batch > len(self.groups):
            raise ValueError(f"ids_per_batch={ids_per_batch} exceeds the {len(self.groups)} identities in the training set")
        self.ids_per_batch, self.instances = ids_per_batch, instances
        self.batches_per_rank = max(1, len(pids) // (ids_per_batch * instances) // num_replicas)

    def _all_batches(self, generator: torch.Generator) -> list[list[int]]:
        pids = sorted(self.groups)
        batches: list[list[int]] = []
        order: list[int] = []
        while len(batches) < self.batches_per_rank * self.num_replicas:
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
