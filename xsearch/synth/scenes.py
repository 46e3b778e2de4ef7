"""COCO-like scenes with one named person: what the synthetic COCO-PFS set (``synth_pfs``) shows and says.

Written in the COCO-PFS layout by :func:`xsearch.synth.writing.generate_pfs`, so that Id-CLIP's general retrieval and
entity retrieval run offline on a CPU.

* Identities (:func:`scene_identities`) are split identity-disjoint into train / val / test, train first. Each has a
  VGGFace2-style class id ``n%06d`` (distinct, seeded), a unique synthetic "First Last" name matching its gender
  (:func:`identity_names`), a fixed look (the pedestrian attributes of :mod:`xsearch.synth.pedestrians`, drawn by
  :mod:`xsearch.synth.render`) and a unit 512-d face-descriptor centre that is partly a function of that look
  (:data:`APPEARANCE_SHARE`, see :func:`appearance_vector`) and partly random: a face model's embedding reflects what
  the person looks like, so a translator trained on some identities can say something about unseen ones, as Id-CLIP
  needs.
* Every image (:func:`scene_image`) holds exactly one identity: a scene of one of :data:`CONTEXTS` (beach, street,
  park, kitchen, snow; layout, colours and an optional prop vary per image) with the identity's rendered pedestrian
  pasted in.
* Each image has 5 captions (:func:`scene_captions`) naming the context (and the prop, if any) and exactly one
  generic person word ("man", "lady", "person"...) so the parser's identity insertion anchors to it; about half of
  them also say one garment the person wears ("a man in a red jacket"), as COCO captions often do, so that a CLIP
  trained on them sees the person; the identity's name never appears (the parser inserts it).
* Each image's face descriptor (:func:`face_descriptor`) is the identity's centre plus Gaussian noise (by default
  such that the cosine to the centre is about 0.8), L2-normalised, 512 floats (6 decimals).
"""
from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from xsearch.synth import render
from xsearch.synth.captions import article
from xsearch.synth.colours import clamp_rgb, mix, shade
from xsearch.synth.pedestrians import PersonAttributes, pedes_attributes
from xsearch.synth.sampling import Stream, choice, seeded_rng, split_counts

__all__ = ["APPEARANCE_SHARE", "CAPTIONS_PER_IMAGE", "CONTEXTS", "DEFAULT_FACE_NOISE", "FACE_DIM", "FIRST_NAMES",
           "LAST_NAMES", "SceneIdentity", "appearance_vector", "face_descriptor", "identity_names", "scene_captions",
           "scene_identities", "scene_image"]

FACE_DIM = 512
"""Length of a face descriptor (VGGFace2 features in COCO-PFS)."""
CAPTIONS_PER_IMAGE = 5
"""COCO captions per image."""

FACE_COSINE = 0.8
DEFAULT_FACE_NOISE = math.sqrt((1.0 / FACE_COSINE**2 - 1.0) / FACE_DIM)
"""Per-dimension std of the descriptor noise giving an expected cosine of ~0.8 to the identity centre
(``|centre| = 1``, ``|noise|^2 ~ 512 std^2``, cosine ~ ``1 / sqrt(1 + 512 std^2)``)."""

FIRST_NAMES = {
    "male": ("Adrian", "Anton", "Bruno", "Carlos", "Daniel", "Elias", "Emil", "Felix", "Gustav", "Hugo", "Ivan",
             "Jonas", "Kenji", "Leon", "Luca", "Marco", "Matteo", "Nikolai", "Omar", "Oscar", "Pablo", "Rafael",
             "Ravi", "Stefan", "Sven", "Theo", "Tomas", "Viktor", "Walter", "Yusuf"),
    "female": ("Alba", "Amira", "Beatrice", "Chloe", "Clara", "Daria", "Elena", "Freya", "Greta", "Hanna", "Ida",
               "Ines", "Julia", "Katya", "Leila", "Lena", "Maya", "Mira", "Nadia", "Noor", "Olga", "Paula", "Rosa",
               "Selma", "Sofia", "Tara", "Vera", "Wanda", "Yara", "Zoe"),
}
LAST_NAMES = (
    "Abrams", "Albrecht", "Bergstrom", "Brennan", "Castellano", "Costa", "Delgado", "Dubois", "Eriksen", "Esposito",
    "Ferreira", "Fontaine", "Gallagher", "Gruber", "Haddad", "Horvath", "Ibsen", "Jansen", "Jovanovic", "Kaplan",
    "Kowalski", "Lindqvist", "Lombardi", "Mendes", "Moreau", "Nakamura", "Novak", "Okafor", "Olsen", "Petrov",
    "Quintero", "Rossi", "Schneider", "Takahashi", "Uribe", "Vasquez", "Whitfield", "Xenakis", "Yilmaz", "Zimmerman",
)
"""Name parts: none is a caption word, so a raw caption can never contain a name."""
MIDDLE_INITIALS = "ABCDEFGHJKLMNPRSTVW"

