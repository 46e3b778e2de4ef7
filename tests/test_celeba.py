"""CelebA parser: both layouts, the four caption sources, split choices, quirks and exact error lines.

The fixture (``tests/layouts/celeba.py``) has 16 images of 8 identities (raw ids 17..901), the official
partition, hand-written attributes, and writes each caption set on demand. Shared checks (counts via
``xsearch data check``, bad inputs, cache, a few training steps) live in ``tests/test_dataset_layouts.py``.
"""
from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from layouts import celeba as fx

from xsearch.datamodules import celeba, celeba_captions, load_dataset
from xsearch.datamodules.files import DatasetFormatError
from xsearch.face_captions import CELEBA_ATTRIBUTES, celeba_caption, template_captions
from xsearch.synth import generate_faces


def _rows(index) -> list[tuple]:
    """Layout-independent view: (file, pid, split, captions) per image."""
    texts: dict[int, list[str]] = {}
    for c in index.captions:
        assert (c.pid, c.split) == (index.images[c.image_index].pid, index.images[c.image_index].split)
        texts.setdefault(c.image_index, []).append(c.text)
    return [(i.path.name, i.pid, i.split, texts.get(i.index, [])) for i in index.images]


def _positives(index, file: str) -> set[str]:
    return {name for name, on in index.extras["attributes"].of(file).items() if on}


def _summary(train: tuple[int, int, int], val: tuple[int, int, int], test: tuple[int, int, int]) -> dict:
    keys = ("identities", "images", "captions")
    return {s: dict(zip(keys, counts)) for s, counts in zip(("train", "val", "test"), (train, val, test))}


@pytest.fixture
def drive(tmp_path: Path) -> Path:
    return fx.write_celeba(tmp_path / "CelebA")


# --------------------------------------------------------------------------------------------- layouts
def test_drive_and_torchvision_layouts_give_identical_indexes(tmp_path: Path) -> None:
    drive = fx.write_celeba(tmp_path / "drive")
    flat = fx.write_celeba(tmp_path / "tv", "torchvision")
    mm = fx.write_mm(tmp_path / "mm")
    before = {p: p.read_bytes() for p in [*drive.rglob("*.txt"), *flat.rglob("*.txt")]}
    for options in ({"captions": "attributes"}, {"captions": "mm_celeba_hq", "caption_root": str(mm)}):
        a, b, c = (celeba.parse(r, **options) for r in (drive, flat, flat / "celeba"))
        assert _rows(a) == _rows(b) == _rows(c) and _rows(a)
        assert a.images[0].path == drive / "Img" / "img_align_celeba" / "000001.jpg"
        assert b.images[0].path == c.images[0].path == flat / "celeba" / "img_align_celeba" / "000001.jpg"
        assert np.array_equal(a.extras["attributes"].values, b.extras["attributes"].values)
        assert a.sources[:3] == [drive / "Anno" / "identity_CelebA.txt", drive / "Anno" / "list_attr_celeba.txt",
                                 drive / "Eval" / "list_eval_partition.txt"]
    assert b"\r\n" in before[drive / "Anno" / "list_attr_celeba.txt"]  # the CRLF quirk is really there
    assert {p: p.read_bytes() for p in before} == before  # never rewritten


def test_empty_root_names_the_expected_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError) as error:
        celeba.parse(tmp_path)
    assert str(error.value).startswith(f"{tmp_path}: no CelebA files found (expected Anno/identity_CelebA.txt")


