"""``AtomicCheckpointIO``: Lightning checkpoints written beside their path and renamed over it."""
from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from xsearch.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """A run killed while saving leaves the previous ``last.ckpt`` whole. Lightning's own IO writes through an
    fsspec transaction, which for local files is a temporary file in ``/tmp`` moved over the path on commit: where
    ``/tmp`` is another file system (tmpfs, most machines) that move is a copy, so a kill during it left a truncated
    checkpoint to resume from (and a checkpoint-sized orphan in ``/tmp``). Here the file is renamed within its
    folder. (The CLI installs it.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
