"""Captions generated from the 40 CelebA attributes (docs/datasets.md#attribute-captions), shared by every face dataset.

One implementation serves the ``celeba`` parser (caption source ``attributes``) and the synthetic
face generator: an MM-CelebA-HQ-style grammar (after ``create_caption.py`` of that repository)
that verbalises a random non-empty subset of each attribute group's positives in one of three
sentence shapes, and drops empty clauses instead of writing "is .". With nothing to say it falls
back to "This is a photo of a man/woman.".

A leaf of the package (it imports nothing from xsearch), like :mod:`xsearch.entity_captions`, so that the parser
and the generators (:mod:`xsearch.synth`, a layer below the parsers) share it.
"""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
"""The 40 attributes in the column order of ``list_attr_celeba.txt``."""

IS_GROUP: tuple[str, ...] = ("Attractive", "Bald", "Chubby", "Young", "Smiling")
"""Attributes said with "is / looks / appears to be"."""
HAS_GROUP: tuple[str, ...] = (
    "Eyeglasses", "Arched_Eyebrows", "Bags_Under_Eyes", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair",
    "Blond_Hair", "Brown_Hair", "Bushy_Eyebrows", "Double_Chin", "Goatee", "Gray_Hair", "Straight_Hair",
    "Sideburns", "Rosy_Cheeks", "Receding_Hairline", "Pointy_Nose", "Pale_Skin", "Oval_Face", "Narrow_Eyes",
    "Mustache", "Mouth_Slightly_Open", "High_Cheekbones", "Wavy_Hair",
)
"""Attributes said with "has / is with"."""
WEAR_GROUP: tuple[str, ...] = (
    "Wearing_Necktie", "Wearing_Necklace", "Wearing_Lipstick", "Wearing_Hat", "Wearing_Earrings", "Heavy_Makeup",
)
"""Attributes said with "wears / is wearing". 5_o_Clock_Shadow, Blurry and No_Beard are never said;
Male only picks the subject."""

SUBJECTS = {
    True: ("He", "This man", "The man", "The person", "This person"),
    False: ("She", "This woman", "The woman", "The person", "This person"),
}
"""Sentence subjects by the ``Male`` attribute."""
IS_VERBS = ("is", "looks", "appears to be")
HAS_VERBS = ("has", "is with")
WEAR_VERBS = ("wears", "is wearing")


def phrase(attribute: str) -> str:
    """``Wearing_Earrings`` -> ``earrings``, ``Mouth_Slightly_Open`` -> ``mouth slightly open``."""
    return attribute.replace("Wearing_", "").replace("_", " ").lower()


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _indefinite(words: str) -> str:
    return ("an " if words[:1].lower() in "aeiou" else "a ") + words


def _positive_subset(attrs: Mapping[str, bool], group: Sequence[str], rng: np.random.Generator) -> list[str]:
    """A random non-empty subset (random order) of the group's positive attributes, as phrases."""
    positives = [name for name in group if attrs.get(name)]
    if not positives:
        return []
    k = int(rng.integers(1, len(positives) + 1))
    return [phrase(positives[i]) for i in rng.permutation(len(positives))[:k]]


def celeba_caption(attrs: Mapping[str, bool], rng: np.random.Generator) -> str:
    """One MM-CelebA-HQ-style caption of a face with attributes ``attrs`` (name -> positive)."""
    male = bool(attrs.get("Male", False))
    is_, has, wear = (_positive_subset(attrs, group, rng) for group in (IS_GROUP, HAS_GROUP, WEAR_GROUP))
    if not (is_ or has or wear):
        return f"This is a photo of a {'man' if male else 'woman'}."
    subject = lambda: _pick(rng, SUBJECTS[male])  # noqa: E731
    is_clause = lambda: f"{_pick(rng, IS_VERBS)} {', '.join(is_)}"  # noqa: E731
    has_clause = lambda: f"{_pick(rng, HAS_VERBS)} {', '.join(has)}"  # noqa: E731
    wear_clause = lambda: f"{_pick(rng, WEAR_VERBS)} {', '.join(wear)}"  # noqa: E731
    shape = int(rng.integers(3))
    sentences: list[str] = []
    if shape == 0:  # <S> is <IS>. <S> has <HAS> and wears <WEAR>.
        if is_:
            sentences.append(f"{subject()} {is_clause()}.")
        clauses = ([has_clause()] if has else []) + ([wear_clause()] if wear else [])
        if clauses:
            sentences.append(f"{subject()} {' and '.join(clauses)}.")
    elif shape == 1:  # <S> is <IS> and has <HAS>. <S> wears <WEAR>.
        clauses = ([is_clause()] if is_ else []) + ([has_clause()] if has else [])
        if clauses:
            sentences.append(f"{subject()} {' and '.join(clauses)}.")
        if wear:
            sentences.append(f"{subject()} {wear_clause()}.")
    else:  # This is a <IS> person. <S> has <HAS>. <S> wears <WEAR>.
        if is_:
            sentences.append(f"This is {_indefinite(', '.join(is_))} person.")
        if has:
            sentences.append(f"{subject()} {has_clause()}.")
        if wear:
            sentences.append(f"{subject()} {wear_clause()}.")
    return " ".join(sentences)


def template_captions(attrs: Mapping[str, bool], key: str, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct captions of one image, the same on every call for the same ``key`` (file name).

    The generator is seeded by ``crc32(key)``, so an image keeps its captions whatever else is
    parsed; faces with few positive attributes may have fewer than ``n`` distinct captions.
    """
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    captions: list[str] = []
    for _ in range(4 * n):
        text = celeba_caption(attrs, rng)
        if text not in captions:
            captions.append(text)
            if len(captions) == n:
                break
    return captions
