"""CelebA's caption sources: the readers of Multi-Modal-CelebA-HQ, CelebA-Dialog and Face2Text, and the attribute templates.

Each reader gets a :class:`SourceInput` (its folder, the dataset root, the CelebA files listed in
``identity_CelebA.txt``, their 40 attributes) and returns :class:`Captions` keyed by CelebA file name;
:data:`SOURCES` lists them in the order ``captions="auto"`` tries them and :func:`choose_source` picks one.
The two HQ sets name images by CelebA-HQ number and reach the CelebA files through
``CelebA-HQ-to-CelebA-mapping.txt``. The ``celeba`` parser (:mod:`xsearch.datamodules.celeba`) reads the
CelebA txt files, calls one reader and builds the index.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from xsearch.datamodules.files import (
    DatasetFormatError, examples, expect_field, load_json, load_jsonl, parse_int, read_table, read_text,
)
from xsearch.datamodules.records import FaceAttributes
from xsearch.face_captions import template_captions

HQ_MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
DEFAULT_TEMPLATE_CAPTIONS = 2
"""Generated captions per image when ``captions_per_image`` is unset (202,599 x 10 would be 2M records)."""


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
    """What a source reader gets: its folder, the dataset root, the CelebA files (``identity_CelebA.txt``: file name
    -> identity, in file order; ``identity_file`` is its path) and their 40 attributes."""

    folder: Path
    root: Path
    identity: dict[str, int]
    identity_file: Path
    attributes: FaceAttributes
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


def _to_celeba(by_hq: dict[int, Any], mapping: dict[int, str], mapping_path: Path, given: SourceInput,
               ) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """Re-key HQ-numbered values by CelebA file; returns (values, file -> HQ number, warnings)."""
    out, hq_of, unmapped, unknown = {}, {}, [], []
    for hq, value in by_hq.items():
        name = mapping.get(hq)
        if name is None:
            unmapped.append(hq)
        elif name not in given.identity:
            unknown.append(name)
        else:
            out[name], hq_of[name] = value, hq
    warnings = []
    if unmapped:
        warnings.append(
            f"{len(unmapped)} HQ images have no row in {mapping_path.name}, e.g. {examples(unmapped)} (left out)")
    if unknown:
        warnings.append(f"{len(unknown)} HQ images map to files not in {given.identity_file.name}, "
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
    texts, hq_of, warnings = _to_celeba(by_hq, mapping, mapping_path, given)
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
    found, hq_of, warnings = _to_celeba(by_hq, mapping, mapping_path, given)
    absent = [f"{hq}.jpg" for hq, name in sorted(mapping.items()) if hq not in by_hq and name in given.identity]
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
            if name not in given.identity:
                unknown.append(name)
            elif not text:
                empty += 1
            else:
                texts[name].append(text)
                if splits:
                    split.setdefault(name, splits[k])
    warnings = [f"{empty} empty Face2Text descriptions skipped"] if empty else []
    if unknown:
        warnings.append(f"{len(unknown)} Face2Text descriptions name files not in {given.identity_file.name}, "
                        f"e.g. {examples(unknown)} (left out)")
    return Captions(dict(texts), paths, warnings, split if splits else None)


# -- templates ----------------------------------------------------------------------------
def read_attribute_templates(given: SourceInput) -> Captions:
    """Captions generated from each image's 40 attributes (``captions_per_image`` of them, default 2)."""
    n = given.per_image or DEFAULT_TEMPLATE_CAPTIONS
    attributes = given.attributes
    texts = {name: template_captions(attributes.of(name), name, n) for name in given.identity}
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

