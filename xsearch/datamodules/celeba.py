"""CelebA (``celeba``): aligned faces, identities, the official partition and 40 attributes, plus captions.

Layouts (docs/datasets.md#celeba), tried in this order:

* the official Drive layout: ``Img/img_align_celeba/``, ``Anno/identity_CelebA.txt``,
  ``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt``;
* torchvision's flat ``celeba/`` folder (``img_align_celeba/`` and the three txt files side by side),
  with ``root`` above it or at it.

The txt files are read as they are (CRLF, runs of spaces, the count + names header of the attribute
file and no header in the other two) and never rewritten (torchvision checks their MD5).

Images: ``pid`` is the raw CelebA identity (1-based). Split: the official partition (0/1/2 ->
train/val/test), whose identities are reported disjoint (checked, warned) and which is the only
split every caption source can use; ``split="source"`` takes the caption set's own split instead
(Multi-Modal-CelebA-HQ ``filenames.pickle`` train/test, Face2Text v2.1 train/dev/test), which is
not identity-disjoint for MM-CelebA-HQ.

CelebA has no captions of its own; ``captions`` picks a source (:data:`~xsearch.datamodules.celeba_captions.SOURCES`,
whose readers are in :mod:`xsearch.datamodules.celeba_captions`):

* ``mm_celeba_hq``: Multi-Modal-CelebA-HQ ``text/<hq>.txt`` (or ``celeba-caption/``), 10 lines each;
* ``celeba_dialog``: CelebA-Dialog ``text/captions_hq.json``, one ``overall_caption`` per image
  (the release lacks ``5380.jpg``: warned). Its attribute-wise captions ("He smiles slightly.")
  are not used as captions, since one of them fits thousands of people; the non-empty ones are
  kept in ``index.extras["attribute_captions"]`` (file name -> {attribute: text});
* ``face2text``: Face2Text v1.0+ records (``filename`` = CelebA file, ``description``): v2.1
  ``clean_{train,dev,test}_2.1.json``, else ``raw_2.1.json``, ``raw_2.0.jsonl``, ``raw.json`` (v1.0);
* ``attributes``: captions generated from the 40 attributes (:mod:`xsearch.face_captions`), seeded by
  file name so an image always gets the same ones;
* ``auto`` (default): the first of these found under ``root`` (or in ``caption_root``); the choice is
  in ``index.extras["caption_source"]`` and in the warnings.

The two HQ sets name images by CelebA-HQ number: ``CelebA-HQ-to-CelebA-mapping.txt`` (in the caption
folder or in ``root``) is the only route to the CelebA file, hence to identity and partition. With a
source covering a subset (HQ 30k, Face2Text 12k), only captioned images are indexed unless
``keep_uncaptioned``. The 40 attributes of the indexed images are in ``index.extras["attributes"]``
(:class:`FaceAttributes`). The synthetic face set (``synth_faces``) is written in the CelebA +
MM-CelebA-HQ layout and read by this parser.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from xsearch.datamodules.celeba_captions import SOURCES, Captions, SourceInput, choose_source
from xsearch.datamodules.files import DatasetFormatError, examples, parse_int, read_table
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, FaceAttributes, ImageRecord
from xsearch.face_captions import CELEBA_ATTRIBUTES
from xsearch.registry import DATASETS

PARTITIONS = {0: "train", 1: "val", 2: "test"}
"""``list_eval_partition.txt`` value -> split."""
PUBLISHED_IMAGES = {"train": 162770, "val": 19867, "test": 19962}
PUBLISHED_IDENTITIES = 10177
FULL_SIZE = 202599
Split = Literal["celeba", "source"]


# --------------------------------------------------------------------------------------
# the three CelebA txt files
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CelebAFiles:
    """Where one layout keeps the annotation files and the aligned images."""

    identity: Path
    attributes: Path
    partition: Path
    images: Path

    def under(self, root: Path) -> CelebAFiles:
        return CelebAFiles(root / self.identity, root / self.attributes, root / self.partition, root / self.images)

    def any_exists(self) -> bool:
        return any(p.exists() for p in (self.identity, self.attributes, self.partition, self.images))


def _flat(folder: str) -> CelebAFiles:
    base = Path(folder)
    return CelebAFiles(base / "identity_CelebA.txt", base / "list_attr_celeba.txt",
                       base / "list_eval_partition.txt", base / "img_align_celeba")


LAYOUTS = (
    CelebAFiles(Path("Anno/identity_CelebA.txt"), Path("Anno/list_attr_celeba.txt"),
                Path("Eval/list_eval_partition.txt"), Path("Img/img_align_celeba")),  # official Drive
    _flat("celeba"),  # torchvision, root above celeba/
    _flat("."),  # torchvision, root = celeba/
)


def locate(root: Path) -> CelebAFiles:
    """The first layout with any of its files under ``root`` (a missing file is then named when read)."""
    for layout in LAYOUTS:
        files = layout.under(root)
        if files.any_exists():
            return files
    raise DatasetFormatError(
        f"{root}: no CelebA files found (expected Anno/identity_CelebA.txt, Anno/list_attr_celeba.txt, "
        "Eval/list_eval_partition.txt and Img/img_align_celeba/, or torchvision's celeba/ folder holding them)"
    )


@dataclass
class CelebATable:
    """What the three txt files say, by file name in ``identity_CelebA.txt`` order."""

    files: CelebAFiles
    identity: dict[str, int]
    partition: dict[str, str]
    attributes: FaceAttributes
    warnings: list[str] = field(default_factory=list)


def _rows(path: Path, width: int, expected: str) -> list[tuple[int, list[str]]]:
    """``(line, fields)`` rows of a header-less table whose rows must have ``width`` fields."""
    rows = read_table(path)
    for line, fields in rows:
        if len(fields) != width:
            raise DatasetFormatError(f"{path}: line {line}: expected {expected}, got {len(fields)} fields")
    return rows


def _keyed(rows: list[tuple[int, list[str]]], path: Path, value: Callable[[list[str], int], Any]) -> dict[str, Any]:
    """``{file name: value(the other fields, line)}``; a file listed twice is an error."""
    out: dict[str, Any] = {}
    for line, (name, *fields) in rows:
        if name in out:
            raise DatasetFormatError(f"{path}: line {line}: {name} is listed a second time")
        out[name] = value(fields, line)
    return out


def read_identities(path: Path) -> dict[str, int]:
    """``identity_CelebA.txt``: ``<file> <identity>`` per line, no header."""
    rows = _rows(path, 2, "a file name and an identity")
    return _keyed(rows, path, lambda fields, line: parse_int(fields[0], path, line, "identity"))


def read_partition(path: Path) -> dict[str, str]:
    """``list_eval_partition.txt``: ``<file> <0|1|2>`` per line, no header -> split name."""

    def split(fields: list[str], line: int) -> str:
        number = parse_int(fields[0], path, line, "partition")
        if number not in PARTITIONS:
            raise DatasetFormatError(f"{path}: line {line}: partition should be 0, 1 or 2, got {number}")
        return PARTITIONS[number]

    return _keyed(_rows(path, 2, "a file name and a partition"), path, split)


_PLAIN_VALUES = frozenset(("1", "-1"))


def _attribute_row(values: list[str], path: Path, line: int) -> list[bool]:
    if _PLAIN_VALUES.issuperset(values):  # fast path: 8M values in the full file
        return list(map("1".__eq__, values))
    out = []
    for name, value in zip(CELEBA_ATTRIBUTES, values):
        number = parse_int(value, path, line, f"attribute {name!r}")
        if number not in (-1, 1):
            raise DatasetFormatError(f"{path}: line {line}: attribute {name!r} should be -1 or 1, got {number}")
        out.append(number == 1)
    return out


def _check_names(names: list[str], path: Path, line: int) -> None:
    if tuple(names) == CELEBA_ATTRIBUTES:
        return
    if len(names) != len(CELEBA_ATTRIBUTES):
        got = f"{len(names)} names"
    else:
        k = next(i for i, (a, b) in enumerate(zip(names, CELEBA_ATTRIBUTES)) if a != b)
        got = f"name {k + 1} is {names[k]!r} instead of {CELEBA_ATTRIBUTES[k]!r}"
    raise DatasetFormatError(f"{path}: line {line}: expected the 40 CelebA attribute names, got {got}")


def read_attributes(path: Path) -> tuple[FaceAttributes, list[str]]:
    """``list_attr_celeba.txt``: count line, names line, then ``<file>`` + 40 values in {-1, 1}."""
    rows = read_table(path)
    if len(rows) < 2:
        raise DatasetFormatError(f"{path}: expected an image count line and a line of the 40 attribute names")
    (count_line, count_fields), (names_line, names) = rows[:2]
    if len(count_fields) != 1:
        raise DatasetFormatError(f"{path}: line {count_line}: expected the image count, got {len(count_fields)} fields")
    count = parse_int(count_fields[0], path, count_line, "the image count")
    _check_names(names, path, names_line)
    width = len(CELEBA_ATTRIBUTES) + 1
    for line, fields in rows[2:]:
        if len(fields) != width:
            raise DatasetFormatError(
                f"{path}: line {line}: expected a file name and 40 values, got {len(fields)} fields")
    values = _keyed(rows[2:], path, lambda fields, line: _attribute_row(fields, path, line))
    table = FaceAttributes(CELEBA_ATTRIBUTES, {f: i for i, f in enumerate(values)},
                           np.array(list(values.values()), dtype=bool).reshape(len(values), len(CELEBA_ATTRIBUTES)))
    if count == len(values):
        return table, []
    return table, [f"{path.name}: line {count_line} says {count} images, the file lists {len(values)}"]


def _same_files(reference: dict[str, Any], reference_path: Path, other: dict[str, Any], path: Path) -> None:
    """``other`` must list exactly the files of ``reference`` (one line naming the first difference)."""
    missing = next((f for f in reference if f not in other), None)
    if missing is not None:
        raise DatasetFormatError(f"{path}: no row for {missing} (listed in {reference_path.name})")
    extra = next((f for f in other if f not in reference), None)
    if extra is not None:
        raise DatasetFormatError(f"{path}: {extra} is not listed in {reference_path.name}")


def read_table_files(files: CelebAFiles) -> CelebATable:
    """Read and cross-check the identity, partition and attribute files of one layout."""
    identity = read_identities(files.identity)
    partition = read_partition(files.partition)
    attributes, warnings = read_attributes(files.attributes)
    _same_files(identity, files.identity, partition, files.partition)
    _same_files(identity, files.identity, attributes.row, files.attributes)
    return CelebATable(files, identity, partition, attributes, warnings)


# --------------------------------------------------------------------------------------
# the index
# --------------------------------------------------------------------------------------
def _split_of(table: CelebATable, captions: Captions, source: str, split: Split) -> dict[str, str]:
    if split == "celeba":
        return table.partition
    if captions.split is None:
        raise DatasetFormatError(
            f"split='source': the {source} captions have no split of their own (MM-CelebA-HQ's "
            "{train,test}/filenames.pickle and Face2Text v2.1's clean files do); use split='celeba'"
        )
    return captions.split


def _shared_identities(images: list[ImageRecord]) -> list[str]:
    splits: dict[int, set[str]] = defaultdict(set)
    for image in images:
        splits[image.pid].add(image.split)
    shared = sorted(pid for pid, names in splits.items() if len(names) > 1)
    if not shared:
        return []
    return [f"{len(shared)} identities appear in more than one split, e.g. {examples(shared)} "
            "(the split is not identity-disjoint)"]


def published_warnings(partition: dict[str, str], identity: dict[str, int]) -> list[str]:
    """Differences from the published CelebA counts; only for the full 202,599-image set."""
    if len(identity) != FULL_SIZE:
        return []
    counts = Counter(partition.values())
    warnings = [f"{split}: {counts[split]} images differ from the published {n}"
                for split, n in PUBLISHED_IMAGES.items() if counts[split] != n]
    ids = len(set(identity.values()))
    if ids != PUBLISHED_IDENTITIES:
        warnings.append(f"{ids} identities differ from the published {PUBLISHED_IDENTITIES}")
    return warnings


def _coverage_warnings(table: CelebATable, captions: Captions, split_of: dict[str, str], source: str,
                       keep_uncaptioned: bool) -> list[str]:
    warnings = []
    captioned = sum(1 for name in table.identity if captions.texts.get(name))
    if captioned < len(table.identity):
        kept = ("the others are indexed without captions (gallery only)" if keep_uncaptioned
                else "only those are indexed (keep_uncaptioned=true adds the others as gallery-only images)")
        warnings.append(f"{source} captions cover {captioned} of {len(table.identity)} CelebA images: {kept}")
    wanted = [name for name in table.identity if keep_uncaptioned or captions.texts.get(name)]
    unsplit = sum(1 for name in wanted if name not in split_of)
    if unsplit:
        warnings.append(f"split='source': {unsplit} images are in none of the {source} split files (left out)")
    return warnings


def build_index(root: Path, table: CelebATable, captions: Captions, split_of: dict[str, str],
                per_image: int | None, keep_uncaptioned: bool) -> DatasetIndex:
    """Images in ``identity_CelebA.txt`` order that have a split (and a caption unless ``keep_uncaptioned``)."""
    images: list[ImageRecord] = []
    records: list[CaptionRecord] = []
    folder = os.fspath(table.files.images)  # string joins: 200k Path objects would cost seconds
    for file, pid in table.identity.items():
        split = split_of.get(file)
        texts = captions.texts.get(file, [])[:per_image]
        if split is None or not (texts or keep_uncaptioned):
            continue
        image = ImageRecord(len(images), os.path.join(folder, file), pid, split)
        images.append(image)
        records += [CaptionRecord(len(records) + k, image.index, text, pid, split) for k, text in enumerate(texts)]
    sources = [table.files.identity, table.files.attributes, table.files.partition, *captions.files]
    return DatasetIndex(name="celeba", root=root, images=images, captions=records, sources=sources)


@DATASETS.register("celeba")
def parse(
    root: str | Path,
    captions: str = "auto",
    caption_root: str | Path | None = None,
    captions_per_image: int | None = None,
    split: Split = "celeba",
    keep_uncaptioned: bool = False,
) -> DatasetIndex:
    """Parse a CelebA copy with one caption source (see the module docstring).

    Args:
        captions: ``auto`` (first found of mm_celeba_hq, celeba_dialog, face2text, else attributes)
            or one of those names.
        caption_root: folder of the caption set (relative to ``root`` unless absolute); default: the
            source's well-known folders under ``root`` (e.g. ``multi-modal-celeba/``, ``CelebA-Dialog/``,
            ``face2text/``, or ``root`` itself).
        captions_per_image: keep at most N captions of an image (None: all: MM-CelebA-HQ 10,
            CelebA-Dialog 1, Face2Text 1-5); for ``attributes``, how many to generate (default 2).
        split: ``celeba`` = the official, identity-disjoint partition; ``source`` = the caption set's own.
        keep_uncaptioned: also index images without captions (gallery-only distractors).
    """
    root = Path(root)
    if captions_per_image is not None and (isinstance(captions_per_image, bool) or captions_per_image < 1):
        raise DatasetFormatError(f"captions_per_image should be >= 1 or None, got {captions_per_image!r}")
    if split not in ("celeba", "source"):
        raise DatasetFormatError(f"split should be celeba or source, got {split!r}")
    table = read_table_files(locate(root))
    source, folder = choose_source(root, captions, root / caption_root if caption_root is not None else None)
    found = SOURCES[source].read(SourceInput(folder, root, table.identity, table.files.identity, table.attributes,
                                             captions_per_image))
    split_of = _split_of(table, found, source, split)
    index = build_index(root, table, found, split_of, captions_per_image, keep_uncaptioned)
    index.warnings = [
        *_auto_note(captions, source, folder, root), *table.warnings, *found.warnings,
        *_coverage_warnings(table, found, split_of, source, keep_uncaptioned),
        *_shared_identities(index.images), *published_warnings(table.partition, table.identity),
    ]
    indexed = [os.path.basename(image.file) for image in index.images]
    index.extras.update(found.extras, caption_source=source, caption_folder=str(folder),
                        attributes=table.attributes.select(indexed))
    return index


def _auto_note(captions: str, source: str, folder: Path, root: Path) -> list[str]:
    if captions != "auto":
        return []
    if not SOURCES[source].folders:
        return [f"captions='auto' found no caption set (Multi-Modal-CelebA-HQ, CelebA-Dialog, Face2Text) under "
                f"{root}: captions are generated from the 40 attributes"]
    return [f"captions='auto' uses {source} from {folder}"]


@DATASETS.register("synth_faces")
def parse_synth_faces(root: str | Path, **options: Any) -> DatasetIndex:
    """The synthetic face set: CelebA + Multi-Modal-CelebA-HQ layout, generated by ``xsearch data synth faces``."""
    index = parse(root, **options)
    index.name = "synth_faces"
    return index
