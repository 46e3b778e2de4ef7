"""Dataset-specific behaviour of the CUHK-PEDES, ICFG-PEDES, RSTPReid and custom parsers."""
from __future__ import annotations

import json
import logging
import os

import pytest
from layouts.pedes import CUSTOM_EXPECTED, write_cuhk, write_custom, write_icfg, write_rstp

from xsearch.datamodules import DatasetFormatError, RetrievalDataModule, load_dataset
from xsearch.datamodules.files import FolderListing
from xsearch.datamodules.pedes import normalize_caption


def _load(name, root, **options):
    return load_dataset(name, root, options, cache=False)


# ---------------------------------------------------------------------------------- CUHK-PEDES
def test_cuhk_mixed_folders_extensions_and_quirk_warnings(tmp_path):
    index = _load("cuhk_pedes", write_cuhk(tmp_path / "c"))
    suffixes = {p.path.suffix for p in index.images}
    assert suffixes == {".png", ".bmp", ".jpg"}
    assert index.images[8].path == tmp_path / "c" / "imgs" / "test_query" / "p2703_s3526.jpg"
    assert index.images[8].split == "test"  # "Test" lower-cased
    assert "train: 1 of 3 identities have a single image" in index.warnings
    assert any(w.startswith("train: 3 identities / 5 images / 10 captions differ from the published 11003") for w in index.warnings)


def test_cuhk_max_captions_per_image_keeps_the_first(tmp_path):
    root = write_cuhk(tmp_path / "c")
    index = _load("cuhk_pedes", root, max_captions_per_image=2)
    assert index.summary()["test"]["captions"] == 6  # 10 -> 2, 2, 3 -> 2
    texts = [c.text for c in index.captions if c.image_index == 8]
    assert texts == [f"Person 12004 wears item {k} in picture p2703_s3526." for k in (0, 1)]
    with pytest.raises(DatasetFormatError, match="max_captions_per_image should be >= 1"):
        _load("cuhk_pedes", root, max_captions_per_image=0)


def test_cuhk_caption_all_json_id_range_split_is_opt_in_and_flagged(tmp_path):
    reference = _load("cuhk_pedes", write_cuhk(tmp_path / "a"))
    root = write_cuhk(tmp_path / "b", "caption_all.json", with_split=False)
    with pytest.raises(DatasetFormatError, match=r"caption_all\.json: record 0: missing field 'split'"):
        _load("cuhk_pedes", root)
    derived = _load("cuhk_pedes", root, id_range_split=True)
    assert derived.summary() == reference.summary()
    assert [i.split for i in derived.images] == [i.split for i in reference.images]
    assert derived.warnings[0].startswith("split derived from the id ranges")
    records = json.loads((root / "caption_all.json").read_text())
    records[3]["id"] = 20000
    (root / "caption_all.json").write_text(json.dumps(records))
    with pytest.raises(DatasetFormatError, match=r"record 3: id 20000 is outside the standard ranges 1\.\.13003"):
        _load("cuhk_pedes", root, id_range_split=True)


# ---------------------------------------------------------------------------------- ICFG-PEDES
@pytest.mark.parametrize("spelling", ["ICFG-PEDES.json", "ICFG_PEDES.json", "ICFG-PDES.json"])
def test_icfg_accepts_every_json_spelling(tmp_path, spelling):
    index = _load("icfg_pedes", write_icfg(tmp_path / "i", spelling))
    assert index.sources == [tmp_path / "i" / spelling] and len(index.images) == 9


def test_icfg_split_comes_from_json_not_folders_and_repeated_paths_stay_items(tmp_path):
    index = _load("icfg_pedes", write_icfg(tmp_path / "i"))
    in_test_folder = [i for i in index.images if i.path.parts[-3] == "test"]
    assert {i.split for i in in_test_folder} == {"train", "test"}
    assert index.images[2].path == index.images[3].path and index.images[2].index != index.images[3].index
    assert [c.image_index for c in index.captions] == list(range(9))  # one caption per image, keyed by record


def test_icfg_validation_falls_back_to_test_and_says_so(tmp_path, caplog):
    dm = RetrievalDataModule("icfg_pedes", str(write_icfg(tmp_path / "i")), num_workers=0, cache_index=False)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.eval_split == "test"
    assert "icfg_pedes has no 'val' split: validation and checkpoint selection use the TEST split" in caplog.text


# ---------------------------------------------------------------------------------- RSTPReid
DIRTY = "The woman wears a long beige coat.Her trousers are black  and her boots brown."
CLEAN = "The woman wears a long beige coat. Her trousers are black and her boots brown."


def test_normalize_caption_by_hand():
    assert normalize_caption(DIRTY) == CLEAN
    assert normalize_caption("  grey\tcoat,black shoes \n") == "grey coat, black shoes"
    assert normalize_caption("walks\u3002 \u4e2d\u6587 fast", ascii_only=True) == "walks fast"
    assert normalize_caption("a 1.5 m tall man, e.g. him") == "a 1.5 m tall man, e.g. him"


