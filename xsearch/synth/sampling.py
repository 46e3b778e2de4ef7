"""Seeded randomness of the synthetic data: one numpy generator per stream, weighted choices, the identity split.

Every random draw of a generator comes from ``seeded_rng(seed, stream, *keys)``: the dataset seed, a :class:`Stream`
tag and the keys of what is drawn (an identity, an image...). A stream therefore never depends on what another one
drew, so that for instance an identity's attributes do not change with the number of images drawn before it.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Any, Sequence

import numpy as np


class Stream(IntEnum):
    """The tag of each stream; all distinct, so no two streams coincide."""

    PERSON = 1  # a pedestrian's attributes
    PEDES_IMAGE = 2  # one pedestrian image: camera, pose, drawing, noise
    PEDES_CAPTION = 3  # the captions of one pedestrian image
    PEDES_LAYOUT = 4  # images per pedestrian
    FACE = 5  # a face identity's attributes and look
    FACE_IMAGE = 6  # one face image: per-image attributes, drawing, noise
    FACE_CAPTION = 7  # the captions of one face image
    FACE_LAYOUT = 8  # identity labels, images per identity and their order, HQ numbers
    SCENE_LAYOUT = 101  # VGGFace2 class ids, COCO image ids
    SCENE_NAME = 102  # the order in which display names are handed out
    SCENE_CENTRE = 103  # the random part of a face-descriptor centre
    SCENE = 104  # one scene image: context, prop, layout, drawing, noise
    SCENE_CAPTION = 105  # the captions of one scene image
    SCENE_FACE = 106  # the face descriptor of one scene image


def seeded_rng(*key: int) -> np.random.Generator:
    """The generator of one stream: ``seeded_rng(seed, Stream.X, *keys)``."""
    return np.random.default_rng([int(k) for k in key])


def choice(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """One of ``items``, uniform or with weights ``p`` (normalised here)."""
    if p is None:
        return items[int(rng.integers(len(items)))]
    pa = np.asarray(p, dtype=np.float64)
    return items[int(rng.choice(len(items), p=pa / pa.sum()))]


def split_counts(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """Identities per split (train, val, test); val/test get at least one each when ``n >= 3``."""
    if n < 1:
        raise ValueError(f"need at least 1 identity, got {n}")
    tot = float(sum(fractions))
    n_val = int(round(n * fractions[1] / tot))
    n_test = int(round(n * fractions[2] / tot))
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = n - n_val - n_test
    if n_train < 1:
        n_train, n_val, n_test = n, 0, 0
    return n_train, n_val, n_test
