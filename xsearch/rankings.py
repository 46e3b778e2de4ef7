"""Per-query test rankings: what a test run keeps for ``xsearch inspect`` (``<run>/test_rankings.npz``).

For every text query: its dataset caption index, text and pid, the top-K gallery items (positions into the gallery
arrays, best first, ties to the lower gallery index as in the metric) with their scores and whether each is a
positive, its AP and 1-based rank of the first positive *as computed by the metric that produced the run's test
numbers* (:meth:`xsearch.evaluation.RetrievalMetric.per_query`), and its best-ranked positive; plus the gallery's
dataset indexes, image paths and pids. Q x K entries, a few hundred KB at CUHK-PEDES size.
"""
from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xsearch.atomic import atomic_path
from xsearch.evaluation import PerQueryMetrics, QueryRelevance, RankedLists
from xsearch.evaluation.topk import TopK

log = logging.getLogger(__name__)

RANKINGS_FILE = "test_rankings.npz"
FORMAT = "xsearch-test-rankings"
VERSION = 1
TOP_K = 10


@dataclass(frozen=True)
class QueryRankings:
    """Per-query rankings of one test run (arrays over Q queries and G gallery items).

    Attributes:
        query_indexes: (Q,) int64 dataset caption indexes. query_texts: (Q,) str. query_pids: (Q,) int64.
        topk: (Q, K) int64 gallery positions (rows of the gallery arrays), best first.
        topk_scores: (Q, K) float32 scores. topk_correct: (Q, K) bool, a positive of the query.
        average_precision: (Q,) float64 in [0, 1], NaN for a query without positive (the metric's).
        first_positive_rank: (Q,) int64, 1-based position of the first positive, 0 without one (the metric's).
        num_positives: (Q,) int64. best_positive: (Q,) int64 gallery position of the best-ranked positive (-1: none).
        gallery_indexes: (G,) int64 dataset image indexes. gallery_paths: (G,) str. gallery_pids: (G,) int64.
        meta: method, dataset, checkpoint, protocol (``pid`` or ``relevance``), the logged test metrics.
    """

    query_indexes: np.ndarray
    query_texts: np.ndarray
    query_pids: np.ndarray
    topk: np.ndarray
    topk_scores: np.ndarray
    topk_correct: np.ndarray
    average_precision: np.ndarray
    first_positive_rank: np.ndarray
    num_positives: np.ndarray
    best_positive: np.ndarray
    gallery_indexes: np.ndarray
    gallery_paths: np.ndarray
    gallery_pids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query_indexes)

    def save(self, path: str | Path) -> Path:
        """Write a compressed ``.npz`` atomically (no pickled objects: strings are fixed-width unicode arrays)."""
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        header = {"format": FORMAT, "version": VERSION, **self.meta}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, meta=np.array(json.dumps(header)), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> QueryRankings:
        """Read a file written by :meth:`save`; ``FileNotFoundError`` / ``ValueError`` naming the file and what is
        wrong (not an npz, another format or version, a missing or mis-shaped array)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        what = f"not a test rankings file ({RANKINGS_FILE}, written into the run folder by xsearch test)"
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: {what}: not an .npz archive")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: {what}: {error}") from None
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except (KeyError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path}: {what}: no 'meta' entry of format {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise ValueError(f"{path}: rankings format version {meta.get('version')!r}; this xsearch reads version {VERSION}")
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}")
        rankings = cls(**{name: arrays[name] for name in _ARRAYS}, meta={k: v for k, v in meta.items()
                                                                           if k not in ("format", "version")})
        problem = rankings.shape_problem()
        if problem:
            raise ValueError(f"{path}: {problem}")
        return rankings

    def shape_problem(self) -> str | None:
        """What is inconsistent between the arrays' shapes, or ``None``."""
        queries, gallery = len(self.query_indexes), len(self.gallery_indexes)
        for name in ("query_texts", "query_pids", "average_precision", "first_positive_rank", "num_positives",
                     "best_positive"):
            if getattr(self, name).shape != (queries,):
                return f"{name} has shape {getattr(self, name).shape}, expected ({queries},)"
        if self.topk.ndim != 2 or self.topk.shape[0] != queries:
            return f"topk has shape {self.topk.shape}, expected ({queries}, K)"
        for name in ("topk_scores", "topk_correct"):
            if getattr(self, name).shape != self.topk.shape:
                return f"{name} has shape {getattr(self, name).shape}, expected {self.topk.shape} like topk"
        for name in ("gallery_paths", "gallery_pids"):
            if getattr(self, name).shape != (gallery,):
                return f"{name} has shape {getattr(self, name).shape}, expected ({gallery},)"
        if self.topk.size and not (0 <= int(self.topk.min()) and int(self.topk.max()) < gallery):
            return f"topk holds gallery positions outside [0, {gallery})"
        return None


