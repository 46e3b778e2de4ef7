"""CUHK-PEDES parser on an official-format fixture, the P x K sampler, transforms, the datamodule."""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from xsearch.datamodules import GALLERY, QUERIES, RetrievalDataModule
from xsearch.datamodules.cuhk_pedes import parse
from xsearch.datamodules.files import DatasetFormatError
from xsearch.datamodules.samplers import IdentityBatchSampler
from xsearch.datamodules.transforms import AugmentConfig, build_train_augment, center_box, load_image

FIXTURE = Path(__file__).parent / "fixtures" / "cuhk_pedes"


def test_parse_fixture_counts_and_fields():
    index = parse(FIXTURE)
    assert index.summary() == {
        "train": {"identities": 2, "images": 3, "captions": 6},
        "val": {"identities": 1, "images": 1, "captions": 2},
        "test": {"identities": 2, "images": 2, "captions": 5},  # "Test" is lower-cased; 3 captions kept
    }
    first = index.captions[0]
    assert first.text.startswith("A man in a navy coat") and first.pid == 1 and first.image_index == 0
    assert index.images[0].path == FIXTURE / "imgs" / "CUHK01" / "0363004.png"
    assert [c.image_index for c in index.captions if c.pid == 4] == [4, 4, 4]


def test_parse_max_captions_per_image():
    index = parse(FIXTURE, max_captions_per_image=2)
    assert index.summary()["test"]["captions"] == 4


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(FIXTURE, root)
    return root


def test_missing_images_stop_training_up_front_unless_dropped(tmp_path):
    root = _copy(tmp_path)
    shutil.rmtree(root / "imgs" / "Market")  # copies that lack a source folder (IRRA #49)
    dm = RetrievalDataModule("cuhk_pedes", str(root), image_size=(32, 16), num_workers=0, cache_index=False)
    with pytest.raises(DatasetFormatError, match=r"3 of 6 images listed in the annotations are missing, e\.g\. .*Market/"
                                                 r".*set data\.drop_missing_images=true"):
        dm.setup("fit")
    dm = RetrievalDataModule("cuhk_pedes", str(root), image_size=(32, 16), num_workers=0, drop_missing_images=True)
    dm.setup("fit")
    assert dm.index.summary()["train"] == {"identities": 1, "images": 2, "captions": 4}
    assert all(dm.index.images[c.image_index].pid == c.pid for c in dm.index.captions)
    assert [r.index for r in dm.index.images] == list(range(3))


def test_relative_root_defaults_to_data_folder_and_generates_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XSEARCH_DATA", raising=False)
    dm = RetrievalDataModule("synth_pedes", "tiny", num_workers=0, generate={"identities": 6, "progress": False})
    dm.prepare_data()
    assert (tmp_path / "data" / "tiny" / "reid_raw.json").is_file()
    assert dm.num_train_identities == 4


def test_relative_root_lives_under_xsearch_data(tmp_path, monkeypatch):
    shutil.copytree(FIXTURE, tmp_path / "CUHK-PEDES")
    monkeypatch.setenv("XSEARCH_DATA", str(tmp_path))
    dm = RetrievalDataModule("cuhk_pedes", "CUHK-PEDES", num_workers=0)
    assert dm.root == tmp_path / "CUHK-PEDES" and dm.num_train_identities == 2


