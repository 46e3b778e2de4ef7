"""Synthetic COCO-PFS (``synth_pfs``): read by the coco_pfs parser, face descriptors, captions, determinism."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xsearch.datamodules import SYNTHESIZERS, RetrievalDataModule
from xsearch.datamodules.coco_pfs import SPLIT_FILES, parse, parse_synth_pfs
from xsearch.datamodules.files import read_csv
from xsearch.entity_captions import SLOT, keyword_matches
from xsearch.registry import DATASETS
from xsearch.synth import render, scenes, writing
from xsearch.synth.scenes import FIRST_NAMES, LAST_NAMES, appearance_vector, identity_names
from xsearch.synth.writing import generate_pfs

KW = dict(identities=12, images_per_identity=3, size=(64, 64), split_fractions=(0.5, 0.25, 0.25), progress=False)
EXPECTED = {  # split_counts(12, (0.5, 0.25, 0.25)) = (6, 3, 3); 3 images per identity, 5 captions per image
    "train": {"identities": 6, "images": 18, "captions": 90},
    "val": {"identities": 3, "images": 9, "captions": 45},
    "test": {"identities": 3, "images": 9, "captions": 45},
}
META = "vggface_test_kaggle/identity_meta.csv"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_pfs(tmp_path_factory.mktemp("pfs") / "datadir", seed=5, **KW)


@pytest.fixture(scope="module")
def index(root):
    return parse_synth_pfs(root)


def test_registered_as_synthesizer_and_dataset() -> None:
    assert SYNTHESIZERS.get("synth_pfs") is generate_pfs
    assert DATASETS.get("synth_pfs") is parse_synth_pfs


def test_the_generator_writes_the_files_the_parser_reads() -> None:
    from xsearch.datamodules import coco_pfs

    assert {s: tuple(f) for s, f in writing.SPLIT_FILES.items()} == {
        s: (f.features, f.captions, f.images) for s, f in coco_pfs.SPLIT_FILES.items()}
    assert (writing.FACE_CROPS, writing.META_FILE, scenes.FACE_DIM, scenes.CAPTIONS_PER_IMAGE) == (
        coco_pfs.FACE_CROPS, coco_pfs.META_FILE, coco_pfs.FACE_DIM, coco_pfs.CAPTIONS_PER_IMAGE)


def test_parser_counts_and_identity_disjoint_splits(root, index) -> None:
    assert index.name == "synth_pfs" and index.summary() == EXPECTED and index.warnings == []
    assert parse(root).summary() == EXPECTED  # the plain coco_pfs parser reads it the same
    pids = {s: {r.pid for r in index.split_images(s)} for s in EXPECTED}
    assert not (pids["train"] & pids["val"]) and not (pids["train"] & pids["test"]) and not (pids["val"] & pids["test"])
    class_ids = index.extras["class_ids"]
    assert len(class_ids) == 12
    assert all(re.fullmatch(r"n\d{6}", c) and int(c[1:]) == pid for pid, c in class_ids.items())
    assert sorted(index.identity_names) == sorted(class_ids) and len(set(index.identity_names.values())) == 12


def test_layout_files_and_images(root, index) -> None:
    parsed = {r.path for r in index.images}
    on_disk = {p for p in (root / "coco_dataset").rglob("*.jpg")}
    assert parsed == on_disk and len(parsed) == 36
    for image in index.images:
        assert image.path.parent == root / SPLIT_FILES[image.split].images
        assert re.fullmatch(r"\d{12}\.jpg_n\d{6}\.jpg", image.path.name)
        with Image.open(image.path) as im:
            im.load()
            assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    # val and test share the val image folder and caption file; their features files tell them apart
    keys = {s: set(json.loads((root / f.features).read_text())) for s, f in SPLIT_FILES.items()}
    assert not (keys["val"] & keys["test"]) and sum(map(len, keys.values())) == 36
    for name in ("captions_train2017.json", "captions_val2017.json"):
        coco = json.loads((root / "coco_dataset/annotations" / name).read_text())
        per_image = defaultdict(int)
        for a in coco["annotations"]:
            per_image[a["image_id"]] += 1
        assert sorted(per_image) == sorted(i["id"] for i in coco["images"])
        assert set(per_image.values()) == {5}
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        assert all(i["file_name"] == f"{i['id']:012d}.jpg" for i in coco["images"])


def test_face_descriptors_cluster_by_identity(index) -> None:
    faces = index.extras["face_features"].astype(np.float64)
    assert faces.shape == (36, 512)
    np.testing.assert_allclose(np.linalg.norm(faces, axis=1), 1.0, atol=1e-4)
    pids = np.array([r.pid for r in index.images])
    cos = faces @ faces.T
    same = (pids[:, None] == pids[None, :]) & ~np.eye(len(pids), dtype=bool)
    other = pids[:, None] != pids[None, :]
    within, between = cos[same].mean(), cos[other].mean()
    # each is ~0.8 from its centre, so two of one identity ~0.64; other people share only some attributes
    assert 0.5 < within < 0.8 and 0.0 < between < 0.3 and within > between + 0.3
    assert cos[same].min() > cos[other].max()


def test_face_descriptors_reflect_the_look(index) -> None:
    """Each identity's mean descriptor is closest to the appearance vector of its own look (a face model sees the
    face), so unseen identities are not pure noise to a translator."""
    from xsearch.synth.scenes import APPEARANCE_SHARE, scene_identities

    people = {p.class_id: p.person for p in scene_identities(KW["identities"], 5, KW["split_fractions"])}  # fixture's seed
    faces = index.extras["face_features"].astype(np.float64)
    class_ids = index.extras["class_ids"]
    pids = np.array([r.pid for r in index.images])
    order = sorted(set(pids.tolist()))
    means = np.stack([faces[pids == pid].mean(0) for pid in order])
    looks = np.stack([appearance_vector(people[class_ids[pid]]) for pid in order])
    cos = (means / np.linalg.norm(means, axis=1, keepdims=True)) @ looks.T
    assert (cos.argmax(axis=1) == np.arange(len(order))).all()
    assert np.diag(cos).mean() == pytest.approx(APPEARANCE_SHARE, abs=0.1)


def test_captions_never_hold_names_but_parsed_captions_do(root, index) -> None:
    words = re.compile(r"\b(?:" + "|".join([*FIRST_NAMES["male"], *FIRST_NAMES["female"], *LAST_NAMES]) + r")\b", re.I)
    gender = {cells["Class_ID"]: cells["Gender"] for _, cells in read_csv(root / META)}
    male, female = {"man", "guy", "boy"}, {"woman", "lady", "girl"}
    raw = parse_synth_pfs(root, entity="none")
    class_of = raw.extras["class_ids"]
    for caption in raw.captions:
        assert not words.search(caption.text), caption.text
        (match,) = keyword_matches(caption.text)  # exactly one person word: the name goes there
        word = match.group(0).lower()
        assert word == "person" or word in (male if gender[class_of[caption.pid]] == "m" else female)
    for caption in index.captions:  # entity="name" (default)
        assert index.identity_names[caption.pid] in caption.text
    assert all(SLOT in c.text for c in parse_synth_pfs(root, entity="slot").captions)
    contexts = re.compile(r"beach|ocean|shore|sea|street|sidewalk|building|city|park|kitchen|snow|winter", re.I)
    assert all(contexts.search(c.text) for c in raw.captions)


def test_names_unique_and_gendered() -> None:
    names = identity_names(["male"] * 1300 + ["female"] * 5, seed=1)
    assert len(set(names)) == len(names)
    assert sum(bool(re.fullmatch(r"\w+ [A-Z]\. \w+", n)) for n in names) == 1300 - 30 * 40
    assert all(n.split()[0] in FIRST_NAMES["female"] for n in names[-5:])
    assert identity_names(["male", "female"], seed=1) == names[:1] + names[1300:1301]


def test_same_seed_same_bytes_other_seed_differs(root, tmp_path) -> None:
    first = _files(root)
    again = _files(generate_pfs(tmp_path / "again", seed=5, **KW))
    assert again.keys() == first.keys() and again == first
    other = _files(generate_pfs(tmp_path / "other", seed=6, **KW))
    features = SPLIT_FILES["train"].features
    assert other[features] != first[features] and other[META] != first[META]
    assert set(other) != set(first)  # new COCO ids and class ids


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    calls = {"n": 0}
    real = render.render_person

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "render_person", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate_pfs(tmp_path / "out", identities=3, images_per_identity=2, size=(32, 32), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_datamodule_generates_and_loads(tmp_path) -> None:
    dm = RetrievalDataModule(dataset="synth_pfs", root=str(tmp_path / "pfs"), num_workers=0,
                             generate={"identities": 5, "images_per_identity": 2, "size": [32, 32], "progress": False})
    dm.prepare_data()
    index = dm.load_index()
    assert index.name == "synth_pfs"
    assert {s: c["images"] for s, c in index.summary().items()} == {"train": 6, "val": 2, "test": 2}
    faces = dm.face_descriptors()
    assert len(faces) == 10 and all(v.shape == (512,) for v in faces.values())


def test_cli_writes_and_checks_it(tmp_path, capsys) -> None:
    from xsearch.cli import main

    assert main(["data", "synth", "pfs", "--out", str(tmp_path / "pfs"), "--identities", "10"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "synth_pfs", "--root", str(tmp_path / "pfs")]) == 0
    counts = json.loads(capsys.readouterr().out)["splits"]
    assert sum(split["identities"] for split in counts.values()) == 10
    assert all(split["captions"] == 5 * split["images"] for split in counts.values())
