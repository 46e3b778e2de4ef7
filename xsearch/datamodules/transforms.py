"""Image loading and augmentation on uint8 tensors.

Images travel through the data pipeline as ``uint8`` tensors ``(3, H, W)`` already resized
to the training size, so they can be cached in RAM and batched cheaply; the model converts
them to float and normalises them with its own backbone's mean/std on its device.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from xsearch.constants import CLIP_MEAN, CLIP_STD
from xsearch.image_io import UnreadableImage, read_rgb  # noqa: F401  (UnreadableImage re-exported)


def center_box(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred ``(left, top, right, bottom)`` box of a ``width x height`` image with the aspect ratio of
    ``size = (H, W)`` (CLIP's preprocessing: shorter side to the size, centre crop)."""
    target = size[1] / size[0]  # W / H
    if width / height > target:  # too wide: cut the sides
        keep = round(height * target)
        left = (width - keep) // 2
        return left, 0, left + keep, height
    keep = round(width / target)
    top = (height - keep) // 2
    return 0, top, width, top + keep


INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
"""Resize filters by name: ``bilinear`` is torchvision ``Resize``'s default (IRRA and its family), ``bicubic`` what
CLIP's preprocessing uses."""
Interpolation = Literal["bicubic", "bilinear"]


def load_image(path: str | Path, size: tuple[int, int],
               crop: tuple[float, float, float, float] | Literal["center"] | None = None,
               interpolation: Interpolation = "bicubic") -> torch.Tensor:
    """Read an image file as RGB, optionally crop the box ``crop = (top, left, bottom, right)`` given as
    fractions of the height / width (e.g. the face of an aligned face image) or ``"center"`` (the largest centred
    box with the aspect ratio of ``size``: CLIP's resize + centre crop), resize to ``size = (H, W)`` with
    ``interpolation`` (:data:`INTERPOLATIONS`; PIL's filters, which torchvision ``Resize`` uses on PIL images);
    without a crop, the aspect ratio is ignored.

    Returns a ``uint8`` tensor ``(3, H, W)``. A file that cannot be decoded raises :class:`UnreadableImage` naming it
    (:func:`read_rgb`).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
    image = read_rgb(path)
    if crop == "center":
        image = image.crop(center_box(*image.size, size))
    elif crop is not None:
        top, left, bottom, right = crop
        width, height = image.size
        image = image.crop((round(left * width), round(top * height), round(right * width), round(bottom * height)))
    image = image.resize((size[1], size[0]), INTERPOLATIONS[interpolation])
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


IRRA_ERASE_VALUE = tuple(round(255 * m * (1 + s)) for m, s in zip(CLIP_MEAN, CLIP_STD))
"""``(156, 147, 133)``: the pixels IRRA's erasing writes. IRRA runs torchvision ``RandomErasing(value=CLIP mean)``
after ``Normalize(CLIP mean, CLIP std)``, so an erased pixel normalises to the mean itself, i.e. the pixel
``255 * mean * (1 + std)`` (rounded to uint8: within 0.008 of IRRA's value after normalisation)."""


@dataclass
class AugmentConfig:
    """Training augmentation of ``uint8 (3, H, W)`` images, in this order: random resized crop, colour jitter,
    random grayscale, flip, pad + random crop, random erasing.

    ``resized_crop``: the ``(min, max)`` share of the area a random crop keeps (aspect ratio within 3/4-4/3 of the
    image's), resized back (X-Modal's recipe: ``(0.8, 1.0)``); ``None``: off. ``color_jitter``: brightness, contrast
    and saturation factors drawn in ``[1 - j, 1 + j]``. ``grayscale``: probability of a grey copy in all three channels
    (TGFR's ``RandomGrayscale(0.2)``). ``flip``: horizontal flip probability; ``no_flip_words``: a caption containing
    any of these words (whole words, any case; e.g. ``[left, right]``) keeps its image unflipped, since a flip would
    contradict it. ``erase_scale``: the erased share of the area; ``erase_value``: the RGB fill, ``"irra"``
    (:data:`IRRA_ERASE_VALUE`), or ``None`` for random values. Erasing follows torchvision's ``RandomErasing``: up to
    10 draws of a rectangle, none erased when no draw fits. IRRA's recipe: ``erase_scale (0.02, 0.4)``,
    ``erase_value: irra``.
    """

    flip: float = 0.5
    pad: int = 10
    erase: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.2)
    erase_value: tuple[int, int, int] | Literal["irra"] | None = None
    resized_crop: tuple[float, float] | None = None
    color_jitter: float = 0.0
    grayscale: float = 0.0
    no_flip_words: tuple[str, ...] = ()


