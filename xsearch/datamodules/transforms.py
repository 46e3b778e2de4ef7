"""Image loading and augmentation on uint8 tensors.

Images travel through the data pipeline as ``uint8`` tensors ``(3, H, W)`` already resized
to the training size, so they can be cached in RAM and batched cheaply; the model converts
them to float and normalises them with its own backbone's mean/std on its device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


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


class UnreadableImage(OSError):
    """An image file that cannot be decoded (corrupt, truncated, not an image); ``path`` names it."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        super().__init__(str(path) if reason is None else f"{path}: cannot read image ({reason})")
        self.path = str(path)  # (the whole message when re-raised from a DataLoader worker)


def read_rgb(path: str | Path) -> Image.Image:
    """Decode an image file as RGB. Anything that is not a readable image raises :class:`UnreadableImage` naming the
    file: corrupt, truncated (PIL's ``LOAD_TRUNCATED_IMAGES`` stays off: no half-grey image), not an image, or a
    decompression bomb (more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` allows twice over: refused from its header,
    before any pixel is decoded)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImage(path, str(error)) from error


def load_image(path: str | Path, size: tuple[int, int],
               crop: tuple[float, float, float, float] | Literal["center"] | None = None) -> torch.Tensor:
    """Read an image file as RGB, optionally crop the box ``crop = (top, left, bottom, right)`` given as
    fractions of the height / width (e.g. the face of an aligned face image) or ``"center"`` (the largest centred
    box with the aspect ratio of ``size``: CLIP's resize + centre crop), resize to ``size = (H, W)``; without a
    crop, the aspect ratio is ignored.

    Returns a ``uint8`` tensor ``(3, H, W)``. A file that cannot be decoded raises :class:`UnreadableImage` naming it
    (:func:`read_rgb`).
    """
    image = read_rgb(path)
    if crop == "center":
        image = image.crop(center_box(*image.size, size))
    elif crop is not None:
        top, left, bottom, right = crop
        width, height = image.size
        image = image.crop((round(left * width), round(top * height), round(right * width), round(bottom * height)))
    image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


@dataclass
class AugmentConfig:
    """Training augmentation: flip, pad + random crop, random erasing (+ optional jitter).

    ``erase_scale`` is the erased share of the area; ``erase_value`` the RGB fill (None = random
    values). IRRA's recipe: ``erase_scale (0.02, 0.4)``, ``erase_value`` = the CLIP mean, i.e.
    ``[123, 117, 104]`` in 0-255 (zero after normalisation).
    """

    flip: float = 0.5
    pad: int = 10
    erase: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.2)
    erase_value: tuple[int, int, int] | None = None
    brightness: float = 0.0
    scale_jitter: float = 0.0


class FlipPadCropErase:
    """IRRA's augmentation on a ``uint8 (3, H, W)`` tensor in plain tensor ops (~50x faster than v2 per item).

    Horizontal flip with probability ``flip``; zero-pad by ``pad`` and crop back to ``(H, W)`` at a
    random offset; with probability ``erase`` replace a random rectangle (``erase_scale`` of the area,
    aspect 0.3-3.3) with random values or the RGB ``erase_value``.
    """

    def __init__(self, flip: float, pad: int, erase: float, erase_scale: tuple[float, float] = (0.02, 0.2),
                 erase_value: tuple[int, int, int] | None = None) -> None:
        self.flip, self.pad, self.erase = flip, pad, erase
        self.erase_scale, self.erase_value = tuple(erase_scale), erase_value

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        if self.flip and torch.rand(()) < self.flip:
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
            area = height * width * float(torch.empty(()).uniform_(*self.erase_scale))
            aspect = math.exp(float(torch.empty(()).uniform_(math.log(0.3), math.log(3.3))))
            h = min(height, max(1, round(math.sqrt(area * aspect))))
            w = min(width, max(1, round(math.sqrt(area / aspect))))
            y, x = int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
            image = image.clone()
            if self.erase_value is None:
                image[:, y : y + h, x : x + w] = torch.randint(0, 256, (3, h, w), dtype=image.dtype)
            else:
                image[:, y : y + h, x : x + w] = torch.tensor(self.erase_value, dtype=image.dtype)[:, None, None]
        return image.contiguous()


def build_train_augment(size: tuple[int, int], config: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random augmentation of a ``uint8 (3, H, W)`` tensor of size ``size``; output is the same dtype and size."""
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if config.scale_jitter > 0:
        ratio = size[1] / size[0]
        steps.append(v2.RandomResizedCrop(size, scale=(1 - config.scale_jitter, 1.0), ratio=(ratio * 0.9, ratio * 1.1), antialias=True))
    if config.brightness > 0:
        steps.append(v2.ColorJitter(brightness=config.brightness, contrast=config.brightness))
    steps.append(FlipPadCropErase(config.flip, config.pad, config.erase, config.erase_scale, config.erase_value))
    return v2.Compose(steps) if len(steps) > 1 else steps[0]
