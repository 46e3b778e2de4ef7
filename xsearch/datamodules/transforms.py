"""Image loading and augmentation on uint8 tensors.

Images travel through the data pipeline as ``uint8`` tensors ``(3, H, W)`` already resized
to the training size, so they can be cached in RAM and batched cheaply; the model converts
them to float and normalises them with its own backbone's mean/std on its device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


def load_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """Read an image file as RGB, resize to ``size = (H, W)`` ignoring aspect ratio.

    Returns a ``uint8`` tensor ``(3, H, W)``. Errors name the file.
    """
    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    except (OSError, ValueError) as error:
        raise OSError(f"{path}: cannot read image ({error})") from error
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


@dataclass
class AugmentConfig:
    """Training augmentation (IRRA's recipe by default: flip, pad + random crop, random erasing)."""

    flip: float = 0.5
    pad: int = 10
    erase: float = 0.5
    brightness: float = 0.0
    scale_jitter: float = 0.0


def build_train_augment(size: tuple[int, int], config: AugmentConfig) -> v2.Transform:
    """Random augmentation of a ``uint8 (3, H, W)`` tensor of size ``size``; output is the same dtype and size."""
    steps: list[v2.Transform] = []
    if config.scale_jitter > 0:
        steps.append(v2.RandomResizedCrop(size, scale=(1 - config.scale_jitter, 1.0), ratio=(size[1] / size[0] * 0.9, size[1] / size[0] * 1.1), antialias=True))
    if config.flip > 0:
        steps.append(v2.RandomHorizontalFlip(config.flip))
    if config.pad > 0:
        steps.append(v2.RandomCrop(size, padding=config.pad))
    if config.brightness > 0:
        steps.append(v2.ColorJitter(brightness=config.brightness, contrast=config.brightness))
    if config.erase > 0:
        steps.append(v2.RandomErasing(config.erase, scale=(0.02, 0.2), value=0))
    return v2.Compose(steps) if steps else v2.Identity()