_ARRAYS = tuple(name for name in QueryRankings.__dataclass_fields__ if name != "meta")


def query_rankings(
    top: TopK,
    gathered: Any,
    per_query: PerQueryMetrics,
    relevance: QueryRelevance | None,
    texts: dict[int, str],
    paths: dict[int, str],
    meta: dict[str, Any],
) -> QueryRankings:
    """Rankings of a computed :class:`~xsearch.evaluation.RetrievalMetric` (made with ``top_k``): no score is
    computed again.

    Args:
        top: the metric's ``top()``, ranked from the very matrix its numbers come from.
        gathered: the metric's :class:`~xsearch.evaluation.GatheredEmbeddings`. per_query: its ``per_query()``.
        relevance: the metric's explicit positives, ``None`` for same-pid positives.
        texts: caption index -> text. paths: gallery image index -> path.
    """
    topk, top_scores, correct, best = top
    query_indexes = gathered.query_indexes.cpu().numpy().astype(np.int64)
    gallery_indexes = gathered.gallery_indexes.cpu().numpy().astype(np.int64)
    return QueryRankings(
        query_indexes=query_indexes,
        query_texts=np.array([texts[int(i)] for i in query_indexes], dtype=np.str_),
        query_pids=gathered.query_pids.cpu().numpy().astype(np.int64),
        topk=topk.numpy().astype(np.int64),
        topk_scores=top_scores.numpy().astype(np.float32),
        topk_correct=correct.numpy(),
        average_precision=per_query.average_precision.cpu().numpy().astype(np.float64),
        first_positive_rank=per_query.first_positive_rank.cpu().numpy().astype(np.int64),
        num_positives=per_query.num_positives.cpu().numpy().astype(np.int64),
        best_positive=best.numpy().astype(np.int64),
        gallery_indexes=gallery_indexes,
        gallery_paths=np.array([str(paths[int(i)]) for i in gallery_indexes], dtype=np.str_),
        gallery_pids=gathered.gallery_pids.cpu().numpy().astype(np.int64),
        meta={"protocol": "pid" if relevance is None else "relevance", "top_k": int(topk.shape[1]), **meta},
    )


def save_ranked_lists(ranked: RankedLists, meta: dict[str, Any], folder: str | Path) -> Path:
    """Write the :func:`query_rankings` of an evaluation protocol's :class:`~xsearch.evaluation.RankedLists` to
    :data:`RANKINGS_FILE` in ``folder`` (for ``xsearch inspect``); logs where."""
    rankings = query_rankings(ranked.top, ranked.gathered, ranked.per_query, ranked.relevance, dict(ranked.query_texts),
                              {index: str(path) for index, path in ranked.gallery_paths.items()}, meta)
    out = rankings.save(Path(folder) / RANKINGS_FILE)
    log.info("per-query rankings of %d test queries: %s (xsearch inspect %s --out report.html)", len(rankings), out,
             out.parent)
    return out
