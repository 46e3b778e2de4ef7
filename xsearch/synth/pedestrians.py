"""Synthetic pedestrians (their latent attributes and captions) and synthetic face identities.

Each pedestrian identity has latent attributes (:class:`PersonAttributes`, see :func:`pedes_attributes`): gender,
hair, top, bottom, shoes, bag, hat, glasses, scarf, with colours from :data:`~xsearch.synth.colours.COLOURS`, and
the colours and proportions its drawings use (:mod:`xsearch.synth.render`). :func:`pedes_captions` writes the
captions of one of its images: random subsets of the identity's attributes with varied templates and synonyms.
Face identities (:func:`face_identity`) have stable CelebA attributes, per-image propensities and a look.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from xsearch.face_captions import CELEBA_ATTRIBUTES
from xsearch.synth.colours import COLOURS, HAIR_COLOURS, SKIN_TONES, clamp_rgb, contrast_colour, mix, shade
from xsearch.synth.sampling import Stream, choice, seeded_rng

__all__ = [
    "COLOUR_WORDS", "PersonAttributes", "caption_colour_words", "face_attributes", "face_identity",
    "face_image_attributes", "pedes_attributes", "pedes_captions", "person_colour_words", "tokenize",
]

# ----------------------------------------------------------------------------------------------
# vocabulary
# ----------------------------------------------------------------------------------------------

# surface word -> canonical colour (what tests use to check captions against attributes)
COLOUR_WORDS: dict[str, str] = {c: c for c in COLOURS} | {
    "gray": "grey", "blond": "blond", "blonde": "blond", "khaki": "beige", "tan": "beige",
}

TOP_NOUNS = {
    "t-shirt": ["t-shirt", "T-shirt", "tee", "tshirt", "t shirt", "tee shirt"],
    "shirt": ["shirt", "button-up shirt", "button down shirt", "collared shirt"],
    "jacket": ["jacket", "zip-up jacket", "coat"],
    "coat": ["coat", "long coat", "overcoat", "trench coat"],
    "hoodie": ["hoodie", "hooded sweatshirt", "hooded top", "hoody"],
    "sweater": ["sweater", "jumper", "pullover", "sweatshirt"],
    "dress": ["dress", "dress", "knee-length dress"],
}
BOTTOM_NOUNS = {  # (noun, plural)
    "trousers": [("trousers", True), ("pants", True), ("slacks", True), ("long pants", True)],
    "jeans": [("jeans", True), ("denim jeans", True), ("jeans", True), ("denim pants", True)],
    "shorts": [("shorts", True), ("short pants", True), ("knee-length shorts", True)],
    "skirt": [("skirt", False), ("short skirt", False), ("skirt", False)],
}
SHOE_NOUNS = {
    "sneakers": ["sneakers", "trainers", "running shoes", "tennis shoes", "shoes"],
    "boots": ["boots", "ankle boots", "boots"],
    "leather shoes": ["leather shoes", "formal shoes", "shoes"],
    "sandals": ["sandals", "sandals", "open shoes"],
}
BAG_NOUNS = {
    "backpack": ["backpack", "rucksack", "back pack", "school bag"],
    "shoulder bag": ["shoulder bag", "messenger bag", "crossbody bag", "bag over the shoulder"],
    "handbag": ["handbag", "purse", "hand bag", "small bag"],
}
HAT_NOUNS = {"cap": ["cap", "baseball cap"], "hat": ["hat", "wide-brimmed hat"], "beanie": ["beanie", "knit hat"]}
SUBJECTS = {
    "male": ["man", "man", "guy", "male", "gentleman", "young man", "boy"],
    "female": ["woman", "woman", "lady", "girl", "female", "young woman", "young lady"],
    "neutral": ["person", "pedestrian", "individual"],
}
PRONOUNS = {"male": ("he", "his"), "female": ("she", "her"), "neutral": ("the person", "their")}



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
    """Latent attributes of identities ``1..identities`` exactly as :func:`generate_pedes` uses them
    (element ``i`` is id ``i + 1``)."""
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


def caption_colour_words(text: str) -> set[str]:
    """Canonical colour names mentioned in ``text``."""
    return {COLOUR_WORDS[t] for t in tokenize(text) if t in COLOUR_WORDS}


_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(caption: str) -> list[str]:
    """``processed_tokens`` of a caption: lower-cased, apostrophes removed, other punctuation splits."""
    return _TOKEN_RE.findall(caption.lower().replace("'", ""))


# ----------------------------------------------------------------------------------------------
# pedestrian captions
# ----------------------------------------------------------------------------------------------

def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _join(items: Sequence[str], rng: np.random.Generator) -> str:
    if len(items) == 1:
        return items[0]
    conj = " and " if rng.random() < 0.85 else " with "
    comma = "," if (len(items) > 2 and rng.random() < 0.5) else ""
    return ", ".join(items[:-1]) + comma + conj + items[-1]


def _colour_word(rng: np.random.Generator, name: str, tone: str = "") -> str:
    w = name
    if name == "grey" and rng.random() < 0.4:
        w = "gray"
    elif name == "beige" and rng.random() < 0.3:
        w = choice(rng, ["khaki", "tan"])
    if tone and rng.random() < 0.6:
        w = f"{tone} {w}"
    return w


class _Phrases:
    """Noun phrases for one caption (synonyms drawn once per caption)."""

    def __init__(self, a: PersonAttributes, rng: np.random.Generator):
        self.a, self.rng = a, rng

    def col(self, name: str | None, tone: str = "", p: float = 0.9) -> str:
        if name is None or self.rng.random() > p:
            return ""
        return _colour_word(self.rng, name, tone) + " "

    def hair(self) -> str:
        a, r = self.a, self.rng
        if a.hair_length == "bald":
            return "a bald head"
        hc = {"blond": choice(r, ["blond", "blonde"])}.get(a.hair_colour, a.hair_colour)
        if a.hair_colour == "grey" and r.random() < 0.4:
            hc = "gray"
        col = hc + " " if r.random() < 0.85 else ""
        if a.hair_length == "ponytail":
            return choice(r, [f"{col}hair in a ponytail", f"{_article(col + 'ponytail')}", f"{col}hair tied back"])
        length = {"short": ["short"], "medium": ["medium-length", "shoulder-length", "chin-length"],
                  "long": ["long"]}[a.hair_length]
        return f"{choice(r, length)} {col}hair" if r.random() < 0.5 else f"{col}{choice(r, length)} hair"

    def top(self) -> str:
        a, r = self.a, self.rng
        noun = choice(r, TOP_NOUNS[a.top])
        if a.top == "shirt" and a.gender == "female" and r.random() < 0.4:
            noun = "blouse"
        mods = ""
        if a.pattern == "striped" and r.random() < 0.8:
            mods += "striped "
        if a.top in ("shirt", "dress") and a.sleeves != "none" and r.random() < 0.4:
            mods += f"{a.sleeves}-sleeved "
        elif a.top == "dress" and a.sleeves == "none" and r.random() < 0.4:
            mods += "sleeveless "
        elif a.top in ("jacket", "coat", "hoodie", "sweater") and r.random() < 0.15:
            mods += "long-sleeved "
        return _article(f"{self.col(a.top_colour, a.top_tone)}{mods}{noun}")

    def bottom(self) -> str:
        a, r = self.a, self.rng
        noun, plural = choice(r, BOTTOM_NOUNS[a.bottom])
        np_ = f"{self.col(a.bottom_colour, a.bottom_tone)}{noun}"
        if plural:
            return ("a pair of " + np_) if r.random() < 0.2 else np_
        return _article(np_)

    def shoes(self) -> str:
        a, r = self.a, self.rng
        return f"{self.col(a.shoes_colour, p=0.85)}{choice(r, SHOE_NOUNS[a.shoes])}"

    def bag(self) -> str:
        a, r = self.a, self.rng
        return _article(f"{self.col(a.bag_colour, p=0.8)}{choice(r, BAG_NOUNS[a.bag])}")

    def hat(self) -> str:
        a = self.a
        return _article(f"{self.col(a.hat_colour, p=0.85)}{choice(self.rng, HAT_NOUNS[a.hat])}")

    def glasses(self) -> str:
        return choice(self.rng, ["glasses", "glasses", "eyeglasses", "a pair of glasses", "spectacles"])

    def scarf(self) -> str:
        return _article(f"{self.col(self.a.scarf_colour, p=0.9)}scarf")


_WEAR_VERBS_NP = ["wearing", "wearing", "in", "dressed in", "who is wearing", "that wears", "clad in"]
_WEAR_VERBS_S = ["is wearing", "wears", "is dressed in", "has on", "is in"]
_CARRY = ["carrying", "carrying", "with", "holding"]
_CARRY_S = ["is carrying", "carries", "has", "is holding"]
_DETAILS = {
    "front": ["walking towards the camera", "facing the camera", "walking forward"],
    "back": ["walking away from the camera", "seen from behind", "facing away"],
    "side": ["seen from the side", "walking past", "walking by"],
    "any": ["walking down the street", "on the sidewalk", "walking", "standing on the street"],
    "occluded": ["partly hidden by something in front", "partially blocked from view"],
}


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = int(rng.integers(1, len(word) - 1))
    k = int(rng.integers(3))
    if k == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if k == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _one_caption(a: PersonAttributes, rng: np.random.Generator, details: dict[str, Any]) -> str:
    ph = _Phrases(a, rng)
    facets = ["top"] + (["bottom"] if a.bottom else []) + ["shoes", "hair"]
    facets += [f for f, ok in (("bag", a.bag), ("hat", a.hat), ("glasses", a.glasses),
                                ("scarf", a.scarf_colour)) if ok]
    # always mention the top or the bottom; then 2-5 further facets
    first = "top" if (not a.bottom or rng.random() < 0.6) else "bottom"
    rest = [f for f in facets if f != first]
    rng.shuffle(rest)
    # salient accessories are mentioned more often
    rest.sort(key=lambda f: 0 if (f in ("bag", "hat", "scarf") and rng.random() < 0.6) else 1)
    k = min(len(rest), int(rng.integers(2, 6)))
    chosen = {first, *rest[:k]}
    g = a.gender if rng.random() < 0.85 else "neutral"
    subj = choice(rng, SUBJECTS[g])
    pron, poss = PRONOUNS[g]
    wear = [getattr(ph, f)() for f in ("top", "bottom", "scarf", "hat", "glasses", "shoes") if f in chosen]
    order = rng.permutation(len(wear)) if rng.random() < 0.25 else np.arange(len(wear))
    wear = [wear[i] for i in order]
    hair = ph.hair() if "hair" in chosen else None
    bag = ph.bag() if "bag" in chosen else None
    detail = None
    if rng.random() < 0.3:
        pool = _DETAILS[details.get("view", "front")] + _DETAILS["any"]
        if details.get("occluded") and rng.random() < 0.5:
            pool = _DETAILS["occluded"]
        detail = choice(rng, pool)

    style = int(rng.integers(4))
    det = f" {detail}" if detail else ""
    if style == 0:  # one sentence, subject first
        s = _article(subj) if rng.random() < 0.6 else "The " + subj
        if hair and (a.hair_length != "bald") and rng.random() < 0.7:
            s += f" with {hair}"
            hair = None
        if rng.random() < 0.5 and detail:
            s += det
            det = ""
        if wear:
            s += f" {choice(rng, _WEAR_VERBS_NP)} {_join(wear, rng)}"
        if bag:
            s += f", {choice(rng, _CARRY)} {bag}" if rng.random() < 0.6 else f" and {choice(rng, _CARRY)} {bag}"
        s += det + "."
        if hair:
            s += f" {pron.capitalize()} has {hair}." if a.hair_length != "bald" else f" {pron.capitalize()} is bald."
        return s
    if style == 1:  # several short sentences
        parts = []
        if wear:
            split = int(rng.integers(1, len(wear) + 1)) if len(wear) > 2 else len(wear)
            parts.append(f"{{S}} {choice(rng, _WEAR_VERBS_S)} {_join(wear[:split], rng)}")
            if wear[split:]:
                parts.append(f"{{S}} {choice(rng, ['also wears', 'has on', 'is also wearing', 'wears'])} "
                             f"{_join(wear[split:], rng)}")
        if hair:
            parts.append("{S} is bald" if a.hair_length == "bald" else f"{{S}} has {hair}")
        if bag:
            parts.append(f"{{S}} {choice(rng, _CARRY_S)} {bag}")
        rng.shuffle(parts)
        opener = choice(rng, [f"The {subj}", f"This {subj}", f"A {subj}" if subj[0] not in "aeiou" else f"An {subj}"])
        out = []
        for i, p in enumerate(parts):
            who = opener if i == 0 else (pron.capitalize() if rng.random() < 0.8 else f"The {subj}")
            sent = p.replace("{S}", who)
            if i == 0 and detail:
                sent += det
            out.append(sent + ".")
        return " ".join(out)
    if style == 2:  # "<poss> <item> is <colour>" predicates mixed with noun phrases
        owner = f"The {subj}'s" if rng.random() < 0.5 else f"This {subj}'s"
        sents = []
        items = [(f, getattr(a, f"{f}_colour", None)) for f in ("top", "bottom", "shoes", "bag") if f in chosen]
        other_wear = [getattr(ph, f)() for f in ("scarf", "hat", "glasses") if f in chosen]
        for j, (f, colour) in enumerate(items):
            who = owner if j == 0 else poss.capitalize()
            if f == "top":
                noun = choice(rng, TOP_NOUNS[a.top])
                sents.append(f"{who} {noun} is {_colour_word(rng, colour, a.top_tone)}")
            elif f == "bottom":
                noun, plural = choice(rng, BOTTOM_NOUNS[a.bottom])
                sents.append(f"{who} {noun} {'are' if plural else 'is'} {_colour_word(rng, colour, a.bottom_tone)}")
            elif f == "shoes":
                noun = choice(rng, SHOE_NOUNS[a.shoes])
                sents.append(f"{who} {noun} are {_colour_word(rng, colour)}")
            else:
                noun = choice(rng, BAG_NOUNS[a.bag])
                sents.append(f"{who} {noun} is {_colour_word(rng, colour)}")
        if hair:
            sents.append(f"{pron.capitalize()} is bald" if a.hair_length == "bald" else f"{pron.capitalize()} has {hair}")
        if other_wear:
            sents.append(f"{pron.capitalize()} {choice(rng, _WEAR_VERBS_S)} {_join(other_wear, rng)}")
        if detail:
            sents.append(f"{pron.capitalize()} is {detail}")
        if len(sents) > 1 and rng.random() < 0.5:
            return f"{sents[0]} and {sents[1][0].lower()}{sents[1][1:]}." + "".join(f" {x}." for x in sents[2:])
        return " ".join(x + "." for x in sents)
    # style 3: items first
    head = _join(wear, rng) if wear else None
    s = ""
    if head:
        s = f"{head[0].upper()}{head[1:]} {choice(rng, ['on a', 'worn by a', 'on this'])} {subj}"
    else:
        s = f"{_article(subj).capitalize()}"
    if hair and a.hair_length != "bald":
        s += f" with {hair}"
        hair = None
    if bag:
        s += f" {choice(rng, ['who is carrying', 'carrying', 'with'])} {bag}"
    s += det + "."
    if hair:
        s += f" {pron.capitalize()} is bald."
    return s


def _noisify(text: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.12:
        words = text.split(" ")
        cand = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4 and w.lower() not in COLOUR_WORDS]
        if cand:
            i = cand[int(rng.integers(len(cand)))]
            t = _typo(words[i], rng)
            if t.lower() not in COLOUR_WORDS:
                words[i] = t
            text = " ".join(words)
    r = rng.random()
    if r < 0.07:
        text = text.lower()
    elif r < 0.1:
        text = text[0].lower() + text[1:]
    if rng.random() < 0.08:
        text = text.rstrip(".")
    if rng.random() < 0.04:
        text = text.replace(", ", " , ", 1).replace(". ", " . ", 1)
    return text


def pedes_captions(a: PersonAttributes, rng: np.random.Generator, details: dict[str, Any] | None = None,
                   n: int = 2) -> list[str]:
    """``n`` distinct captions of one image of identity ``a`` (``details``: per-image ``view``/``occluded``)."""
    details = details or {}
    out: list[str] = []
    for _ in range(50 * n):
        c = _noisify(re.sub(r"\s+", " ", _one_caption(a, rng, details)).strip(), rng)
        if c not in out:
            out.append(c)
        if len(out) == n:
            break
    return out


# ----------------------------------------------------------------------------------------------
# faces
# ----------------------------------------------------------------------------------------------

def face_identity(fid: int, seed: int) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Stable attributes, per-image propensities and render parameters of face identity ``fid``."""
    rng = seeded_rng(seed, Stream.FACE, fid)
    A = dict.fromkeys(CELEBA_ATTRIBUTES, False)
    male = bool(rng.random() < 0.42)
    A["Male"] = male
    young = bool(rng.random() < (0.7 if male else 0.85))
    A["Young"] = young
    A["Bald"] = bool(male and rng.random() < (0.03 if young else 0.2))
    hc = choice(rng, ["Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", None],
                 [0.3, 0.27, 0.05 if male else 0.22, 0.02 if young else 0.35, 0.2])
    if A["Bald"] and hc not in ("Gray_Hair", None):
        hc = None if rng.random() < 0.6 else "Gray_Hair"
    if hc:
        A[hc] = True
    if not A["Bald"]:
        A["Bangs"] = bool(rng.random() < 0.16)
        tex = choice(rng, ["Straight_Hair", "Wavy_Hair", None], [0.25, 0.18 if male else 0.42, 0.4])
        if tex:
            A[tex] = True
        A["Receding_Hairline"] = bool(rng.random() < (0.15 if male else 0.04) and not A["Bangs"])
    nose = choice(rng, ["Big_Nose", "Pointy_Nose", None], [0.35 if male else 0.12, 0.15 if male else 0.35, 0.5])
    if nose:
        A[nose] = True
    A["Pale_Skin"] = bool(rng.random() < 0.06)
    A["Chubby"] = bool(rng.random() < (0.1 if male else 0.03))
    A["Oval_Face"] = bool(rng.random() < 0.28 and not A["Chubby"])
    A["Double_Chin"] = bool(rng.random() < (0.5 if A["Chubby"] else 0.02))
    A["Big_Lips"] = bool(rng.random() < 0.24)
    A["Narrow_Eyes"] = bool(rng.random() < 0.12)
    A["Bushy_Eyebrows"] = bool(rng.random() < (0.28 if male else 0.08))
    A["Arched_Eyebrows"] = bool(rng.random() < (0.05 if male else 0.45))
    A["High_Cheekbones"] = bool(rng.random() < 0.45)
    A["Bags_Under_Eyes"] = bool(rng.random() < (0.15 if young else 0.45))
    A["Rosy_Cheeks"] = bool(not male and rng.random() < 0.12)
    A["Attractive"] = bool(rng.random() < (0.65 if young else 0.2))
    if male:
        beard = choice(rng, ["none", "goatee", "mustache", "both", "full"], [0.62, 0.12, 0.06, 0.1, 0.1])
        A["No_Beard"] = beard == "none"
        A["Goatee"] = beard in ("goatee", "both")
        A["Mustache"] = beard in ("mustache", "both")
        A["Sideburns"] = bool(not A["Bald"] and rng.random() < (0.4 if beard != "none" else 0.08))
        A["5_o_Clock_Shadow"] = bool(beard == "none" and rng.random() < 0.3)
    else:
        A["No_Beard"] = True
    prop = {
        "Smiling": float(rng.uniform(0.15, 0.85)),
        "Eyeglasses": 0.85 if rng.random() < 0.1 else 0.02,
        "Wearing_Hat": 0.6 if rng.random() < 0.07 else 0.01,
        "Wearing_Earrings": (0.85 if rng.random() < 0.4 else 0.04) if not male else 0.01,
        "Wearing_Necklace": (0.7 if rng.random() < 0.2 else 0.03) if not male else 0.0,
        "Wearing_Necktie": (0.75 if rng.random() < 0.12 else 0.02) if male else 0.0,
        "Heavy_Makeup": (0.9 if rng.random() < 0.55 else 0.08) if not male else 0.0,
        "Blurry": 0.05,
    }
    prop["Wearing_Lipstick"] = min(0.95, prop["Heavy_Makeup"] + 0.15) if not male else 0.0

    hair_base = {"Black_Hair": (26, 22, 20), "Brown_Hair": (100, 62, 36), "Blond_Hair": (220, 188, 112),
                 "Gray_Hair": (170, 168, 165), None: choice(rng, [(70, 42, 25), (140, 62, 30), (55, 40, 32)])}[hc]
    skin = SKIN_TONES[int(rng.integers(0, 3 if A["Pale_Skin"] else len(SKIN_TONES)))]
    if A["Pale_Skin"]:
        skin = mix(skin, (255, 245, 240), 0.45)
    skin = clamp_rgb(np.asarray(skin, np.float64) + rng.normal(0, 5, 3))
    cols = list(COLOURS.values())
    render = {
        "skin": skin, "hair_rgb": clamp_rgb(np.asarray(hair_base, np.float64) * rng.uniform(0.85, 1.12)),
        "hair_len": float(rng.uniform(0.0, 0.4) if male else rng.uniform(0.3, 1.0)),
        "volume": float(rng.uniform(0, 1)), "bald_sides": bool(rng.random() < 0.7),
        "face_w": float(rng.uniform(36, 42)), "face_h": float(rng.uniform(48, 54)),
        "eye_sp": float(rng.uniform(17, 21)), "iris": choice(rng, [(70, 45, 25), (40, 30, 20), (60, 100, 140),
                                                                     (80, 110, 70)]),
        "lips": mix(skin, (170, 80, 80), 0.45), "lipstick": choice(rng, [(180, 20, 40), (200, 60, 90), (150, 30, 50)]),
        "shadow": choice(rng, [(120, 80, 110), (90, 70, 60), (80, 100, 140)]),
        "cloth": cols[int(rng.integers(len(cols)))], "tie": cols[int(rng.integers(len(cols)))],
        "jewel": choice(rng, [(230, 200, 80), (210, 210, 215)]), "earring_drop": bool(rng.random() < 0.4),
        "glasses_rgb": choice(rng, [(20, 20, 20), (90, 60, 30), (160, 160, 170)]),
        "sunglasses": bool(rng.random() < 0.15), "glasses_round": bool(rng.random() < 0.4),
        "hat_rgb": cols[int(rng.integers(len(cols)))], "hat_kind": int(rng.integers(3)),
        "bg": clamp_rgb(rng.uniform(40, 230, 3)),
    }
    return A, prop, render


def face_image_attributes(stable: dict[str, bool], prop: dict[str, float], rng: np.random.Generator) -> dict[str, bool]:
    A = dict(stable)
    for k in ("Smiling", "Eyeglasses", "Wearing_Hat", "Wearing_Earrings", "Wearing_Necklace", "Wearing_Necktie",
              "Heavy_Makeup", "Wearing_Lipstick", "Blurry"):
        A[k] = bool(rng.random() < prop[k])
    A["Mouth_Slightly_Open"] = bool(rng.random() < (0.6 if A["Smiling"] else 0.25))
    A["High_Cheekbones"] = bool(stable["High_Cheekbones"] or (A["Smiling"] and rng.random() < 0.3))
    if A["Heavy_Makeup"] and not A["Male"]:
        A["Wearing_Lipstick"] = A["Wearing_Lipstick"] or bool(rng.random() < 0.8)
    return A


def face_attributes(identities: int = 200, seed: int = 0) -> list[dict[str, bool]]:
    """Stable (per-identity) attributes of face identities ``1..identities`` as :func:`generate_faces` samples
    them; per-image attributes are in the generated ``list_attr_celeba.txt``."""
    return [face_identity(i, seed)[0] for i in range(1, identities + 1)]
