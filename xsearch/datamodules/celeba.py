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

CelebA has no captions of its own; ``captions`` picks a source (:data:`SOURCES`):

* ``mm_celeba_hq``: Multi-Modal-CelebA-HQ ``text/<hq>.txt`` (or ``celeba-caption/``), 10 lines each;
* ``celeba_dialog``: CelebA-Dialog ``text/captions_hq.json``, one ``overall_caption`` per image
  (the release lacks ``5380.jpg``: warned). Its attribute-wise captions ("He smiles slightly.")
  are not used as captions, since one of them fits thousands of people; the non-empty ones are
  kept in ``index.extras["attribute_captions"]`` (file name -> {attribute: text});
* ``face2text``: Face2Text v1.0+ records (``filename`` = CelebA file, ``description``): v2.1
  ``clean_{train,dev,test}_2.1.json``, else ``raw_2.1.json``, ``raw_2.0.jsonl``, ``raw.json`` (v1.0);
* ``attributes``: captions generated from the 40 attributes (:mod:`.face_captions`), seeded by
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

import io
import os
import pickle
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from xsearch.datamodules.face_captions import CELEBA_ATTRIBUTES, template_captions
from xsearch.datamodules.files import (
    DatasetFormatError, examples, expect_field, load_json, load_jsonl, parse_int, read_table, read_text,
)
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, FaceAttributes, ImageRecord
from xsearch.registry import DATASETS