SUBJECTS = {
    "male": ("man", "man", "man", "young man", "guy", "boy"),
    "female": ("woman", "woman", "woman", "young woman", "lady", "girl"),
    "neutral": ("person", "person"),
}
"""Person words (each holds exactly one of the parser's entity keywords)."""
VERBS = ("standing", "standing", "walking", "posing", "waiting")


# ----------------------------------------------------------------------------------------------
# scene drawing (on a 2x canvas ``w`` x ``h``; every function draws with ``rng`` only)
# ----------------------------------------------------------------------------------------------

Draw = ImageDraw.ImageDraw
Prop = Callable[[Draw, np.random.Generator, float, float, float], None]
"""``draw(d, rng, x, ground_y, person_height)``: a prop standing on the ground at ``x``."""


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 14.0) -> tuple[int, int, int]:
    return clamp_rgb(np.asarray(rgb, np.float64) + rng.normal(0.0, amount, 3))


def _vertical(d: Draw, box: tuple[float, float, float, float], top: Sequence[float], bottom: Sequence[float]) -> None:
    """A vertical colour gradient in ``box`` (x0, y0, x1, y1), one line per row."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    rows = max(1, y1 - y0)
    for i in range(rows):
        d.line([(x0, y0 + i), (x1, y0 + i)], fill=mix(top, bottom, i / rows))


def _sky(d: Draw, rng: np.random.Generator, w: int, horizon: float, base: Sequence[float]) -> None:
    top = _jitter(rng, base, 10)
    _vertical(d, (0, 0, w, horizon), shade(top, 0.85), shade(top, 1.25))


def _beach(d: Draw, rng: np.random.Generator, w: int, h: int) -> float:
    sea_top = h * rng.uniform(0.32, 0.45)
    horizon = sea_top + h * rng.uniform(0.1, 0.16)  # where the sand begins
    _sky(d, rng, w, sea_top, (110, 175, 235))
    sx, sy, sr = rng.uniform(0.1, 0.9) * w, rng.uniform(0.08, 0.2) * h, rng.uniform(0.04, 0.07) * w
    d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=_jitter(rng, (252, 226, 96), 6))
    sea = _jitter(rng, (30, 110, 170), 12)
    _vertical(d, (0, sea_top, w, horizon), shade(sea, 0.8), shade(sea, 1.2))
    for _ in range(int(rng.integers(2, 6))):  # wave crests
        y = rng.uniform(sea_top, horizon)
        x = rng.uniform(-0.2, 0.9) * w
        d.line([(x, y), (x + rng.uniform(0.1, 0.35) * w, y)], fill=(235, 240, 245), width=2)
    sand = _jitter(rng, (226, 204, 150), 10)
    _vertical(d, (0, horizon, w, h), shade(sand, 1.1), shade(sand, 0.88))
    d.line([(0, horizon), (w, horizon)], fill=(240, 244, 246), width=3)  # surf line
    for _ in range(int(rng.integers(3, 10))):  # pebbles and shells
        x, y, r = rng.uniform(0, w), rng.uniform(horizon, h), rng.uniform(1.5, 4)
        d.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=shade(sand, float(rng.uniform(0.6, 1.25))))
    return horizon


def _street(d: Draw, rng: np.random.Generator, w: int, h: int) -> float:
    horizon = h * rng.uniform(0.5, 0.62)
    _sky(d, rng, w, horizon, (165, 190, 215))
    x = -rng.uniform(0, 0.2) * w
    while x < w:  # facades with windows
        bw = rng.uniform(0.22, 0.45) * w
        top = rng.uniform(0.05, 0.35) * h
        col = _jitter(rng, choice(rng, [(170, 90, 70), (200, 190, 170), (120, 120, 128), (215, 200, 140),
                                         (150, 160, 175)]), 12)
        d.rectangle([x, top, x + bw, horizon], fill=col)
        win = shade(col, 0.55) if rng.random() < 0.7 else (200, 220, 235)
        ww, wh = bw * 0.14, h * 0.05
        for wy in np.arange(top + h * 0.03, horizon - wh - h * 0.02, wh * 1.9):
            for wx in np.arange(x + bw * 0.1, x + bw - ww, ww * 1.9):
                d.rectangle([wx, wy, wx + ww, wy + wh], fill=win)
        x += bw + rng.uniform(0, 0.04) * w
    kerb = horizon + (h - horizon) * rng.uniform(0.25, 0.4)
    d.rectangle([0, horizon, w, kerb], fill=_jitter(rng, (180, 178, 172), 8))  # sidewalk
    road = _jitter(rng, (70, 72, 76), 8)
    _vertical(d, (0, kerb, w, h), shade(road, 1.1), shade(road, 0.85))
    lane_y = kerb + (h - kerb) * rng.uniform(0.45, 0.7)
    dash = w * rng.uniform(0.08, 0.14)
    for x0 in np.arange(-rng.uniform(0, dash), w, dash * 2):
        d.rectangle([x0, lane_y - 2, x0 + dash, lane_y + 2], fill=(235, 235, 225))
    return horizon


def _tree(d: Draw, rng: np.random.Generator, x: float, base: float, size: float) -> None:
    trunk = _jitter(rng, (100, 70, 45), 8)
    d.rectangle([x - size * 0.06, base - size * 0.6, x + size * 0.06, base], fill=trunk)
    leaf = _jitter(rng, (50, 120, 55), 14)
    d.ellipse([x - size * 0.35, base - size * 1.15, x + size * 0.35, base - size * 0.45], fill=leaf)


def _park(d: Draw, rng: np.random.Generator, w: int, h: int) -> float:
    horizon = h * rng.uniform(0.4, 0.55)
    _sky(d, rng, w, horizon, (125, 185, 235))
    for _ in range(int(rng.integers(3, 7))):  # distant tree line
        x, r = rng.uniform(0, w), rng.uniform(0.08, 0.16) * w
        d.ellipse([x - r, horizon - r * 0.9, x + r, horizon + r * 0.3], fill=_jitter(rng, (60, 110, 70), 10))
    grass = _jitter(rng, (90, 160, 70), 12)
    _vertical(d, (0, horizon, w, h), shade(grass, 0.85), shade(grass, 1.1))
    px = rng.uniform(0.2, 0.8) * w  # a path into the distance
    d.polygon([(px - 0.03 * w, horizon), (px + 0.03 * w, horizon), (px + 0.3 * w, h), (px - 0.3 * w, h)],
              fill=_jitter(rng, (205, 185, 140), 8))
    for _ in range(int(rng.integers(1, 4))):
        _tree(d, rng, rng.uniform(0, w), horizon + rng.uniform(0.0, 0.1) * h, rng.uniform(0.35, 0.55) * h)
    return horizon


def _kitchen(d: Draw, rng: np.random.Generator, w: int, h: int) -> float:
    floor_y = h * rng.uniform(0.62, 0.72)
    wall = _jitter(rng, choice(rng, [(236, 226, 200), (210, 228, 222), (240, 240, 236), (232, 210, 196)]), 6)
    d.rectangle([0, 0, w, floor_y], fill=wall)
    cab = _jitter(rng, choice(rng, [(245, 245, 240), (150, 105, 70), (90, 120, 150), (190, 200, 180)]), 8)
    d.rectangle([0, 0, w, h * 0.2], fill=cab)  # wall cabinets
    counter_y = h * rng.uniform(0.4, 0.46)
    tile = shade(wall, 0.9)
    step = w * rng.uniform(0.05, 0.08)
    for yy in np.arange(h * 0.2, counter_y, step):  # splashback tiles
        d.line([(0, yy), (w, yy)], fill=tile, width=1)
    for xx in np.arange(0, w, step):
        d.line([(xx, h * 0.2), (xx, counter_y)], fill=tile, width=1)
    if rng.random() < 0.6:  # window
        wx = rng.uniform(0.1, 0.6) * w
        d.rectangle([wx, h * 0.22, wx + 0.25 * w, counter_y - h * 0.03], fill=(170, 210, 240), outline=cab, width=4)
    d.rectangle([0, counter_y, w, floor_y], fill=cab)  # base cabinets
    d.rectangle([0, counter_y - h * 0.025, w, counter_y], fill=_jitter(rng, (70, 70, 72), 10))  # worktop
    door = w * rng.uniform(0.12, 0.18)
    for xx in np.arange(door * 0.1, w, door):
        d.rectangle([xx, counter_y + h * 0.02, xx + door * 0.85, floor_y - h * 0.02], outline=shade(cab, 0.75), width=2)
    f1, f2 = _jitter(rng, (200, 190, 175), 10), _jitter(rng, (120, 100, 85), 10)
    cell = w * rng.uniform(0.08, 0.14)
    for i, yy in enumerate(np.arange(floor_y, h, cell * 0.6)):  # checker floor
        for j, xx in enumerate(np.arange(-cell * (i % 2) * 0.5, w, cell)):
            d.rectangle([xx, yy, xx + cell, yy + cell * 0.6], fill=f1 if (i + j) % 2 else f2)
    return floor_y


def _pine(d: Draw, rng: np.random.Generator, x: float, base: float, size: float) -> None:
    green = _jitter(rng, (35, 85, 55), 8)
    for k in range(3):
        top = base - size * (1.0 - 0.25 * k)
        half = size * (0.18 + 0.07 * k)
        d.polygon([(x, top - size * 0.1), (x - half, top + size * 0.35), (x + half, top + size * 0.35)], fill=green)
        d.polygon([(x, top - size * 0.1), (x - half * 0.35, top + size * 0.02), (x + half * 0.35, top + size * 0.02)],
                  fill=(245, 248, 252))
    d.rectangle([x - size * 0.03, base - size * 0.3, x + size * 0.03, base], fill=(90, 65, 45))


def _snow(d: Draw, rng: np.random.Generator, w: int, h: int) -> float:
    horizon = h * rng.uniform(0.4, 0.55)
    _sky(d, rng, w, horizon, (185, 200, 215))
    for _ in range(int(rng.integers(2, 4))):  # mountains
        x, half, peak = rng.uniform(0, w), rng.uniform(0.2, 0.4) * w, rng.uniform(0.1, 0.3) * h
        rock = _jitter(rng, (140, 150, 165), 8)
        d.polygon([(x - half, horizon), (x, horizon - peak), (x + half, horizon)], fill=rock)
        d.polygon([(x - half * 0.3, horizon - peak * 0.7), (x, horizon - peak), (x + half * 0.3, horizon - peak * 0.7)],
                  fill=(248, 250, 252))
    _vertical(d, (0, horizon, w, h), (215, 225, 238), (250, 252, 255))
    for _ in range(int(rng.integers(1, 4))):
        _pine(d, rng, rng.uniform(0, w), horizon + rng.uniform(0.0, 0.08) * h, rng.uniform(0.3, 0.5) * h)
    return horizon


def _snowflakes(d: Draw, rng: np.random.Generator, w: int, h: int) -> None:
    for _ in range(int(rng.integers(10, 40))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 2.5)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 252))


# props: drawn standing on the ground at x, sized by the person's height s ---------------------

def _surfboard(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    col = _jitter(rng, choice(rng, [(236, 122, 30), (40, 150, 200), (232, 200, 40), (220, 60, 80)]), 10)
    d.ellipse([x - s * 0.09, g - s * 0.95, x + s * 0.09, g], fill=col)
    d.line([(x, g - s * 0.9), (x, g - s * 0.05)], fill=(245, 245, 240), width=max(1, int(s * 0.02)))


def _umbrella(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    d.line([(x, g), (x, g - s * 1.1)], fill=(120, 100, 80), width=max(2, int(s * 0.025)))
    a, b = _jitter(rng, (220, 50, 50), 10), _jitter(rng, (245, 240, 230), 6)
    box = [x - s * 0.5, g - s * 1.35, x + s * 0.5, g - s * 0.85]
    for k in range(6):
        d.pieslice(box, 180 + 30 * k, 210 + 30 * k, fill=a if k % 2 else b)


def _car(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    col = _jitter(rng, choice(rng, [(185, 28, 34), (38, 84, 190), (236, 236, 232), (28, 28, 30), (125, 125, 128)]), 8)
    d.rounded_rectangle([x - s * 0.8, g - s * 0.45, x + s * 0.8, g - s * 0.12], radius=int(s * 0.08), fill=col)
    d.polygon([(x - s * 0.45, g - s * 0.45), (x - s * 0.3, g - s * 0.7), (x + s * 0.3, g - s * 0.7),
               (x + s * 0.5, g - s * 0.45)], fill=col)
    d.polygon([(x - s * 0.38, g - s * 0.47), (x - s * 0.27, g - s * 0.65), (x + s * 0.25, g - s * 0.65),
               (x + s * 0.4, g - s * 0.47)], fill=(160, 195, 220))
    for wx in (x - s * 0.5, x + s * 0.5):
        d.ellipse([wx - s * 0.14, g - s * 0.26, wx + s * 0.14, g + s * 0.02], fill=(25, 25, 25))


def _bicycle(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    col = _jitter(rng, choice(rng, [(185, 28, 34), (38, 84, 190), (40, 128, 62), (28, 28, 30)]), 8)
    r, width = s * 0.17, max(2, int(s * 0.025))
    back, front = (x - s * 0.27, g - r), (x + s * 0.27, g - r)
    for cx, cy in (back, front):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(30, 30, 30), width=width)
    seat, bar = (x - s * 0.08, g - r * 2.6), (x + s * 0.2, g - r * 2.7)
    d.line([back, (x, g - r), seat, back], fill=col, width=width)
    d.line([(x, g - r), bar, front], fill=col, width=width)
    d.line([seat, bar], fill=col, width=width)


def _bench(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    wood = _jitter(rng, (130, 85, 50), 10)
    for k in range(2):
        d.rectangle([x - s * 0.55, g - s * (0.38 + 0.12 * k), x + s * 0.55, g - s * (0.34 + 0.12 * k)], fill=wood)
    d.rectangle([x - s * 0.55, g - s * 0.3, x + s * 0.55, g - s * 0.25], fill=wood)
    for lx in (x - s * 0.45, x + s * 0.45):
        d.rectangle([lx - s * 0.02, g - s * 0.3, lx + s * 0.02, g], fill=(50, 50, 50))


def _dog(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    fur = _jitter(rng, choice(rng, [(112, 72, 42), (210, 180, 120), (28, 28, 30), (236, 236, 232)]), 8)
    for lx in (x - s * 0.15, x - s * 0.08, x + s * 0.1, x + s * 0.16):
        d.rectangle([lx - s * 0.02, g - s * 0.14, lx + s * 0.02, g], fill=shade(fur, 0.85))
    d.ellipse([x - s * 0.22, g - s * 0.28, x + s * 0.22, g - s * 0.1], fill=fur)
    d.ellipse([x + s * 0.14, g - s * 0.38, x + s * 0.3, g - s * 0.22], fill=fur)
    d.line([(x - s * 0.2, g - s * 0.22), (x - s * 0.3, g - s * 0.32)], fill=fur, width=max(1, int(s * 0.03)))


def _stove(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    body = _jitter(rng, choice(rng, [(40, 40, 44), (200, 200, 205), (236, 236, 232)]), 6)
    d.rectangle([x - s * 0.25, g - s * 0.55, x + s * 0.25, g], fill=body, outline=(30, 30, 30), width=1)
    d.rectangle([x - s * 0.2, g - s * 0.42, x + s * 0.2, g - s * 0.12], fill=(25, 25, 28))  # oven door
    for bx in (x - s * 0.12, x + s * 0.12):
        d.ellipse([bx - s * 0.07, g - s * 0.6, bx + s * 0.07, g - s * 0.53], fill=(20, 20, 20))


def _fridge(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    body = _jitter(rng, choice(rng, [(236, 236, 232), (195, 198, 205)]), 5)
    d.rectangle([x - s * 0.25, g - s * 1.05, x + s * 0.25, g], fill=body, outline=(120, 120, 125), width=1)
    d.line([(x - s * 0.25, g - s * 0.7), (x + s * 0.25, g - s * 0.7)], fill=(120, 120, 125), width=1)
    d.line([(x + s * 0.18, g - s * 0.95), (x + s * 0.18, g - s * 0.78)], fill=(90, 90, 95), width=max(1, int(s * 0.02)))


def _skis(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    col = _jitter(rng, choice(rng, [(185, 28, 34), (38, 84, 190), (232, 200, 40), (28, 28, 30)]), 8)
    for dx in (-s * 0.04, s * 0.04):
        d.polygon([(x + dx - s * 0.025, g), (x + dx + s * 0.025, g), (x + dx * 2.5 + s * 0.02, g - s * 0.95),
                   (x + dx * 2.5 - s * 0.02, g - s * 0.95)], fill=col)


def _snowman(d: Draw, rng: np.random.Generator, x: float, g: float, s: float) -> None:
    for r, y in ((0.2, 0.2), (0.15, 0.52), (0.11, 0.76)):
        d.ellipse([x - s * r, g - s * (y + r), x + s * r, g - s * (y - r)], fill=(248, 250, 252),
                  outline=(200, 205, 215), width=1)
    d.polygon([(x, g - s * 0.77), (x + s * 0.12, g - s * 0.75), (x, g - s * 0.73)], fill=(236, 122, 30))
    for ex in (x - s * 0.04, x + s * 0.04):
        d.ellipse([ex - s * 0.015, g - s * 0.83, ex + s * 0.015, g - s * 0.8], fill=(20, 20, 20))


@dataclass(frozen=True)
class PropKind:
    """An object standing next to the person: how it is drawn and the nouns a caption may use."""

    draw: Prop
    nouns: tuple[str, ...]


@dataclass(frozen=True)
class Context:
    """A scene type: its drawing (returns the y where the ground starts) and caption vocabulary."""

    name: str
    draw: Callable[[Draw, np.random.Generator, int, int], float]
    places: tuple[str, ...]  # "on a sandy beach": follows the person
    scenes: tuple[str, ...]  # "A sandy beach": opens a caption
    props: tuple[PropKind, ...]
    after: Callable[[Draw, np.random.Generator, int, int], None] | None = None  # drawn over everything


CONTEXTS: dict[str, Context] = {c.name: c for c in (
    Context("beach", _beach,
            ("on a sandy beach", "on the beach", "by the ocean", "near the water on a beach", "on the shore"),
            ("A sunny beach", "A sandy beach", "The beach by the sea"),
            (PropKind(_surfboard, ("surfboard",)), PropKind(_umbrella, ("beach umbrella", "umbrella")))),
    Context("street", _street,
            ("on a city street", "on the sidewalk", "on a busy street", "in front of a building", "on a street"),
            ("A city street", "A street lined with buildings", "A sidewalk in the city"),
            (PropKind(_car, ("car", "parked car")), PropKind(_bicycle, ("bicycle", "bike")))),
    Context("park", _park,
            ("in a park", "on the grass in a park", "in a grassy park", "under the trees in a park", "in a green park"),
            ("A green park", "A grassy park", "A park with trees"),
            (PropKind(_bench, ("bench", "park bench")), PropKind(_dog, ("dog",)))),
    Context("kitchen", _kitchen,
            ("in a kitchen", "in a small kitchen", "next to the kitchen counter", "in a home kitchen",
             "inside a kitchen"),
            ("A kitchen", "A small kitchen", "A kitchen with cabinets"),
            (PropKind(_stove, ("stove", "oven")), PropKind(_fridge, ("refrigerator", "fridge")))),
    Context("snow", _snow,
            ("in the snow", "on a snowy hill", "in a snowy field", "on a snow covered slope", "outside in the snow"),
            ("A snowy field", "A snow covered hill", "A winter landscape"),
            (PropKind(_skis, ("pair of skis", "set of skis")), PropKind(_snowman, ("snowman",))),
            after=lambda d, rng, w, h: _snowflakes(d, rng, w, h) if rng.random() < 0.5 else None),
)}


# ----------------------------------------------------------------------------------------------
# the person
# ----------------------------------------------------------------------------------------------

BACKDROPS = ((255, 0, 128), (0, 255, 127))
"""The two backdrops the person is rendered on: complementary (they add up to white) with equal mean, so
the renderer's contrast step (which uses the image mean) treats both renders alike."""


