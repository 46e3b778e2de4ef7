"""Plain records every parser produces and every datamodule consumes.

A parser turns a dataset's official files into a :class:`DatasetIndex`: a flat list
of images and a flat list of captions, each tagged with its identity (``pid``) and
split. Nothing here reads pixels or tokenises text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image file. ``index`` is its position in ``DatasetIndex.images``."""

    index: int
    path: Path
    pid: int
    split: str
    camid: int = -1


@dataclass(frozen=True)
class CaptionRecord:
    """One caption of one image. ``image_index`` points into ``DatasetIndex.images``."""

    index: int
    image_index: int
    text: str
    pid: int
    split: str


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

    def split_images(self, split: str) -> list[ImageRecord]:
        return [r for r in self.images if r.split == split]

    def split_captions(self, split: str) -> list[CaptionRecord]:
        return [r for r in self.captions if r.split == split]

    def has_split(self, split: str) -> bool:
        return any(r.split == split for r in self.images)

    def drop_images(self, paths: set[Path]) -> None:
        """Remove the images at ``paths`` and their captions, renumbering both lists."""
        keep = [r for r in self.images if r.path not in paths]
        new_index = {r.index: i for i, r in enumerate(keep)}
        self.images = [ImageRecord(i, r.path, r.pid, r.split, r.camid) for i, r in enumerate(keep)]
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
