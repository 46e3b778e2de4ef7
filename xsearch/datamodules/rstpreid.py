"""RSTPReid: ``<root>/data_captions.json`` (path key ``img_path``) + flat ``<root>/imgs/``.

Captions are dirty (CJK characters, code fragments, ``black.His``, strings copied onto other
identities): ``normalize_captions`` cleans them for training (``train``) or everywhere (``all``);
the default keeps evaluation text byte-exact so numbers match the published ones. Caption texts
shared across identities are reported, never deduplicated.
"""
from __future__ import annotations

from pathlib import Path

from xsearch.datamodules.files import find_existing, load_json_list
from xsearch.datamodules.loading import compare_published
from xsearch.datamodules.pedes import Normalize, parse_pedes_records
from xsearch.datamodules.records import DatasetIndex
from xsearch.registry import DATASETS

PUBLISHED = {"train": (3701, 18505, 37010), "val": (200, 1000, 2000), "test": (200, 1000, 2000)}
OLD_RELEASE_IDS = (3901, 100, 100)


@DATASETS.register("rstpreid")
def parse(root: str | Path, normalize_captions: Normalize = "off", ascii_only: bool = False) -> DatasetIndex:
    """Parse an RSTPReid copy (0-based ids, 2 captions per image, splits train/val/test)."""
    root = Path(root)
    source = find_existing(root, ("data_captions.json",), "RSTPReid annotation file")
    index = parse_pedes_records(
        load_json_list(source), source, root / "imgs", "rstpreid", path_key="img_path",
        normalize_captions=normalize_captions, ascii_only=ascii_only,
    )
    summary = index.summary()
    ids = tuple(summary[s]["identities"] for s in ("train", "val", "test"))
    if ids == OLD_RELEASE_IDS:
        index.warnings = [
            "identities per split are 3901/100/100: this is the old RSTPReid release (dataset issue #2); "
            "the maintainers ask to re-download the current one (3701/200/200)"
        ]
    else:
        index.warnings = compare_published(index, PUBLISHED)
    return index
