"""Colours of the synthetic data: the named palettes that attributes and captions use, skin tones, RGB arithmetic."""
from __future__ import annotations

from typing import Sequence

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "black": (28, 28, 30), "white": (236, 236, 232), "grey": (125, 125, 128), "red": (185, 28, 34),
    "blue": (38, 84, 190), "green": (40, 128, 62), "yellow": (232, 200, 40), "brown": (112, 72, 42),
    "pink": (238, 140, 175), "purple": (118, 58, 150), "orange": (236, 122, 30), "beige": (212, 190, 150),
}
"""Garment and accessory colours by the name a caption says."""
HAIR_COLOURS: dict[str, RGB] = {
    "black": (24, 20, 19), "brown": (96, 58, 32), "blond": (214, 182, 108), "grey": (165, 163, 160),
}
SKIN_TONES: list[RGB] = [(250, 222, 198), (238, 200, 168), (222, 178, 140), (196, 150, 112), (160, 112, 78),
                         (112, 78, 54)]
"""Lightest first (pale faces draw from the first three)."""


def clamp_rgb(c: Sequence[float]) -> RGB:
    return (int(min(255, max(0, round(c[0])))), int(min(255, max(0, round(c[1])))),
            int(min(255, max(0, round(c[2])))))


def shade(c: Sequence[float], f: float) -> RGB:
    """Scale a colour; ``f > 1`` moves it towards white instead of clipping."""
    if f <= 1.0:
        return clamp_rgb([v * f for v in c])
    t = min(1.0, f - 1.0)
    return clamp_rgb([v + (255 - v) * t for v in c])


def mix(a: Sequence[float], b: Sequence[float], t: float) -> RGB:
    return clamp_rgb([a[i] * (1 - t) + b[i] * t for i in range(3)])


def contrast_colour(c: Sequence[float]) -> RGB:
    """Near-white on a dark colour, near-black on a light one (stripes on a top)."""
    lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    return (245, 245, 242) if lum < 120 else (30, 30, 34)