# --------------------------------------------------------------------------------------------- MM-CelebA-HQ
def test_mm_celeba_hq_counts_captions_and_attributes(drive: Path) -> None:
    fx.write_mm(drive / "multi-modal-celeba")
    index = celeba.parse(drive)
    assert index.summary() == _summary((4, 7, 14), (2, 4, 8), (2, 4, 8))
    rows = {file: (pid, split, texts) for file, pid, split, texts in _rows(index)}
    assert fx.UNCAPTIONED not in rows
    assert rows["000001.jpg"] == (17, "train", [fx.mm_caption("000001.jpg", 0), fx.mm_caption("000001.jpg", 1)])
    assert rows["000006.jpg"][2] == [fx.mm_caption("000006.jpg", k) for k in range(2)]  # HQ 5380 via the mapping
    assert {pid for pid, split, _ in rows.values() if split == "val"} == {512, 640}
    assert index.extras["caption_source"] == "mm_celeba_hq"
    assert index.extras["hq_index"]["000006.jpg"] == 5380
    assert _positives(index, "000001.jpg") == set(fx.ATTRIBUTES["000001.jpg"])
    assert _positives(index, "000004.jpg") == set()
    assert fx.UNCAPTIONED not in index.extras["attributes"].row
    assert index.warnings[:3] == [
        f"captions='auto' uses mm_celeba_hq from {drive / 'multi-modal-celeba'}",
        "1 HQ images map to files not in identity_CelebA.txt, e.g. 202599.jpg (left out)",
        "mm_celeba_hq captions cover 15 of 16 CelebA images: only those are indexed "
        "(keep_uncaptioned=true adds the others as gallery-only images)",
    ]

    everything = celeba.parse(drive, keep_uncaptioned=True, captions_per_image=1)
    assert everything.summary() == _summary((4, 8, 7), (2, 4, 4), (2, 4, 4))
    assert dict((f, t) for f, _, _, t in _rows(everything))[fx.UNCAPTIONED] == []


def test_mm_split_pickles_need_latin1_and_are_not_identity_disjoint(drive: Path) -> None:
    folder = fx.write_mm(drive / "multi-modal-celeba")
    raw = (folder / "test" / "filenames.pickle").read_bytes()
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with the Python 2 file
        pickle.loads(raw)
    assert celeba_captions.load_pickle(folder / "test" / "filenames.pickle") == [
        f"{fx.HQ[f]}" + ("\xa0" if i == 0 else "") for i, f in enumerate(fx.MM_TEST)]
    index = celeba.parse(drive, split="source")
    splits = {file: split for file, _, split, _ in _rows(index)}
    assert sorted(f for f, s in splits.items() if s == "test") == sorted(fx.MM_TEST)
    assert set(splits.values()) == {"train", "test"} and len(splits) == 15
    assert "3 identities appear in more than one split, e.g. 17, 640, 901 (the split is not identity-disjoint)" \
        in index.warnings
    assert all("identities appear" not in w for w in celeba.parse(drive).warnings)  # official partition


def test_mm_caption_folder_alias_and_mapping_in_root(drive: Path) -> None:
    folder = fx.write_mm(drive / "multi-modal-celeba", text_dir="celeba-caption")
    shutil.move(folder / "CelebA-HQ-to-CelebA-mapping.txt", drive / "CelebA-HQ-to-CelebA-mapping.txt")
    index = celeba.parse(drive, captions="mm_celeba_hq")
    assert index.summary()["train"] == {"identities": 4, "images": 7, "captions": 14}
    assert drive / "CelebA-HQ-to-CelebA-mapping.txt" in index.sources


def test_pickles_with_code_are_refused(drive: Path) -> None:
    folder = fx.write_mm(drive / "multi-modal-celeba")
    (folder / "train" / "filenames.pickle").write_bytes(pickle.dumps([Path("0")]))
    with pytest.raises(DatasetFormatError, match=r"train/filenames\.pickle: cannot unpickle \(UnpicklingError: "
                                                 r"refusing to import pathlib\.PosixPath\)$"):
        celeba.parse(drive)


# --------------------------------------------------------------------------------------------- CelebA-Dialog
def test_celeba_dialog_missing_5380_and_empty_attribute_captions(drive: Path) -> None:
    fx.write_dialog(drive / "CelebA-Dialog")
    index = celeba.parse(drive)  # auto: the only caption set
    assert index.extras["caption_source"] == "celeba_dialog"
    assert index.summary() == _summary((4, 6, 6), (2, 4, 4), (2, 4, 4))  # 000006.jpg is HQ 5380: no caption
    rows = {file: texts for file, _, _, texts in _rows(index)}
    assert rows["000001.jpg"] == ["Overall caption of face 000001."]
    assert "000006.jpg" not in rows
    assert ("captions_hq.json has no entry for 1 mapped HQ images, e.g. 5380.jpg (the release lacks 5380.jpg; "
            "these images have no caption)") in index.warnings
    assert index.extras["attribute_captions"]["000001.jpg"] == {"Bangs": "Bangs of 000001."}  # "" and "  " dropped