def _flat(rgb: tuple[int, int, int]) -> Callable[[np.random.Generator, int, int], Image.Image]:
    """A flat ``rgb`` backdrop for :func:`render.render_person`; it draws nothing from the generator, so two
    renders from one generator state differ only where the backdrop shows."""
    return lambda rng, w, h: Image.new("RGB", (w, h), rgb)


def _render_cutout(person: PersonAttributes, rng: np.random.Generator,
                   size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """The rendered person (``size`` (H, W)) as colour + opacity, by difference matting.

    The same render (same generator state) on the two :data:`BACKDROPS`: person pixels come out
    identical, backdrop pixels differ by ~255 per channel, edge pixels (supersampling, blur) in
    proportion to how much backdrop they hold. So ``alpha = 1 - |I1 - I2| / |backdrop difference|``,
    and the colour is the mean of the two renders (the person over the backdrops' grey mean) with that
    grey taken out again. ``rng`` ends where a single ``render_person`` call leaves it.
    """
    renders = []
    for key, generator in zip(BACKDROPS, (copy.deepcopy(rng), rng)):
        image, _ = render.render_person(person.render, generator, size, camera="Market", background=_flat(key))
        renders.append(np.asarray(image, np.float32))
    first, second = renders
    difference = np.abs(first - second).sum(axis=2)
    backdrop = max(float(np.percentile(difference, 90)), 150.0)
    alpha = np.clip((0.7 - difference / backdrop) / 0.6, 0.0, 1.0)[..., None]  # lighting ramps: 30% margin
    mean = (first + second) / 2.0
    clear = alpha[..., 0] < 0.02
    grey = mean[clear].mean(axis=0) if clear.any() else np.full(3, 127.5, np.float32)
    colour = (mean - (1.0 - alpha) * grey) / np.maximum(alpha, 1e-3)
    colour = np.where(alpha > 0, np.clip(colour, 0, 255), 0)
    return (Image.fromarray((colour + 0.5).astype(np.uint8), "RGB"),
            Image.fromarray((alpha[..., 0] * 255.0 + 0.5).astype(np.uint8), "L"))


def scene_image(person: PersonAttributes, context: Context, prop: PropKind | None,
                 rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One COCO-like scene of ``size`` (H, W) with ``person`` standing on the ground, ``prop`` beside it."""
    H, W = size
    h, w = H * render.SS, W * render.SS
    canvas = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(canvas)
    ground = context.draw(d, rng, w, h)
    feet = ground + (h - ground) * rng.uniform(0.6, 0.98)  # canvas px
    height = min(h * rng.uniform(0.6, 0.88), feet - h * 0.02)  # person height, canvas px: the subject of the photo
    cx = w * rng.uniform(0.25, 0.75)
    if prop is not None:
        side = 1.0 if rng.random() < 0.5 else -1.0
        px = cx + side * height * rng.uniform(0.45, 0.75)
        prop.draw(d, rng, px, feet + height * rng.uniform(-0.06, 0.0), height)
    if context.after is not None:
        context.after(d, rng, w, h)
    scene = canvas.resize((W, H), Image.BOX)

    ph = max(8, int(round(height / render.SS)))
    pw = max(4, int(round(ph * 0.4)))
    figure, alpha = _render_cutout(person, rng, (ph, pw))
    left = int(round(cx / render.SS - pw / 2))
    top = int(round(feet / render.SS - ph))
    scene.paste(figure, (left, top), alpha)
    return render.photometric(scene, rng, noise=(1.0, 4.0), blur_p=0.15, blur_radius=(0.3, 0.6))


# ----------------------------------------------------------------------------------------------
# captions and names
# ----------------------------------------------------------------------------------------------

def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _outfit(person: PersonAttributes, rng: np.random.Generator) -> str:
    """What the person wears, as a COCO caption might say it: " in a red jacket", " wearing blue jeans"..."""
    options = [article(f"{person.top_colour} {person.top}")]
    if person.bottom is not None:
        plural = person.bottom in ("trousers", "jeans", "shorts")
        options.append(f"{person.bottom_colour} {person.bottom}" if plural else article(f"{person.bottom_colour} {person.bottom}"))
    if person.hat is not None:
        options.append(article(f"{person.hat_colour} {person.hat}"))
    return f" {choice(rng, ['in', 'wearing'])} {choice(rng, options)}"


OUTFIT_SHARE = 0.5
"""Share of captions that say what the person wears (COCO captions often do; names never)."""


def scene_captions(person: PersonAttributes, context: Context, prop: PropKind | None,
                   rng: np.random.Generator) -> list[str]:
    """5 COCO-style captions: the context, the prop (when there is one), exactly one person word, and in about
    :data:`OUTFIT_SHARE` of them one visible garment of the person (the images show it)."""
    gender = person.gender
    templates = [
        "{subj} {verb} {place}{prop}",
        "{subj} is {verb} {place}{prop}",
        "{scene} with {subj} {verb}{prop}",
        "{subj} {place}{prop}",
        "there is {subj} {verb} {place}",
        "a photo of {subj} {verb} {place}",
    ]
    if prop is not None:
        templates += ["{a_prop} {place} and {subj} {verb} beside it", "{subj} and {a_prop} {place}"]
    order = rng.permutation(len(templates))[:CAPTIONS_PER_IMAGE]
    out = []
    for t in order:
        words = SUBJECTS[gender] if rng.random() < 0.85 else SUBJECTS["neutral"]
        noun = choice(rng, prop.nouns) if prop is not None else ""
        prop_part = ""
        if prop is not None and rng.random() < 0.6:
            prop_part = f" {choice(rng, ['next to', 'near', 'beside', 'with'])} {article(noun)}"
        outfit = _outfit(person, rng) if rng.random() < OUTFIT_SHARE else ""
        text = templates[int(t)].format(
            subj=article(choice(rng, words)) + outfit, verb=choice(rng, VERBS), place=choice(rng, context.places),
            scene=choice(rng, context.scenes).lower(), prop=prop_part, a_prop=article(noun))
        out.append(_sentence(text))
    return out


def identity_names(genders: Sequence[str], seed: int = 0) -> list[str]:
    """Unique display names ("First Last", then "First M. Last" once a gender's pairs run out), one per
    identity, first names matching ``genders`` ("male" / "female"); deterministic in ``seed``."""
    pairs = {g: [(f, l) for f in FIRST_NAMES[g] for l in LAST_NAMES] for g in FIRST_NAMES}
    order = {g: seeded_rng(seed, Stream.SCENE_NAME, k).permutation(len(pairs[g])) for k, g in enumerate(sorted(pairs))}
    used = {g: 0 for g in pairs}
    names = []
    for gender in genders:
        n, total = used[gender], len(pairs[gender])
        if n >= total * (1 + len(MIDDLE_INITIALS)):
            raise ValueError(f"more than {total * (1 + len(MIDDLE_INITIALS))} {gender} identities: out of names")
        first, last = pairs[gender][int(order[gender][n % total])]
        middle = "" if n < total else f"{MIDDLE_INITIALS[n // total - 1]}. "
        names.append(f"{first} {middle}{last}")
        used[gender] = n + 1
    return names


# ----------------------------------------------------------------------------------------------
# identities and face descriptors
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneIdentity:
    """One identity of the scene set: its place, class id, display name, look and face-descriptor centre."""

    index: int  # 0-based, train identities first
    split: str
    class_id: str
    name: str
    person: PersonAttributes
    centre: np.ndarray  # unit (512,)


APPEARANCE_SHARE = 0.8
"""Weight of the look in a descriptor centre: ``centre = a * appearance + sqrt(1 - a^2) * random`` (unit parts)."""
APPEARANCE_FIELDS = ("gender", "hair_length", "hair_colour", "top", "top_colour", "bottom", "bottom_colour", "bag",
                     "hat", "glasses")
"""The visible attributes a descriptor centre depends on."""


def appearance_vector(person: PersonAttributes) -> np.ndarray:
    """Unit ``(512,)``: the sum of one fixed random vector per ``field=value`` of :data:`APPEARANCE_FIELDS`
    (seeded by the text, the same in every dataset: one "face model"), normalised."""
    total = np.zeros(FACE_DIM)
    for name in APPEARANCE_FIELDS:
        key = f"{name}={getattr(person, name)}"
        total += np.random.default_rng(zlib.crc32(key.encode())).standard_normal(FACE_DIM)
    return total / np.linalg.norm(total)


def scene_identities(identities: int, seed: int, split_fractions: Sequence[float]) -> list[SceneIdentity]:
    """The ``identities`` people of a scene set, split identity-disjoint by ``split_fractions`` (train first)."""
    n_train, n_val, _ = split_counts(identities, split_fractions)
    people = pedes_attributes(identities, seed)
    names = identity_names([p.gender for p in people], seed)
    numbers = seeded_rng(seed, Stream.SCENE_LAYOUT, 1).choice(np.arange(1, max(10000, 4 * identities)), identities,
                                                              replace=False)
    out = []
    for i, (person, name, number) in enumerate(zip(people, names, numbers.tolist())):
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        own = seeded_rng(seed, Stream.SCENE_CENTRE, i).standard_normal(FACE_DIM)
        centre = APPEARANCE_SHARE * appearance_vector(person) + math.sqrt(1 - APPEARANCE_SHARE**2) * own / np.linalg.norm(own)
        out.append(SceneIdentity(i, split, f"n{number:06d}", name, person, centre / np.linalg.norm(centre)))
    return out


def face_descriptor(centre: np.ndarray, noise: float, rng: np.random.Generator) -> list[float]:
    """The face descriptor of one image: ``centre`` plus Gaussian noise of std ``noise``, L2-normalised, 6 decimals."""
    v = centre + rng.normal(0.0, noise, FACE_DIM)
    v /= np.linalg.norm(v)
    return [round(float(x), 6) for x in v]
