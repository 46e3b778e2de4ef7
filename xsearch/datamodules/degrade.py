"""Seeded low-quality face transform for the degraded-test protocol (TGFR; docs/methods.md#tgfr-low-quality-faces).

The defaults follow the TGFR repository's offline CelebA script (``transform_fair.py``): random horizontal
flip, rotation in [-5, 5] degrees with white fill, 3x3 Gaussian blur with sigma in [2, 9], brightness 0.4 and
hue 0.5 jitter, additive Gaussian noise of std sqrt(0.002) on [0, 1]. Two options it lacks (its resize is
commented out): ``downsample`` (down to a fraction of the size and back up, low resolution) and
``jpeg_quality`` (compression). Every random draw comes from a generator seeded by ``(seed, key)``, where the
key is the image's dataset index, so the same image is degraded the same way on every run and every machine.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = ["DegradeConfig", "degrade"]


@dataclass
class DegradeConfig:
    """Options of :func:`degrade`; a value of 0 / ``None`` switches its step off.

    Args:
        flip: probability of a horizontal flip.
        rotation: maximum absolute rotation in degrees (white fill).
        blur_sigma: ``(low, high)`` range of the 3x3 Gaussian blur's sigma.
        brightness / hue: colour jitter strengths (brightness factor in ``[1 - b, 1 + b]``, hue shift in
            ``[-h, h]``, at most 0.5).
        noise_std: std of additive Gaussian noise on the [0, 1] scale.
        downsample: resize to this fraction of the size and back (``1.0`` = off).
        jpeg_quality: re-encode as JPEG at this quality (``None`` = off).
        seed: base seed; the per-image key is added to it.
    """

    flip: float = 0.5
    rotation: float = 5.0
    blur_sigma: tuple[float, float] | None = (2.0, 9.0)
    brightness: float = 0.4
    hue: float = 0.5
    noise_std: float = math.sqrt(0.002)
    downsample: float = 1.0
    jpeg_quality: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.downsample <= 1:
            raise ValueError(f"degrade.downsample must be in (0, 1], got {self.downsample}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"degrade.jpeg_quality must be 1-100, got {self.jpeg_quality}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"degrade.hue must be in [0, 0.5], got {self.hue}")
        if self.blur_sigma is not None and not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"degrade.blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def degrade(image: torch.Tensor, config: DegradeConfig, key: int) -> torch.Tensor:
    """``uint8 (3, H, W)`` -> ``uint8 (3, H, W)``, degraded deterministically for ``(config.seed, key)``."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + int(key))
    height, width = image.shape[-2:]
    out = image
    if config.flip and float(torch.rand((), generator=generator)) < config.flip:
        out = TF.horizontal_flip(out)
    if config.rotation:
        angle = _uniform(generator, -config.rotation, config.rotation)
        out = TF.rotate(out, angle, interpolation=InterpolationMode.BILINEAR, fill=[255, 255, 255])
    if config.blur_sigma is not None:
        sigma = _uniform(generator, *config.blur_sigma)
        out = TF.gaussian_blur(out, kernel_size=[3, 3], sigma=[sigma, sigma])
    if config.brightness:
        out = TF.adjust_brightness(out, _uniform(generator, max(0.0, 1 - config.brightness), 1 + config.brightness))
    if config.hue:
        out = TF.adjust_hue(out, _uniform(generator, -config.hue, config.hue))
    if config.downsample < 1:
        small = [max(1, round(height * config.downsample)), max(1, round(width * config.downsample))]
        out = TF.resize(TF.resize(out, small, antialias=True), [height, width], antialias=True)
    if config.noise_std:
        noise = torch.randn(out.shape, generator=generator) * (255.0 * config.noise_std)
        out = (out.float() + noise).round().clamp(0, 255).to(torch.uint8)
    if config.jpeg_quality is not None:
        out = _jpeg(out, config.jpeg_quality)
    return out


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode ``uint8 (3, H, W)`` as JPEG at ``quality`` with Pillow and decode it again."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return torch.from_numpy(np.asarray(decoded.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