def test_auto_prefers_mm_celeba_hq_over_dialog_and_face2text(drive: Path) -> None:
    fx.write_dialog(drive / "CelebA-Dialog")
    fx.write_face2text(drive / "face2text")
    assert celeba.parse(drive).extras["caption_source"] == "celeba_dialog"
    fx.write_mm(drive / "multi-modal-celeba")
    assert celeba.parse(drive).extras["caption_source"] == "mm_celeba_hq"
    assert celeba.parse(drive, captions="face2text").extras["caption_source"] == "face2text"


# --------------------------------------------------------------------------------------------- Face2Text
def test_face2text_v21_clean_files_and_their_split(drive: Path) -> None:
    fx.write_face2text(drive / "face2text")
    index = celeba.parse(drive)
    assert index.extras["caption_source"] == "face2text"
    rows = {file: (split, texts) for file, _, split, texts in _rows(index)}
    assert rows["000001.jpg"] == ("train", ["A face numbered 000001, description 0.",
                                            "A face numbered 000001, description 1."])
    assert rows["000015.jpg"][0] == "test"  # official partition by default
    assert index.summary() == _summary((3, 3, 4), (1, 1, 2), (2, 2, 3))
    own = celeba.parse(drive, split="source")
    assert {file: split for file, _, split, _ in _rows(own)}["000015.jpg"] == "val"  # Face2Text's dev file
    assert own.summary() == _summary((3, 3, 4), (2, 2, 3), (1, 1, 2))


