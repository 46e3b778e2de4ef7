"""Captions from the 73 LFW attribute scores of Kumar et al. (``lfw_attributes.txt``).

The file and its quirks: docs/datasets.md#lfw-attribute-captions.

A deterministic phrase map (one phrase per attribute said, not the CelebA grammar): a score > 0 means the
attribute is present; in an exclusive group (age, race, hair colour, hair texture, eyewear,
expression, forehead, mouth, face shape) only the group's arg-max is said, and only when its score
is positive. Photo-level attributes (lighting, blur, colour/posed photo, outdoor), subjective ones
(attractive) and the defaults "eyes open", "teeth not visible", "no beard", "no eyewear" are never
said. Every face gets two captions with the same content in two sentence shapes::

    A photo of a smiling young white man with curly black hair and a mustache, wearing eyeglasses.
    This man is smiling, young and white. He has curly black hair and a mustache. He is wearing eyeglasses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

ATTRIBUTES: tuple[str, ...] = (
    "Male", "Asian", "White", "Black", "Baby", "Child", "Youth", "Middle Aged", "Senior", "Black Hair",
    "Blond Hair", "Brown Hair", "Bald", "No Eyewear", "Eyeglasses", "Sunglasses", "Mustache", "Smiling",
    "Frowning", "Chubby", "Blurry", "Harsh Lighting", "Flash", "Soft Lighting", "Outdoor", "Curly Hair",
    "Wavy Hair", "Straight Hair", "Receding Hairline", "Bangs", "Sideburns", "Fully Visible Forehead",
    "Partially Visible Forehead", "Obstructed Forehead", "Bushy Eyebrows", "Arched Eyebrows", "Narrow Eyes",
    "Eyes Open", "Big Nose", "Pointy Nose", "Big Lips", "Mouth Closed", "Mouth Slightly Open", "Mouth Wide Open",
    "Teeth Not Visible", "No Beard", "Goatee", "Round Jaw", "Double Chin", "Wearing Hat", "Oval Face",
    "Square Face", "Round Face", "Color Photo", "Posed Photo", "Attractive Man", "Attractive Woman", "Indian",
    "Gray Hair", "Bags Under Eyes", "Heavy Makeup", "Rosy Cheeks", "Shiny Skin", "Pale Skin",
    "5 o' Clock Shadow", "Strong Nose-Mouth Lines", "Wearing Lipstick", "Flushed Face", "High Cheekbones",
    "Brown Eyes", "Wearing Earrings", "Wearing Necktie", "Wearing Necklace",
)
"""The 73 attributes in the column order of ``lfw_attributes.txt``."""

EXCLUSIVE: dict[str, tuple[str, ...]] = {
    "age": ("Baby", "Child", "Youth", "Middle Aged", "Senior"),
    "race": ("Asian", "White", "Black", "Indian"),
    "hair colour": ("Bald", "Black Hair", "Blond Hair", "Brown Hair", "Gray Hair"),
    "hair texture": ("Curly Hair", "Wavy Hair", "Straight Hair"),
    "eyewear": ("No Eyewear", "Eyeglasses", "Sunglasses"),
    "expression": ("Smiling", "Frowning"),
    "forehead": ("Fully Visible Forehead", "Partially Visible Forehead", "Obstructed Forehead"),
    "mouth": ("Mouth Closed", "Mouth Slightly Open", "Mouth Wide Open"),
    "face shape": ("Oval Face", "Square Face", "Round Face"),
}
"""Groups of which at most one member is said: the one with the highest (positive) score."""

ADJECTIVES: tuple[tuple[str, str], ...] = (
    ("Smiling", "smiling"), ("Frowning", "frowning"), ("Chubby", "chubby"),
    ("Youth", "young"), ("Middle Aged", "middle-aged"), ("Senior", "elderly"),
    ("Bald", "bald"), ("Asian", "Asian"), ("White", "white"), ("Black", "Black"), ("Indian", "Indian"),
)
"""Attribute -> word before the noun, in output order ("a smiling young white man")."""

HAIR_WORDS: dict[str, str] = {
    "Curly Hair": "curly", "Wavy Hair": "wavy", "Straight Hair": "straight",
    "Black Hair": "black", "Blond Hair": "blond", "Brown Hair": "brown", "Gray Hair": "gray",
}
"""Texture and colour words combined into one hair phrase ("curly black hair"); never said when bald."""

FEATURES: tuple[tuple[str, str], ...] = (
    ("Receding Hairline", "a receding hairline"), ("Bangs", "bangs"),
    ("Fully Visible Forehead", "a fully visible forehead"),
    ("Partially Visible Forehead", "a partly visible forehead"), ("Obstructed Forehead", "an obstructed forehead"),
    ("Bushy Eyebrows", "bushy eyebrows"), ("Arched Eyebrows", "arched eyebrows"),
    ("Narrow Eyes", "narrow eyes"), ("Brown Eyes", "brown eyes"), ("Bags Under Eyes", "bags under the eyes"),
    ("Big Nose", "a big nose"), ("Pointy Nose", "a pointy nose"), ("Big Lips", "big lips"),
    ("Mouth Closed", "a closed mouth"), ("Mouth Slightly Open", "a slightly open mouth"),
    ("Mouth Wide Open", "a wide open mouth"),
    ("Mustache", "a mustache"), ("Goatee", "a goatee"), ("Sideburns", "sideburns"),
    ("5 o' Clock Shadow", "a five o'clock shadow"),
    ("Oval Face", "an oval face"), ("Square Face", "a square face"), ("Round Face", "a round face"),
    ("Round Jaw", "a round jaw"), ("Double Chin", "a double chin"), ("High Cheekbones", "high cheekbones"),
    ("Rosy Cheeks", "rosy cheeks"), ("Pale Skin", "pale skin"), ("Shiny Skin", "shiny skin"),
    ("Flushed Face", "a flushed face"), ("Strong Nose-Mouth Lines", "strong nose-mouth lines"),
)
"""Attribute -> noun phrase after "with" / "has", in output order (after the hair phrase)."""

WEARING: tuple[tuple[str, str], ...] = (
    ("Eyeglasses", "eyeglasses"), ("Sunglasses", "sunglasses"), ("Wearing Hat", "a hat"),
    ("Heavy Makeup", "heavy makeup"), ("Wearing Lipstick", "lipstick"), ("Wearing Earrings", "earrings"),
    ("Wearing Necklace", "a necklace"), ("Wearing Necktie", "a necktie"),
)
"""Attribute -> noun phrase after "wearing", in output order."""

NOUNS: dict[str, tuple[str, str]] = {"Baby": ("baby", "baby"), "Child": ("boy", "girl")}
"""Age bin -> (male, female) noun; any other age is a man / woman."""

EXCLUSIVE_MEMBERS = frozenset(name for group in EXCLUSIVE.values() for name in group)


@dataclass(frozen=True)
class Face:
    """What the captions say about one image: noun, pronoun and three ordered phrase lists."""

    noun: str
    pronoun: str
    adjectives: tuple[str, ...]
    features: tuple[str, ...]
    wearing: tuple[str, ...]


def present(scores: Mapping[str, float]) -> set[str]:
    """Attributes said about a face: positive scores, reduced to the arg-max in exclusive groups."""
    said = {name for name, score in scores.items() if score > 0 and name not in EXCLUSIVE_MEMBERS}
    for group in EXCLUSIVE.values():
        known = [name for name in group if name in scores]
        if known:
            best = max(known, key=lambda name: scores[name])  # first listed wins a tie
            if scores[best] > 0:
                said.add(best)
    return said


def _hair(said: set[str]) -> tuple[str, ...]:
    words = [word for name, word in HAIR_WORDS.items() if name in said]
    return () if "Bald" in said or not words else (" ".join(words) + " hair",)


def describe(scores: Mapping[str, float]) -> Face:
    """The :class:`Face` of one row of attribute scores (name -> real-valued score)."""
    said = present(scores)
    male = scores.get("Male", 0.0) > 0
    age = next((name for name in NOUNS if name in said), None)
    noun = NOUNS.get(age, ("man", "woman"))[0 if male else 1]
    return Face(
        noun=noun,
        pronoun="He" if male else "She",
        adjectives=tuple(word for name, word in ADJECTIVES if name in said),
        features=_hair(said) + tuple(phrase for name, phrase in FEATURES if name in said),
        wearing=tuple(phrase for name, phrase in WEARING if name in said),
    )


def _and(items: tuple[str, ...]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _indefinite(words: str) -> str:
    return ("an " if words[:1].lower() in "aeiou" else "a ") + words


def photo_caption(face: Face) -> str:
    """``A photo of a <adjectives> <noun>[ with <features>][, wearing <wearing>].``"""
    text = "A photo of " + _indefinite(" ".join((*face.adjectives, face.noun)))
    if face.features:
        text += " with " + _and(face.features)
    if face.wearing:
        text += ", wearing " + _and(face.wearing)
    return text + "."


def sentence_caption(face: Face) -> str:
    """``This <noun> is <adjectives>. <He/She> has <features>. <He/She> is wearing <wearing>.``"""
    if face.adjectives:
        sentences = [f"This {face.noun} is {_and(face.adjectives)}."]
    else:
        sentences = [f"This is a photo of {_indefinite(face.noun)}."]
    if face.features:
        sentences.append(f"{face.pronoun} has {_and(face.features)}.")
    if face.wearing:
        sentences.append(f"{face.pronoun} is wearing {_and(face.wearing)}.")
    return " ".join(sentences)


def attribute_captions(scores: Mapping[str, float]) -> list[str]:
    """The two captions of one image from its attribute scores (always two, always different)."""
    face = describe(scores)
    return [photo_caption(face), sentence_caption(face)]
