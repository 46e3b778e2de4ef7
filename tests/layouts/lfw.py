"""A tiny LFW copy in the official layout, with its quirks.

Quirks written: ``people.txt`` folds with single-image people in the evaluation folds, a hyphenated
name, View 1 lists next to View 2, ``pairs.txt`` with 3-field (same) and 4-field (different) lines,
``lfw_attributes.txt`` with its two ``#`` lines (names start one field later in the header than the
values in the rows), names with spaces, real-valued scores, missing rows and a row for someone
not in the people lists, and Face2Text v0.1 ``clean.json`` (``.bmp`` names, newlines in texts)
next to a junk ``raw.json``.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from layouts import BadInput, Layout, layout, write_image
from xsearch.datamodules.lfw_captions import ATTRIBUTES

FOLDS: list[list[tuple[str, int]]] = [
    [("Ann_Able", 3), ("Bob_Baker", 2), ("Cy_Single", 1)],  # fold 0: test by default
    [("Dee_Dunn", 2), ("Eve_Evans-Smith", 2), ("Flo_One", 1)],  # fold 1: val by default
    [("George_W_Bush", 4), ("Hal_Hill", 1), ("Ida_Ivy", 2)],
    [("Jo_Jones", 2), ("Kim_Kay", 1)],
]
"""people.txt: (name, number of images) per fold."""

DEV_TEST_FOLDS = (0,)
"""View 1: peopleDevTest.txt lists the people of these folds, peopleDevTrain.txt the others."""

PAIRS = [
    # per fold: 2 matched (3 fields) then 2 mismatched (4 fields) lines
    "Ann_Able 1 2", "Bob_Baker 1 2", "Ann_Able 3 Bob_Baker 2", "Cy_Single 1 Ann_Able 1",
    "Dee_Dunn 1 2", "Eve_Evans-Smith 2 1", "Flo_One 1 Dee_Dunn 2", "Eve_Evans-Smith 1 Flo_One 1",
    "George_W_Bush 1 4", "Ida_Ivy 1 2", "Hal_Hill 1 George_W_Bush 3", "Ida_Ivy 2 Hal_Hill 1",
    "Jo_Jones 1 2", "Jo_Jones 2 1", "Kim_Kay 1 Jo_Jones 1", "Jo_Jones 2 Kim_Kay 1",
]
DEV_PAIRS = {
    "pairsDevTrain.txt": ["George_W_Bush 2 3", "Dee_Dunn 1 2", "Hal_Hill 1 Jo_Jones 2", "Kim_Kay 1 Ida_Ivy 1"],
    "pairsDevTest.txt": ["Ann_Able 2 3", "Bob_Baker 1 Cy_Single 1"],
}

NO_ATTRIBUTE_ROW = {"Bob_Baker_0002", "Kim_Kay_0001", "George_W_Bush_0004", "Ida_Ivy_0002"}
"""Images lfw_attributes.txt has no row for (about 100 in the real file)."""
EXTRA_ATTRIBUTE_ROW = ("Zed Zero", 1)
"""A row for someone in no people list (ignored)."""

FACE2TEXT = [
    {"img_id": 1, "image": "Ann_Able/Ann_Able_0001.bmp", "descriptions": [
        {"desc_id": 1, "text": "A woman with  short\nred hair and\ta wide smile. "},
        {"desc_id": 2, "text": "Round face, freckles and small earrings."}]},
    {"img_id": 2, "image": "George_W_Bush/George_W_Bush_0004.bmp", "descriptions": [
        {"desc_id": 3, "text": "An older man with grey hair in a dark suit."}]},
    {"img_id": 3, "image": "Cy_Single/Cy_Single_0001.bmp", "descriptions": [  # single-image test person: left out
        {"desc_id": 4, "text": "A man with a beard."}]},
]
"""Face2Text v0.1 clean.json records."""
FACE2TEXT_RAW = [{"img_id": 1, "image": "Ann_Able/Ann_Able_0001.bmp", "descriptions": [{"desc_id": 1, "text": "asdf"}]}]


def image_names() -> list[tuple[str, int]]:
    """(name, image number) of every image, in people.txt order."""
    return [(name, k) for fold in FOLDS for name, count in fold for k in range(1, count + 1)]


def fixture_scores(name: str, number: int) -> dict[str, float]:
    """Deterministic made-up scores for one image (real values around 0, as in the real file)."""
    rng = np.random.default_rng(zlib.crc32(f"{name}_{number}".encode()))
    return dict(zip(ATTRIBUTES, np.round(rng.normal(0.0, 1.5, len(ATTRIBUTES)), 4).tolist()))


def attribute_line(name: str, number: int, scores: Mapping[str, float]) -> str:
    """One lfw_attributes.txt row: the name with spaces, imagenum, the 73 scores (absent ones -1)."""
    values = "\t".join(f"{scores.get(a, -1.0):.4f}" for a in ATTRIBUTES)
    return f"{name.replace('_', ' ')}\t{number}\t{values}"


def attributes_text(rows: list[str]) -> str:
    """lfw_attributes.txt: a ``#`` comment, the ``#``-prefixed header, then ``rows``."""
    header = "\t".join(("#", "person", "imagenum", *ATTRIBUTES))
    return "\n".join(["# 73 attribute scores of the LFW images (Kumar et al.)", header, *rows]) + "\n"


