"""Image preprocessing against the reference code it stands for: torchvision's ``Resize`` (IRRA's bilinear resize)
and ``RandomErasing`` (IRRA's erasing after normalisation), plus the caption-aware flip, grayscale and resized crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms as T

from xsearch.constants import CLIP_MEAN, CLIP_STD
from xsearch.datamodules.transforms import (IRRA_ERASE_VALUE, AugmentConfig, FlipPadCropErase, TrainAugment, erase_box,
                                            load_image)
from xsearch.models.checkpoint import registered_class

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml") if "\nmodel:" in p.read_text())


def _photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A photo-like image: smooth colour gradients, a few sharp-edged blocks and sensor-like noise."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([128 + 100 * np.sin(x / (7 + c) + y / (11 + 2 * c) + c) for c in range(3)], axis=-1)
    for _ in range(6):
        top, left = generator.integers(0, height), generator.integers(0, width)
        pixels[top: top + height // 5, left: left + width // 4] = generator.integers(0, 256, 3)
    pixels += generator.normal(0, 8, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("width, height", [(64, 160), (300, 700), (129, 385), (500, 200)])
def test_bilinear_load_image_equals_torchvision_resize_pixel_for_pixel(tmp_path, width, height):
    path = _photo(tmp_path / "photo.png", width, height, seed=width)
    with Image.open(path) as image:
        reference = np.asarray(T.Resize((384, 128))(image.convert("RGB")))  # IRRA's build_transforms resize
    ours = load_image(path, (384, 128), interpolation="bilinear").permute(1, 2, 0).numpy()
    assert np.array_equal(ours, reference)
    bicubic = load_image(path, (384, 128)).permute(1, 2, 0).numpy()
    assert np.abs(bicubic.astype(int) - reference).max() > 1  # the other filter really differs on such images


def test_an_unknown_interpolation_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^interpolation 'nearest': expected one of bicubic, bilinear$"):
        load_image(_photo(tmp_path / "p.png", 20, 40, 0), (8, 4), interpolation="nearest")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_resizes_with_its_method_s_reference_filter(config):
    content = yaml.safe_load(config.read_text())
    method = registered_class(content["model"]["class_path"])
    assert (content.get("data") or {}).get("interpolation", "bicubic") == method.image_interpolation


def test_irra_s_erase_fill_normalises_to_the_clip_mean():
    normalised = (torch.tensor(IRRA_ERASE_VALUE) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert IRRA_ERASE_VALUE == (156, 147, 133)
    assert torch.allclose(normalised, torch.tensor(CLIP_MEAN), atol=0.008)  # RandomErasing(value=mean) after Normalize
    image = torch.zeros(3, 40, 20, dtype=torch.uint8)
    torch.manual_seed(0)
    out = FlipPadCropErase(flip=0.0, pad=0, erase=1.0, erase_scale=(0.1, 0.2), erase_value="irra")(image)
    assert out[:, (out != 0).any(0)].unique(dim=1).tolist() == [[156], [147], [133]]


@pytest.mark.parametrize("scale", [(0.02, 0.4), (0.7, 0.9)])
def test_erase_box_is_torchvision_s_random_erasing_rectangle_including_no_erase(scale):
    image = torch.zeros(3, 40, 20)
    skipped = 0
    for seed in range(300):
        torch.manual_seed(seed)
        top, left, h, w, value = T.RandomErasing.get_params(image, scale=scale, ratio=(0.3, 3.3), value=[0.0])
        torch.manual_seed(seed)
        ours = erase_box(40, 20, scale)
        if value is image:  # torchvision found no rectangle that fits in 10 draws: nothing is erased
            assert ours is None
            skipped += 1
        else:
            assert ours == (top, left, h, w)
    assert skipped > 0 or scale[0] < 0.5  # the large scale really exercises the no-fit case


def test_a_caption_naming_a_side_keeps_its_image_unflipped():
    augment = TrainAugment((8, 4), AugmentConfig(flip=1.0, pad=0, erase=0.0, no_flip_words=("left", "right")))
    image = torch.arange(3 * 8 * 4, dtype=torch.uint8).view(3, 8, 4)
    flipped = image.flip(-1)
    assert torch.equal(augment(image, "she parts her hair on the LEFT side"), image)
    assert torch.equal(augment(image, "a mole right under the eye"), image)
    assert torch.equal(augment(image, "a smiling woman with leftover lipstick"), flipped)  # whole words only
    assert torch.equal(augment(image, None), flipped)
    assert torch.equal(TrainAugment((8, 4), AugmentConfig(flip=1.0, pad=0, erase=0.0))(image, "on the left"), flipped)


def test_grayscale_colour_jitter_and_resized_crop_keep_uint8_images_of_the_size():
    image = torch.randint(0, 256, (3, 48, 24), dtype=torch.uint8)
    grey = TrainAugment((48, 24), AugmentConfig(flip=0.0, pad=0, erase=0.0, grayscale=1.0))(image)
    assert grey.dtype == torch.uint8 and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    torch.manual_seed(0)
    out = TrainAugment((48, 24), AugmentConfig(flip=0.0, pad=0, erase=0.0, resized_crop=(0.8, 1.0), color_jitter=0.2))(image)
    assert out.shape == (3, 48, 24) and out.dtype == torch.uint8 and not torch.equal(out, image)
