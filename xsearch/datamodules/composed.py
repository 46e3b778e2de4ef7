"""Composed queries from attribute differences (X-Modal; docs/protocol.md#composed-queries).

A composed query is a reference face ``x_r`` plus a sentence saying how a target face ``x_t`` of the same
person differs: "now wearing eyeglasses and without a hat". Pairs are two images of one identity whose
*changeable* attributes (accessories, facial hair, expression, hair; :data:`CHANGE_PHRASES`) differ in
``min_changes..max_changes`` attributes; the sentence is a template over those differences. Attributes
come from the dataset's per-image table (``index.extras["attributes"]``: CelebA's 40, LFW's 73 binarised).

* training: every caption pair ``(x_t, caption)`` also gets a reference drawn afresh at each visit among
  ``x_t``'s valid references, with a freshly worded sentence (``has_reference`` is False when none exists);
* evaluation: each image of the split with a valid reference becomes the target of one query, its reference
  and wording fixed by ``seed``; relevance (target + same-person images showing the target's values of the
  changed attributes, reference excluded) is :func:`xsearch.evaluation.composed_relevance`.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xsearch.datamodules.files import DatasetFormatError, examples
from xsearch.datamodules.records import CaptionRecord, DatasetIndex, FaceAttributes, ImageRecord
from xsearch.evaluation.composed import QueryRelevance, composed_relevance

__all__ = [
    "CHANGE_PHRASES", "AttributeTable", "ComposedOptions", "ComposedPair", "ComposedQuerySet", "ComposedTrainPairs",
    "composed_pairs", "modification_text", "reference_candidates",
]

CHANGE_PHRASES: dict[str, tuple[str, str]] = {
    "Eyeglasses": ("wearing eyeglasses", "without eyeglasses"),
    "Sunglasses": ("wearing sunglasses", "without sunglasses"),
    "Wearing_Hat": ("wearing a hat", "without a hat"),
    "Wearing_Earrings": ("wearing earrings", "without earrings"),
    "Wearing_Necklace": ("wearing a necklace", "without a necklace"),
    "Wearing_Necktie": ("wearing a necktie", "without a necktie"),
    "Wearing_Lipstick": ("wearing lipstick", "without lipstick"),
    "Heavy_Makeup": ("with heavy makeup", "without heavy makeup"),
    "Smiling": ("smiling", "not smiling"),
    "Frowning": ("frowning", "not frowning"),
    "Mouth_Slightly_Open": ("with the mouth slightly open", "with the mouth closed"),
    "Mouth_Wide_Open": ("with the mouth wide open", "with the mouth no longer wide open"),
    "Goatee": ("with a goatee", "without a goatee"),
    "Mustache": ("with a mustache", "without a mustache"),
    "No_Beard": ("clean-shaven", "with a beard"),
    "5_o_Clock_Shadow": ("with stubble", "without stubble"),
    "Sideburns": ("with sideburns", "without sideburns"),
    "Bangs": ("with bangs", "without bangs"),
    "Black_Hair": ("with black hair", "no longer with black hair"),
    "Blond_Hair": ("with blond hair", "no longer with blond hair"),
    "Brown_Hair": ("with brown hair", "no longer with brown hair"),
    "Gray_Hair": ("with gray hair", "no longer with gray hair"),
    "Wavy_Hair": ("with wavy hair", "without wavy hair"),
    "Straight_Hair": ("with straight hair", "without straight hair"),
    "Curly_Hair": ("with curly hair", "without curly hair"),
    "Bald": ("bald", "no longer bald"),
}
"""Changeable attribute -> (phrase when the target has it, phrase when it lost it). Stable traits
(nose, face shape, age, sex...) are not changes a person makes between two photos, and their labels
are the noisiest, so they never define a pair."""

OPENERS: tuple[str, ...] = ("now", "the same person, now", "same face, but", "this time")
"""Sentence openings, one drawn per sentence."""


@dataclass
class ComposedOptions:
    """How composed pairs are made.

    Args:
        min_changes / max_changes: number of changeable attributes that must differ (default 1-3).
        attributes: the changeable attributes (names in :data:`CHANGE_PHRASES`); ``None`` = all of them
            that the dataset's attribute table has.
        seed: fixes the evaluation queries (reference and wording per target).
    """

    min_changes: int = 1
    max_changes: int = 3
    attributes: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_changes <= self.max_changes:
            raise ValueError(f"composed: need 1 <= min_changes <= max_changes, got {self.min_changes}, {self.max_changes}")
        if self.attributes is not None and not self.attributes:
            raise ValueError("composed.attributes: empty list (None = every changeable attribute the dataset has)")
        unknown = sorted(set(self.attributes or ()) - set(CHANGE_PHRASES))
        if unknown:
            raise ValueError(f"composed.attributes: no change phrase for {examples(unknown)}; known: {examples(sorted(CHANGE_PHRASES), 40)}")


class AttributeTable:
    """The changeable attributes of every image of an index: ``values[image index]`` is a bool row over ``names``."""

    def __init__(self, index: DatasetIndex, options: ComposedOptions) -> None:
        table = index.extras.get("attributes")
        if not isinstance(table, FaceAttributes):
            raise DatasetFormatError(
                f"{index.name}: composed queries need per-image attributes (index.extras['attributes']), which this "
                "dataset's parser did not provide (celeba, synth_faces and lfw with its attribute file do)"
            )
        wanted = options.attributes if options.attributes is not None else [a for a in CHANGE_PHRASES if a in table.names]
        missing = [a for a in wanted if a not in table.names]
        if missing:
            raise DatasetFormatError(f"{index.name}: composed.attributes {examples(missing)} are not in the attribute table")
        if not wanted:
            raise DatasetFormatError(f"{index.name}: the attribute table has none of the changeable attributes {examples(list(CHANGE_PHRASES))}")
        columns = [table.names.index(a) for a in wanted]
        values, present = table.for_images(index.images)
        self.names: tuple[str, ...] = tuple(wanted)
        self.values: np.ndarray = values[:, columns]
        self.present: np.ndarray = present

    def changes(self, reference: int, target: int) -> tuple[int, ...]:
        """Columns (into ``names``) where the two images differ."""
        return tuple(np.flatnonzero(self.values[reference] != self.values[target]).tolist())


@dataclass(frozen=True)
class ComposedPair:
    """One composed query: reference and target image indexes, changed columns, the sentence."""

    reference: int
    target: int
    pid: int
    changed: tuple[int, ...]
    text: str


def modification_text(names: tuple[str, ...], changed: tuple[int, ...], target_values: np.ndarray, rng: random.Random) -> str:
    """The sentence for a change: opener + the gained/lost phrases of the changed attributes, e.g.
    "now wearing eyeglasses and not smiling." (phrase order and opener drawn from ``rng``)."""
    phrases = [CHANGE_PHRASES[names[c]][0 if target_values[c] else 1] for c in changed]
    rng.shuffle(phrases)
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{rng.choice(OPENERS)} {joined}."


def reference_candidates(images: list[ImageRecord], table: AttributeTable, options: ComposedOptions) -> dict[int, list[int]]:
    """Target image index -> the image indexes of the same identity (in ``images``) differing in
    ``min_changes..max_changes`` changeable attributes (images without an attribute row take no part)."""
    by_pid: dict[int, list[int]] = {}
    for image in images:
        if table.present[image.index]:
            by_pid.setdefault(image.pid, []).append(image.index)
    candidates: dict[int, list[int]] = {}
    for members in by_pid.values():
        if len(members) < 2:
            continue
        rows = table.values[members]  # (m, A)
        differences = (rows[:, None, :] != rows[None, :, :]).sum(-1)  # (m, m)
        valid = (differences >= options.min_changes) & (differences <= options.max_changes)
        for t, target in enumerate(members):
            references = [members[r] for r in np.flatnonzero(valid[t]).tolist()]
            if references:
                candidates[target] = references
    return candidates


def composed_pairs(images: list[ImageRecord], table: AttributeTable, options: ComposedOptions) -> list[ComposedPair]:
    """Evaluation queries: one per image of ``images`` that has a valid reference, fixed by ``options.seed``."""
    candidates = reference_candidates(images, table, options)
    pairs = []
    for image in images:
        references = candidates.get(image.index)
        if not references:
            continue
        rng = random.Random(zlib.crc32(f"{options.seed}/{image.index}".encode()))
        reference = rng.choice(references)
        changed = table.changes(reference, image.index)
        text = modification_text(table.names, changed, table.values[image.index], rng)
        pairs.append(ComposedPair(reference, image.index, image.pid, changed, text))
    return pairs


class ComposedTrainPairs(Dataset):
    """Train items (see ``TrainPairs``) plus a reference of the same person and the sentence leading from it
    to the item's image: ``reference_image`` (augmented like ``image``), ``modification`` (str),
    ``has_reference`` (False, with the item's own image and "" as fillers, when the image has none),
    ``attributes`` ``(A,)`` bool, the item image's changeable attributes, and ``changed`` ``(A,)`` bool, the
    ones the sentence changes (so a loss can tell which other images of the person also fit the query)."""

    def __init__(self, pairs: Dataset, candidates: dict[int, list[int]], table: AttributeTable, seed: int = 0) -> None:
        self.pairs, self.candidates, self.table, self.seed = pairs, candidates, table, seed
        self._rng_key: int | None = None
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def captions(self) -> list[CaptionRecord]:
        return self.pairs.captions

    def rng(self) -> random.Random:
        """A generator reseeded from torch's per-worker, per-epoch seed (differs across workers and epochs)."""
        key = torch.initial_seed()
        if key != self._rng_key:
            self._rng_key, self._rng = key, random.Random(key ^ self.seed)
        return self._rng

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.pairs[i]
        values = self.table.values[item["image_index"]]
        item["attributes"] = torch.from_numpy(values.copy())
        references = self.candidates.get(item["image_index"])
        if not references:
            return {**item, "reference_image": item["image"], "modification": "", "has_reference": False,
                    "changed": torch.zeros(len(values), dtype=torch.bool)}
        rng = self.rng()
        reference = rng.choice(references)
        changed = self.table.changes(reference, item["image_index"])
        text = modification_text(self.table.names, changed, values, rng)
        image = self.pairs.augment(self.pairs.images(reference))
        mask = torch.zeros(len(values), dtype=torch.bool)
        mask[list(changed)] = True
        return {**item, "reference_image": image, "modification": text, "has_reference": True, "changed": mask}


class ComposedQuerySet(Dataset):
    """Composed evaluation queries: ``{"reference_image", "text" (the modification), "pid", "index" (query
    number), "image_index" (target)}``, with their :attr:`relevance` for the metric and ``captions``
    (one record per query, text = the modification) for reports."""

    def __init__(self, pairs: list[ComposedPair], store: Any, gallery: list[ImageRecord], table: AttributeTable) -> None:
        if not pairs:
            raise DatasetFormatError("no composed queries: no identity has two images whose changeable attributes differ as asked")
        self.pairs, self.store = pairs, store
        split = gallery[0].split if gallery else ""
        self.captions = [CaptionRecord(q, p.target, p.text, p.pid, split) for q, p in enumerate(pairs)]
        gallery_indexes = [r.index for r in gallery]
        self.relevance: QueryRelevance = composed_relevance(
            list(range(len(pairs))), [p.reference for p in pairs], [p.target for p in pairs], [p.changed for p in pairs],
            gallery_indexes, [r.pid for r in gallery], table.values[gallery_indexes],
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, q: int) -> dict[str, Any]:
        pair = self.pairs[q]
        return {"reference_image": self.store(pair.reference), "text": pair.text, "pid": pair.pid, "index": q,
                "image_index": pair.target}