def erase_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float] = (0.3, 3.3),
              attempts: int = 10) -> tuple[int, int, int, int] | None:
    """torchvision ``RandomErasing.get_params``' rectangle ``(top, left, h, w)`` from torch's generator: up to
    ``attempts`` draws of an area share in ``scale`` and an aspect ratio (log-uniform in ``ratio``); the first whose
    sides are smaller than the image's is placed uniformly; ``None`` when none fits (nothing is erased)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        erase_area = area * float(torch.empty(()).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
        h, w = int(round(math.sqrt(erase_area * aspect))), int(round(math.sqrt(erase_area / aspect)))
        if h < height and w < width:
            top, left = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
            return top, left, h, w
    return None


class FlipPadCropErase:
    """IRRA's augmentation on a ``uint8 (3, H, W)`` tensor in plain tensor ops (~50x faster than v2 per item).

    Horizontal flip with probability ``flip`` (unless the call says ``flip_allowed=False``); zero-pad by ``pad`` and
    crop back to ``(H, W)`` at a random offset; with probability ``erase`` replace the rectangle of :func:`erase_box`
    with random values or the RGB ``erase_value``.
    """

    def __init__(self, flip: float, pad: int, erase: float, erase_scale: tuple[float, float] = (0.02, 0.2),
                 erase_value: tuple[int, int, int] | Literal["irra"] | None = None) -> None:
        self.flip, self.pad, self.erase = flip, pad, erase
        self.erase_scale = tuple(erase_scale)
        self.erase_value = IRRA_ERASE_VALUE if erase_value == "irra" else erase_value

    def __call__(self, image: torch.Tensor, flip_allowed: bool = True) -> torch.Tensor:
        _, height, width = image.shape
        if self.flip and flip_allowed and torch.rand(()) < self.flip:
            image = image.flip(-1)
        if self.pad:
            # the crop of the zero-padded image at offset (dy, dx) is the image shifted by (-dy, -dx)
            dy, dx = (torch.randint(0, 2 * self.pad + 1, (2,)) - self.pad).tolist()
            dy, dx = max(-height, min(height, dy)), max(-width, min(width, dx))  # pad wider than the image
            shifted = torch.zeros_like(image)
            shifted[:, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = image[
                :, max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)
            ]
            image = shifted
        if self.erase and torch.rand(()) < self.erase:
            box = erase_box(height, width, self.erase_scale)
            if box is not None:
                y, x, h, w = box
                image = image.clone()
                if self.erase_value is None:
                    image[:, y : y + h, x : x + w] = torch.randint(0, 256, (3, h, w), dtype=image.dtype)
                else:
                    image[:, y : y + h, x : x + w] = torch.tensor(self.erase_value, dtype=image.dtype)[:, None, None]
        return image.contiguous()


class TrainAugment:
    """The training augmentation of :class:`AugmentConfig` for images of ``size``: ``(image, caption)`` -> image
    (``uint8 (3, H, W)``, same size); the caption only decides whether a flip is allowed (``no_flip_words``)."""

    def __init__(self, size: tuple[int, int], config: AugmentConfig) -> None:
        steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if config.resized_crop is not None:
            aspect = size[1] / size[0]
            steps.append(v2.RandomResizedCrop(size, scale=tuple(config.resized_crop), ratio=(aspect * 3 / 4, aspect * 4 / 3),
                                              antialias=True))
        if config.color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=config.color_jitter, contrast=config.color_jitter,
                                        saturation=config.color_jitter))
        if config.grayscale > 0:
            steps.append(v2.RandomGrayscale(config.grayscale))
        self.before = v2.Compose(steps) if steps else None
        self.flip_pad_crop_erase = FlipPadCropErase(config.flip, config.pad, config.erase, config.erase_scale,
                                                    config.erase_value)
        words = "|".join(re.escape(word) for word in config.no_flip_words)
        self.no_flip = re.compile(rf"\b({words})\b", re.IGNORECASE) if words else None

    def __call__(self, image: torch.Tensor, caption: str | None = None) -> torch.Tensor:
        if self.before is not None:
            image = self.before(image)
        flip_allowed = self.no_flip is None or caption is None or self.no_flip.search(caption) is None
        return self.flip_pad_crop_erase(image, flip_allowed)


def build_train_augment(size: tuple[int, int], config: AugmentConfig) -> TrainAugment:
    """Random augmentation of a ``uint8 (3, H, W)`` tensor of size ``size`` (and its caption); output is the same
    dtype and size."""
    return TrainAugment(size, config)
