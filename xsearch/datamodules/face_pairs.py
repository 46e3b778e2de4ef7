"""Face verification and identification protocols of an evaluation split (TGFR, LFW).

The protocol: docs/protocol.md#face-verification-and-identification.

A *face sample* is one image of the split with one of its captions (the first in file order, so runs agree):
TGFR fuses the two into one identity embedding. Over the split's samples:

* **verification pairs** ``(first, second, same, fold)``: the dataset's own pair list when it has one whose
  images are in the split (LFW ``pairs.txt``), else generated: for every image with another image of its
  person, ``pairs_per_image`` same-person pairs (partner drawn among that person's other images) and as many
  different-person pairs (partner drawn among everyone else), seeded. Generated pairs alternate same /
  different, so contiguous folds are balanced;
* **identification**: for every person with two or more images, the first image is the gallery entry and
  the others are probes (closed set: rank-1 = the probe's most similar gallery face is its person).

Positions index the split's image list (the order of :class:`FaceSampleSet`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from xsearch.datamodules.records import CaptionRecord, ImageRecord

log = logging.getLogger(__name__)

__all__ = ["FaceSampleSet", "VerificationOptions", "VerificationProtocol", "verification_protocol"]


@dataclass
class VerificationOptions:
    """How the verification / identification protocol of an evaluation split is built.

    Args:
        pairs: ``auto`` (the dataset's pair list if it covers the split, else generated), ``dataset`` (its pair
            list or an error) or ``generated``.
        pairs_per_image: generated same-person pairs per image (and as many different-person pairs).
        folds: folds of the generated pairs (contiguous, balanced), for the k-fold accuracy.
        seed: seed of the generated pairs.
        tar_rule: TAR at a FAR target: ``at_most`` (the best TPR with FPR <= target) or ``nearest`` (the ROC
            point with the closest FPR, TGFR's code; it can sit above the target).
    """

    pairs: Literal["auto", "dataset", "generated"] = "auto"
    pairs_per_image: int = 1
    folds: int = 10
    seed: int = 0
    tar_rule: Literal["at_most", "nearest"] = "at_most"


@dataclass
class VerificationProtocol:
    """Pairs ``(P,)`` and identification probes / gallery ``(N,)`` as positions in the split's image list."""

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    fold: np.ndarray
    probes: np.ndarray
    gallery: np.ndarray
    source: str
    tar_rule: str = "at_most"

    def __len__(self) -> int:
        return len(self.same)


class FaceSampleSet(Dataset):
    """Evaluation face samples, one per image of the split: ``{"image", "text", "pid", "index", "position"}``
    (``text``: the image's first caption, ``""`` when it has none)."""

    def __init__(self, images: list[ImageRecord], captions: list[CaptionRecord], store: Any) -> None:
        self.images, self.store = images, store
        first: dict[int, str] = {}
        for caption in captions:
            first.setdefault(caption.image_index, caption.text)
        self.texts = [first.get(r.index, "") for r in images]
        if missing := sum(not t for t in self.texts):
            log.warning("%d of %d face samples have no caption: their text is empty", missing, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.images[i]
        return {"image": self.store(r.index), "text": self.texts[i], "pid": r.pid, "index": r.index, "position": i}


def _identification(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First image of each person with >= 2 images -> gallery; their other images -> probes."""
    seen: dict[int, int] = {}
    counts = {pid: n for pid, n in zip(*np.unique(pids, return_counts=True))}
    gallery, probes = [], []
    for position, pid in enumerate(pids.tolist()):
        if counts[pid] < 2:
            continue
        if pid in seen:
            probes.append(position)
        else:
            seen[pid] = position
            gallery.append(position)
    return np.asarray(probes, dtype=np.int64), np.asarray(gallery, dtype=np.int64)


def generated_pairs(pids: np.ndarray, pairs_per_image: int = 1, folds: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Seeded balanced pairs over ``(N,)`` pids: ``(first, second, same, fold)``, each ``(P,)``."""
    rng = np.random.default_rng(seed)
    by_pid: dict[int, np.ndarray] = {pid: np.flatnonzero(pids == pid) for pid in np.unique(pids).tolist()}
    first, second, same = [], [], []
    for position, pid in enumerate(pids.tolist()):
        others = by_pid[pid][by_pid[pid] != position]
        if len(others) == 0 or len(by_pid) < 2:
            continue
        for _ in range(pairs_per_image):
            partner = int(others[rng.integers(len(others))])
            stranger = int(rng.integers(len(pids) - len(by_pid[pid])))
            stranger = int(np.flatnonzero(pids != pid)[stranger])
            first += [position, position]
            second += [partner, stranger]
            same += [True, False]
    count = len(same)
    fold = np.arange(count) * folds // max(count, 1)
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64), np.asarray(same, dtype=bool), fold


def _restricted(pairs: Any, position: dict[str, int]) -> tuple[np.ndarray, ...] | None:
    """One pair list restricted to pairs whose two images have a ``position`` (``None`` if no same and no
    different pair is left)."""
    kept = [(position.get(str(a.resolve())), position.get(str(b.resolve())), s, f)
            for a, b, s, f in zip(pairs.first, pairs.second, pairs.same, pairs.fold)]
    kept = [row for row in kept if row[0] is not None and row[1] is not None]
    same = np.asarray([row[2] for row in kept], dtype=bool)
    if len(kept) == 0 or same.all() or not same.any():
        return None
    columns = list(zip(*kept))
    return (np.asarray(columns[0], dtype=np.int64), np.asarray(columns[1], dtype=np.int64), same,
            np.asarray(columns[3], dtype=np.int64))


def _dataset_pairs(pairs: Any, images: list[ImageRecord]) -> tuple[tuple[np.ndarray, ...], str] | None:
    """The dataset's pair list (or, from a ``{name: pairs}`` dict such as LFW's View 1 / View 2 files, the one
    keeping the most pairs) restricted to pairs whose two images are in ``images``; ``None`` if none is usable.
    Pairs with an image outside the split (another split's people, or people left out of the gallery) are
    dropped, and the count is logged."""
    position = {str(r.path.resolve()): i for i, r in enumerate(images)}
    lists = pairs.values() if isinstance(pairs, dict) else [pairs]
    found = [(kept, candidate) for candidate in lists if (kept := _restricted(candidate, position)) is not None]
    if not found:
        return None
    kept, chosen = max(found, key=lambda item: len(item[0][2]))
    if len(kept[2]) < len(chosen):
        log.warning("%s: %d of %d pairs have both images in this split; the others are left out",
                    chosen.source, len(kept[2]), len(chosen))
    return kept, str(chosen.source)


def verification_protocol(images: list[ImageRecord], extras: dict[str, Any], options: VerificationOptions) -> VerificationProtocol:
    """The pairs and identification sets of one split (``images`` in evaluation order)."""
    pids = np.asarray([r.pid for r in images], dtype=np.int64)
    listed = _dataset_pairs(extras["pairs"], images) if options.pairs != "generated" and extras.get("pairs") else None
    if listed is None and options.pairs == "dataset":
        raise ValueError("data.verification.pairs='dataset': the dataset has no pair list with same and different "
                         "pairs whose images are both in this split (use 'auto' or 'generated')")
    if listed is not None:
        (first, second, same, fold), source = listed
    else:
        first, second, same, fold = generated_pairs(pids, options.pairs_per_image, options.folds, options.seed)
        source = f"generated (seed {options.seed})"
    if not same.any() or same.all():
        raise ValueError(f"cannot build verification pairs: the split's {len(images)} images need two people, one "
                         "of them with two images or more")
    probes, gallery = _identification(pids)
    return VerificationProtocol(first, second, same, fold, probes, gallery, source, options.tar_rule)