def test_face2text_v20_jsonl_and_v01_refused(drive: Path, tmp_path: Path) -> None:
    v20 = tmp_path / "f2t-2.0"
    v20.mkdir()
    records = fx.face2text_records(["000003.jpg", "000009.jpg"])
    (v20 / "raw_2.0.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    index = celeba.parse(drive, captions="face2text", caption_root=str(v20))
    assert [(f, len(t)) for f, _, _, t in _rows(index)] == [("000003.jpg", 2), ("000009.jpg", 1)]
    v01 = tmp_path / "f2t-0.1"
    v01.mkdir()
    (v01 / "raw.json").write_text(json.dumps([{"img_id": 1, "image": "A/A_0001.bmp", "descriptions": []}]))
    with pytest.raises(DatasetFormatError) as error:
        celeba.parse(drive, captions="face2text", caption_root=str(v01))
    assert str(error.value) == (f"{v01 / 'raw.json'}: record 0: this is Face2Text v0.1 (field 'image': LFW images); "
                                "only v1.0+ describes CelebA images")


def test_split_source_needs_a_source_split(drive: Path) -> None:
    fx.write_dialog(drive / "CelebA-Dialog")
    with pytest.raises(DatasetFormatError, match=r"^split='source': the celeba_dialog captions have no split"):
        celeba.parse(drive, split="source")


# --------------------------------------------------------------------------------------------- templates
SUBJECT_M = r"(He|This man|The man|The person|This person)"
IS, HAS, WEAR = r"(is|looks|appears to be)", r"(has|is with)", r"(wears|is wearing)"


def _shape(text: str, shapes: list[str]) -> int:
    """Index of the sentence shape ``text`` is an instance of (fails on any other text)."""
    matches = [k for k, shape in enumerate(shapes) if re.fullmatch(shape, text)]
    assert len(matches) == 1, text
    return matches[0]


def test_template_grammar_on_hand_written_attributes() -> None:
    none = dict.fromkeys(CELEBA_ATTRIBUTES, False)
    rng = np.random.default_rng(0)
    assert celeba_caption(none, rng) == "This is a photo of a woman."
    assert celeba_caption({**none, "Male": True, "No_Beard": True, "Blurry": True}, rng) == "This is a photo of a man."
    attrs = {**none, "Male": True, "Smiling": True, "Eyeglasses": True, "Wearing_Hat": True}
    shapes = [
        rf"{SUBJECT_M} {IS} smiling\. {SUBJECT_M} {HAS} eyeglasses and {WEAR} hat\.",
        rf"{SUBJECT_M} {IS} smiling and {HAS} eyeglasses\. {SUBJECT_M} {WEAR} hat\.",
        rf"This is a smiling person\. {SUBJECT_M} {HAS} eyeglasses\. {SUBJECT_M} {WEAR} hat\.",
    ]
    seen = [_shape(celeba_caption(attrs, rng), shapes) for _ in range(150)]
    assert set(seen) == {0, 1, 2}
    subject_f = r"(She|This woman|The woman|The person|This person)"
    woman = {**none, "Attractive": True, "Bangs": True, "No_Beard": True}
    shapes = [
        rf"{subject_f} {IS} attractive\. {subject_f} {HAS} bangs\.",
        rf"{subject_f} {IS} attractive and {HAS} bangs\.",
        rf"This is an attractive person\. {subject_f} {HAS} bangs\.",  # "an", no empty WEAR clause
    ]
    seen = [_shape(celeba_caption(woman, rng), shapes) for _ in range(150)]
    assert set(seen) == {0, 1, 2}


def test_template_captions_are_seeded_by_file_name() -> None:
    attrs = {name: name in fx.ATTRIBUTES["000010.jpg"] for name in CELEBA_ATTRIBUTES}
    first = template_captions(attrs, "000010.jpg", 3)
    assert first == template_captions(attrs, "000010.jpg", 3) and len(set(first)) == 3
    assert template_captions(attrs, "000010.jpg", 2) == first[:2]
    assert len({tuple(template_captions(attrs, f"{i:06d}.jpg", 2)) for i in range(20)}) > 1


def test_attribute_captions_in_the_index(tmp_path: Path) -> None:
    drive = fx.write_celeba(tmp_path / "a")
    index = celeba.parse(drive)  # nothing else found: templates
    assert index.warnings[0] == (f"captions='auto' found no caption set (Multi-Modal-CelebA-HQ, CelebA-Dialog, "
                                 f"Face2Text) under {drive}: captions are generated from the 40 attributes")
    rows = {file: texts for file, _, _, texts in _rows(index)}
    assert len(rows) == 16 and index.extras["caption_source"] == "attributes"
    assert rows["000004.jpg"] == ["This is a photo of a woman."]
    assert rows["000005.jpg"] == ["This is a photo of a man."]
    assert len(rows["000001.jpg"]) == 2 and all("eyeglasses" in t and "hat" in t for t in rows["000001.jpg"])
    for file, texts in rows.items():
        for text in texts:
            for word, attribute in (("bangs", "Bangs"), ("lipstick", "Wearing_Lipstick"), ("wavy", "Wavy_Hair")):
                assert (word in text) <= (attribute in fx.positives(file)), (file, text)
    again = celeba.parse(fx.write_celeba(tmp_path / "b", "torchvision"), captions="attributes", captions_per_image=3)
    again_rows = {file: texts for file, _, _, texts in _rows(again)}
    assert all(again_rows[f][:2] == rows[f] for f in rows)  # same file, same captions, wherever it lives
    assert len(again_rows["000010.jpg"]) == 3


# --------------------------------------------------------------------------------------------- checks
def _set_row(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_exact_error_lines(drive: Path) -> None:
    attributes = drive / "Anno" / "list_attr_celeba.txt"
    identity = drive / "Anno" / "identity_CelebA.txt"
    cases = [
        (lambda: _set_row(attributes, 7, "000005.jpg " + " ".join(["1"] * 11)),
         f"{attributes}: line 7: expected a file name and 40 values, got 12 fields"),
        (lambda: _set_row(identity, 4, "000003.jpg 17"), f"{identity}: line 4: 000003.jpg is listed a second time"),
        (lambda: _set_row(attributes, 5, "000003.jpg " + " ".join(["1"] * 39) + " yes"),
         f"{attributes}: line 5: attribute 'Young' should be an integer, got 'yes'"),
        (lambda: _set_row(attributes, 10, ""), f"{attributes}: no row for 000008.jpg (listed in identity_CelebA.txt)"),
        (lambda: _set_row(attributes, 1, "16 images"), f"{attributes}: line 1: expected the image count, got 2 fields"),
        (lambda: identity.unlink(), f"{identity}: file not found"),
    ]
    original = {p: p.read_bytes() for p in (attributes, identity)}
    for mutate, message in cases:
        mutate()
        with pytest.raises(DatasetFormatError) as error:
            celeba.parse(drive)
        assert str(error.value) == message
        for path, data in original.items():
            path.write_bytes(data)


def test_caption_source_not_found_names_the_places(drive: Path) -> None:
    with pytest.raises(DatasetFormatError) as error:
        celeba.parse(drive, captions="celeba_dialog")
    assert str(error.value) == (f"{drive}: no celeba_dialog captions found in CelebA-Dialog/, celeba-dialog/, the root "
                                "(expected text/captions_hq.json)")
    with pytest.raises(DatasetFormatError, match=r"captions_per_image should be >= 1 or None, got 0$"):
        celeba.parse(drive, captions_per_image=0)
    with pytest.raises(DatasetFormatError, match=r"split should be celeba or source, got 'random'$"):
        celeba.parse(drive, split="random")


def test_overlapping_identities_and_count_line_are_warned(drive: Path) -> None:
    partition = drive / "Eval" / "list_eval_partition.txt"
    _set_row(partition, 3, "000003.jpg 2")  # identity 17 now in train and test
    _set_row(drive / "Anno" / "list_attr_celeba.txt", 1, "20")
    warnings = celeba.parse(drive, captions="attributes").warnings
    assert "1 identities appear in more than one split, e.g. 17 (the split is not identity-disjoint)" in warnings
    assert "list_attr_celeba.txt: line 1 says 20 images, the file lists 16" in warnings


def test_published_counts_only_for_the_full_set() -> None:
    files = [f"{i:06d}.jpg" for i in range(1, celeba.FULL_SIZE + 1)]
    identity = {f: 1 + i % celeba.PUBLISHED_IDENTITIES for i, f in enumerate(files)}
    bounds = np.cumsum([celeba.PUBLISHED_IMAGES[s] for s in ("train", "val", "test")])
    splits = np.array(["train", "val", "test"])[np.searchsorted(bounds, np.arange(len(files)), side="right")]
    partition = dict(zip(files, splits.tolist()))
    assert celeba.published_warnings(partition, identity) == []
    partition[files[162770]] = "train"  # the first val image
    assert celeba.published_warnings(partition, identity) == [
        "train: 162771 images differ from the published 162770", "val: 19866 images differ from the published 19867"]
    small = {f: identity[f] for f in files[:100]}
    assert celeba.published_warnings({f: "train" for f in small}, small) == []


def test_attributes_survive_the_parse_cache(drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    fx.write_mm(drive / "multi-modal-celeba")
    first = load_dataset("celeba", drive)
    again = load_dataset("celeba", drive)
    assert (first.extras["cache_hit"], again.extras["cache_hit"]) == (False, True)
    assert _positives(again, "000010.jpg") == set(fx.ATTRIBUTES["000010.jpg"])
    (drive / "multi-modal-celeba" / "text" / f"{fx.HQ['000001.jpg']}.txt").write_text("Edited caption.\n")
    edited = load_dataset("celeba", drive)
    assert edited.extras["cache_hit"] is False and edited.captions[0].text == "Edited caption."


# --------------------------------------------------------------------------------------------- synth_faces
def test_synth_faces_is_read_through_the_mm_celeba_hq_route(tmp_path: Path) -> None:
    root = generate_faces(tmp_path / "faces", identities=4, images_per_identity=(1, 2), captions_per_image=3,
                          progress=False)
    index = load_dataset("synth_faces", root, cache=False)
    assert index.name == "synth_faces" and index.extras["caption_source"] == "mm_celeba_hq"
    lines = (root / "CelebA-HQ-to-CelebA-mapping.txt").read_text().splitlines()[1:]
    mapping = {file: hq for hq, _, file in (line.split() for line in lines)}
    identity = dict(line.split() for line in (root / "Anno" / "identity_CelebA.txt").read_text().splitlines())
    partition = dict(line.split() for line in (root / "Eval" / "list_eval_partition.txt").read_text().splitlines())
    rows = _rows(index)
    assert [r[0] for r in rows] == list(identity)
    for file, pid, split, texts in rows:
        assert pid == int(identity[file]) and split == ("train", "val", "test")[int(partition[file])]
        assert texts == (root / "text" / f"{mapping[file]}.txt").read_text().splitlines()
        assert len(texts) == 3
    assert _rows(celeba.parse(root)) == rows
    assert index.warnings[0] == f"captions='auto' uses mm_celeba_hq from {root}"
    assert not any("cover" in w or "HQ images" in w for w in index.warnings)
