"""Image folders: list the image files under a folder and embed them with a loaded method, skipping unreadable ones."""
from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from xsearch.datamodules.transforms import UnreadableImage, load_image
from xsearch.search.model_io import LoadedModel, embed_images

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""File name endings (any case) taken as images."""


UNPRINTABLE_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")
"""Unicode categories a printed file name must not carry as they are: control characters (newline, tab, escape...),
format characters (right-to-left override...), surrogates (undecodable bytes of a name) and line / paragraph
separators: they would split, reorder or break a printed line."""


def shown_name(name: str | Path) -> str:
    """A file name (or path) as printed on one line: unchanged when every character is printable (non-ASCII letters
    and spaces included), else Python's quoted ``repr`` of it, whose escapes (``\\n``, ``\\x1b``, ``\\u202e``...) show
    what the name holds without acting on the terminal."""
    text = str(name)
    if any(unicodedata.category(char) in UNPRINTABLE_CATEGORIES for char in text):
        return repr(text)
    return text


@dataclass(frozen=True)
class ImageFile:
    """One image of a folder: ``path`` relative to the folder (POSIX separators), ``size`` in bytes, ``mtime_ns``."""

    path: str
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


def scan_images(root: str | Path, exclude: Iterable[str | Path] = ()) -> list[ImageFile]:
    """Every image file under ``root`` (recursively, symlinked folders not followed, hidden files and folders
    skipped, folders in ``exclude`` skipped), sorted by relative path. :class:`FileNotFoundError` /
    :class:`NotADirectoryError` name ``root`` when it is not a folder."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder (expected a folder of images)")
    skip = {Path(e).resolve() for e in exclude}
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and (Path(folder) / d).resolve() not in skip]
        for name in files:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:  # vanished or a broken link: it is simply not there
                continue
            found.append(ImageFile(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(found, key=lambda f: f.path)


class _Images(Dataset):
    """Item ``i``: ``{"row": i, "image": (3, H, W) uint8 or None, "error": None or why it is unreadable}``."""

    def __init__(self, paths: list[Path], size: tuple[int, int], crop: Any, interpolation: str = "bicubic") -> None:
        self.paths, self.size, self.crop, self.interpolation = paths, size, crop, interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> dict[str, Any]:
        try:
            return {"row": row, "image": load_image(self.paths[row], self.size, self.crop, self.interpolation), "error": None}
        except UnreadableImage as error:
            return {"row": row, "image": None, "error": str(error)}


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def embed_paths(loaded: LoadedModel, paths: list[Path], batch_size: int = 64, workers: int = 0,
                progress: str | None = "embedding images") -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Embed image files with ``loaded``'s ``encode_gallery``, each preprocessed exactly as in training.

    Returns ``(embeddings, rows, skipped)``: ``embeddings`` ``(N, D)`` fp32, row ``j`` of it the image
    ``paths[rows[j]]`` (``rows`` ascending); ``skipped``: ``(position in paths, reason)`` of each unreadable file,
    also logged as a warning.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    loader = DataLoader(_Images(paths, loaded.image_size, loaded.crop, loaded.interpolation), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, shuffle=False)
    chunks: list[torch.Tensor] = []
    rows: list[int] = []
    skipped: list[tuple[int, str]] = []
    with tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None) as bar:
        for items in loader:
            good = [item for item in items if item["image"] is not None]
            for item in items:
                if item["image"] is None:
                    log.warning("skipped %s", item["error"])
                    skipped.append((item["row"], item["error"]))
            if good:
                chunks.append(embed_images(loaded, torch.stack([item["image"] for item in good])))
                rows.extend(item["row"] for item in good)
            bar.update(len(items))
    dim = chunks[0].shape[1] if chunks else 0
    return (torch.cat(chunks) if chunks else torch.zeros(0, dim)), rows, skipped
