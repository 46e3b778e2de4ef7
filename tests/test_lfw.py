"""LFW parser: people lists and splits, verification pairs, attribute captions, Face2Text v0.1, errors.

The shared checks (counts, ``data check``, cache, bad inputs, a few training steps) run on the same
fixture in ``tests/test_dataset_layouts.py``; these tests cover what is specific to LFW.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from layouts.lfw import EXPECTED, FOLDS, attribute_line, attributes_text, people_text, write_lfw

from xsearch.datamodules import RetrievalDataModule, load_dataset
from xsearch.datamodules.files import DatasetFormatError
from xsearch.datamodules.lfw import parse
from xsearch.datamodules.lfw_captions import attribute_captions, describe, present

ALL_PEOPLE = sorted(name for fold in FOLDS for name, _ in fold)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_lfw(tmp_path / "LFW")


def _split_names(index) -> dict[str, set[str]]:
    return {split: {index.identity_names[r.pid] for r in index.split_images(split)} for split in ("train", "val", "test")}


def _relative(index, records) -> list[str]:
    return [str(r.path.relative_to(index.root)) for r in records]


def _captions_of(index, relative: str) -> list[str]:
    image = next(r for r in index.images if str(r.path.relative_to(index.root)) == relative)
    return [c.text for c in index.captions if c.image_index == image.index]


# ---------------------------------------------------------------------------------- images and splits
def test_images_come_from_the_people_list_not_the_folders(root):
    (root / "lfw" / "Ann_Able" / "Ann_Able_0009.jpg").write_bytes(b"stray")  # in no list
    (root / "lfw" / "Zed_Zero").mkdir()
    index = parse(root)
    assert _relative(index, index.split_images("test")) == [
        "lfw/Ann_Able/Ann_Able_0001.jpg", "lfw/Ann_Able/Ann_Able_0002.jpg", "lfw/Ann_Able/Ann_Able_0003.jpg",
        "lfw/Bob_Baker/Bob_Baker_0001.jpg", "lfw/Bob_Baker/Bob_Baker_0002.jpg",
    ]
    assert index.identity_names == dict(enumerate(ALL_PEOPLE))  # numbered in sorted name order
    assert all(index.identity_names[r.pid] == r.path.parent.name for r in index.images)


def test_view2_default_folds_and_single_image_evaluation_people(root):
    index = parse(root)
    assert _split_names(index) == {
        "test": {"Ann_Able", "Bob_Baker"},  # fold 0 without Cy_Single (one image)
        "val": {"Dee_Dunn", "Eve_Evans-Smith"},  # fold 1 without Flo_One
        "train": {"George_W_Bush", "Hal_Hill", "Ida_Ivy", "Jo_Jones", "Kim_Kay"},  # single-image people kept
    }
    assert index.summary() == EXPECTED
    assert index.warnings[:2] == [
        f"{split}: 1 of 3 identities have a single image and are left out of the gallery and queries "
        "(evaluation identities need >= 2 images; train keeps its single-image identities)"
        for split in ("test", "val")
    ]
    assert "people.txt: 11 people / 21 images listed; the full LFW has 5,749 / 13,233" in index.warnings


def test_view2_other_folds_without_val(root):
    index = parse(root, test_fold=2, val_fold=None)
    assert _split_names(index) == {
        "test": {"George_W_Bush", "Ida_Ivy"},  # Hal_Hill has one image
        "val": set(),
        "train": {"Ann_Able", "Bob_Baker", "Cy_Single", "Dee_Dunn", "Eve_Evans-Smith", "Flo_One", "Jo_Jones", "Kim_Kay"},
    }
    assert index.summary()["test"]["images"] == 6 and index.summary()["train"]["images"] == 14


def test_view1_dev_lists_and_datamodule_falls_back_to_test(root, tmp_path, monkeypatch):
    index = parse(root, protocol="view1")
    assert _split_names(index) == {
        "test": {"Ann_Able", "Bob_Baker"},
        "val": set(),
        "train": {"Dee_Dunn", "Eve_Evans-Smith", "Flo_One", "George_W_Bush", "Hal_Hill", "Ida_Ivy", "Jo_Jones", "Kim_Kay"},
    }
    assert index.sources[:2] == [root / "peopleDevTrain.txt", root / "peopleDevTest.txt"]
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    dm = RetrievalDataModule("lfw", str(root), num_workers=0, dataset_options={"protocol": "view1"})
    dm.load_index()
    assert dm.eval_split == "test" and dm.num_train_identities == 8


@pytest.mark.parametrize("options", [{}, {"test_fold": 3, "val_fold": 2}, {"test_fold": 1, "val_fold": None},
                                     {"protocol": "view1"}])
def test_splits_are_identity_disjoint_and_cover_everyone(root, options):
    index = parse(root, **options)
    names = _split_names(index)
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    single = {name for fold in FOLDS for name, count in fold if count == 1}
    assert set(ALL_PEOPLE) - (names["train"] | names["val"] | names["test"]) <= single


@pytest.mark.parametrize(("folders", "chosen"), [
    (["lfw-deepfunneled"], "lfw-deepfunneled"),
    (["lfw_funneled", "lfw-deepfunneled"], "lfw-deepfunneled"),
    (["lfw", "lfw_funneled"], "lfw"),
])
def test_image_folder_is_the_first_present(tmp_path, folders, chosen):
    root = write_lfw(tmp_path / "LFW", image_dir=folders[0])
    for extra in folders[1:]:
        shutil.copytree(root / folders[0], root / extra)
    index = parse(root)
    assert {r.path.relative_to(root).parts[0] for r in index.images} == {chosen}
    assert parse(root, image_dir=folders[-1]).images[0].path == root / folders[-1] / "Ann_Able" / "Ann_Able_0001.jpg"


# ---------------------------------------------------------------------------------- pairs
def test_view2_pairs_folds_kinds_and_file_names(root):
    pairs = parse(root).extras["pairs"]
    assert set(pairs) == {"view2", "view1_train", "view1_test"}
    view2 = pairs["view2"]
    assert len(view2) == 16 and view2.num_folds == 4 and view2.source == root / "pairs.txt"
    assert view2.fold.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # 2 x 2 lines per fold
    assert view2.same.tolist() == [True, True, False, False] * 4  # 3 fields = same, 4 = different
    names = [(a.relative_to(root / "lfw").as_posix(), b.name) for a, b in zip(view2.first, view2.second)]
    assert names[2] == ("Ann_Able/Ann_Able_0003.jpg", "Bob_Baker_0002.jpg")  # "Ann_Able 3 Bob_Baker 2"
    assert names[5] == ("Eve_Evans-Smith/Eve_Evans-Smith_0002.jpg", "Eve_Evans-Smith_0001.jpg")  # "Eve 2 1"
    assert names[8] == ("George_W_Bush/George_W_Bush_0001.jpg", "George_W_Bush_0004.jpg")


def test_view1_pairs_have_one_fold(root):
    pairs = parse(root, protocol="view1").extras["pairs"]
    train, test = pairs["view1_train"], pairs["view1_test"]
    assert (len(train), len(test), train.num_folds, test.num_folds) == (4, 2, 1, 1)
    assert train.same.tolist() == [True, True, False, False] and test.same.tolist() == [True, False]
    assert (test.first[1].name, test.second[1].name) == ("Bob_Baker_0001.jpg", "Cy_Single_0001.jpg")


def test_pairs_are_optional(root):
    for name in ("pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt"):
        (root / name).unlink()
    index = parse(root)
    assert index.extras["pairs"] == {} and index.summary() == EXPECTED
    assert any(w.startswith("no pairs.txt, pairsDevTrain.txt, pairsDevTest.txt in ") for w in index.warnings)


def test_cache_notices_a_pairs_file_added_later(root, tmp_path, monkeypatch):
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    text = (root / "pairs.txt").read_text()
    (root / "pairs.txt").unlink()
    assert "view2" not in load_dataset("lfw", root).extras["pairs"]
    assert load_dataset("lfw", root).extras["cache_hit"] is True
    (root / "pairs.txt").write_text(text)
    index = load_dataset("lfw", root)
    assert index.extras["cache_hit"] is False and len(index.extras["pairs"]["view2"]) == 16


# ---------------------------------------------------------------------------------- attribute captions
WOMAN = {  # exclusive groups with several positives: only the arg-max is said
    "Male": -0.5, "White": 0.8, "Asian": 1.1, "Youth": 0.3, "Middle Aged": 0.9, "Smiling": 1.2, "Frowning": 0.1,
    "Brown Hair": 0.4, "Blond Hair": 1.5, "Wavy Hair": 0.2, "Oval Face": 0.5, "Round Face": 0.7,
    "Mouth Slightly Open": 0.3, "Wearing Earrings": 0.6, "Eyeglasses": 0.2, "No Eyewear": 0.9,
    "Blurry": 2.0, "Attractive Woman": 1.0,  # never said
}
BALD_MAN = {"Male": 1.0, "Senior": 0.4, "Bald": 1.3, "Gray Hair": 0.9, "Straight Hair": 0.5, "Sunglasses": 0.8,
            "Eyeglasses": 0.6, "Wearing Necktie": 0.2, "Mustache": 0.1}


@pytest.mark.parametrize(("scores", "captions"), [
    (WOMAN, ["A photo of a smiling middle-aged Asian woman with wavy blond hair, a slightly open mouth and a round "
             "face, wearing earrings.",
             "This woman is smiling, middle-aged and Asian. She has wavy blond hair, a slightly open mouth and a round "
             "face. She is wearing earrings."]),
    (BALD_MAN, ["A photo of an elderly bald man with a mustache, wearing sunglasses and a necktie.",
                "This man is elderly and bald. He has a mustache. He is wearing sunglasses and a necktie."]),
    ({"Male": 0.2, "Smiling": -0.1, "Youth": -0.3}, ["A photo of a man.", "This is a photo of a man."]),
    ({"Male": -1.0, "Baby": 0.4, "Child": 0.5, "Smiling": 0.3}, ["A photo of a smiling girl.", "This girl is smiling."]),
    ({"Male": 0.0, "Oval Face": 0.5, "Square Face": 0.5, "Gray Hair": 0.1},  # a tie goes to the first listed
     ["A photo of a woman with gray hair and an oval face.", "This is a photo of a woman. She has gray hair and an oval face."]),
])
def test_attribute_captions(scores, captions):
    assert attribute_captions(scores) == captions


def test_exclusive_groups_take_the_positive_arg_max_only():
    said = present({"Youth": 0.3, "Senior": 1.2, "Black Hair": 0.5, "Gray Hair": 0.2, "Mouth Closed": -0.1,
                    "Mouth Wide Open": -0.4, "Bangs": 0.1, "Goatee": -2.0})
    assert said == {"Senior", "Black Hair", "Bangs"}
    assert describe({"Bald": 0.1, "Curly Hair": 2.0, "Black Hair": -0.5}).features == ()  # bald: no hair phrase


def test_attribute_rows_by_name_with_spaces_and_missing_rows(root):
    rows = [
        attribute_line("Dee_Dunn", 1, WOMAN),  # written "Dee Dunn"
        attribute_line("Eve_Evans-Smith", 2, BALD_MAN),
        attribute_line("Nobody_Here", 1, WOMAN),  # in no people list: ignored
    ]
    (root / "lfw_attributes.txt").write_text(attributes_text(rows))
    index = parse(root, face2text=None)
    assert "Dee Dunn\t1\t" in rows[0]
    assert _captions_of(index, "lfw/Dee_Dunn/Dee_Dunn_0001.jpg") == attribute_captions(WOMAN)
    assert _captions_of(index, "lfw/Eve_Evans-Smith/Eve_Evans-Smith_0002.jpg")[0].startswith("A photo of an elderly bald man")
    assert _captions_of(index, "lfw/Dee_Dunn/Dee_Dunn_0002.jpg") == []  # no row: kept, gallery only
    assert len(index.images) == 19 and len(index.captions) == 4
    assert "lfw_attributes.txt has no row for 17 of 19 images, e.g. Ann_Able/Ann_Able_0001.jpg" in " ".join(index.warnings)


def test_header_without_tab_after_hash_and_trailing_tabs(root):
    text = attributes_text([attribute_line("Dee_Dunn", 1, WOMAN) + "\t"]).replace("#\tperson", "#person")
    (root / "lfw_attributes.txt").write_text(text.replace("\n", "\r\n"))
    index = parse(root, face2text=None)
    assert _captions_of(index, "lfw/Dee_Dunn/Dee_Dunn_0001.jpg") == attribute_captions(WOMAN)


# ---------------------------------------------------------------------------------- Face2Text v0.1
def test_face2text_replaces_attribute_captions(root):
    index = parse(root)
    assert _captions_of(index, "lfw/Ann_Able/Ann_Able_0001.jpg") == [
        "A woman with short red hair and a wide smile.",  # newline, tab and double space collapsed
        "Round face, freckles and small earrings.",
    ]
    assert _captions_of(index, "lfw/George_W_Bush/George_W_Bush_0004.jpg") == ["An older man with grey hair in a dark suit."]
    assert _captions_of(index, "lfw/Ann_Able/Ann_Able_0002.jpg")[0].startswith("A photo of a")  # attributes elsewhere
    assert ("clean.json: 1 of 3 described images are not in the index, e.g. Cy_Single/Cy_Single_0001.jpg "
            "(not in the people list, or single-image evaluation identities)") in index.warnings


def test_face2text_raw_json_when_no_clean_json_and_explicit_file(root):
    (root / "face2text" / "clean.json").rename(root / "descriptions.json")
    assert _captions_of(parse(root), "lfw/Ann_Able/Ann_Able_0001.jpg") == ["asdf"]  # raw.json (junk)
    explicit = parse(root, face2text="descriptions.json")
    assert _captions_of(explicit, "lfw/Ann_Able/Ann_Able_0001.jpg")[1] == "Round face, freckles and small earrings."
    assert root / "descriptions.json" in explicit.sources


def test_face2text_off_or_absent_and_attributes_off(root):
    without = parse(root, face2text=None)
    assert len(_captions_of(without, "lfw/Ann_Able/Ann_Able_0001.jpg")) == 2
    assert _captions_of(without, "lfw/George_W_Bush/George_W_Bush_0004.jpg") == []
    shutil.rmtree(root / "face2text")
    assert parse(root).summary() == without.summary()  # the default folder is optional
    only_face2text = write_lfw(root.parent / "F2T")
    index = parse(only_face2text, attributes=None)
    assert [c.text for c in index.captions] == [
        "A woman with short red hair and a wide smile.", "Round face, freckles and small earrings.",
        "An older man with grey hair in a dark suit.",
    ]


# ---------------------------------------------------------------------------------- errors
def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(("edit", "options", "message"), [
    (lambda r: _edit(r / "people.txt", "Kim_Kay\t1", "Ann_Able\t1"), {},
     "{r}/people.txt: line 16: 'Ann_Able' is already listed on line 3 of people.txt (a person belongs to one fold only)"),
    (lambda r: (r / "people.txt").write_text("\n\n"), {},
     "{r}/people.txt: empty file, expected the number of folds (truncated file?)"),
    (lambda r: (r / "people.txt").write_text(people_text(FOLDS).replace("4\n3\n", "4\n3 x\n", 1)), {},
     "{r}/people.txt: line 2: expected the number of people in fold 0 of 4 (one integer), got '3 x'"),
    (lambda r: None, {"val_fold": 0}, "val_fold and test_fold should differ, both are 0"),
    (lambda r: None, {"protocol": "view3"}, "protocol should be view2 or view1, got 'view3'"),
    (lambda r: (r / "peopleDevTest.txt").unlink(), {"protocol": "view1"},
     "{r}/peopleDevTest.txt: LFW View 1 people list not found"),
    (lambda r: _edit(r / "peopleDevTrain.txt", "8\n", "9\n"), {"protocol": "view1"},
     "{r}/peopleDevTrain.txt: file ends after line 9, expected 'Name<TAB>num_images' (person 9 of 9 in the list) "
     "(truncated file?)"),
    (lambda r: _edit(r / "pairs.txt", "Ann_Able\t1\t2", "Zed_Zero\t1\t2"), {},
     "{r}/pairs.txt: line 2: 'Zed_Zero' is not in the people list"),
    (lambda r: _edit(r / "pairs.txt", "Ann_Able\t1\t2", "Ann_Able\tone\t2"), {},
     "{r}/pairs.txt: line 2: image number of 'Ann_Able' should be an integer, got 'one'"),
    (lambda r: _edit(r / "pairsDevTrain.txt", "2\n", "2\t0\n"), {},
     "{r}/pairsDevTrain.txt: line 1: expected the header '<folds><TAB><pairs per class>' such as '10 300' "
     "(or '<pairs per class>' such as '1100' in pairsDev*.txt), got '2 0'"),
    (lambda r: (r / "pairs.txt").write_text((r / "pairs.txt").read_text() + "Jo_Jones\t1\t2\n"), {},
     "{r}/pairs.txt: line 1: header '4 2' promises 16 pair lines (4 fold(s) x 2 x 2), found 17"),
    (lambda r: _edit(r / "lfw_attributes.txt", "Ann Able\t1\t", "Ann Able\t1st\t"), {},
     "{r}/lfw_attributes.txt: line 3: imagenum should be an integer, got '1st'"),
    (lambda r: (r / "face2text" / "clean.json").write_text(json.dumps([{"image": "A/A_0001.bmp", "descriptions": "x"}])),
     {}, "{r}/face2text/clean.json: record 0: field 'descriptions' should be list, got str"),
    (lambda r: None, {"face2text": "f2t.json"}, "{r}/f2t.json: Face2Text v0.1 file or folder (option face2text) not found"),
    (lambda r: None, {"image_dir": "lfw_funneled"}, "{r}/lfw_funneled: LFW image folder (option image_dir) not found"),
    (lambda r: shutil.rmtree(r / "lfw"), {},
     "{r}: LFW image folder not found (expected one of: lfw, lfw-deepfunneled, lfw_funneled)"),
])
def test_error_messages(root, edit, options, message):
    edit(root)
    with pytest.raises(DatasetFormatError) as error:
        parse(root, **options)
    assert str(error.value) == message.format(r=root)