@pytest.mark.parametrize(("mode", "train_clean", "eval_clean"), [("off", False, False), ("train", True, False), ("all", True, True)])
def test_rstp_normalisation_never_touches_evaluation_text_unless_asked(tmp_path, mode, train_clean, eval_clean):
    index = _load("rstpreid", write_rstp(tmp_path / "r"), normalize_captions=mode)
    train_text = index.captions[0].text  # pid 0, camera 1: the dirty caption
    val_text = next(c.text for c in index.captions if c.pid == 3 and c.text.startswith("The woman"))
    assert train_text == (CLEAN if train_clean else DIRTY)
    assert val_text == (CLEAN if eval_clean else DIRTY)


def test_rstp_ascii_only_and_cross_identity_duplicates_are_reported_not_removed(tmp_path):
    index = _load("rstpreid", write_rstp(tmp_path / "r"), normalize_captions="all", ascii_only=True)
    assert index.captions[1].text == "A woman with shoulder-length hair walks while looking at her phone"
    raw = _load("rstpreid", write_rstp(tmp_path / "raw"))
    assert raw.captions[1].text.endswith("\u3002")
    shared = [w for w in raw.warnings if "appear on images of different identities" in w]
    assert len(shared) == 1 and shared[0].startswith("1 caption texts") and "never deduplicated" in shared[0]
    assert sum(c.text == DIRTY for c in raw.captions) == 2


def test_rstp_old_release_is_recognised(tmp_path):
    root = write_rstp(tmp_path / "r")
    records = json.loads((root / "data_captions.json").read_text())
    by_split = {"train": 3901, "val": 100, "test": 100}
    fake = []
    for split, n in by_split.items():
        fake += [{**records[0], "split": split, "id": len(fake) + k} for k in range(n)]
    (root / "data_captions.json").write_text(json.dumps(fake))
    index = _load("rstpreid", root)
    assert index.warnings[0].startswith("identities per split are 3901/100/100: this is the old RSTPReid release")


# ---------------------------------------------------------------------------------- custom
def test_custom_csv_and_jsonl_give_the_same_index(tmp_path):
    jsonl = _load("custom", write_custom(tmp_path / "j", "jsonl"))
    csv = _load("custom", write_custom(tmp_path / "c", "csv"))
    assert jsonl.summary() == csv.summary() == CUSTOM_EXPECTED
    assert [c.text for c in jsonl.captions] == [c.text for c in csv.captions]
    assert [(i.pid, i.split, i.camid) for i in jsonl.images] == [(i.pid, i.split, i.camid) for i in csv.images]
    assert jsonl.identity_names == {0: "alice", 1: "bob", 2: "carol", 3: "dave", 4: "erin", 5: "frank"}
    assert "val: 1 of 3 images have no caption (gallery only)" in jsonl.warnings


def test_custom_integer_ids_are_kept_and_mixed_ids_rejected(tmp_path):
    root = tmp_path / "c"
    write_custom(root)
    lines = [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]
    for row in lines:
        row["pid"] = 100 + ord(row["pid"][0])
    (root / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    index = _load("custom", root)
    assert index.images[0].pid == 100 + ord("a") and index.identity_names == {}
    lines[0]["pid"] = "alice"
    (root / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    with pytest.raises(DatasetFormatError, match="field 'pid' mixes integers and names"):
        _load("custom", root)


# ---------------------------------------------------------------------------------- shared
def test_folder_listing_lists_each_folder_once(tmp_path, monkeypatch):
    root = write_cuhk(tmp_path / "c")
    paths = [p for p in (root / "imgs").rglob("*") if p.is_file()] + [root / "imgs" / "Market" / "nope.jpg"]
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real(p))
    listing = FolderListing()
    assert listing.missing(paths) == [root / "imgs" / "Market" / "nope.jpg"]
    assert len(calls) == len({p.parent for p in paths}) == 7


def test_unknown_parser_option_is_one_line(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"dataset 'rstpreid': .*'max_captions'; options: normalize_captions, ascii_only"):
        _load("rstpreid", write_rstp(tmp_path / "r"), max_captions=2)


def test_train_labels_are_contiguous_and_evaluation_keeps_raw_ids(tmp_path):
    root = write_cuhk(tmp_path / "c")
    records = json.loads((root / "reid_raw.json").read_text())
    records[2]["id"] = records[3]["id"] = 7  # a gap: train ids 1, 7, 3
    (root / "reid_raw.json").write_text(json.dumps(records))
    dm = RetrievalDataModule("cuhk_pedes", str(root), image_size=(16, 8), num_workers=0, cache_index=False)
    dm.setup("fit")
    assert dm.labels == {1: 0, 3: 1, 7: 2}
    assert sorted({dm.train_set[i]["pid"] for i in range(len(dm.train_set))}) == [0, 1, 2]
    queries, gallery = dm.eval_sets["val"]
    assert {queries[i]["pid"] for i in range(len(queries))} == {11004, 11005}
    assert [gallery[i]["pid"] for i in range(len(gallery))] == [11004, 11004, 11005]
