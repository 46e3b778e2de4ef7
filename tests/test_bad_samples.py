"""Unreadable (corrupt, truncated) training images and empty captions: ``data.bad_samples`` fails naming the file,
or skips it with a warning naming it; never a silent wrong batch. Evaluation images are never skipped."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from xsearch.datamodules import RetrievalDataModule
from xsearch.datamodules.files import DatasetFormatError
from xsearch.datamodules.transforms import UnreadableImage, load_image

from hostile import bomb_png

FIXTURE = Path(__file__).parent / "fixtures" / "cuhk_pedes"
BAD = "imgs/Market/0042_c3s1_004512_01.jpg"  # a training image of pid 2 with 2 captions (train: 3 images, 6 captions)


def _root(tmp_path: Path, damage: str) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIXTURE, root)
    path = root / BAD
    if damage == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "bomb":  # 94 bytes that declare 225 megapixels
        path.write_bytes(bomb_png())
    return root


def _module(root: Path, **options) -> RetrievalDataModule:
    return RetrievalDataModule("cuhk_pedes", str(root), image_size=(32, 16), batch_size=2, num_workers=0,
                               cache_index=False, **options)


def test_a_truncated_jpeg_is_an_error_naming_it_not_a_grey_bottom(tmp_path):
    root = _root(tmp_path, "truncated")
    with pytest.raises(UnreadableImage, match=r"0042_c3s1_004512_01\.jpg: cannot read image \((Truncated File Read|image file is truncated)"):
        load_image(root / BAD, (32, 16))


def test_a_decompression_bomb_is_an_unreadable_image_naming_it(tmp_path):
    root = _root(tmp_path, "bomb")
    with pytest.raises(UnreadableImage) as error:
        load_image(root / BAD, (32, 16))
    assert str(error.value) == (f"{root / BAD}: cannot read image (Image size (225000000 pixels) exceeds limit of "
                                "178956970 pixels, could be decompression bomb DOS attack.)")


@pytest.mark.parametrize("cache_images", [True, False])
@pytest.mark.parametrize("damage", ["corrupt", "truncated", "bomb"])
def test_by_default_an_unreadable_training_image_stops_the_run_naming_it(tmp_path, damage, cache_images):
    dm = _module(_root(tmp_path, damage), cache_images=cache_images)
    with pytest.raises(UnreadableImage, match=r"0042_c3s1_004512_01\.jpg: cannot read image") as error:
        dm.setup("fit")  # cached: while caching
        for _ in dm.train_dataloader():  # lazy: when its batch is loaded
            pass
    assert error.value.path.endswith("0042_c3s1_004512_01.jpg")


@pytest.mark.parametrize("cache_images", [True, False])
@pytest.mark.parametrize("damage", ["corrupt", "bomb"])
def test_skip_leaves_out_exactly_the_unreadable_images_items_and_names_them(tmp_path, caplog, cache_images, damage):
    dm = _module(_root(tmp_path, damage), cache_images=cache_images, bad_samples="skip")
    dm.setup("fit")
    bad_index = next(r.index for r in dm.index.images if str(r.path).endswith("0042_c3s1_004512_01.jpg"))
    with caplog.at_level(logging.WARNING):
        seen, sizes = [], []
        for batch in dm.train_dataloader():
            batch = dm.on_before_batch_transfer(batch, 0)
            assert "skipped" not in batch  # the model never sees the marker
            seen += batch["image_index"].tolist()
            sizes.append(len(batch["pid"]))
            assert batch["image"].shape[0] == len(batch["text"]) == len(batch["pid"])  # a consistent, smaller batch
    assert bad_index not in seen and sorted(seen) == sorted(c.image_index for c in dm.train_set.captions if c.image_index != bad_index)
    assert sum(sizes) == 4 and min(sizes) < 2  # 6 captions, 2 of them on the bad image
    assert len(dm.skipped) == 1 and "0042_c3s1_004512_01.jpg: cannot read image" in next(iter(dm.skipped))
    assert "0042_c3s1_004512_01.jpg: cannot read image" in caplog.text


def test_a_batch_with_no_readable_image_is_an_error_even_when_skipping(tmp_path):
    root = _root(tmp_path, "corrupt")
    for name in ("CUHK01/0363004.png", "CUHK01/0363005.png"):
        (root / "imgs" / name).write_bytes(b"garbage")
    dm = _module(root, bad_samples="skip")
    dm.setup("fit")
    with pytest.raises(UnreadableImage, match="none of the 2 images of a training batch could be read.*dataset root"):
        for _ in dm.train_dataloader():
            pass


@pytest.mark.parametrize("content", [b"garbage", bomb_png()])
def test_an_unreadable_evaluation_image_is_never_skipped(tmp_path, content):
    root = _root(tmp_path, "clean")
    (root / "imgs" / "Market" / "0100_c1s1_000001_01.jpg").write_bytes(content)  # the val gallery image
    dm = _module(root, cache_images=True, bad_samples="skip")
    with pytest.raises(UnreadableImage, match=r"0100_c1s1_000001_01\.jpg: cannot read image"):
        dm.setup("fit")


def _empty_caption(tmp_path: Path) -> Path:
    root = _root(tmp_path, "clean")
    records = json.loads((root / "reid_raw.json").read_text())
    records[1]["captions"][0] = "   "  # the first caption of Market/0042_c3s1_004512_01.jpg
    (root / "reid_raw.json").write_text(json.dumps(records))
    return root


def test_an_empty_training_caption_stops_the_run_before_training_naming_its_image(tmp_path):
    dm = _module(_empty_caption(tmp_path))
    with pytest.raises(DatasetFormatError, match=r"1 of 6 training captions are empty, e\.g\. the captions of "
                                                 r".*0042_c3s1_004512_01\.jpg .*data\.bad_samples=skip"):
        dm.setup("fit")


def test_skip_trains_without_the_empty_captions(tmp_path, caplog):
    dm = _module(_empty_caption(tmp_path), bad_samples="skip")
    dm.setup("fit")
    assert len(dm.train_set) == 5 and all(c.text.strip() for c in dm.train_set.captions)
    assert "1 of 6 training captions are empty and left out" in caplog.text
    texts = [t for batch in dm.train_dataloader() for t in batch["text"]]
    assert len(texts) == 4 and all(t.strip() for t in texts)  # 5 captions, batches of 2
