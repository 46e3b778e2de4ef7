"""Searching an index: rebuild the method recorded in the index, embed a text (or composed) query, rank the images."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xsearch.datamodules.transforms import load_image
from xsearch.search.index import SearchIndex, load_index
from xsearch.search.model_io import CheckpointInfo, LoadedModel, checkpoint_info, embed_queries, load_model


@dataclass(frozen=True)
class Hit:
    """One result: 1-based ``rank``, ``score`` (cosine, or the method's similarity), ``path`` relative to the indexed
    folder and ``file`` (absolute)."""

    rank: int
    score: float
    path: str
    file: Path

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "path": str(self.file), "relative_path": self.path}


@dataclass
class SearchResult:
    """The ranked ``hits`` of ``query`` (and its ``reference`` image) in ``index``, searched with ``method``."""

    query: str
    reference: str | None
    index: str
    method: str
    hits: list[Hit] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "reference": self.reference, "index": self.index, "method": self.method,
                "results": [hit.to_json() for hit in self.hits]}


def _recorded_checkpoint(index: SearchIndex, override: str | Path | None) -> CheckpointInfo:
    """The checkpoint the index was built with: ``override`` when given (it must have the same content), else the
    recorded path (hashed again only when its size or mtime changed)."""
    recorded = index.checkpoint
    if override is not None:
        info = checkpoint_info(override)
    else:
        path = Path(recorded.path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} (recorded in {index.folder / 'index.json'}) does not exist; "
                                    "pass the same checkpoint's new location with --ckpt")
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) == (recorded.size, recorded.mtime_ns):
            return recorded
        info = checkpoint_info(path)
    if info.sha256 != recorded.sha256:
        raise ValueError(f"checkpoint {info.path} is not the one {index.folder} was built with (sha256 {info.sha256[:12]}... "
                         f"vs {recorded.sha256[:12]}...): its embeddings would not match; re-index with xsearch index")
    return info


def check_query(text: str, k: int) -> None:
    """:class:`ValueError` for an empty (or blank) query text or ``k < 1``."""
    if not text or not text.strip():
        raise ValueError("the query text is empty: say what to look for, e.g. \"a woman in a red coat\"")
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")


class Searcher:
    """An index and the method that built it, loaded once for any number of queries.

    Args:
        index_dir: folder written by :func:`xsearch.search.index.build_index`.
        ckpt: the checkpoint, when it moved since indexing (same content required).
        device: where the model runs (default: CUDA when available).
    """

    def __init__(self, index_dir: str | Path, ckpt: str | Path | None = None, device: str | None = None) -> None:
        self.index = load_index(index_dir)
        self._ckpt, self._device = ckpt, device
        self._loaded: LoadedModel | None = None

    @property
    def loaded(self) -> LoadedModel:
        """The method, rebuilt from the checkpoint on first use."""
        if self._loaded is None:
            info = _recorded_checkpoint(self.index, self._ckpt)
            self._loaded = load_model(info.path, self._device, info)
        return self._loaded

    def reference_image(self, path: str | Path) -> torch.Tensor:
        """A reference image file -> ``(3, H, W)`` uint8, preprocessed as the indexed images were."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference image {path} does not exist")
        prep = self.index.header["preprocessing"]
        crop = tuple(prep["crop"]) if isinstance(prep.get("crop"), list) else prep.get("crop")
        return load_image(path, tuple(prep["image_size"]), crop, prep.get("interpolation", "bicubic"))

    def search(self, text: str, k: int = 20, reference: str | Path | None = None, nprobe: int | None = None) -> SearchResult:
        """Rank the indexed images for ``text`` (with ``reference``: a composed query, reference image +
        modification text). Raises :class:`ValueError` for an empty text, ``k < 1``, or a reference image given to a
        method without composed queries; :class:`OSError` naming an unreadable reference image."""
        check_query(text, k)
        model_info = self.index.header["model"]
        if reference is not None and not model_info.get("composed_queries"):
            raise ValueError(f"method {model_info['method']} (of {self.index.folder}) does not take a reference image: "
                             "no composed queries; search with text alone, or index with a method that has them (e.g. xmodal)")
        references = self.reference_image(reference)[None] if reference is not None else None
        loaded = self.loaded
        queries = embed_queries(loaded, [text], references)  # (1, D)

        def similarity(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            """The method's own similarity on the model's device: ``(Q, D)``, ``(G, D)`` -> ``(Q, G)``."""
            return loaded.model.similarity(q.to(loaded.device), g.to(loaded.device))

        scores, rows = self.index.search(queries, k, similarity if self.index.faiss is None else None, nprobe)
        hits = []
        for score, row in zip(scores[0].tolist(), rows[0].tolist()):
            if row < 0:
                continue
            item = self.index.items[row]
            hits.append(Hit(len(hits) + 1, float(score), item.path, self.index.images_root / item.path))
        return SearchResult(text, str(reference) if reference is not None else None, str(self.index.folder),
                            loaded.method, hits)


def search(index_dir: str | Path, text: str, k: int = 20, reference: str | Path | None = None,
           ckpt: str | Path | None = None, device: str | None = None, nprobe: int | None = None) -> SearchResult:
    """One query against an index (see :class:`Searcher`)."""
    check_query(text, k)
    return Searcher(index_dir, ckpt, device).search(text, k, reference, nprobe)
