"""``custom``: the user's own collection, one JSONL or CSV row per image (no parser to write).

``<root>/annotations.jsonl``, one object per line::

    {"path": "imgs/cam1/0001.jpg", "pid": "alice", "captions": ["A woman in a red coat.", "..."], "split": "train", "camid": 1}

or ``<root>/annotations.csv`` with a header row ``path,pid,captions,split[,camid]`` whose
``captions`` cell holds the captions separated by ``|``. ``path`` is relative to the root (or
absolute); ``pid`` is an integer or a name (names are numbered in sorted order and kept for
display); ``captions`` may be empty (a gallery-only image); ``split`` is train, val or test;
``camid`` is optional.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from xsearch.datamodules.files import (
    DatasetFormatError, expect_field, find_existing, load_jsonl, read_csv,
)
from xsearch.datamodules.records import SPLITS, CaptionRecord, DatasetIndex, ImageRecord
from xsearch.registry import DATASETS

FILES = ("annotations.jsonl", "annotations.csv")
CAPTION_SEPARATOR = "|"


def _jsonl_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for line, value in load_jsonl(path):
        where = f"{path}: line {line}"
        if not isinstance(value, dict):
            raise DatasetFormatError(f"{where}: expected an object, got {type(value).__name__}")
        captions = expect_field(value, "captions", list, where)
        if not all(isinstance(c, str) for c in captions):
            raise DatasetFormatError(f"{where}: field 'captions' should be a list of strings")
        camid = value.get("camid", -1)
        if not isinstance(camid, int) or isinstance(camid, bool):
            raise DatasetFormatError(f"{where}: field 'camid' should be int, got {type(camid).__name__}")
        rows.append((where, {
            "path": expect_field(value, "path", str, where),
            "pid": expect_field(value, "pid", (int, str), where),
            "captions": captions,
            "split": expect_field(value, "split", str, where),
            "camid": camid,
        }))
    return rows


def _csv_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for line, cells in read_csv(path):
        where = f"{path}: line {line}"
        for column in ("path", "pid", "captions", "split"):
            if not cells.get(column):
                if column == "captions" and "captions" in cells:
                    continue
                raise DatasetFormatError(f"{where}: missing value in column {column!r}")
        camid = cells.get("camid") or "-1"
        if not camid.lstrip("-").isdigit():
            raise DatasetFormatError(f"{where}: column 'camid' should be an integer, got {camid!r}")
        captions = [c.strip() for c in cells["captions"].split(CAPTION_SEPARATOR) if c.strip()]
        pid = cells["pid"]
        rows.append((where, {
            "path": cells["path"], "pid": int(pid) if pid.lstrip("-").isdigit() else pid,
            "captions": captions, "split": cells["split"], "camid": int(camid),
        }))
    return rows


@DATASETS.register("custom")
def parse(root: str | Path, file: str | None = None) -> DatasetIndex:
    """Parse ``<root>/annotations.jsonl`` or ``annotations.csv`` (or ``file``, relative to root)."""
    root = Path(root)
    source = root / file if file else find_existing(root, FILES, "annotation file")
    readers = {".jsonl": _jsonl_rows, ".csv": _csv_rows}
    if source.suffix not in readers:
        raise DatasetFormatError(f"{source}: expected a .jsonl or .csv annotation file")
    rows = readers[source.suffix](source)
    names = {row["pid"] for _, row in rows if isinstance(row["pid"], str)}
    numbering = {name: number for number, name in enumerate(sorted(names))}
    if names and len(names) < len({row["pid"] for _, row in rows}):
        raise DatasetFormatError(f"{source}: field 'pid' mixes integers and names; use one kind for all rows")
    images: list[ImageRecord] = []
    captions: list[CaptionRecord] = []
    for where, row in rows:
        split = row["split"].lower()
        if split not in SPLITS:
            raise DatasetFormatError(f"{where}: field 'split' should be one of {', '.join(SPLITS)}, got {row['split']!r}")
        pid = numbering[row["pid"]] if names else row["pid"]
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else root / row["path"]
        image = ImageRecord(len(images), path, pid, split, row["camid"])
        images.append(image)
        for text in row["captions"]:
            captions.append(CaptionRecord(len(captions), image.index, text, pid, split))
    if not images:
        raise DatasetFormatError(f"{source}: no rows (expected one row per image)")
    return DatasetIndex(
        name="custom", root=root, images=images, captions=captions, sources=[source],
        identity_names={number: name for name, number in numbering.items()},
    )
