"""Identity-enriched captions (COCO-PFS, Id-CLIP): put an ``[ENTITY]`` slot into a plain caption.

Pure string functions, shared by the ``coco_pfs`` parser, the Id-CLIP text protocols
(:mod:`xsearch.datamodules.entity_text`) and the ``idclip`` method:

- :func:`entity_caption`, one seeded template per caption (the parser's ``entity: name / slot`` text):
  exactly one whole-word, case-insensitive person keyword in the caption -> the slot goes at the
  keyword in one of :data:`KEYWORD_SHAPES` (an ``a``/``an`` right before the slot is dropped);
  no keyword, or two and more -> one of :data:`PREFIX_TEMPLATES` is put before the caption;
- :func:`template_queries`, the authors' general-retrieval queries: every template of a
  :class:`TemplateSet` (:data:`TEST_TEMPLATES`: 6 prefixes + 5 keyword shapes; :data:`VAL_TEMPLATES`:
  6 + 3), a keyword shape replaced by a seeded prefix one when the caption has no single keyword;
- :data:`TRAIN_PROMPTS` and :func:`prompt_caption`, the authors' training text "<prompt>. <caption>";
- :data:`ENTITY_PROMPTS`, the identity-only prompts of entity retrieval.

Seeded choices are made by :func:`pick` from a string seed (CRC32, no RNG state), so the same item and
caption always give the same text, in every process and in the parse cache. :func:`fill_entity`
finally puts a name, a pseudo-token or anything else into the slot.

A leaf of the package (it imports nothing from xsearch), outside ``xsearch.datamodules`` so that the method uses it
without importing the dataset parsers.
"""
from __future__ import annotations

import re
import zlib
from typing import NamedTuple, Sequence, TypeVar

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
"""Prefixes, the caption following after a space: :func:`entity_caption`'s when the caption has no single keyword, and
the first six of the authors' query templates."""

FAMOUS_SHAPES = (
    "{before}famous {keyword} " + SLOT + "{after}",
    "{before}famous " + SLOT + "{after}",
)
"""The two more keyword shapes of the authors' test queries: "famous man [ENTITY]" and "famous [ENTITY]"."""

TRAIN_PROMPTS = (
    "An image with " + SLOT,
    "An image containing " + SLOT,
    SLOT,
    "A picture of " + SLOT,
    SLOT + " in the image",
    "There is " + SLOT + " in the picture",
)
"""Id-CLIP's training prompts (no final period: the text is ``"<prompt>. <caption>"``, :func:`prompt_caption`)."""

ENTITY_PROMPTS = PREFIX_TEMPLATES
"""Id-CLIP's entity-retrieval prompts (identity only, no caption): the six prefixes, final period included."""


class TemplateSet(NamedTuple):
    """The query templates of one caption: ``prefixes`` (``"<prefix> <caption>"``), then ``keyword_shapes`` (the slot at
    the caption's single person keyword, see :func:`insert_at_keyword`)."""

    prefixes: tuple[str, ...]
    keyword_shapes: tuple[str, ...]

    @property
    def size(self) -> int:
        """Queries per caption."""
        return len(self.prefixes) + len(self.keyword_shapes)


TEST_TEMPLATES = TemplateSet(PREFIX_TEMPLATES, KEYWORD_SHAPES + FAMOUS_SHAPES)
"""The authors' test templates: 6 prefixes + 5 keyword shapes = 11 queries per caption."""
VAL_TEMPLATES = TemplateSet(PREFIX_TEMPLATES, KEYWORD_SHAPES)
"""The authors' validation templates (averaged into one query): 6 prefixes + 3 keyword shapes (no "famous")."""

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


def template_queries(caption: str, seed: str, templates: TemplateSet = TEST_TEMPLATES) -> list[str]:
    """``templates.size`` queries of ``caption`` (stripped), each with one slot, in template order.

    Prefix templates always apply. Keyword shapes need exactly one keyword occurrence in the caption; otherwise each
    is replaced by one of the prefix queries, chosen by ``seed`` (so every caption has the same number of queries)."""
    caption = caption.strip()
    plain = [with_prefix(template, caption) for template in templates.prefixes]
    matches = keyword_matches(caption)
    if len(matches) == 1:
        anchored = [insert_at_keyword(caption, matches[0], shape) for shape in templates.keyword_shapes]
    else:
        anchored = [pick(plain, f"{seed}#template{k}") for k in range(len(templates.keyword_shapes))]
    return plain + anchored


def prompt_caption(prompt: str, caption: str) -> str:
    """The authors' training text: ``"<prompt>. <caption>"`` (the caption stripped, otherwise untouched)."""
    return f"{prompt}. {caption.strip()}"
