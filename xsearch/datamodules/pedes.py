"""Shared reader for the text-based person search JSON lists (CUHK-PEDES, ICFG-PEDES, RSTPReid).

All three ship one JSON list with a record per image: ``split``, ``captions`` (list of str), a
path key (``file_path`` or ``img_path``) and ``id``. Each record becomes one image (keyed by
record index, so a repeated path stays two gallery entries as in the official protocol) and
one caption per sentence.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from xsearch.datamodules.files import DatasetFormatError, expect_field, expect_str_list
from xsearch.datamodules.records import SPLITS, CaptionRecord, DatasetIndex, ImageRecord

Normalize = Literal["off", "train", "all"]

_SPACES = re.compile(r"\s+")
_GLUED_SENTENCE = re.compile(r"(?<=[a-z])([.,;!?])(?=[A-Z])|(?<=[A-Za-z])([,;])(?=[A-Za-z])")


def normalize_caption(text: str, ascii_only: bool = False) -> str:
    """Collapse whitespace, add the missing space in ``black.His`` / ``coat,black``; optionally drop non-ASCII."""
    if ascii_only:
        text = text.encode("ascii", "ignore").decode()
    text = _GLUED_SENTENCE.sub(lambda m: (m.group(1) or m.group(2)) + " ", text)
    return _SPACES.sub(" ", text).strip()


def parse_pedes_records(
    records: list,
    source: Path,
    image_root: Path,
    name: str,
    path_key: str = "file_path",
    max_captions_per_image: int | None = None,
    normalize_captions: Normalize = "off",
    ascii_only: bool = False,
    splits: tuple[str, ...] = SPLITS,
    split_of: dict[int, str] | None = None,
) -> DatasetIndex:
    """Records ``{split, captions, <path_key>, id}`` -> :class:`DatasetIndex`.

    Args:
        max_captions_per_image: keep only the first N captions of an image (None = all).
        normalize_captions: ``off`` keeps the text byte-exact (published numbers); ``train``
            normalises training captions only; ``all`` also the evaluation queries.
        splits: split values this dataset may contain (lower-cased before the check).
        split_of: record index -> split, used instead of the ``split`` field (derived splits).
    """
    if max_captions_per_image is not None and max_captions_per_image < 1:
        raise DatasetFormatError(f"max_captions_per_image should be >= 1 or None, got {max_captions_per_image}")
    if normalize_captions not in ("off", "train", "all"):
        raise DatasetFormatError(f"normalize_captions should be off, train or all, got {normalize_captions!r}")
    images: list[ImageRecord] = []
    captions: list[CaptionRecord] = []
    root_dir = os.fspath(image_root)
    for number, record in enumerate(records):
        where = f"{source}: record {number}"
        if split_of is not None:
            expect_field(record, "id", int, where)
            split = split_of[number]
        else:
            split = expect_field(record, "split", str, where).lower()
            if split not in splits:
                raise DatasetFormatError(f"{where}: field 'split' should be one of {', '.join(splits)}, got {split!r}")
        texts = expect_str_list(record, "captions", where)
        relative = expect_field(record, path_key, str, where)
        pid = expect_field(record, "id", int, where)
        image = ImageRecord(len(images), os.path.join(root_dir, relative), pid, split)
        images.append(image)
        clean = normalize_captions == "all" or (normalize_captions == "train" and split == "train")
        for text in texts[:max_captions_per_image]:
            text = normalize_caption(text, ascii_only) if clean else text
            captions.append(CaptionRecord(len(captions), image.index, text, pid, split))
    return DatasetIndex(name=name, root=source.parent, images=images, captions=captions, sources=[source])
