"""Id-CLIP's entity-retrieval protocol: identity-only prompts -> every image of that identity.

One query per identity of the evaluation split: the prompts of
:data:`~xsearch.entity_captions.ENTITY_PROMPTS` (the authors' six: "An image with [ENTITY].", "An image
with a person whose name is [ENTITY].", "[ENTITY].", ..., the slot filled by the method) plus one face descriptor of
the identity. Where that face comes from:

* ``held_out`` (default): the identity's first image in dataset order gives the descriptor and leaves the
  entity gallery, so the query face was never seen in a gallery image (identities with one image are skipped,
  logged). The general-retrieval gallery is unchanged.
* ``gallery``: the authors' code (the faithful mode): the descriptor of the identity's first gallery image,
  which stays in the gallery.
* ``extractor``: computed by a registered face extractor (:mod:`xsearch.datamodules.face_features`) from the
  identity's first face crop (COCO-PFS ``vggface_test_kaggle/<class id>/``): a photo outside the scenes.

``ensemble`` averages the prompts' text features into one query (the authors' validation setting); without it
every (identity, prompt) pair is its own query. Metrics: :func:`xsearch.evaluation.entity.entity_metrics`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from xsearch.datamodules.records import DatasetIndex, ImageRecord
from xsearch.entity_captions import ENTITY_PROMPTS

log = logging.getLogger(__name__)

__all__ = ["EntityOptions", "EntityQuerySet", "entity_queries"]


@dataclass
class EntityOptions:
    """How the entity-retrieval queries of an evaluation split are built (see the module docstring).

    Args:
        query_face: ``held_out``, ``gallery`` (the authors' code) or ``extractor``.
        ensemble: one query per identity with the prompts' text features averaged; ``False``: one query per prompt.
        extractor: registered face extractor name for ``query_face: extractor`` (``facenet``...).
    """

    query_face: Literal["held_out", "gallery", "extractor"] = "held_out"
    ensemble: bool = True
    extractor: str | None = None


class EntityQuerySet(Dataset):
    """Entity queries: ``{"prompts": [T prompts] or "text": prompt, "face": (D,), "name", "pid", "index"}``.

    Attributes:
        excluded: image indexes left out of the entity gallery (the held-out query faces).
    """

    def __init__(self, queries: list[dict[str, Any]], excluded: set[int]) -> None:
        self.queries, self.excluded = queries, excluded

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.queries[i]


def _crop_faces(index: DatasetIndex, pids: list[int], extractor_name: str | None) -> dict[int, torch.Tensor]:
    """Descriptor of each identity's first face crop, by a registered extractor."""
    from xsearch.datamodules.transforms import read_rgb

    from xsearch.datamodules.face_features import FACE_EXTRACTORS

    if extractor_name is None:
        raise ValueError("entity retrieval with query_face: extractor needs data.entity_retrieval.extractor (a registered "
                         f"face extractor: {', '.join(FACE_EXTRACTORS.names())})")
    folders = index.extras.get("face_crop_dirs") or {}
    missing = [pid for pid in pids if pid not in folders]
    if missing:
        raise FileNotFoundError(f"{index.name}: no face crop folder for {len(missing)} of {len(pids)} identities "
                                f"(e.g. pid {missing[0]}); query_face: extractor reads <class id>/ crops")
    first = {}
    for pid in pids:
        crops = sorted(p for p in folders[pid].iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not crops:
            raise FileNotFoundError(f"{folders[pid]}: no face crop image (.jpg/.png) for pid {pid}")
        first[pid] = crops[0]
    extractor = FACE_EXTRACTORS.get(extractor_name)()
    images = []
    for path in first.values():
        images.append(read_rgb(path))
    vectors = torch.as_tensor(extractor(images), dtype=torch.float32)
    return dict(zip(first, vectors))


def entity_queries(index: DatasetIndex, images: list[ImageRecord], faces: dict[int, torch.Tensor],
                   options: EntityOptions) -> EntityQuerySet:
    """The entity queries of a split's ``images`` (see the module docstring); ``faces`` by image index."""
    by_pid: dict[int, list[ImageRecord]] = {}
    for image in images:
        by_pid.setdefault(image.pid, []).append(image)
    excluded: set[int] = set()
    query_faces: dict[int, torch.Tensor] = {}
    if options.query_face == "held_out":
        single = [pid for pid, own in by_pid.items() if len(own) < 2]
        if single:
            log.warning("entity retrieval: %d of %d identities have one image, which cannot be both the query face "
                        "and a gallery image: skipped", len(single), len(by_pid))
        for pid, own in by_pid.items():
            if len(own) >= 2:
                query_faces[pid] = faces[own[0].index]
                excluded.add(own[0].index)
    elif options.query_face == "gallery":
        query_faces = {pid: faces[own[0].index] for pid, own in by_pid.items()}
    elif options.query_face == "extractor":
        query_faces = _crop_faces(index, list(by_pid), options.extractor)
    else:
        raise ValueError(f"entity_retrieval.query_face must be held_out, gallery or extractor, got {options.query_face!r}")
    if not query_faces:
        raise ValueError(f"{index.name}: no identity has a query face for entity retrieval ({len(by_pid)} identities)")
    names = index.identity_names
    queries = []
    for pid in sorted(query_faces):
        base = {"face": query_faces[pid], "name": names.get(pid, str(pid)), "pid": pid}
        if options.ensemble:
            queries.append({**base, "prompts": list(ENTITY_PROMPTS), "index": len(queries)})
        else:
            queries += [{**base, "text": prompt, "index": len(queries) + k} for k, prompt in enumerate(ENTITY_PROMPTS)]
    return EntityQuerySet(queries, excluded)
