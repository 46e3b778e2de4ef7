"""Captions of a synthetic pedestrian image, in the style of CUHK-PEDES.

:func:`pedes_captions` writes distinct captions of one image of an identity (:class:`PersonAttributes`): each
mentions the top or the bottom and 2-5 further facets (shoes, hair, bag, hat, glasses, scarf, accessories more
often), in one of four sentence shapes (subject first, short sentences, "his shirt is red" predicates, garments
first), with synonyms, shades of colour and now and then the view or an occlusion of the image. A few get a typo,
lower case or a lost full stop, as crowd-written captions do. A caption only says what the identity has;
:data:`COLOUR_WORDS` maps its colour words back to the palette (:func:`caption_colour_words`).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from xsearch.synth.colours import COLOURS
from xsearch.synth.pedestrians import PersonAttributes
from xsearch.synth.sampling import choice

__all__ = ["COLOUR_WORDS", "article", "caption_colour_words", "pedes_captions", "tokenize"]

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


def caption_colour_words(text: str) -> set[str]:
    """Canonical colour names mentioned in ``text``."""
    return {COLOUR_WORDS[t] for t in tokenize(text) if t in COLOUR_WORDS}


_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(caption: str) -> list[str]:
    """``processed_tokens`` of a caption: lower-cased, apostrophes removed, other punctuation splits."""
    return _TOKEN_RE.findall(caption.lower().replace("'", ""))


def article(phrase: str) -> str:
    """``a`` or ``an`` before ``phrase``."""
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
            return choice(r, [f"{col}hair in a ponytail", f"{article(col + 'ponytail')}", f"{col}hair tied back"])
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
        return article(f"{self.col(a.top_colour, a.top_tone)}{mods}{noun}")

    def bottom(self) -> str:
        a, r = self.a, self.rng
        noun, plural = choice(r, BOTTOM_NOUNS[a.bottom])
        np_ = f"{self.col(a.bottom_colour, a.bottom_tone)}{noun}"
        if plural:
            return ("a pair of " + np_) if r.random() < 0.2 else np_
        return article(np_)

    def shoes(self) -> str:
        a, r = self.a, self.rng
        return f"{self.col(a.shoes_colour, p=0.85)}{choice(r, SHOE_NOUNS[a.shoes])}"

    def bag(self) -> str:
        a, r = self.a, self.rng
        return article(f"{self.col(a.bag_colour, p=0.8)}{choice(r, BAG_NOUNS[a.bag])}")

    def hat(self) -> str:
        a = self.a
        return article(f"{self.col(a.hat_colour, p=0.85)}{choice(self.rng, HAT_NOUNS[a.hat])}")

    def glasses(self) -> str:
        return choice(self.rng, ["glasses", "glasses", "eyeglasses", "a pair of glasses", "spectacles"])

    def scarf(self) -> str:
        return article(f"{self.col(self.a.scarf_colour, p=0.9)}scarf")


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
        s = article(subj) if rng.random() < 0.6 else "The " + subj
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
        s = f"{article(subj).capitalize()}"
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
