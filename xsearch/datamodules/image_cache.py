"""Pre-resized image cache on disk: each image decoded, cropped and resized once, then read back as raw uint8.

For datasets whose originals are much larger than the training size (CelebA-HQ 1024x1024 for 112x112 faces, COCO
scenes), decoding the original dominates the data pipeline. ``DiskImageCache`` keeps ``(3, H, W)`` uint8 arrays as
``.npy`` files keyed by the file's path, size and mtime and by the target size and crop, so a changed image or
another size never reads a stale copy; files are written atomically (concurrent workers and ranks are safe).
``xsearch data cache`` fills it ahead of training.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from xsearch.atomic import atomic_path


class DiskImageCache:
    """``(path, size, crop, interpolation) -> uint8 (3, H, W)`` tensors stored under ``folder``
    (``<key[:2]>/<key>.npy``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def key(self, path: str | Path, size: tuple[int, int], crop: object, interpolation: str = "bicubic") -> str:
        stat = os.stat(path)
        text = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{tuple(size)}|{crop!r}"
        if interpolation != "bicubic":  # bicubic copies keep the keys they had before the filter was a choice
            text += f"|{interpolation}"
        return hashlib.sha1(text.encode()).hexdigest()

    def get(self, path: str | Path, size: tuple[int, int], crop: object, load: Callable[[], torch.Tensor],
            interpolation: str = "bicubic") -> torch.Tensor:
        """The cached copy, or ``load()`` stored for next time."""
        key = self.key(path, size, crop, interpolation)
        file = self.folder / key[:2] / f"{key}.npy"
        try:
            return torch.from_numpy(np.load(file))
        except FileNotFoundError:
            pass
        except ValueError:  # a truncated file (a crash while another process wrote it is impossible: atomic), re-made
            file.unlink(missing_ok=True)
        image = load()
        with atomic_path(file) as tmp, open(tmp, "wb") as stream:
            np.save(stream, image.numpy())
        return image