def people_text(folds: list[list[tuple[str, int]]], folded: bool = True) -> str:
    lines = [str(len(folds))] if folded else []
    for fold in folds:
        lines += [str(len(fold)), *(f"{name}\t{count}" for name, count in fold)]
    return "\n".join(lines) + "\n"


def pairs_text(header: str, lines: list[str]) -> str:
    return "\n".join([header, *(line.replace(" ", "\t") for line in lines)]) + "\n"


def write_lfw(root: Path, image_dir: str = "lfw", face2text: bool = True) -> Path:
    """Write the tiny copy (View 1 and View 2 lists, pairs, attributes, optionally Face2Text) into ``root``."""
    for name, number in image_names():
        write_image(root / image_dir / name / f"{name}_{number:04d}.jpg", name, size=(32, 32))
    (root / "people.txt").write_text(people_text(FOLDS))
    dev = {"peopleDevTrain.txt": [f for k, f in enumerate(FOLDS) if k not in DEV_TEST_FOLDS],
           "peopleDevTest.txt": [f for k, f in enumerate(FOLDS) if k in DEV_TEST_FOLDS]}
    for file, folds in dev.items():
        (root / file).write_text(people_text([[p for fold in folds for p in fold]], folded=False))
    (root / "pairs.txt").write_text(pairs_text(f"{len(FOLDS)}\t2", PAIRS))
    (root / "pairsDevTrain.txt").write_text(pairs_text("2", DEV_PAIRS["pairsDevTrain.txt"]))
    (root / "pairsDevTest.txt").write_text(pairs_text("1", DEV_PAIRS["pairsDevTest.txt"]))
    listed = [(n, k) for n, k in image_names() if f"{n}_{k:04d}" not in NO_ATTRIBUTE_ROW]
    rows = [attribute_line(n, k, fixture_scores(n, k)) for n, k in listed]
    rows.append(attribute_line(*EXTRA_ATTRIBUTE_ROW, fixture_scores(*EXTRA_ATTRIBUTE_ROW)))
    (root / "lfw_attributes.txt").write_text(attributes_text(rows))
    if face2text:
        (root / "face2text").mkdir()
        (root / "face2text" / "clean.json").write_text(json.dumps(FACE2TEXT, indent=1))
        (root / "face2text" / "raw.json").write_text(json.dumps(FACE2TEXT_RAW))
    return root


# ---------------------------------------------------------------------------------- bad inputs
def edit_lines(file: str, edit: Callable[[list[str]], None]) -> Callable[[Path], None]:
    """A mutation applying ``edit`` to the lines of ``root/file``."""

    def mutate(root: Path) -> None:
        lines = (root / file).read_text().splitlines()
        edit(lines)
        (root / file).write_text("\n".join(lines) + "\n")

    return mutate


def _set(index: int, text: str) -> Callable[[list[str]], None]:
    """Replace line ``index`` (0-based) with ``text``."""

    def edit(lines: list[str]) -> None:
        lines[index] = text

    return edit


def _drop_comment_and_header(lines: list[str]) -> None:
    del lines[:2]


def _attribute_value(line: int, column: int, value: str | None) -> Callable[[list[str]], None]:
    """Replace (or with None remove) score ``column`` of 1-based ``line``."""

    def edit(lines: list[str]) -> None:
        fields = lines[line - 1].split("\t")
        if value is None:
            del fields[2 + column]
        else:
            fields[2 + column] = value
        lines[line - 1] = "\t".join(fields)

    return edit


def _face2text(records: object) -> Callable[[Path], None]:
    return lambda root: (root / "face2text" / "clean.json").write_text(json.dumps(records))


SMILING = ATTRIBUTES.index("Smiling")