PARTITIONS = {0: "train", 1: "val", 2: "test"}
"""``list_eval_partition.txt`` value -> split."""
PUBLISHED_IMAGES = {"train": 162770, "val": 19867, "test": 19962}
PUBLISHED_IDENTITIES = 10177
FULL_SIZE = 202599
HQ_MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
DEFAULT_TEMPLATE_CAPTIONS = 2
"""Generated captions per image when ``captions_per_image`` is unset (202,599 x 10 would be 2M records)."""
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
# caption sources
# --------------------------------------------------------------------------------------
@dataclass
class Captions:
    """What a caption source says, by CelebA file name; ``split`` is the source's own split, if any."""

    texts: dict[str, list[str]]
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    split: dict[str, str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceInput:
    """What a source reader gets: its folder, the dataset root and the parsed CelebA tables."""

    folder: Path
    root: Path
    table: CelebATable
    per_image: int | None


@dataclass(frozen=True)
class CaptionSource:
    """A caption set: well-known folders under root (``()`` = generated, needs no files), a marker, a reader."""

    folders: tuple[str, ...]
    expects: str
    present: Callable[[Path], bool]
    read: Callable[[SourceInput], Captions]


# -- CelebA-HQ numbering ----------------------------------------------------------------
_NUMBERED_TXT = re.compile(r"(\d+)\.txt")
MM_TEXT_DIRS = ("text", "celeba-caption")


def read_hq_mapping(path: Path) -> dict[int, str]:
    """``CelebA-HQ-to-CelebA-mapping.txt``: header ``idx orig_idx orig_file``, then HQ number -> CelebA file."""
    rows = read_table(path)
    if not rows or rows[0][1][:1] != ["idx"]:
        got = " ".join(rows[0][1]) if rows else "an empty file"
        raise DatasetFormatError(f"{path}: line 1: expected the header 'idx orig_idx orig_file', got {got!r}")
    mapping = {}
    for line, fields in rows[1:]:
        if len(fields) != 3:
            raise DatasetFormatError(
                f"{path}: line {line}: expected idx, orig_idx and orig_file, got {len(fields)} fields")
        parse_int(fields[1], path, line, "orig_idx")
        mapping[parse_int(fields[0], path, line, "idx")] = fields[2]
    return mapping


def _find_hq_mapping(folder: Path, root: Path) -> Path:
    for place in dict.fromkeys((folder, root)):
        if (place / HQ_MAPPING).is_file():
            return place / HQ_MAPPING
    elsewhere = f" (also looked in {root})" if root != folder else ""
    raise DatasetFormatError(
        f"{folder / HQ_MAPPING}: file not found{elsewhere}; it maps CelebA-HQ numbers to CelebA files")


def _to_celeba(by_hq: dict[int, Any], mapping: dict[int, str], mapping_path: Path, table: CelebATable,
               ) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """Re-key HQ-numbered values by CelebA file; returns (values, file -> HQ number, warnings)."""
    out, hq_of, unmapped, unknown = {}, {}, [], []
    for hq, value in by_hq.items():
        name = mapping.get(hq)
        if name is None:
            unmapped.append(hq)
        elif name not in table.identity:
            unknown.append(name)
        else:
            out[name], hq_of[name] = value, hq
    warnings = []
    if unmapped:
        warnings.append(
            f"{len(unmapped)} HQ images have no row in {mapping_path.name}, e.g. {examples(unmapped)} (left out)")
    if unknown:
        warnings.append(f"{len(unknown)} HQ images map to files not in {table.files.identity.name}, "
                        f"e.g. {examples(unknown)} (left out)")
    return out, hq_of, warnings


# -- Multi-Modal-CelebA-HQ ---------------------------------------------------------------
def _numbered_txt(folder: Path) -> dict[int, Path]:
    """``{N: folder/N.txt}`` in number order (one directory listing)."""
    with os.scandir(folder) as entries:
        found = {int(m.group(1)): folder / e.name for e in entries if (m := _NUMBERED_TXT.fullmatch(e.name))}
    return dict(sorted(found.items()))


def _mm_text_dir(folder: Path) -> Path | None:
    for name in MM_TEXT_DIRS:
        if (folder / name).is_dir() and _any_numbered_txt(folder / name):
            return folder / name
    return None


def _any_numbered_txt(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(_NUMBERED_TXT.fullmatch(e.name) for e in entries)


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only (lists, strings, numbers): a file list never needs code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to import {module}.{name}")


def load_pickle(path: Path) -> Any:
    """A plain-data pickle; Python-2-era pickles with non-ASCII bytes are retried as ``latin1``."""
    data = path.read_bytes()
    try:
        try:
            return _PlainUnpickler(io.BytesIO(data)).load()
        except UnicodeDecodeError:
            return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # noqa: BLE001  truncated or foreign pickles raise many types
        raise DatasetFormatError(f"{path}: cannot unpickle ({type(error).__name__}: {error})") from None


def _hq_numbers(path: Path) -> list[int]:
    """``filenames.pickle``: a list of image stems (``'123'``, maybe ``'123.jpg'`` or an int) -> HQ numbers."""
    values = load_pickle(path)
    if not isinstance(values, (list, tuple)):
        raise DatasetFormatError(f"{path}: expected a pickled list of image names, got {type(values).__name__}")
    numbers = []
    for i, value in enumerate(values):
        stem = Path(str(value).strip()).stem if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        if not stem.isdigit():
            raise DatasetFormatError(f"{path}: item {i}: expected an image number such as '123', got {value!r}")
        numbers.append(int(stem))
    return numbers


def _mm_split(folder: Path) -> tuple[dict[int, str], list[Path]]:
    """HQ number -> train/test from the optional ``{train,test}/filenames.pickle``."""
    split, read = {}, []
    for name in ("train", "test"):
        path = folder / name / "filenames.pickle"
        if path.is_file():
            split.update(dict.fromkeys(_hq_numbers(path), name))
            read.append(path)
    return split, read


def _caption_lines(path: Path) -> list[str]:
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def read_mm_celeba_hq(given: SourceInput) -> Captions:
    """Multi-Modal-CelebA-HQ: ``text/<hq>.txt`` (one caption a line) + the HQ mapping (+ split pickles)."""
    text_dir = _mm_text_dir(given.folder)
    assert text_dir is not None  # checked by present()
    mapping_path = _find_hq_mapping(given.folder, given.root)
    mapping = read_hq_mapping(mapping_path)
    text_files = _numbered_txt(text_dir)
    by_hq = {hq: _caption_lines(path) for hq, path in text_files.items()}
    texts, hq_of, warnings = _to_celeba(by_hq, mapping, mapping_path, given.table)
    hq_split, pickles = _mm_split(given.folder)
    split = {name: hq_split[hq] for name, hq in hq_of.items() if hq in hq_split} if pickles else None
    return Captions(texts, [text_dir, *text_files.values(), mapping_path, *pickles], warnings, split,
                    {"hq_index": hq_of})


# -- CelebA-Dialog ----------------------------------------------------------------------
DIALOG_FILE = Path("text") / "captions_hq.json"


def _attribute_wise(record: dict, where: str) -> dict[str, str]:
    """The non-empty attribute-wise captions of one record (the field is optional)."""
    if "attribute_wise_captions" not in record:
        return {}
    captions = expect_field(record, "attribute_wise_captions", dict, where)
    for name, text in captions.items():
        if not isinstance(text, str):
            raise DatasetFormatError(
                f"{where}: attribute_wise_captions[{name!r}] should be str, got {type(text).__name__}")
    return {name: text.strip() for name, text in captions.items() if text.strip()}


def _hq_key(key: str, where: str) -> int:
    stem = key[:-4] if key.endswith(".jpg") else ""
    if not stem.isdigit():
        raise DatasetFormatError(f"{where}: expected a key such as '123.jpg'")
    return int(stem)


def read_celeba_dialog(given: SourceInput) -> Captions:
    """CelebA-Dialog: ``text/captions_hq.json`` ``"<hq>.jpg" -> {overall_caption, attribute_wise_captions}``."""
    path = given.folder / DIALOG_FILE
    records = load_json(path, dict)
    mapping_path = _find_hq_mapping(given.folder, given.root)
    mapping = read_hq_mapping(mapping_path)
    by_hq: dict[int, tuple[list[str], dict[str, str]]] = {}
    for key, record in records.items():
        where = f"{path}: key {key!r}"
        overall = expect_field(record, "overall_caption", str, where).strip()
        by_hq[_hq_key(key, where)] = ([overall] if overall else [], _attribute_wise(record, where))
    found, hq_of, warnings = _to_celeba(by_hq, mapping, mapping_path, given.table)
    absent = [f"{hq}.jpg" for hq, name in sorted(mapping.items()) if hq not in by_hq and name in given.table.identity]
    if absent:
        warnings.append(f"{path.name} has no entry for {len(absent)} mapped HQ images, e.g. {examples(absent)} "
                        "(the release lacks 5380.jpg; these images have no caption)")
    texts = {name: overall for name, (overall, _) in found.items()}
    attribute_wise = {name: per_attribute for name, (_, per_attribute) in found.items() if per_attribute}
    return Captions(texts, [path, mapping_path], warnings, None,
                    {"hq_index": hq_of, "attribute_captions": attribute_wise})


# -- Face2Text ----------------------------------------------------------------------------
FACE2TEXT_VERSIONS: tuple[tuple[tuple[str, ...], tuple[str, ...] | None], ...] = (
    (("clean_train_2.1.json", "clean_dev_2.1.json", "clean_test_2.1.json"), ("train", "val", "test")),
    (("raw_2.1.json",), None),
    (("raw_2.0.jsonl",), None),
    (("raw.json",), None),  # v1.0; v0.1's raw.json describes LFW and is refused
)
"""Face2Text files (v1.0+, CelebA images) in order of preference, with the split of each file."""


def _face2text_records(path: Path) -> list[tuple[str, Any]]:
    """``(where, record)`` of a JSON list or a JSON Lines file."""
    if path.suffix == ".jsonl":
        return [(f"{path}: line {line}", record) for line, record in load_jsonl(path)]
    return [(f"{path}: record {i}", record) for i, record in enumerate(load_json(path, list))]


def _face2text_description(record: Any, where: str) -> tuple[str, str]:
    """``(CelebA file name, description with whitespace collapsed)`` of one per-description record."""
    if isinstance(record, dict) and "image" in record and "filename" not in record:
        raise DatasetFormatError(f"{where}: this is Face2Text v0.1 (field 'image': LFW images); "
                                 "only v1.0+ describes CelebA images")
    name = Path(expect_field(record, "filename", str, where)).name
    return name, " ".join(expect_field(record, "description", str, where).split())


def read_face2text(given: SourceInput) -> Captions:
    """Face2Text v1.0+: one record per description, grouped by ``filename`` (file order kept)."""
    files, splits = next((f, s) for f, s in FACE2TEXT_VERSIONS if (given.folder / f[0]).is_file())
    paths = [given.folder / name for name in files]
    texts: dict[str, list[str]] = defaultdict(list)
    split: dict[str, str] = {}
    empty, unknown = 0, []
    for k, path in enumerate(paths):
        for where, record in _face2text_records(path):
            name, text = _face2text_description(record, where)
            if name not in given.table.identity:
                unknown.append(name)
            elif not text:
                empty += 1
            else:
                texts[name].append(text)
                if splits:
                    split.setdefault(name, splits[k])
    warnings = [f"{empty} empty Face2Text descriptions skipped"] if empty else []
    if unknown:
        warnings.append(f"{len(unknown)} Face2Text descriptions name files not in {given.table.files.identity.name}, "
                        f"e.g. {examples(unknown)} (left out)")
    return Captions(dict(texts), paths, warnings, split if splits else None)


# -- templates ----------------------------------------------------------------------------
def read_attribute_templates(given: SourceInput) -> Captions:
    """Captions generated from each image's 40 attributes (``captions_per_image`` of them, default 2)."""
    n = given.per_image or DEFAULT_TEMPLATE_CAPTIONS
    attributes = given.table.attributes
    texts = {name: template_captions(attributes.of(name), name, n) for name in given.table.identity}
    return Captions(texts, [])


SOURCES: dict[str, CaptionSource] = {
    "mm_celeba_hq": CaptionSource(
        ("multi-modal-celeba", "Multi-Modal-CelebA-HQ", "MM-CelebA-HQ", "."),
        "text/<N>.txt or celeba-caption/<N>.txt", lambda folder: _mm_text_dir(folder) is not None, read_mm_celeba_hq),
    "celeba_dialog": CaptionSource(
        ("CelebA-Dialog", "celeba-dialog", "."), str(DIALOG_FILE),
        lambda folder: (folder / DIALOG_FILE).is_file(), read_celeba_dialog),
    "face2text": CaptionSource(
        ("face2text", "Face2Text", "."), "clean_train_2.1.json, raw_2.1.json, raw_2.0.jsonl or raw.json",
        lambda folder: any((folder / files[0]).is_file() for files, _ in FACE2TEXT_VERSIONS), read_face2text),
    "attributes": CaptionSource((), "nothing (generated)", lambda folder: True, read_attribute_templates),
}
"""Caption sources by name, in the order ``captions="auto"`` tries them."""


def _candidates(root: Path, names: list[str], caption_root: Path | None) -> list[tuple[str, Path]]:
    """``(source, folder)`` pairs to try, in order."""
    pairs = []
    for name in names:
        folders = SOURCES[name].folders
        if not folders:
            pairs.append((name, root))
        else:
            pairs += [(name, caption_root)] if caption_root else [(name, root / f) for f in folders]
    return pairs


def choose_source(root: Path, captions: str, caption_root: Path | None) -> tuple[str, Path]:
    """The caption source and its folder: ``captions`` itself, or the first found for ``auto``."""
    if captions != "auto" and captions not in SOURCES:
        raise DatasetFormatError(f"captions should be auto or one of {', '.join(SOURCES)}, got {captions!r}")
    names = list(SOURCES) if captions == "auto" else [captions]
    candidates = _candidates(root, names, caption_root)
    found = next(((n, f) for n, f in candidates if f.is_dir() and SOURCES[n].present(f)), None)
    if found is None:
        source = SOURCES[captions]
        places = "" if caption_root else " in " + ", ".join(f"{f}/" if f != "." else "the root" for f in source.folders)
        raise DatasetFormatError(
            f"{caption_root or root}: no {captions} captions found{places} (expected {source.expects})"
        )
    return found


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
    found = SOURCES[source].read(SourceInput(folder, root, table, captions_per_image))
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