def test_identity_sampler_batches():
    pids = [0] * 5 + [1] * 1 + [2] * 3 + [3] * 4 + [4] * 2
    sampler = IdentityBatchSampler(pids, ids_per_batch=2, instances=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(pids) // 6
    for batch in batches:
        counts = Counter(pids[i] for i in batch)
        assert len(batch) == 6 and len(counts) == 2 and set(counts.values()) == {3}
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order every epoch
    sampler.set_epoch(0)
    assert list(sampler) == batches  # reproducible


def test_identity_sampler_ranks_are_disjoint():
    pids = [i // 4 for i in range(400)]
    ranks = [list(IdentityBatchSampler(pids, 4, 4, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    single = list(IdentityBatchSampler(pids, 4, 4, seed=3))
    assert ranks[0] == single[0:24:2] and ranks[1] == single[1:24:2]  # 25 batches: the odd one out is dropped


def test_identity_sampler_rejects_too_many_ids():
    with pytest.raises(ValueError, match="ids_per_batch=3 exceeds the 2 identities"):
        IdentityBatchSampler([0, 0, 1], ids_per_batch=3)


def test_load_image_and_augment_keep_uint8_size():
    image = load_image(FIXTURE / "imgs" / "CUHK01" / "0363004.png", (48, 24))
    assert image.shape == (3, 48, 24) and image.dtype == torch.uint8
    out = build_train_augment((48, 24), AugmentConfig(erase=1.0))(image)
    assert out.shape == (3, 48, 24) and out.dtype == torch.uint8


def test_load_image_crops_the_box_before_resizing(tmp_path):
    from PIL import Image

    pixels = np.zeros((100, 50, 3), dtype=np.uint8)  # H 100, W 50: a red block at rows 20-59, columns 10-39
    pixels[20:60, 10:40] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "block.png")
    inside = load_image(tmp_path / "block.png", (8, 6), crop=(0.2, 0.2, 0.6, 0.8))
    assert bool((inside[0] == 255).all()) and bool((inside[1:] == 0).all())  # only the block is left
    whole = load_image(tmp_path / "block.png", (10, 5))
    assert int(whole[0, 0, 0]) == 0 and int(whole[0, 4, 2]) == 255
    with pytest.raises(ValueError, match="crop must be"):
        RetrievalDataModule("cuhk_pedes", str(FIXTURE), crop=(0.5, 0.0, 0.4, 1.0))


def test_center_crop_keeps_the_middle_square_like_clip_preprocessing(tmp_path):
    from PIL import Image

    pixels = np.zeros((40, 100, 3), dtype=np.uint8)  # H 40, W 100: green sides (30 px each), a red 40x40 middle
    pixels[:, :30] = pixels[:, 70:] = (0, 255, 0)
    pixels[:, 30:70] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    square = load_image(tmp_path / "wide.png", (8, 8), crop="center")
    assert bool((square[0] == 255).all()) and bool((square[1] == 0).all())  # only the red middle is left
    assert center_box(100, 40, (8, 8)) == (30, 0, 70, 40) and center_box(40, 100, (8, 8)) == (0, 30, 40, 70)
    assert center_box(100, 40, (10, 20)) == (10, 0, 90, 40)  # W/H = 2


def test_load_image_error_names_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="broken.jpg: cannot read image"):
        load_image(bad, (8, 8))


def test_datamodule_batches(tmp_path):
    dm = RetrievalDataModule("cuhk_pedes", str(FIXTURE), image_size=(32, 16), batch_size=4, eval_batch_size=3,
                             num_workers=0, cache_images=True)
    assert dm.num_train_identities == 2
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 16) and batch["image"].dtype == torch.uint8
    assert isinstance(batch["text"], list) and all(isinstance(t, str) for t in batch["text"])
    assert set(batch["pid"].tolist()) <= {0, 1}  # train ids remapped to labels
    queries, gallery = dm.val_dataloader()
    assert [len(queries.dataset), len(gallery.dataset)] == [2, 1]
    assert (QUERIES, GALLERY) == (0, 1)
    item = gallery.dataset[0]
    assert item["pid"] == 3 and item["image"].shape == (3, 32, 16)


def test_datamodule_without_val_split_falls_back_to_test(tmp_path, caplog):
    root = _copy(tmp_path)
    records = [r for r in json.loads((root / "reid_raw.json").read_text()) if r["split"] != "val"]
    (root / "reid_raw.json").write_text(json.dumps(records))
    dm = RetrievalDataModule("cuhk_pedes", str(root), image_size=(32, 16), num_workers=0)
    dm.load_index()
    assert dm.eval_split == "test"
    assert "no 'val' split" in caplog.text and "TEST split" in caplog.text


def test_unknown_dataset_name():
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        RetrievalDataModule("nope", "x")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("height", "width", "pad"), [(12, 7, 3), (5, 4, 9)])  # also a pad wider than the image
def test_pad_crop_equals_crop_of_zero_padded_image(seed, height, width, pad):
    from xsearch.datamodules.transforms import FlipPadCropErase

    image = torch.randint(1, 256, (3, height, width), dtype=torch.uint8)
    torch.manual_seed(seed)
    out = FlipPadCropErase(flip=0.0, pad=pad, erase=0.0)(image)
    torch.manual_seed(seed)
    dy, dx = (torch.randint(0, 2 * pad + 1, (2,)) - pad).tolist()
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    assert torch.equal(out, padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width])


def test_erase_changes_a_rectangle_only():
    from xsearch.datamodules.transforms import FlipPadCropErase

    image = torch.full((3, 40, 20), 7, dtype=torch.uint8)
    torch.manual_seed(0)
    out = FlipPadCropErase(flip=0.0, pad=0, erase=1.0)(image)
    rows, cols = torch.nonzero((out != 7).any(0), as_tuple=True)
    changed = (out != 7).any(0)
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert 0.02 * 800 * 0.5 <= box.numel() <= 0.2 * 800 * 1.5 and box.float().mean() > 0.9
    assert torch.equal(image, torch.full((3, 40, 20), 7, dtype=torch.uint8))  # input untouched


@pytest.mark.parametrize("seed", range(4))
def test_erase_with_a_fill_value_and_scale(seed):
    from xsearch.datamodules.transforms import FlipPadCropErase

    image = torch.full((3, 40, 20), 7, dtype=torch.uint8)
    torch.manual_seed(seed)
    out = FlipPadCropErase(flip=0.0, pad=0, erase=1.0, erase_scale=(0.3, 0.4), erase_value=(123, 117, 104))(image)
    changed = (out != 7).any(0)
    assert 0.3 * 800 * 0.8 <= changed.sum() <= 0.4 * 800 * 1.2  # rounding of the box sides
    assert out[:, changed].unique(dim=1).tolist() == [[123], [117], [104]]


def test_tgfr_s_nearest_roc_reading_is_its_own_benchmark_key():
    from xsearch.datamodules.face_pairs import VerificationOptions

    nearest = RetrievalDataModule("synth_faces", "unused", verification=VerificationOptions(tar_rule="nearest"))
    assert nearest.benchmark == "synth_faces:roc-nearest"
    assert RetrievalDataModule("synth_faces", "unused", verification=VerificationOptions()).benchmark == "synth_faces"
