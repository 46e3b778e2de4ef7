"""The seeded low-quality transform of the degraded-test protocol."""
from __future__ import annotations

import math

import pytest
import torch

from xsearch.datamodules.degrade import DegradeConfig, degrade

OFF = dict(flip=0.0, rotation=0.0, blur_sigma=None, brightness=0.0, hue=0.0, noise_std=0.0)


def _face() -> torch.Tensor:
    torch.manual_seed(0)
    image = torch.full((3, 64, 48), 128, dtype=torch.uint8)
    image[:, ::2, ::2] = 30  # fine checkerboard: high-frequency detail that blur / downsampling remove
    image[0, 20:40, 10:30] = 220
    return image


def _detail(image: torch.Tensor) -> float:
    x = image.float()
    return float((x[:, 1:, :] - x[:, :-1, :]).abs().mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean())


def test_all_steps_off_is_the_identity_and_shape_dtype_are_kept():
    image = _face()
    assert torch.equal(degrade(image, DegradeConfig(**OFF), key=3), image)
    out = degrade(image, DegradeConfig(), key=3)
    assert out.shape == image.shape and out.dtype == torch.uint8 and not torch.equal(out, image)


def test_deterministic_per_seed_and_key():
    image = _face()
    config = DegradeConfig()
    assert torch.equal(degrade(image, config, key=5), degrade(image, config, key=5))
    assert not torch.equal(degrade(image, config, key=5), degrade(image, config, key=6))
    assert not torch.equal(degrade(image, config, key=5), degrade(image, DegradeConfig(seed=1), key=5))


def test_noise_has_the_asked_std():
    image = torch.full((3, 128, 128), 128, dtype=torch.uint8)
    out = degrade(image, DegradeConfig(**{**OFF, "noise_std": math.sqrt(0.002)}), key=0)
    measured = float((out.float() - 128).std()) / 255
    assert measured == pytest.approx(math.sqrt(0.002), rel=0.05)


@pytest.mark.parametrize("step", [{"blur_sigma": (2.0, 9.0)}, {"downsample": 0.25}])
def test_blur_and_downsampling_remove_detail(step):
    image = _face()
    out = degrade(image, DegradeConfig(**{**OFF, **step}), key=0)
    assert _detail(out) < 0.8 * _detail(image)


def test_jpeg_error_grows_as_quality_drops():
    image = _face()
    errors = [float((degrade(image, DegradeConfig(**{**OFF, "jpeg_quality": q}), key=0).float() - image.float()).abs().mean())
              for q in (95, 50, 10)]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_flip_and_rotation_move_pixels_with_white_fill():
    image = _face()
    flipped = degrade(image, DegradeConfig(**{**OFF, "flip": 1.0}), key=0)
    assert torch.equal(flipped, image.flip(-1))
    rotated = degrade(image, DegradeConfig(**{**OFF, "rotation": 45.0}), key=1)
    assert int(rotated[:, 0, 0].min()) == 255 or int(rotated[:, -1, -1].min()) == 255  # a corner filled white


@pytest.mark.parametrize("bad, message", [({"downsample": 0.0}, "downsample"), ({"jpeg_quality": 0}, "jpeg_quality"),
                                          ({"hue": 0.7}, "hue"), ({"blur_sigma": (3.0, 1.0)}, "blur_sigma")])
def test_bad_options_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        DegradeConfig(**bad)


def test_datamodule_degrades_only_the_asked_splits_and_labels_the_results(tmp_path):
    from xsearch.datamodules import RetrievalDataModule

    common = dict(dataset="synth_faces", root=str(tmp_path / "faces"), image_size=(32, 32), num_workers=0,
                  generate={"identities": 10, "seed": 0}, cache_images=True)
    clean = RetrievalDataModule(**common)
    clean.prepare_data()
    clean.setup("test")
    degraded = RetrievalDataModule(**common, degrade=DegradeConfig(downsample=0.5))
    degraded.setup("test")
    assert clean.benchmark == "synth_faces" and degraded.benchmark == "synth_faces:degraded"
    clean_gallery, degraded_gallery = clean.eval_sets["test"][1], degraded.eval_sets["test"][1]
    first = clean_gallery.images[0].index
    expected = degrade(clean_gallery.store(first), DegradeConfig(downsample=0.5), key=first)
    assert torch.equal(degraded_gallery.store(first), expected)
    assert not torch.equal(degraded_gallery.store(first), clean_gallery.store(first))
    clean.setup("fit")
    degraded.setup("fit")  # train images stay clean unless listed in degrade_splits
    train_index = degraded.train_set.captions[0].image_index
    assert torch.equal(degraded.train_set.images(train_index), clean.train_set.images(train_index))
