"""Synthetic CUHK-PEDES / CelebA generators: layout, determinism, caption truthfulness, atomic writes."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xsearch import synth as syn
from xsearch.face_captions import CELEBA_ATTRIBUTES, celeba_caption

OFFICIAL_CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()

PEDES_KW = dict(identities=20, images_per_identity=(1, 3), progress=False)
FACES_KW = dict(identities=10, images_per_identity=(2, 3), captions_per_image=4, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pedes(tmp_path_factory) -> Path:
    return syn.generate_pedes(tmp_path_factory.mktemp("p") / "CUHK-PEDES", seed=3, **PEDES_KW)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return syn.generate_faces(tmp_path_factory.mktemp("f") / "CelebA", seed=3, **FACES_KW)


# --------------------------------------------------------------------------------------------- pedes

def test_pedes_deterministic_and_seed_dependent(pedes: Path, tmp_path: Path) -> None:
    again = syn.generate_pedes(tmp_path / "again", seed=3, **PEDES_KW)
    a, b = _files(pedes), _files(again)
    assert a.keys() == b.keys() and a == b
    other = syn.generate_pedes(tmp_path / "other", seed=4, **PEDES_KW)
    assert _files(other)["reid_raw.json"] != a["reid_raw.json"]


def test_pedes_cuhk_layout(pedes: Path) -> None:
    records = json.loads((pedes / "reid_raw.json").read_text())
    assert isinstance(records, list) and records
    ids_by_split: dict[str, set[int]] = defaultdict(set)
    for r in records:
        assert list(r) == ["split", "captions", "file_path", "processed_tokens", "id"]
        assert r["split"] in ("train", "val", "test")
        assert isinstance(r["id"], int) and r["id"] >= 1
        assert isinstance(r["captions"], list) and len(r["captions"]) == 2
        assert all(isinstance(c, str) and c for c in r["captions"])
        assert r["captions"][0] != r["captions"][1]
        assert r["processed_tokens"] == [syn.tokenize(c) for c in r["captions"]]
        for caption, toks in zip(r["captions"], r["processed_tokens"]):
            assert all(t == t.lower() and re.fullmatch(r"[a-z0-9]+", t) for t in toks)
            assert " ".join(toks) == re.sub(r"\s+", " ", re.sub(r"[^a-z0-9]+", " ",
                                                                 caption.lower().replace("'", ""))).strip()
        src, name = r["file_path"].split("/")
        assert src in syn.PEDES_SOURCES and name.endswith(".jpg")
        assert (pedes / "imgs" / r["file_path"]).is_file()
        ids_by_split[r["split"]].add(r["id"])
    # split by identity, contiguous ranges train < val < test, 1-based and gap-free
    assert [len(ids_by_split[s]) for s in ("train", "val", "test")] == list(syn.split_counts(20)) == [16, 2, 2]
    assert max(ids_by_split["train"]) < min(ids_by_split["val"]) <= max(ids_by_split["val"]) < min(ids_by_split["test"])
    all_ids = sorted(set().union(*ids_by_split.values()))
    assert all_ids == list(range(1, 21))
    paths = [r["file_path"] for r in records]
    assert len(set(paths)) == len(paths)
    assert sorted(str(p.relative_to(pedes / "imgs")) for p in (pedes / "imgs").rglob("*.jpg")) == sorted(paths)


def test_pedes_image_size(pedes: Path, tmp_path: Path) -> None:
    for p in list((pedes / "imgs").rglob("*.jpg"))[:10]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 160)
    out = syn.generate_pedes(tmp_path / "small", identities=3, images_per_identity=(1, 1), image_size=(128, 48),
                             progress=False)
    sizes = {Image.open(p).size for p in (out / "imgs").rglob("*.jpg")}
    assert sizes == {(48, 128)}


def test_pedes_captions_mention_only_true_attributes(pedes: Path) -> None:
    people = syn.pedes_attributes(20, seed=3)
    records = json.loads((pedes / "reid_raw.json").read_text())
    for r in records:
        allowed = syn.person_colour_words(people[r["id"] - 1])
        for c in r["captions"]:
            assert syn.caption_colour_words(c) <= allowed, (c, allowed)
    # many more captions without rendering: colours, garments and accessories must be the identity's own
    top_words = {"dress": "dress", "hoodie": "hoodie", "coat": "overcoat"}
    for a in syn.pedes_attributes(150, seed=11):
        rng = np.random.default_rng(a.id)
        allowed = syn.person_colour_words(a)
        for view in ("front", "back", "side"):
            for c in syn.pedes_captions(a, rng, {"view": view, "occluded": False}, n=4):
                toks = set(syn.tokenize(c))
                assert syn.caption_colour_words(c) <= allowed, (c, a)
                assert ("backpack" in toks or "rucksack" in toks) <= (a.bag == "backpack"), c
                assert ("skirt" in toks) <= (a.bottom == "skirt"), c
                assert ("jeans" in toks) <= (a.bottom == "jeans"), c
                assert ({"glasses", "eyeglasses", "spectacles"} & toks == set()) or a.glasses, c
                assert ("scarf" in toks) <= (a.scarf_colour is not None), c
                assert ("bald" in toks) <= (a.hair_length == "bald"), c
                for garment, word in top_words.items():
                    assert (word in toks) <= (a.top == garment), c
                assert (toks & {"man", "guy", "gentleman", "boy"} == set()) or a.gender == "male", c
                assert (toks & {"woman", "lady", "girl"} == set()) or a.gender == "female", c


def test_pedes_attribute_space_is_varied() -> None:
    people = syn.pedes_attributes(400, seed=0)
    combos = {tuple(sorted(p.as_dict().items(), key=lambda kv: kv[0]))[1:] for p in people}
    assert len(combos) >= 390  # identities rarely share the full attribute combination
    assert {p.top for p in people} == {"t-shirt", "shirt", "jacket", "coat", "hoodie", "sweater", "dress"}
    assert {p.bottom for p in people} == {"trousers", "jeans", "shorts", "skirt", None}
    assert {p.bag for p in people} == {None, "backpack", "shoulder bag", "handbag"}
    assert {p.top_colour for p in people} == set(syn.COLOURS)
    assert all(p.bottom is None for p in people if p.top == "dress")
    assert all(p.gender == "female" for p in people if p.top == "dress" or p.bottom == "skirt")


def test_split_counts() -> None:
    assert syn.split_counts(1000) == (800, 100, 100)
    assert syn.split_counts(10) == (8, 1, 1)
    assert syn.split_counts(3) == (1, 1, 1)
    assert syn.split_counts(1) == (1, 0, 0)


# --------------------------------------------------------------------------------------------- faces

def test_faces_deterministic_and_seed_dependent(faces: Path, tmp_path: Path) -> None:
    again = syn.generate_faces(tmp_path / "again", seed=3, **FACES_KW)
    a = _files(faces)
    assert a == _files(again)
    other = syn.generate_faces(tmp_path / "other", seed=4, **FACES_KW)
    assert _files(other)["Anno/list_attr_celeba.txt"] != a["Anno/list_attr_celeba.txt"]


def test_faces_celeba_layout(faces: Path) -> None:
    assert tuple(OFFICIAL_CELEBA_ATTRIBUTES) == CELEBA_ATTRIBUTES
    attr_lines = (faces / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    n = int(attr_lines[0])
    assert attr_lines[1].split() == OFFICIAL_CELEBA_ATTRIBUTES
    rows = [line.split() for line in attr_lines[2:]]
    assert len(rows) == n and n > 0
    files = [r[0] for r in rows]
    assert files == [f"{i:06d}.jpg" for i in range(1, n + 1)]
    assert "  1" in "\n".join(attr_lines[2:])  # padded with runs of spaces like the official file
    attrs = {}
    for r in rows:
        assert len(r) == 41 and set(r[1:]) <= {"-1", "1"}
        attrs[r[0]] = {k: v == "1" for k, v in zip(OFFICIAL_CELEBA_ATTRIBUTES, r[1:])}
    ident = dict(line.split() for line in (faces / "Anno" / "identity_CelebA.txt").read_text().splitlines())
    part = dict(line.split() for line in (faces / "Eval" / "list_eval_partition.txt").read_text().splitlines())
    assert list(ident) == files and list(part) == files
    assert {int(v) for v in ident.values()} == set(range(1, 11))
    assert set(part.values()) == {"0", "1", "2"}
    parts_of_id: dict[str, set[str]] = defaultdict(set)
    for f in files:
        parts_of_id[ident[f]].add(part[f])
    assert all(len(p) == 1 for p in parts_of_id.values())  # identities disjoint across partitions
    assert sorted(sum(1 for p in parts_of_id.values() if p == {s}) for s in "012") == [1, 1, 8]
    assert [part[f] for f in files] == sorted(part[f] for f in files)  # train, then val, then test
    # Multi-Modal-CelebA-HQ layout: every image is an "HQ" image numbered 0..n-1 in a shuffled order
    mapping_lines = (faces / "CelebA-HQ-to-CelebA-mapping.txt").read_text().splitlines()
    assert mapping_lines[0].split() == ["idx", "orig_idx", "orig_file"]
    mapping = [line.split() for line in mapping_lines[1:]]
    assert [int(r[0]) for r in mapping] == list(range(n))
    assert sorted(r[2] for r in mapping) == files and all(int(r[1]) == int(r[2][:6]) - 1 for r in mapping)
    assert [r[2] for r in mapping] != files  # the HQ numbering is not the CelebA order
    hq_of = {r[2]: r[0] for r in mapping}
    for f in files:
        with Image.open(faces / "Img" / "img_align_celeba" / f) as im:
            assert im.format == "JPEG" and im.size == (178, 218)
        a = attrs[f]
        assert sum(a[h] for h in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")) <= 1
        assert not (a["Bald"] and a["Bangs"])
        assert not (a["No_Beard"] and (a["Goatee"] or a["Mustache"]))
        assert a["No_Beard"] or a["Male"]
        caps = (faces / "text" / f"{hq_of[f]}.txt").read_text().splitlines()
        assert len(caps) == 4 and all(c.strip() for c in caps)
        for c in caps:
            low = c.lower()
            assert ("eyeglasses" in low) <= a["Eyeglasses"], c
            assert ("smiling" in low) <= a["Smiling"], c
            assert ("bald" in low) <= a["Bald"], c
            assert (" hat" in low) <= a["Wearing_Hat"], c
            assert re.search(r"\b(he|man)\b", low) is None or a["Male"], c
            assert re.search(r"\b(she|woman)\b", low) is None or not a["Male"], c
    assert len(list((faces / "text").iterdir())) == n


def test_celeba_caption_shapes() -> None:
    rng = np.random.default_rng(0)
    a = dict.fromkeys(CELEBA_ATTRIBUTES, False)
    assert celeba_caption(a, rng) == "This is a photo of a woman."
    a.update(Male=True, Smiling=True, Bangs=True, Wearing_Hat=True)
    seen = {celeba_caption(a, rng) for _ in range(200)}
    assert any(s.startswith("This is a smiling person.") for s in seen)
    assert all(" ." not in s and "  " not in s and s.endswith(".") for s in seen)
    assert all("bangs" in s and "hat" in s and "smiling" in s for s in seen)


# --------------------------------------------------------------------------------------------- writing

def test_refuses_non_empty_out_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        syn.generate_pedes(out, identities=3, images_per_identity=(1, 1), progress=False)
    with pytest.raises(FileExistsError):
        syn.generate_faces(out, identities=3, images_per_identity=(1, 1), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (out / "keep.txt").exists()
    syn.generate_pedes(out, identities=3, images_per_identity=(1, 1), progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "reid_raw.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    syn.generate_faces(empty, identities=3, images_per_identity=(1, 1), captions_per_image=2, progress=False)
    assert (empty / "Anno" / "list_attr_celeba.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty"]


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xsearch.synth import render

    calls = {"n": 0}
    real = render.render_person

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "render_person", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        syn.generate_pedes(tmp_path / "out", identities=3, images_per_identity=(2, 2), progress=False)
    assert list(tmp_path.iterdir()) == []
