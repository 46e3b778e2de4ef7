"""COCO-PFS parser and identity-enriched captions (the shared layout checks live in test_dataset_layouts.py)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from layouts import coco_pfs as fixture

from xsearch import entity_captions as ec
from xsearch.cli import main
from xsearch.datamodules import DatasetFormatError, load_dataset
from xsearch.datamodules.coco_pfs import (
    face_descriptor, face_vector, parse, read_identity_names, sorted_numbers, split_key, vggface_numbers,
)

SHAPES = dict(zip(("replace", "brackets", "whose"), ec.KEYWORD_SHAPES))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.build(tmp_path_factory.mktemp("coco_pfs")).root


@pytest.fixture(scope="module")
def index(root):
    return parse(root)


def captions_of(index, name: str) -> list[str]:
    """Caption texts of the image whose file is ``name``."""
    image = next(r.index for r in index.images if r.path.name == name)
    return [c.text for c in index.captions if c.image_index == image]


# --------------------------------------------------------------------------------------
# keys, paths, items
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, expected", [
    ("391895_n000078", (391895, "n000078")),
    ("7_n000001", (7, "n000001")),
    ("12_odd_class_id", (12, "odd_class_id")),  # split at the FIRST underscore only
])
def test_split_key_at_first_underscore(key, expected):
    assert split_key(key, Path("f.json")) == expected


@pytest.mark.parametrize("key, message", [
    ("391895n000078", r"f\.json: key '391895n000078': expected '<COCO image id>_<class id>'"),
    ("_n000078", r"expected '<COCO image id>_<class id>'"),
    ("391895_", r"expected '<COCO image id>_<class id>'"),
    ("abc_n000078", r"f\.json: key 'abc_n000078': COCO image id 'abc' should be an integer"),
])
def test_split_key_errors(key, message):
    with pytest.raises(DatasetFormatError, match=message):
        split_key(key, Path("f.json"))


def test_items_are_feature_keys_with_double_extension_paths(index, root):
    paths = [str(r.path.relative_to(root)) for r in index.images]
    assert paths[:2] == [
        "coco_dataset/coco_train_swapped/000000391895.jpg_n000078.jpg",
        "coco_dataset/coco_train_swapped/000000391895.jpg_n000150.jpg",
    ]
    assert paths[3] == "coco_dataset/coco_val_swap_new/000000397133.jpg_n000001.jpg"
    assert index.extras["item_keys"] == [k for split in ("train", "val", "test") for k in fixture.KEYS[split]]
    assert [r.split for r in index.images] == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    assert all(r.path.is_file() for r in index.images)


def test_shared_coco_image_gives_separate_items(index):
    first, second = index.images[0], index.images[1]
    assert (first.pid, second.pid) == (78, 150) and first.path != second.path
    a = captions_of(index, first.path.name)
    b = captions_of(index, second.path.name)
    assert len(a) == len(b) == 5
    assert all("Carla Placeholder" in t for t in a) and all("Dario Fixture" in t for t in b)
    # the same COCO image in val and test is two items too (different identity files)
    shared = [r for r in index.images if r.path.name.startswith("000000252219.jpg_")]
    assert [(r.split, r.pid) for r in shared] == [("val", 2), ("test", 9002)]


def test_pids_are_vggface_numbers_and_names_from_csv(index):
    assert sorted({r.pid for r in index.images}) == [1, 2, 78, 150, 9001, 9002]
    assert index.identity_names == {pid: fixture.NAMES[pid] for pid in (1, 2, 78, 150, 9001, 9002)}
    assert index.extras["class_ids"] == {1: "n000001", 2: "n000002", 78: "n000078", 150: "n000150",
                                         9001: "n009001", 9002: "n009002"}


def test_first_five_captions_stripped(root):
    index = parse(root, entity="none")
    assert captions_of(index, "000000391895.jpg_n000078.jpg") == [c.strip() for c in fixture.COCO_TRAIN[391895][:5]]
    assert captions_of(index, "000000252219.jpg_n009002.jpg") == fixture.COCO_VAL[252219][:5]
    assert not any("sixth caption" in c.text for c in index.captions)


def test_face_crop_folders_and_no_image_indices_in_extras(index, root):
    assert index.extras["face_crop_dirs"] == {p: root / "vggface_test_kaggle" / c for p, c in ((9001, "n009001"), (9002, "n009002"))}
    assert set(index.extras) == {"face_features", "face_feature_row", "item_keys", "class_ids", "face_crop_dirs", "entity",
                                 "plain_captions"}


# --------------------------------------------------------------------------------------
# caption construction (pure functions)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("caption, count", [
    ("A man riding a horse.", 1),
    ("MAN on a horse", 1),
    ("A man and a woman.", 2),
    ("A man next to another man.", 2),
    ("Men and women at work.", 0),  # plurals are other words
    ("Personal items on a female's desk.", 1),  # 'personal' is not 'person'; 'female' is not 'male'
    ("A child-sized bike.", 1),
    ("A bunch of cows.", 0),
])
def test_keyword_matches_whole_words_any_case(caption, count):
    assert len(ec.keyword_matches(caption)) == count


@pytest.mark.parametrize("caption, shape, expected", [
    ("A man riding a horse.", "replace", "[ENTITY] riding a horse."),
    ("A man riding a horse.", "brackets", "A man ([ENTITY]) riding a horse."),
    ("A man riding a horse.", "whose", "A man (whose name is [ENTITY]) riding a horse."),
    ("There is an adult with a knife.", "replace", "There is [ENTITY] with a knife."),
    ("There is an adult with a knife.", "brackets", "There is an adult ([ENTITY]) with a knife."),
    ("A young man riding.", "replace", "A young [ENTITY] riding."),  # the article is not right before the slot
    ("Woman in a hat.", "brackets", "Woman ([ENTITY]) in a hat."),  # the keyword keeps its case
    ("Cows and a GIRL.", "whose", "Cows and a GIRL (whose name is [ENTITY])."),
    ("Cows and a GIRL.", "replace", "Cows and [ENTITY]."),
    ("Panama man in a hat.", "replace", "Panama [ENTITY] in a hat."),  # 'a' inside a word is no article
])
def test_keyword_shapes_and_article_removal(caption, shape, expected):
    (match,) = ec.keyword_matches(caption)
    assert ec.insert_at_keyword(caption, match, SHAPES[shape]) == expected


@pytest.mark.parametrize("caption", ["A bunch of cows in a field.", "A man and a woman near a car."])
def test_prefix_when_zero_or_several_keywords(caption):
    outputs = {ec.entity_caption(caption, f"key#{n}") for n in range(60)}
    assert outputs == {f"{template} {caption}" for template in ec.PREFIX_TEMPLATES}
    assert "An image with a person whose name is [ENTITY]. " + caption in outputs


def test_single_keyword_uses_all_three_shapes():
    outputs = {ec.entity_caption(" A man riding a horse. ", f"key#{n}") for n in range(60)}
    assert outputs == {"[ENTITY] riding a horse.", "A man ([ENTITY]) riding a horse.",
                       "A man (whose name is [ENTITY]) riding a horse."}


def test_fill_entity():
    assert ec.fill_entity("[ENTITY]. A man ([ENTITY]).", "Eva Mock") == "Eva Mock. A man (Eva Mock)."


def test_choices_do_not_depend_on_the_process():
    """CRC32 seeds: a fresh interpreter with another hash seed builds the same caption."""
    here = [ec.entity_caption("A man riding a horse.", f"391895_n000078#{n}") for n in range(5)]
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('ec', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "print('\\n'.join(m.entity_caption('A man riding a horse.', f'391895_n000078#{n}') for n in range(5)))"
    )
    out = subprocess.run([sys.executable, "-c", code, ec.__file__], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345"})
    assert out.stdout.splitlines() == here


# --------------------------------------------------------------------------------------
# entity option, determinism, cache
# --------------------------------------------------------------------------------------
def test_entity_name_slot_none_agree(root, index):
    slot = parse(root, entity="slot")
    plain = parse(root, entity="none")
    for named, slotted, original in zip(index.captions, slot.captions, plain.captions):
        assert slotted.text.count("[ENTITY]") == 1
        assert ec.fill_entity(slotted.text, index.identity_names[named.pid]) == named.text
        assert "[ENTITY]" not in original.text and "[ENTITY]" not in named.text
    assert captions_of(index, "000000391895.jpg_n000078.jpg")[0] == (
        "A man (Carla Placeholder) with a red helmet on a small moped on a dirt road."
    )


def test_entity_option_is_checked(root):
    with pytest.raises(DatasetFormatError, match=r"coco_pfs: entity should be one of name, slot, none, got 'both'"):
        parse(root, entity="both")


def test_parse_is_deterministic_and_cached(root, tmp_path, monkeypatch):
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    first = load_dataset("coco_pfs", root)
    second = load_dataset("coco_pfs", root)
    assert (first.extras["cache_hit"], second.extras["cache_hit"]) == (False, True)
    assert [c.text for c in first.captions] == [c.text for c in second.captions] == [c.text for c in parse(root).captions]
    assert np.array_equal(first.extras["face_features"], second.extras["face_features"])


def test_changed_features_file_invalidates_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    root = fixture.build(tmp_path / "data").root
    load_dataset("coco_pfs", root)
    fixture.edit_json(fixture.FEATURES["val"], lambda f: f.pop("37777_n000001"))(root)
    again = load_dataset("coco_pfs", root)
    assert not again.extras["cache_hit"] and again.summary()["val"]["images"] == 2


# --------------------------------------------------------------------------------------
# face descriptors
# --------------------------------------------------------------------------------------
def test_nested_and_flat_descriptors(index):
    features = index.extras["face_features"]
    assert features.shape == (9, 512) and features.dtype == np.float32
    for row, key in enumerate(index.extras["item_keys"]):
        assert np.allclose(features[row], fixture.face(key), atol=1e-6), key
    assert {"391895_n000078", "391895_n000150"} <= set(index.extras["item_keys"])  # one nested, one flat
    assert "391895_n000078" in fixture.NESTED and "391895_n000150" not in fixture.NESTED


def test_face_vector_accepts_both_layouts():
    flat = list(np.linspace(-1, 1, 512))
    assert face_vector([flat], Path("f.json"), "k").shape == (512,)
    assert np.array_equal(face_vector([flat], Path("f.json"), "k"), face_vector(flat, Path("f.json"), "k"))
    assert face_vector([1] * 512, Path("f.json"), "k").dtype == np.float32  # integers are numbers too


@pytest.mark.parametrize("value, got", [
    ([0.0] * 511, r"got shape \(511,\)"),
    ([[0.0] * 512] * 2, r"got shape \(2, 512\)"),
    ([[[0.0] * 512]], r"got shape \(1, 1, 512\)"),
    ({"x": 1}, "got dict"),
    ("0.1", "got str"),
    ([[0.0] * 512, [0.0]], "got a ragged list"),
    (["0.1"] * 512, "got non-numeric values"),
    ([True] * 512, "got non-numeric values"),
    ([None] * 512, "got non-numeric values"),
])
def test_face_vector_errors(value, got):
    expected = r"^f\.json: key 'k': face descriptor should be 512 numbers \(flat or nested 1x512\), " + got + "$"
    with pytest.raises(DatasetFormatError, match=expected):
        face_vector(value, Path("f.json"), "k")


def test_face_descriptor_survives_drop_images(root):
    index = parse(root)
    wanted = {r.path: fixture.face(k) for r, k in zip(index.images, index.extras["item_keys"])}
    index.drop_images({index.images[0].path, index.images[5].path})
    assert len(index.images) == 7
    for image in index.images:
        assert np.allclose(face_descriptor(index, image), wanted[image.path], atol=1e-6)


# --------------------------------------------------------------------------------------
# identities: CSV quirks, numbering, warnings
# --------------------------------------------------------------------------------------
def test_identity_csv_spaces_and_quoted_commas(root):
    names = read_identity_names(root / fixture.META)
    assert names["n009001"] == "Smith, John Jr."
    assert names["n000002"] == "Bruno Sample"
    assert names["n000001"] == "Alba Example"
    assert len(names) == 7


def test_identity_csv_without_name_column(tmp_path):
    path = tmp_path / "identity_meta.csv"
    path.write_text("Class_ID, Label\nn000001, x\n")
    with pytest.raises(DatasetFormatError, match=r"identity_meta\.csv: missing column 'Name'"):
        read_identity_names(path)


def test_identity_missing_from_csv_keeps_class_id(tmp_path):
    root = fixture.build(tmp_path).root
    meta = root / fixture.META
    meta.write_text("\n".join(line for line in meta.read_text().splitlines() if not line.startswith("n009002")))
    index = parse(root)
    assert index.identity_names[9002] == "n009002"
    assert any(re.search(r"1 identities are not in .*identity_meta\.csv \(e\.g\. n009002\)", w) for w in index.warnings)
    assert captions_of(index, "000000397133.jpg_n009002.jpg")[3] == "n009002 standing by a stove in a kitchen."


def test_numbering_of_class_ids():
    assert vggface_numbers(["n000078", "n009001", "n000078"]) == {"n000078": 78, "n009001": 9001}
    assert vggface_numbers(["n000078", "n78"]) is None  # collision
    assert vggface_numbers(["n000078", "celebrity_7"]) is None
    assert sorted_numbers(["n2", "b", "a", "b"]) == {"a": 0, "b": 1, "n2": 2}


def test_non_vggface_class_ids_are_numbered_in_sorted_order(tmp_path):
    root = fixture.build(tmp_path).root
    fixture.edit_json(fixture.FEATURES["test"], fixture.rename_key("87038_n009001", "87038_celeb_x"))(root)
    index = parse(root)
    assert index.extras["class_ids"] == dict(enumerate(["celeb_x", "n000001", "n000002", "n000078", "n000150", "n009002"]))
    assert index.identity_names[0] == "celeb_x"
    assert any("numbered in sorted class-id order" in w for w in index.warnings)


def test_test_identity_seen_in_train_is_reported(tmp_path):
    root = fixture.build(tmp_path).root
    fixture.edit_json(fixture.FEATURES["train"], lambda f: f.__setitem__("184613_n009001", fixture.face("x")))(root)
    assert any("test: 1 of 2 identities also appear in train" in w for w in parse(root).warnings)


# --------------------------------------------------------------------------------------
# bad inputs: one-line errors naming the file and the key / record
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", fixture.BAD_INPUTS, ids=lambda b: b.name)
def test_bad_input_messages(bad, tmp_path):
    root = fixture.build(tmp_path).root
    bad.mutate(root)
    with pytest.raises(DatasetFormatError) as error:
        parse(root, **bad.options)
    message = str(error.value)
    assert "\n" not in message and str(root) in message
    assert re.search(bad.message, message), message


def test_cli_check_bad_input_exit_code_and_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    root = fixture.build(tmp_path / "data").root
    fixture.truncate(fixture.FEATURES["test"])(root)
    assert main(["data", "check", "coco_pfs", "--root", str(root)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(r"features_new_entities_test_small_faceswap\.json: invalid JSON", lines[0])


def test_cli_check_prints_counts(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XSEARCH_CACHE", str(tmp_path / "cache"))
    assert main(["data", "check", "coco_pfs", "--root", str(root), "--option", "entity=slot"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == fixture.EXPECTED
