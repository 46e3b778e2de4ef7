"""ICFG-PEDES: ``<root>/ICFG-PEDES.json`` + ``<root>/imgs/{train,test}/<pid4>/<MSMT17 file>.jpg``.

The ``imgs/train|test`` folders are MSMT17's, not the ICFG split: only the JSON ``split`` field
counts. There is no val split (the datamodule validates on test and says so). The JSON name is
spelled three ways in the wild; all are accepted.
"""
from __future__ import annotations

from pathlib import Path

from xsearch.datamodules.files import find_existing, load_json_list
from xsearch.datamodules.loading import compare_published
from xsearch.datamodules.pedes import Normalize, parse_pedes_records
from xsearch.datamodules.records import DatasetIndex
from xsearch.registry import DATASETS

ANNOTATION_FILES = ("ICFG-PEDES.json", "ICFG_PEDES.json", "ICFG-PDES.json")
PUBLISHED = {"train": (3102, 34674, 34674), "test": (1000, 19848, 19848)}


@DATASETS.register("icfg_pedes")
def parse(root: str | Path, normalize_captions: Normalize = "off", ascii_only: bool = False) -> DatasetIndex:
    """Parse an ICFG-PEDES copy (one caption per image, 0-based ids, splits train/test)."""
    root = Path(root)
    source = find_existing(root, ANNOTATION_FILES, "ICFG-PEDES annotation file")
    index = parse_pedes_records(
        load_json_list(source), source, root / "imgs", "icfg_pedes",
        normalize_captions=normalize_captions, ascii_only=ascii_only, splits=("train", "test"),
    )
    index.warnings = compare_published(index, PUBLISHED)
    return index
