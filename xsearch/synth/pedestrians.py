"""Synthetic pedestrians' latent attributes: who each identity of the pedestrian and scene sets is.

Each pedestrian identity has latent attributes (:class:`PersonAttributes`, see :func:`pedes_attributes`): gender,
hair, top, bottom, shoes, bag, hat, glasses, scarf, with colours from :data:`~xsearch.synth.colours.COLOURS`, and
the colours and proportions its drawings use (:mod:`xsearch.synth.render`); :mod:`xsearch.synth.captions` describes
them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from xsearch.synth.colours import COLOURS, HAIR_COLOURS, SKIN_TONES, clamp_rgb, contrast_colour, shade
from xsearch.synth.sampling import Stream, choice, seeded_rng

__all__ = ["PersonAttributes", "pedes_attributes", "person_colour_words"]

# ----------------------------------------------------------------------------------------------
# pedestrian attributes
# ----------------------------------------------------------------------------------------------

@dataclass
class PersonAttributes:
    """Latent attributes of one synthetic pedestrian (``id`` is 1-based).

    Colour fields hold names from :data:`COLOURS` (hair: :data:`HAIR_COLOURS`); ``*_tone`` is
    ``"dark"``/``"light"``/``""`` (a visible per-identity shade a caption may mention).
    """

    id: int
    gender: str
    hair_length: str  # short / medium / long / ponytail / bald
    hair_colour: str
    top: str  # t-shirt / shirt / jacket / coat / hoodie / sweater / dress
    top_colour: str
    top_tone: str
    sleeves: str  # short / long / none
    pattern: str  # plain / striped
    bottom: str | None  # trousers / jeans / shorts / skirt / None (dress)
    bottom_colour: str | None
    bottom_tone: str
    shoes: str
    shoes_colour: str
    bag: str | None  # backpack / shoulder bag / handbag / None
    bag_colour: str | None
    hat: str | None  # cap / hat / beanie / None
    hat_colour: str | None
    glasses: bool
    scarf_colour: str | None
    render: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def colour_words(self) -> set[str]:
        return person_colour_words(self)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("render")
        return d


def _tone_rgb(rng: np.random.Generator, name: str, *, shades: bool = True) -> tuple[tuple[int, int, int], str]:
    base = np.asarray(COLOURS[name], np.float64) + rng.normal(0, 9, 3)
    tone = ""
    f = 1.0
    if shades and name not in ("black", "white"):
        f = float(rng.uniform(0.72, 1.22))
        tone = "dark" if f < 0.84 else ("light" if f > 1.1 else "")
    return shade(clamp_rgb(base), f), tone


def _sample_person(pid: int, seed: int) -> PersonAttributes:
    rng = seeded_rng(seed, Stream.PERSON, pid)
    c = list(COLOURS)
    gender = "male" if rng.random() < 0.5 else "female"
    male = gender == "male"
    if male:
        hair_length = choice(rng, ["short", "medium", "long", "bald"], [0.8, 0.12, 0.03, 0.05])
    else:
        hair_length = choice(rng, ["short", "medium", "long", "ponytail"], [0.12, 0.25, 0.4, 0.23])
    hair_colour = choice(rng, list(HAIR_COLOURS), [0.45, 0.3, 0.16, 0.09])
    top = choice(rng, ["t-shirt", "shirt", "jacket", "coat", "hoodie", "sweater", "dress"],
                  [0.3, 0.17, 0.17, 0.1, 0.13, 0.13, 0.0] if male else [0.23, 0.13, 0.13, 0.11, 0.08, 0.1, 0.22])
    top_colour = choice(rng, c)
    sleeves = {"t-shirt": "short", "dress": choice(rng, ["short", "none"])}.get(
        top, "short" if (top == "shirt" and rng.random() < 0.3) else "long")
    pattern = "striped" if (top in ("t-shirt", "shirt", "sweater", "dress") and rng.random() < 0.15) else "plain"
    if top == "dress":
        bottom = None
    elif male:
        bottom = choice(rng, ["trousers", "jeans", "shorts"], [0.45, 0.37, 0.18])
    else:
        bottom = choice(rng, ["trousers", "jeans", "shorts", "skirt"], [0.3, 0.32, 0.12, 0.26])
    bottom_colour = None
    if bottom == "jeans":
        bottom_colour = choice(rng, ["blue", "black", "grey", "white"], [0.62, 0.22, 0.12, 0.04])
    elif bottom is not None:
        for _ in range(3):  # avoid top == bottom colour most of the time
            bottom_colour = choice(rng, c, [0.22, 0.07, 0.14, 0.05, 0.12, 0.05, 0.02, 0.1, 0.04, 0.03, 0.02, 0.14])
            if bottom_colour != top_colour:
                break
    shoes = choice(rng, ["sneakers", "boots", "leather shoes", "sandals"],
                    [0.5, 0.13, 0.27, 0.1] if bottom != "shorts" else [0.6, 0.0, 0.1, 0.3])
    shoes_colour = choice(rng, ["black", "white", "brown", "grey", "red", "blue", "pink"],
                           [0.38, 0.28, 0.14, 0.08, 0.05, 0.05, 0.02 if male else 0.06])
    if shoes == "boots":
        shoes_colour = choice(rng, ["black", "brown", "beige"], [0.55, 0.35, 0.1])
    bag = choice(rng, [None, "backpack", "shoulder bag", "handbag"],
                  [0.32, 0.33, 0.25, 0.1] if male else [0.25, 0.25, 0.25, 0.25])
    bag_colour = choice(rng, c, [0.35, 0.06, 0.08, 0.07, 0.08, 0.05, 0.03, 0.12, 0.05, 0.04, 0.03, 0.04]) if bag else None
    hat = choice(rng, [None, "cap", "hat", "beanie"], [0.8, 0.11, 0.04, 0.05])
    hat_colour = choice(rng, c) if hat else None
    glasses = bool(rng.random() < 0.18)
    scarf_colour = choice(rng, c) if rng.random() < (0.25 if top == "coat" else 0.07) else None

    top_rgb, top_tone = _tone_rgb(rng, top_colour)
    if bottom_colour:
        bottom_rgb, bottom_tone = _tone_rgb(rng, bottom_colour)
    else:
        bottom_rgb, bottom_tone = None, ""
    hair_rgb = clamp_rgb(np.asarray(HAIR_COLOURS[hair_colour], np.float64) * rng.uniform(0.85, 1.12)
                         + rng.normal(0, 6, 3))
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    skin = clamp_rgb(np.asarray(skin, np.float64) + rng.normal(0, 6, 3))
    render = {
        "gender": gender, "build": float(rng.uniform(0.88, 1.12)) * (1.05 if male else 0.95),
        "height": float(rng.uniform(0.94, 1.03)), "skin": skin,
        "hair_length": hair_length, "hair_rgb": hair_rgb,
        "top": top, "top_rgb": top_rgb, "sleeves": sleeves, "pattern": pattern,
        "stripe_rgb": contrast_colour(top_rgb),
        "bottom": bottom, "bottom_rgb": bottom_rgb, "skirt_len": float(rng.uniform(0.62, 0.74)),
        "shoes": shoes, "shoes_rgb": _tone_rgb(rng, shoes_colour, shades=False)[0],
        "bag": bag, "bag_rgb": _tone_rgb(rng, bag_colour, shades=False)[0] if bag_colour else None,
        "hat": hat, "hat_rgb": _tone_rgb(rng, hat_colour, shades=False)[0] if hat_colour else None,
        "glasses": glasses, "glasses_rgb": (20, 20, 22) if rng.random() < 0.8 else (150, 120, 60),
        "scarf": scarf_colour is not None,
        "scarf_rgb": _tone_rgb(rng, scarf_colour, shades=False)[0] if scarf_colour else None,
    }
    return PersonAttributes(
        id=pid, gender=gender, hair_length=hair_length, hair_colour=hair_colour, top=top, top_colour=top_colour,
        top_tone=top_tone, sleeves=sleeves, pattern=pattern, bottom=bottom, bottom_colour=bottom_colour,
        bottom_tone=bottom_tone, shoes=shoes, shoes_colour=shoes_colour, bag=bag, bag_colour=bag_colour, hat=hat,
        hat_colour=hat_colour, glasses=glasses, scarf_colour=scarf_colour, render=render)


def pedes_attributes(identities: int = 1000, seed: int = 0) -> list[PersonAttributes]:
    """Latent attributes of identities ``1..identities`` exactly as :func:`~xsearch.synth.writing.generate_pedes`
    uses them (element ``i`` is id ``i + 1``)."""
    return [_sample_person(pid, seed) for pid in range(1, identities + 1)]


def person_colour_words(a: PersonAttributes) -> set[str]:
    """Canonical colour names (see :data:`COLOUR_WORDS`) that the identity's captions may use."""
    out = {a.top_colour, a.shoes_colour}
    if a.hair_length != "bald":
        out.add(a.hair_colour)
    for v in (a.bottom_colour, a.bag_colour, a.hat_colour, a.scarf_colour):
        if v:
            out.add(v)
    return out
