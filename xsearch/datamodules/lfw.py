"""LFW (Labeled Faces in the Wild) as a text-to-face retrieval set, plus its verification pairs.

Official layout (docs/datasets.md#lfw)::

    <root>/lfw/<Name>/<Name>_<NNNN>.jpg          or lfw-deepfunneled/, lfw_funneled/ (same names)
    <root>/people.txt  pairs.txt                  View 2: 10 identity-disjoint folds
    <root>/peopleDevTrain.txt  peopleDevTest.txt  pairsDevTrain.txt  pairsDevTest.txt   View 1
    <root>/lfw_attributes.txt                     Kumar et al. attribute scores (default captions)
    <root>/face2text/clean.json (or raw.json)     Face2Text v0.1 descriptions (optional)

Images come from the people lists (``Name/Name_%04d.jpg`` for 1..num_images, never from folder
listings); identities are numbered in sorted name order, names kept in ``identity_names``.
Splits are identity-disjoint: View 2 folds (``test_fold``, ``val_fold``, the rest train; default)
or View 1 DevTrain/DevTest (no val: the datamodule validates on test). Evaluation identities with
a single image are left out (gallery and queries come from people with >= 2 images); train keeps
them. Captions are two verbalisations of the attribute scores per image
(:mod:`xsearch.datamodules.lfw_captions`); Face2Text v0.1 texts replace them for the images they
describe; images with neither stay in the index as gallery-only images. The pairs files present
are parsed into ``extras["pairs"]`` (:class:`VerificationPairs`) for face verification; the attribute
scores, binarised (score > 0), into ``extras["attributes"]`` (:class:`FaceAttributes`, keyed ``Name/Name_NNNN.jpg``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Literal

import numpy as np

from xsearch.datamodules.files import (
    DatasetFormatError, examples, expect_field, find_existing, load_json_list, parse_float, parse_int, read_table, require_dir,
)
from xsearch.datamodules.lfw_captions import attribute_captions
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, FaceAttributes, ImageRecord
from xsearch.registry import DATASETS

Protocol = Literal["view2", "view1"]

IMAGE_DIRS = ("lfw", "lfw-deepfunneled", "lfw_funneled")
"""Image folders in the order tried: the original images first, then the aligned variants."""
PEOPLE_VIEW2 = "people.txt"
PEOPLE_VIEW1 = {"train": "peopleDevTrain.txt", "test": "peopleDevTest.txt"}
PAIRS_FILES = {"view2": "pairs.txt", "view1_train": "pairsDevTrain.txt", "view1_test": "pairsDevTest.txt"}
"""``extras["pairs"]`` key -> pairs file."""
FACE2TEXT_DEFAULT = "face2text"
FACE2TEXT_FILES = ("clean.json", "raw.json")
"""Face2Text v0.1 files in order of preference (``raw.json`` keeps junk texts)."""
MIN_EVAL_IMAGES = 2
PUBLISHED = (5749, 13233)
"""People and images in the full LFW."""
PAIR_FIELDS = {3: (0, 1, 0, 2), 4: (0, 1, 2, 3)}
"""Fields per pair line -> positions of (name 1, image 1, name 2, image 2): 3 = same person, 4 = different."""


@dataclass(frozen=True)
class Person:
    """One ``Name<TAB>num_images`` row of a people list, the split it lands in and where it was read."""

    name: str
    images: int
    split: str
    source: Path
    line: int


@dataclass(eq=False)
class VerificationPairs:
    """The pairs of one LFW pairs file as parallel sequences, one entry per pair line in file order.

    ``first``/``second`` are the two image paths (built from the line's indices under the selected
    image folder); ``same`` is True for a 3-field (same person) line and False for a 4-field one;
    ``fold`` is the 0-based fold (line position // (2 x pairs per class)); View 1 files have fold 0.
    """

    source: Path
    first: list[Path]
    second: list[Path]
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.same)

    @property
    def num_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self.fold) else 0


# --------------------------------------------------------------------------------------
# people lists
# --------------------------------------------------------------------------------------
class _Rows:
    """The non-blank rows of a whitespace-separated file, taken in order; errors name file and line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = read_table(path)
        self.position = 0

    def take(self, expected: str) -> tuple[int, list[str]]:
        if self.position >= len(self.rows):
            place = f"file ends after line {self.rows[-1][0]}" if self.rows else "empty file"
            raise DatasetFormatError(f"{self.path}: {place}, expected {expected} (truncated file?)")
        self.position += 1
        return self.rows[self.position - 1]

    def count(self, what: str) -> int:
        line, fields = self.take(what)
        if len(fields) != 1:
            got = " ".join(fields)
            raise DatasetFormatError(f"{self.path}: line {line}: expected {what} (one integer), got {got!r}")
        return parse_int(fields[0], self.path, line, what)

    def end(self, after: str) -> None:
        if self.position < len(self.rows):
            line, fields = self.rows[self.position]
            got = " ".join(fields)
            raise DatasetFormatError(
                f"{self.path}: line {line}: expected the end of the file after {after}, got {got!r}"
            )


def _person_row(rows: _Rows, where: str) -> tuple[int, str, int]:
    line, fields = rows.take(f"'Name<TAB>num_images' ({where})")
    if len(fields) != 2:
        got = " ".join(fields)
        raise DatasetFormatError(
            f"{rows.path}: line {line}: expected 'Name<TAB>num_images' ({where}), got {len(fields)} field(s) {got!r}"
        )
    number = parse_int(fields[1], rows.path, line, "num_images")
    if number < 1:
        raise DatasetFormatError(f"{rows.path}: line {line}: num_images should be >= 1, got {number}")
    return line, fields[0], number


def read_people(path: Path, folded: bool) -> list[list[tuple[int, str, int]]]:
    """``(line, name, num_images)`` blocks: one per fold (``people.txt``) or a single one (``peopleDev*.txt``).

    ``people.txt``: the fold count, then per fold a count line and that many rows; the dev lists:
    a count line and the rows.
    """
    rows = _Rows(path)
    folds = rows.count("the number of folds") if folded else 1
    blocks = []
    for fold in range(folds):
        where = f"fold {fold} of {folds}" if folded else "the list"
        size = rows.count(f"the number of people in {where}")
        blocks.append([_person_row(rows, f"person {k + 1} of {size} in {where}") for k in range(size)])
    rows.end(f"{folds} folds (the count on the first line)" if folded else f"the {size} people of the count line")
    return blocks


def _required(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: {what} not found")
    return path


def _check_folds(path: Path, folds: int, test_fold: int, val_fold: int | None) -> None:
    for option, value in (("test_fold", test_fold), ("val_fold", val_fold)):
        if value is not None and not 0 <= value < folds:
            raise DatasetFormatError(
                f"{option} should be in 0..{folds - 1} ({path.name} has {folds} folds), got {value}"
            )
    if val_fold == test_fold:
        raise DatasetFormatError(f"val_fold and test_fold should differ, both are {test_fold}")


def _view2_people(root: Path, test_fold: int, val_fold: int | None) -> list[Person]:
    """People of ``people.txt``: fold ``test_fold`` -> test, ``val_fold`` -> val, the others -> train."""
    path = _required(root / PEOPLE_VIEW2, "LFW View 2 people list (10 folds)")
    blocks = read_people(path, folded=True)
    _check_folds(path, len(blocks), test_fold, val_fold)
    role = {test_fold: "test", val_fold: "val"}
    return [
        Person(name, number, role.get(fold, "train"), path, line)
        for fold, block in enumerate(blocks) for line, name, number in block
    ]


def _view1_people(root: Path, test_fold: int, val_fold: int | None) -> list[Person]:
    """People of ``peopleDevTrain.txt`` (train) and ``peopleDevTest.txt`` (test); the fold options do not apply."""
    people = []
    for split, name in PEOPLE_VIEW1.items():
        path = _required(root / name, "LFW View 1 people list")
        (block,) = read_people(path, folded=False)
        people += [Person(person, number, split, path, line) for line, person, number in block]
    return people


PROTOCOLS: dict[str, Callable[[Path, int, int | None], list[Person]]] = {"view2": _view2_people, "view1": _view1_people}


def _check_unique(people: list[Person]) -> None:
    seen: dict[str, Person] = {}
    for person in people:
        if person.name in seen:
            first = seen[person.name]
            raise DatasetFormatError(
                f"{person.source}: line {person.line}: {person.name!r} is already listed on line {first.line} of "
                f"{first.source.name} (a person belongs to one fold only)"
            )
        seen[person.name] = person


# --------------------------------------------------------------------------------------
# images and splits
# --------------------------------------------------------------------------------------
def image_path(image_root: Path, name: str, number: int) -> Path:
    """``<image_root>/Name/Name_%04d.jpg`` (1-based image number)."""
    return image_root / name / f"{name}_{number:04d}.jpg"


def _image_root(root: Path, image_dir: str | None) -> Path:
    if image_dir is not None:
        return require_dir(root / image_dir, "LFW image folder (option image_dir)")
    return find_existing(root, IMAGE_DIRS, "LFW image folder")


def _images(people: list[Person], image_root: Path, pids: dict[str, int]) -> tuple[list[ImageRecord], list[str]]:
    """Every image of every person in list order, except val/test people with a single image (warned)."""
    images: list[ImageRecord] = []
    listed: Counter[str] = Counter(p.split for p in people)
    dropped: Counter[str] = Counter()
    for person in people:
        if person.split != "train" and person.images < MIN_EVAL_IMAGES:
            dropped[person.split] += 1
            continue
        for number in range(1, person.images + 1):
            path = image_path(image_root, person.name, number)
            images.append(ImageRecord(len(images), path, pids[person.name], person.split))
    warnings = [
        f"{split}: {count} of {listed[split]} identities have a single image and are left out of the gallery and "
        f"queries (evaluation identities need >= {MIN_EVAL_IMAGES} images; train keeps its single-image identities)"
        for split, count in sorted(dropped.items())
    ]
    return images, warnings


def _published(people: list[Person]) -> list[str]:
    listed = (len(people), sum(p.images for p in people))
    if listed == PUBLISHED:
        return []
    files = ", ".join(sorted({p.source.name for p in people}))
    full = f"{PUBLISHED[0]:,} / {PUBLISHED[1]:,}"
    return [f"{files}: {listed[0]:,} people / {listed[1]:,} images listed; the full LFW has {full}"]


# --------------------------------------------------------------------------------------
# verification pairs
# --------------------------------------------------------------------------------------
def _pairs_header(path: Path, line: int, fields: list[str]) -> tuple[int, int]:
    """``(folds, pairs per class)`` from ``10<TAB>300`` (pairs.txt) or ``1100`` (pairsDev*.txt)."""
    if len(fields) in (1, 2) and all(f.isdigit() and int(f) > 0 for f in fields):
        return (1, int(fields[0])) if len(fields) == 1 else (int(fields[0]), int(fields[1]))
    raise DatasetFormatError(
        f"{path}: line {line}: expected the header '<folds><TAB><pairs per class>' such as '10 300' "
        f"(or '<pairs per class>' such as '1100' in pairsDev*.txt), got {' '.join(fields)!r}"
    )


def _pair_image(path: Path, line: int, name: str, number: str, image_root: Path, counts: dict[str, int]) -> Path:
    index = parse_int(number, path, line, f"image number of {name!r}")
    if name not in counts:
        raise DatasetFormatError(f"{path}: line {line}: {name!r} is not in the people list")
    if not 1 <= index <= counts[name]:
        raise DatasetFormatError(
            f"{path}: line {line}: {name!r} has no image {index} (the people list gives {counts[name]})"
        )
    return image_path(image_root, name, index)


def read_pairs(path: Path, image_root: Path, counts: dict[str, int]) -> VerificationPairs:
    """Parse a pairs file; ``counts`` (name -> num_images) validates names and image numbers."""
    rows = read_table(path)
    if not rows:
        raise DatasetFormatError(f"{path}: empty file, expected a header such as '10 300'")
    (header_line, header), body = rows[0], rows[1:]
    folds, per_class = _pairs_header(path, header_line, header)
    expected = 2 * folds * per_class
    if len(body) != expected:
        hint = " (truncated file?)" if len(body) < expected else ""
        raise DatasetFormatError(
            f"{path}: line {header_line}: header {' '.join(header)!r} promises {expected} pair lines "
            f"({folds} fold(s) x 2 x {per_class}), found {len(body)}{hint}"
        )
    first, second, same = [], [], []
    for line, fields in body:
        if len(fields) not in PAIR_FIELDS:
            raise DatasetFormatError(
                f"{path}: line {line}: expected 'Name idx1 idx2' (same person, 3 fields) or 'Name1 idx1 Name2 idx2' "
                f"(different people, 4 fields), got {len(fields)} fields"
            )
        a, i, b, j = (fields[k] for k in PAIR_FIELDS[len(fields)])
        first.append(_pair_image(path, line, a, i, image_root, counts))
        second.append(_pair_image(path, line, b, j, image_root, counts))
        same.append(len(fields) == 3)
    fold = np.arange(expected) // (2 * per_class)
    return VerificationPairs(path, first, second, np.array(same, dtype=bool), fold)


def _all_pairs(root: Path, image_root: Path, people: list[Person]) -> tuple[dict[str, VerificationPairs], list[str]]:
    """Every pairs file present, by ``PAIRS_FILES`` key; a warning when there is none."""
    counts = {p.name: p.images for p in people}
    pairs = {
        key: read_pairs(root / name, image_root, counts) for key, name in PAIRS_FILES.items() if (root / name).is_file()
    }
    if pairs:
        return pairs, []
    files = ", ".join(PAIRS_FILES.values())
    return pairs, [f"no {files} in {root}: no face-verification pairs (extras['pairs'] is empty)"]


# --------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------
def _image_key(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def _attribute_header(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[int, tuple[str, ...]]:
    """Position of the header among ``rows`` (the last leading ``#`` row) and its attribute names."""
    comments = 0
    while comments < len(rows) and rows[comments][1][0].startswith("#"):
        comments += 1
    line, fields = rows[max(comments - 1, 0)] if rows else (1, [])
    names = [f for f in (fields[0].lstrip("#").strip(), *fields[1:]) if f] if comments else []
    if [n.lower() for n in names[:2]] == ["person", "imagenum"] and len(names) > 2:
        return comments - 1, tuple(names[2:])
    raise DatasetFormatError(
        f"{path}: line {line}: expected the '#'-prefixed header '#<TAB>person<TAB>imagenum<TAB><attribute names>', "
        f"got {' '.join(fields)[:60]!r}"
    )


def _attribute_row(path: Path, line: int, fields: list[str], names: tuple[str, ...]) -> tuple[str, tuple[float, ...]]:
    """``(image key, scores)`` of one ``Person Name<TAB>imagenum<TAB><scores>`` row (spaces -> underscores)."""
    while fields and not fields[-1]:  # trailing tabs
        fields = fields[:-1]
    if len(fields) != len(names) + 2:
        raise DatasetFormatError(
            f"{path}: line {line}: expected {len(names) + 2} tab-separated fields (person, imagenum and the "
            f"{len(names)} scores named in the header), got {len(fields)}"
        )
    name = "_".join(fields[0].split())
    number = parse_int(fields[1], path, line, "imagenum")
    scores = tuple(parse_float(value, path, line, f"attribute {a!r}") for a, value in zip(names, fields[2:]))
    return _image_key(name, number), scores


def read_attributes(path: Path) -> tuple[tuple[str, ...], dict[str, tuple[float, ...]], int]:
    """Attribute names, scores per image key ``Name/Name_NNNN.jpg`` (first row wins) and the number of repeated rows."""
    rows = read_table(path, sep="\t")
    header_at, names = _attribute_header(path, rows)
    scores: dict[str, tuple[float, ...]] = {}
    repeated = 0
    for line, fields in rows[header_at + 1:]:
        key, values = _attribute_row(path, line, fields, names)
        repeated += key in scores
        scores.setdefault(key, values)
    return names, scores, repeated


def _attribute_texts(path: Path, keys: dict[str, int]) -> tuple[dict[int, list[str]], list[str], FaceAttributes]:
    """Image index -> two attribute captions, for the images (``keys``: image key -> index) with a row;
    warnings; and the binarised table (score > 0, names with ``_`` for spaces as in CelebA) by image key."""
    names, scores, repeated = read_attributes(path)
    texts = {index: attribute_captions(dict(zip(names, scores[key]))) for key, index in keys.items() if key in scores}
    indexed = [key for key in keys if key in scores]
    table = FaceAttributes(
        tuple(name.replace("'", "").replace(" ", "_") for name in names), {key: i for i, key in enumerate(indexed)},
        np.array([scores[key] for key in indexed], dtype=np.float64).reshape(len(indexed), len(names)) > 0,
    )
    warnings = [f"{path.name}: {repeated} repeated rows (the first one of each image is used)"] if repeated else []
    missing = [key for key in keys if key not in scores]
    if missing:
        warnings.append(
            f"{path.name} has no row for {len(missing)} of {len(keys)} images, e.g. {examples(missing)} "
            "(they get Face2Text captions where it has them, else they are gallery-only)"
        )
    return texts, warnings, table


def _face2text_file(root: Path, location: str | None) -> Path | None:
    """The Face2Text v0.1 file to read: ``location`` is a file or folder under root; the default may be absent."""
    if location is None:
        return None
    path = root / location
    if path.is_dir():
        return find_existing(path, FACE2TEXT_FILES, "Face2Text v0.1 file")
    if path.is_file():
        return path
    if location == FACE2TEXT_DEFAULT:
        return None
    raise DatasetFormatError(f"{path}: Face2Text v0.1 file or folder (option face2text) not found")


def read_face2text(path: Path) -> dict[str, list[str]]:
    """Face2Text v0.1: image key (``.bmp`` -> ``.jpg``) -> texts, whitespace collapsed, empty ones dropped."""
    texts: dict[str, list[str]] = {}
    for number, record in enumerate(load_json_list(path)):
        where = f"{path}: record {number}"
        if isinstance(record, dict) and "filename" in record and "image" not in record:
            raise DatasetFormatError(
                f"{where}: field 'filename' instead of 'image': this is Face2Text v1.0 or later, which describes "
                "CelebA images (use it with the celeba dataset); only v0.1 describes LFW"
            )
        image = PurePosixPath(expect_field(record, "image", str, where).replace("\\", "/"))
        key = "/".join(image.with_suffix(".jpg").parts[-2:])
        for k, description in enumerate(expect_field(record, "descriptions", list, where)):
            text = " ".join(expect_field(description, "text", str, f"{where}: description {k}").split())
            if text:
                texts.setdefault(key, []).append(text)
    return texts


def _face2text_texts(path: Path, keys: dict[str, int]) -> tuple[dict[int, list[str]], list[str]]:
    """Image index -> Face2Text descriptions; a warning names descriptions of images not in the index."""
    texts = read_face2text(path)
    outside = [key for key in texts if key not in keys]
    warnings = [
        f"{path.name}: {len(outside)} of {len(texts)} described images are not in the index, e.g. {examples(outside)} "
        "(not in the people list, or single-image evaluation identities)"
    ] if outside else []
    return {keys[key]: lines for key, lines in texts.items() if key in keys}, warnings


def _texts(
    root: Path, images: list[ImageRecord], attributes: str | None, face2text: str | None,
) -> tuple[dict[int, list[str]], list[str], list[Path], dict[str, FaceAttributes]]:
    """Image index -> caption texts (Face2Text over attribute captions), warnings, the files read, and
    ``{"attributes": table}`` when the attribute file was read."""
    keys = {f"{r.path.parent.name}/{r.path.name}": r.index for r in images}
    texts: dict[int, list[str]] = {}
    warnings: list[str] = []
    sources: list[Path] = []
    extras: dict[str, FaceAttributes] = {}
    if attributes is not None:
        source = _required(root / attributes, "LFW attribute file (set dataset_options.attributes=null to go without)")
        texts, warnings, extras["attributes"] = _attribute_texts(source, keys)
        sources.append(source)
    if (source := _face2text_file(root, face2text)) is not None:
        described, face2text_warnings = _face2text_texts(source, keys)
        texts.update(described)
        warnings += face2text_warnings
        sources += [source, source.parent]
    return texts, warnings, sources, extras


def _captions(images: list[ImageRecord], texts: dict[int, list[str]]) -> list[CaptionRecord]:
    captions: list[CaptionRecord] = []
    for image in images:
        for text in texts.get(image.index, []):
            captions.append(CaptionRecord(len(captions), image.index, text, image.pid, image.split))
    return captions


# --------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------
@DATASETS.register("lfw")
def parse(
    root: str | Path,
    protocol: Protocol = "view2",
    test_fold: int = 0,
    val_fold: int | None = 1,
    image_dir: str | None = None,
    attributes: str | None = "lfw_attributes.txt",
    face2text: str | None = FACE2TEXT_DEFAULT,
) -> DatasetIndex:
    """Parse an LFW copy (see the module docstring).

    Args:
        protocol: ``view2`` (people.txt folds: ``test_fold`` -> test, ``val_fold`` -> val, the rest
            train) or ``view1`` (peopleDevTrain.txt -> train, peopleDevTest.txt -> test, no val).
        test_fold, val_fold: 0-based folds of people.txt (View 2 only); ``val_fold=None``: no val split.
        image_dir: ``lfw``, ``lfw-deepfunneled`` or ``lfw_funneled``; None = the first present in that order.
        attributes: attribute-score file under root (the default captions); None = no attribute captions.
        face2text: Face2Text v0.1 file, or folder holding clean.json / raw.json, under root; the default
            folder is used when present; None = ignore Face2Text.
    """
    root = Path(root)
    if protocol not in PROTOCOLS:
        raise DatasetFormatError(f"protocol should be {' or '.join(PROTOCOLS)}, got {protocol!r}")
    people = PROTOCOLS[protocol](root, test_fold, val_fold)
    _check_unique(people)
    image_root = _image_root(root, image_dir)
    pids = {name: pid for pid, name in enumerate(sorted(p.name for p in people))}
    images, warnings = _images(people, image_root, pids)
    pairs, pair_warnings = _all_pairs(root, image_root, people)
    texts, caption_warnings, caption_sources, attribute_table = _texts(root, images, attributes, face2text)
    # root is a source too: its mtime changes when an optional file (pairs, Face2Text, image folder) appears
    sources = [*(p.source for p in people), *caption_sources, *(p.source for p in pairs.values()), root]
    return DatasetIndex(
        name="lfw", root=root, images=images, captions=_captions(images, texts),
        warnings=[*warnings, *caption_warnings, *pair_warnings, *_published(people)],
        sources=list(dict.fromkeys(sources)), identity_names={pid: name for name, pid in pids.items()},
        extras={"pairs": pairs, **attribute_table},
    )