BAD_INPUTS = [
    BadInput("missing people.txt", lambda r: (r / "people.txt").unlink(),
             r"people\.txt: LFW View 2 people list \(10 folds\) not found$"),
    BadInput("truncated people.txt", edit_lines("people.txt", lambda lines: lines.pop()),
             r"people\.txt: file ends after line 15, expected 'Name<TAB>num_images' \(person 2 of 2 in fold 3 of 4\) "
             r"\(truncated file\?\)$"),
    BadInput("fold count below the folds present", edit_lines("people.txt", _set(0, "3")),
             r"people\.txt: line 14: expected the end of the file after 3 folds \(the count on the first line\), got '2'$"),
    BadInput("fold count above the folds present", edit_lines("people.txt", _set(0, "5")),
             r"people\.txt: file ends after line 16, expected the number of people in fold 4 of 5 \(truncated file\?\)$"),
    BadInput("people row with three fields", edit_lines("people.txt", _set(2, "Ann_Able\t3\t1")),
             r"people\.txt: line 3: expected 'Name<TAB>num_images' \(person 1 of 3 in fold 0 of 4\), "
             r"got 3 field\(s\) 'Ann_Able 3 1'$"),
    BadInput("non-numeric image count", edit_lines("people.txt", _set(3, "Bob_Baker\ttwo")),
             r"people\.txt: line 4: num_images should be an integer, got 'two'$"),
    BadInput("missing attribute file", lambda r: (r / "lfw_attributes.txt").unlink(),
             r"lfw_attributes\.txt: LFW attribute file \(set dataset_options\.attributes=null to go without\) not found$"),
    BadInput("attribute row missing a score", edit_lines("lfw_attributes.txt", _attribute_value(4, 5, None)),
             r"lfw_attributes\.txt: line 4: expected 75 tab-separated fields \(person, imagenum and the 73 scores "
             r"named in the header\), got 74$"),
    BadInput("non-numeric attribute score", edit_lines("lfw_attributes.txt", _attribute_value(5, SMILING, "yes")),
             r"lfw_attributes\.txt: line 5: attribute 'Smiling' should be a number, got 'yes'$"),
    BadInput("attribute header without #", edit_lines("lfw_attributes.txt", _drop_comment_and_header),
             r"lfw_attributes\.txt: line 1: expected the '#'-prefixed header '#<TAB>person<TAB>imagenum<TAB>"),
    BadInput("bad pairs header", edit_lines("pairs.txt", _set(0, "ten\t2")),
             r"pairs\.txt: line 1: expected the header '<folds><TAB><pairs per class>' such as '10 300' .*got 'ten 2'$"),
    BadInput("truncated pairs.txt", edit_lines("pairs.txt", lambda lines: lines.pop()),
             r"pairs\.txt: line 1: header '4 2' promises 16 pair lines \(4 fold\(s\) x 2 x 2\), found 15 \(truncated file\?\)$"),
    BadInput("pair line with five fields", edit_lines("pairs.txt", _set(3, "Ann_Able\t3\tBob_Baker\t2\t1")),
             r"pairs\.txt: line 4: expected 'Name idx1 idx2' \(same person, 3 fields\) or 'Name1 idx1 Name2 idx2' "
             r"\(different people, 4 fields\), got 5 fields$"),
    BadInput("pair image beyond the count", edit_lines("pairsDevTest.txt", _set(1, "Ann_Able\t2\t4")),
             r"pairsDevTest\.txt: line 2: 'Ann_Able' has no image 4 \(the people list gives 3\)$"),
    BadInput("truncated Face2Text JSON", lambda r: (r / "face2text" / "clean.json").write_text(
        (r / "face2text" / "clean.json").read_text()[:-30]),
        r"face2text/clean\.json: invalid JSON at line \d+ column \d+: .*\(the file looks truncated\)$"),
    BadInput("Face2Text description without text", _face2text([{"img_id": 1, "image": "Ann_Able/Ann_Able_0001.bmp",
                                                                "descriptions": [{"desc_id": 1, "txt": "A woman."}]}]),
             r"clean\.json: record 0: description 0: missing field 'text'$"),
    BadInput("Face2Text v1.0 file", _face2text([{"response_id": "1", "filename": "000001.jpg", "user_id": "3",
                                                 "description": "A woman."}]),
             r"clean\.json: record 0: field 'filename' instead of 'image': this is Face2Text v1\.0 or later"),
    BadInput("fold option out of range", lambda r: None, r"test_fold should be in 0\.\.3 \(people\.txt has 4 folds\), got 4$",
             options={"test_fold": 4}),
]

EXPECTED = {
    # fold 0: Ann 3 + Bob 2 images (Cy has one: left out); Ann_0001 has 2 Face2Text texts, Bob_0002 no row -> 4 x 2
    "test": {"identities": 2, "images": 5, "captions": 8},
    # fold 1: Dee 2 + Eve 2 (Flo has one: left out), 2 attribute captions each
    "val": {"identities": 2, "images": 4, "captions": 8},
    # folds 2-3 keep single-image people: 10 images; George_0004 has 1 Face2Text text, Kim_0001 and Ida_0002 no
    # row -> 7 x 2 + 1 (<= 15 pairs: 3 batches of 4 end the epoch within the shared fit test's 3 steps)
    "train": {"identities": 5, "images": 10, "captions": 15},
}


@layout("lfw", bad_inputs=BAD_INPUTS)
def lfw(tmp: Path) -> Layout:
    return Layout("lfw", write_lfw(tmp / "LFW"), EXPECTED)
