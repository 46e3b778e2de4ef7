"""Id-CLIP's text protocols, for datasets whose captions carry an ``[ENTITY]`` slot (``coco_pfs`` / ``synth_pfs`` with
``dataset_options: {entity: slot}``); the method fills the slot (``[TOK]``, a name...).

Training text (``train``, :data:`TRAIN_TEXTS`):

- ``prompts`` (default, the authors' ``tok_beginning_multi_prompts``): ``"<prompt>. <caption>"``, the prompt one of
  :data:`~xsearch.entity_captions.TRAIN_PROMPTS` drawn afresh at every draw of the item (``torch.randint``
  on the global generator, which the training loader seeds per ``(seed, epoch, batch, slot)``), the COCO caption
  untouched;
- ``parsed``: the parser's caption (one seeded template per caption, the same at every draw).

General-retrieval queries (``queries``, :data:`QUERY_PROTOCOLS`):

- ``templates`` (default, the authors' protocol): each caption becomes template queries
  (:func:`~xsearch.entity_captions.template_queries`). Validation averages the text features of the
  validation set (6 prefixes + 3 keyword shapes) into one query per caption; test makes every (caption, template) pair
  of the test set (6 + 5 = 11) its own query: 55 per image, all counted. Results are stored under the plain
  benchmark name (``coco_pfs:instance``);
- ``single``: the parser's caption, one query per caption; results are stored under ``<benchmark>:single-template``
  (``coco_pfs:instance:single-template``), a leaderboard of its own;
- ``plain``: the COCO caption with no identity, one query per caption: the authors' "CLIP without names" baseline
  (``conf: none``), stored with the authors' protocol, as their table has it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from xsearch.datamodules.coco_pfs import CaptionSource
from xsearch.datamodules.records import CaptionRecord
from xsearch.entity_captions import (
    TEST_TEMPLATES, TRAIN_PROMPTS, VAL_TEMPLATES, prompt_caption, template_queries,
)
from xsearch.registry import Registry

__all__ = ["EntityTextOptions", "GeneralQueries", "QUERY_PROTOCOLS", "QueryProtocol", "TRAIN_TEXTS", "TrainTexts",
           "query_protocol", "train_text"]


@dataclass
class EntityTextOptions:
    """How captions with an ``[ENTITY]`` slot become training texts and queries (see the module docstring).

    Args:
        train: training text, a :data:`TRAIN_TEXTS` name: ``prompts`` (the authors') or ``parsed``.
        queries: general-retrieval queries, a :data:`QUERY_PROTOCOLS` name: ``templates`` (the authors'), ``single`` or
            ``plain`` (the no-identity baseline's).
    """

    train: str = "prompts"
    queries: str = "templates"


TrainText = Callable[[CaptionRecord, CaptionSource], str]
"""``(caption record, its source) -> the training text``; random choices use torch's global generator."""

TRAIN_TEXTS: Registry[TrainText] = Registry("Id-CLIP training text")


@TRAIN_TEXTS.register("prompts")
def prompt_then_caption(caption: CaptionRecord, source: CaptionSource) -> str:
    """``"<prompt>. <plain caption>"``, the prompt drawn from :data:`TRAIN_PROMPTS` at every call."""
    return prompt_caption(TRAIN_PROMPTS[int(torch.randint(len(TRAIN_PROMPTS), ()))], source.plain)


@TRAIN_TEXTS.register("parsed")
def parsed_caption(caption: CaptionRecord, source: CaptionSource) -> str:
    """The parser's caption, unchanged."""
    return caption.text


class GeneralQueries(NamedTuple):
    """The general-retrieval queries of a split: one record per query (``index`` = the query's index, ``image_index``
    its only positive) and, for averaged queries, ``prompts[query index]`` = the texts whose features are averaged."""

    captions: list[CaptionRecord]
    prompts: dict[int, list[str]] | None = None


@dataclass(frozen=True)
class QueryProtocol:
    """Builds a split's queries from its captions: ``build(captions, sources, averaged)``, ``averaged`` at validation;
    ``suffix`` names the protocol in the stored benchmark name (empty: the authors' protocol)."""

    build: Callable[[list[CaptionRecord], dict[int, CaptionSource], bool], GeneralQueries]
    suffix: str


def template_protocol(captions: list[CaptionRecord], sources: dict[int, CaptionSource],
                      averaged: bool) -> GeneralQueries:
    """Averaged: the captions themselves, each with the :data:`VAL_TEMPLATES` queries as ``prompts``; otherwise one
    record per (caption, :data:`TEST_TEMPLATES` template), numbered from 0 in caption order."""
    if averaged:
        return GeneralQueries(captions, {c.index: template_queries(*sources[c.index], VAL_TEMPLATES) for c in captions})
    queries: list[CaptionRecord] = []
    for caption in captions:
        for text in template_queries(*sources[caption.index], TEST_TEMPLATES):
            queries.append(CaptionRecord(len(queries), caption.image_index, text, caption.pid, caption.split))
    return GeneralQueries(queries)


def single_protocol(captions: list[CaptionRecord], sources: dict[int, CaptionSource], averaged: bool) -> GeneralQueries:
    """The parser's captions, one query each."""
    return GeneralQueries(captions)


def plain_protocol(captions: list[CaptionRecord], sources: dict[int, CaptionSource], averaged: bool) -> GeneralQueries:
    """The plain COCO captions (no slot), one query each, with the captions' indexes."""
    return GeneralQueries([CaptionRecord(c.index, c.image_index, sources[c.index].plain, c.pid, c.split)
                           for c in captions])


QUERY_PROTOCOLS: Registry[QueryProtocol] = Registry("Id-CLIP query protocol")
QUERY_PROTOCOLS.register("templates")(QueryProtocol(template_protocol, ""))
QUERY_PROTOCOLS.register("single")(QueryProtocol(single_protocol, "single-template"))
QUERY_PROTOCOLS.register("plain")(QueryProtocol(plain_protocol, ""))


class TrainTexts:
    """``caption record -> training text``: a :data:`TRAIN_TEXTS` function bound to the dataset's caption sources
    (a class, not a closure, so that loader workers can pickle it)."""

    def __init__(self, build: TrainText, sources: dict[int, CaptionSource]) -> None:
        self.build, self.sources = build, sources

    def __call__(self, caption: CaptionRecord) -> str:
        return self.build(caption, self.sources[caption.index])


def train_text(options: EntityTextOptions, sources: dict[int, CaptionSource]) -> TrainTexts:
    """The training text of ``options.train``, bound to the dataset's caption ``sources``."""
    return TrainTexts(TRAIN_TEXTS.get(options.train), sources)


def query_protocol(options: EntityTextOptions) -> QueryProtocol:
    """The :class:`QueryProtocol` of ``options.queries``."""
    return QUERY_PROTOCOLS.get(options.queries)
