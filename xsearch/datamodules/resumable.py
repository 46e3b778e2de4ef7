"""The training loader: every item seeded by its place in the run, a position in the epoch that checkpoints keep,
unreadable images skipped or fatal.

- :class:`SeededItems` draws item ``(index, seed)`` with torch's global generator seeded by ``seed`` (and restored
  after), so every random choice of the data pipeline (augmentation, the caption drawn, the composed reference) is
  a function of the run's seed, the epoch and the item's place in it: the same in a worker or in the main process,
  in a fresh run or a resumed one.
- :class:`ResumableLoader` is a ``DataLoader`` with ``state_dict`` / ``load_state_dict`` (Lightning stores them in
  every checkpoint): the epoch and how many of its batches were delivered. A run resumed mid-epoch
  (``--ckpt_path last``) continues with the next batch of that epoch; with a plain loader Lightning replays the
  epoch's first batches instead, so the resumed run trains on different data than the uninterrupted one.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from xsearch.datamodules.samplers import EpochBatchSampler
from xsearch.datamodules.transforms import UnreadableImage

log = logging.getLogger(__name__)


class Skipped(NamedTuple):
    """Placeholder for a training item whose image could not be read (``bad_samples: skip``)."""

    path: str
    reason: str


class SeededItems(Dataset):
    """``items[(index, seed)]`` = ``dataset[index]`` drawn with the global torch generator seeded by ``seed``; with
    ``skip_unreadable`` an unreadable image gives a :class:`Skipped` instead of raising :class:`UnreadableImage`."""

    def __init__(self, dataset: Dataset, skip_unreadable: bool = False) -> None:
        self.dataset, self.skip_unreadable = dataset, skip_unreadable

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed formats a stack per device kind
            try:
                return self.dataset[index]
            except UnreadableImage as error:
                if not self.skip_unreadable:
                    raise
                return Skipped(str(error.path), str(error))


def collate_present(items: list[Any]) -> dict[str, Any]:
    """``default_collate`` of the readable items; the paths of the skipped ones under ``"skipped"`` (the datamodule
    reports and removes them before the model sees the batch). A batch with no readable item is an error: a broken
    dataset (an unmounted disk, a wrong root), not a bad file."""
    skipped = [item for item in items if isinstance(item, Skipped)]
    present = [item for item in items if not isinstance(item, Skipped)]
    if not present:
        raise UnreadableImage(skipped[0].path, f"none of the {len(items)} images of a training batch could be read, "
                              f"e.g. {skipped[0].reason}; is the dataset root right?")
    batch = default_collate(present)
    if skipped:
        batch["skipped"] = [s.reason for s in skipped]
    return batch


class _KeyedBatches:
    """The sampler's batches from batch ``start`` on, each index paired with its item seed."""

    def __init__(self, sampler: EpochBatchSampler) -> None:
        self.sampler, self.start = sampler, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it on ``loader.batch_sampler`` every epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start, self.start = self.start, 0
        sampler = self.sampler
        for number, batch in enumerate(sampler):
            if number >= start:
                seeds = np.random.SeedSequence([sampler.seed, sampler.epoch, sampler.rank, number]).generate_state(len(batch), np.uint64)
                yield [(index, int(seed >> np.uint64(1))) for index, seed in zip(batch, seeds)]


class ResumableLoader(DataLoader):
    """Training loader over ``dataset`` in the batches of ``batch_sampler``, resumable mid-epoch (module docstring).

    ``state_dict()`` = ``{"epoch", "delivered", "batches"}``; after ``load_state_dict`` the next iteration of that
    epoch skips the ``delivered`` batches (without loading them); an iteration of another epoch starts at its first.
    """

    def __init__(self, dataset: Dataset, batch_sampler: EpochBatchSampler, skip_unreadable: bool = False, **kwargs: Any) -> None:
        super().__init__(SeededItems(dataset, skip_unreadable), batch_sampler=_KeyedBatches(batch_sampler),
                         collate_fn=collate_present, **kwargs)
        self._delivered = 0
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.sampler.epoch, "delivered": self._delivered, "batches": len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("batches") != len(self):
            log.warning("the checkpoint's epoch had %s batches, this loader has %d (batch size, data or devices changed): "
                        "the resumed epoch starts at its first batch", state.get("batches"), len(self))
            return
        self._resume = dict(state)

    def __iter__(self) -> Iterator[Any]:
        keyed: _KeyedBatches = self.batch_sampler
        resume, self._resume = self._resume, None
        start = resume["delivered"] if resume and resume["epoch"] == keyed.sampler.epoch else 0
        if start:
            log.info("resuming epoch %d at batch %d of %d", keyed.sampler.epoch, start, len(self))
        keyed.start, self._delivered = start, start
        for batch in super().__iter__():
            self._delivered += 1
            yield batch


