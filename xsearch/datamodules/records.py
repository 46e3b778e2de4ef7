"""Plain records every parser produces and every datamodule consumes.

A parser turns a dataset's official files into a :class:`DatasetIndex`: a flat list
of images and a flat list of captions, each tagged with its identity (``pid``) and
split. Nothing here reads pixels or tokenises text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


_set = object.__setattr__


@dataclass(frozen=True, slots=True, init=False)
class ImageRecord:
    """One image file. ``index`` is its position in ``DatasetIndex.images``.

    The location is stored as a plain string (``file``): a 200,000-image index then builds,
    pickles and unpickles in a fraction of the time ``pathlib.Path`` objects take; ``path``
    gives the ``Path`` when needed. The constructor accepts either.
    """

    index: int
    file: str
    pid: int
    split: str
    camid: int

    def __init__(self, index: int, path: str | os.PathLike, pid: int, split: str, camid: int = -1) -> None:
        _set(self, "index", index)
        _set(self, "file", path if isinstance(path, str) else os.fspath(path))
        _set(self, "pid", pid)
        _set(self, "split", split)
        _set(self, "camid", camid)

    @property
    def path(self) -> Path:
        return Path(self.file)

    def __reduce__(self) -> tuple:
        return ImageRecord, (self.index, self.file, self.pid, self.split, self.camid)


@dataclass(frozen=True, slots=True)
class CaptionRecord:
    """One caption of one image. ``image_index`` points into ``DatasetIndex.images``."""

    index: int
    image_index: int
    text: str
    pid: int
    split: str


@dataclass
class FaceAttributes:
    """Binary attributes of some images: ``values[row[key]]`` is a bool row in ``names`` order.

    ``key`` is the image's path relative to the image folder, as the dataset's attribute file names it
    (CelebA ``000042.jpg``, LFW ``Name/Name_0001.jpg``). Parsers put it in ``DatasetIndex.extras["attributes"]``.
    """

    names: tuple[str, ...]
    row: dict[str, int]
    values: np.ndarray

    def of(self, key: str) -> dict[str, bool]:
        """``{attribute: positive}`` of one image."""
        return dict(zip(self.names, self.values[self.row[key]].tolist()))

    def select(self, keys: list[str]) -> FaceAttributes:
        """The rows of ``keys`` only, in that order."""
        rows = [self.row[k] for k in keys]
        return FaceAttributes(self.names, {k: i for i, k in enumerate(keys)}, self.values[rows])

    def for_images(self, images: list[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
        """``(N, A)`` bool values of ``images`` (matched on the last path parts) and ``(N,)`` bool "has a row"."""
        depth = len(Path(next(iter(self.row))).parts) if self.row else 1
        values = np.zeros((len(images), len(self.names)), dtype=bool)
        present = np.zeros(len(images), dtype=bool)
        for i, image in enumerate(images):
            row = self.row.get("/".join(Path(image.file).parts[-depth:]))
            if row is not None:
                values[i], present[i] = self.values[row], True
        return values, present


@dataclass
class DatasetIndex:
    """Every image and caption of a dataset, in file order, with split tags.

    ``pid`` values are the dataset's own identity ids (any integers; datasets that name people by
    strings number them in sorted name order and keep the names in ``identity_names``);
    datamodules remap train ids to ``0..n-1`` for classifiers and evaluate on these raw ids.

    ``sources`` are the annotation files the parser read (their size and mtime key the parse
    cache); ``extras`` holds dataset-specific side data (LFW verification pairs, COCO-PFS face
    descriptors...); ``missing_images`` is filled by the folder-listing check after parsing.
    """

    name: str
    root: Path
    images: list[ImageRecord]
    captions: list[CaptionRecord]
    warnings: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    identity_names: dict[int, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    missing_images: list[Path] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        """Records as columns: pickling 200,000 records as tuples of lists is several times faster."""
        state = dict(self.__dict__)
        state["images"] = tuple(map(list, zip(*((r.index, r.file, r.pid, r.split, r.camid) for r in self.images))))
        state["captions"] = tuple(
            map(list, zip(*((c.index, c.image_index, c.text, c.pid, c.split) for c in self.captions)))
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["images"] = [ImageRecord(*row) for row in zip(*state["images"])]
        state["captions"] = [CaptionRecord(*row) for row in zip(*state["captions"])]
        self.__dict__.update(state)

    def split_images(self, split: str) -> list[ImageRecord]:
        return [r for r in self.images if r.split == split]

    def split_captions(self, split: str) -> list[CaptionRecord]:
        return [r for r in self.captions if r.split == split]

    def has_split(self, split: str) -> bool:
        return any(r.split == split for r in self.images)

    def drop_images(self, paths: set[str | os.PathLike]) -> None:
        """Remove the images at ``paths`` and their captions, renumbering both lists."""
        files = {os.fspath(p) for p in paths}
        keep = [r for r in self.images if r.file not in files]
        new_index = {r.index: i for i, r in enumerate(keep)}
        self.images = [ImageRecord(i, r.file, r.pid, r.split, r.camid) for i, r in enumerate(keep)]
        kept_captions = [c for c in self.captions if c.image_index in new_index]
        self.captions = [
            CaptionRecord(i, new_index[c.image_index], c.text, c.pid, c.split) for i, c in enumerate(kept_captions)
        ]

    def summary(self) -> dict:
        """Per-split counts: ``{"train": {"identities", "images", "captions"}, ...}``."""
        out = {}
        for split in SPLITS:
            images = self.split_images(split)
            out[split] = {
                "identities": len({r.pid for r in images}),
                "images": len(images),
                "captions": len(self.split_captions(split)),
            }
        return out
