"""Identity-enriched captions (COCO-PFS, Id-CLIP): put an ``[ENTITY]`` slot into a plain caption.

Pure string functions, shared by the ``coco_pfs`` parser and the ``idclip`` method:

- exactly one whole-word, case-insensitive person keyword in the caption -> the slot goes at the
  keyword in one of :data:`KEYWORD_SHAPES` (an ``a``/``an`` right before the slot is dropped);
- no keyword, or two and more -> one of :data:`PREFIX_TEMPLATES` is put before the caption.

Choices are made by :func:`pick` from a string seed (CRC32, no RNG state), so the same item and
caption always give the same text, in every process and in the parse cache. :func:`fill_entity`
finally puts a name, a pseudo-token or anything else into the slot.
"""
from __future__ import annotations

import re
import zlib
from typing import Sequence, TypeVar

T = TypeVar("T")

SLOT = "[ENTITY]"
"""The placeholder for the identity in a built caption."""

KEYWORDS = (
    "person", "man", "mother", "father", "dad", "mum", "woman", "child", "boy", "guy", "girl", "kid", "human",
    "adult", "male", "female", "lady", "teenager", "baby",
)
"""Person words the slot may be anchored to (matched as whole words, any case)."""

KEYWORD_SHAPES = (
    "{before}" + SLOT + "{after}",
    "{before}{keyword} (" + SLOT + "){after}",
    "{before}{keyword} (whose name is " + SLOT + "){after}",
)
"""Slot at the keyword: replacing it, in brackets after it, or as "whose name is" after it."""

PREFIX_TEMPLATES = (
    "An image with " + SLOT + ".",
    "An image with a person whose name is " + SLOT + ".",
    SLOT + ".",
    "A picture of " + SLOT + ".",
    SLOT + " in the image.",
    "There is " + SLOT + " in the picture.",
)
"""Prefixes used when the caption has no single keyword; the caption follows after a space."""

ENTITY_PROMPTS = (
    "An image with " + SLOT,
    "An image containing " + SLOT,
    SLOT,
    "A picture of " + SLOT,
    SLOT + " in the image",
    "There is " + SLOT + " in the picture",
)
"""Id-CLIP's training / entity-retrieval prompts (no final period: Id-CLIP writes ``"<prompt>. <caption>"``)."""

_KEYWORD = re.compile(r"\b(?:" + "|".join(KEYWORDS) + r")\b", re.IGNORECASE)
_ARTICLE_BEFORE_SLOT = re.compile(r"\b(?:a|an)\s+(?=" + re.escape(SLOT) + ")", re.IGNORECASE)


def pick(options: Sequence[T], seed: str) -> T:
    """One of ``options``, chosen by the CRC32 of ``seed`` (stable across runs and processes)."""
    return options[zlib.crc32(seed.encode("utf-8")) % len(options)]


def keyword_matches(caption: str) -> list[re.Match]:
    """Every whole-word, case-insensitive occurrence of a :data:`KEYWORDS` word, in order."""
    return list(_KEYWORD.finditer(caption))


def drop_article_before_slot(text: str) -> str:
    """``"There is a [ENTITY]"`` -> ``"There is [ENTITY]"`` (whole-word ``a``/``an``, any case)."""
    return _ARTICLE_BEFORE_SLOT.sub("", text)


def insert_at_keyword(caption: str, match: re.Match, shape: str) -> str:
    """``caption`` with the slot put at ``match`` (a keyword occurrence) in the given shape."""
    text = shape.format(before=caption[: match.start()], keyword=match.group(0), after=caption[match.end():])
    return drop_article_before_slot(text)


def with_prefix(template: str, caption: str) -> str:
    """``"<template> <caption>"``."""
    return f"{template} {caption}"


def entity_caption(caption: str, seed: str) -> str:
    """``caption`` (stripped) with the slot: at its single keyword, else after a prefix (choices by ``seed``)."""
    caption = caption.strip()
    matches = keyword_matches(caption)
    if len(matches) == 1:
        return insert_at_keyword(caption, matches[0], pick(KEYWORD_SHAPES, seed + "#shape"))
    return with_prefix(pick(PREFIX_TEMPLATES, seed + "#prefix"), caption)


def fill_entity(text: str, replacement: str) -> str:
    """``text`` with every slot replaced by ``replacement`` (a name, a pseudo-token, ...)."""
    return text.replace(SLOT, replacement)
