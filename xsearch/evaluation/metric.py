"""torchmetrics wrapper: gather query/gallery embeddings across ranks, dedupe, score, evaluate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from xsearch.evaluation.composed import QueryRelevance, excluded_scores, relevance_metrics, relevance_per_query
from xsearch.evaluation.retrieval import (
    ON_MISSING,
    PerQueryMetrics,
    PositiveLists,
    check_ks,
    cosine_similarity,
    retrieval_metrics_per_query,
    summarize_per_query,
)
from xsearch.evaluation.topk import TopK, rank_queries

__all__ = ["GatheredEmbeddings", "RetrievalMetric", "deduplicate_by_index"]

SimilarityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GatheredEmbeddings:
    """Deduplicated embeddings of all ranks, ordered by dataset index.

    Attributes:
        query_embeddings: (Q, D). query_pids: (Q,). query_indexes: (Q,) ascending, unique.
        gallery_embeddings: (G, D). gallery_pids: (G,). gallery_indexes: (G,) ascending, unique.
    """

    query_embeddings: torch.Tensor
    query_pids: torch.Tensor
    query_indexes: torch.Tensor
    gallery_embeddings: torch.Tensor
    gallery_pids: torch.Tensor
    gallery_indexes: torch.Tensor


def deduplicate_by_index(
    embeddings: torch.Tensor, pids: torch.Tensor, indexes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the first occurrence of every index and order rows by index.

    Args:
        embeddings: (N, D). pids: (N,). indexes: (N,) dataset sample ids, possibly repeated
            (DistributedSampler pads the last batch with samples of other ranks).

    Returns:
        (M, D) embeddings, (M,) pids, (M,) unique ascending indexes.
    """
    sorted_indexes, order = torch.sort(indexes, stable=True)  # stable: first occurrence leads its run
    keep = torch.ones_like(sorted_indexes, dtype=torch.bool)
    keep[1:] = sorted_indexes[1:] != sorted_indexes[:-1]
    rows = order[keep]
    return embeddings[rows], pids[rows], sorted_indexes[keep]


class RetrievalMetric(Metric):
    """Text-to-image (and image-to-text) R@K / mAP / mINP over embeddings gathered from all ranks.

    Feed captions with :meth:`update_queries` and images with :meth:`update_gallery`; ``indexes`` are
    unique dataset sample ids, used to drop DistributedSampler duplicates (first occurrence kept) and to
    order samples independently of the rank layout. :meth:`compute` scores ``similarity_fn(queries,
    gallery)`` (default :func:`cosine_similarity`, full fp32) with
    :func:`~xsearch.evaluation.retrieval.retrieval_metrics` and returns ``R{k}``, ``mAP``, ``mINP``,
    plus ``i2t_``-prefixed ones when ``image_to_text`` (transposed matrix: images query captions).

    Image-to-text skips images that have no caption of their pid (``i2t_on_missing="skip"``, the
    default: this only happens when the captions are a subset); :attr:`skipped_queries`
    (``{"t2i": n, "i2t": m}``) reports how many queries each direction left out. Text-to-image follows ``on_missing``.
    After :meth:`compute`, :meth:`gathered` returns the deduplicated embeddings, pids and indexes and
    :meth:`per_query` the text-to-image per-query results (ranks, AP) that its numbers average; with ``top_k``,
    :meth:`top` every query's text-to-image top-``top_k``, ranked from the same score matrix (not scored twice).

    Protocols whose positives are not "same pid" (composed queries) set :attr:`relevance` (a
    :class:`~xsearch.evaluation.composed.QueryRelevance` by dataset index) before :meth:`compute`; it then
    scores text-to-image with those positives and per-query exclusions, and image-to-text (an image's positives
    are the queries it is a positive of) when nothing is excluded (instance-level R@K, COCO-style).
    Use the update methods, not ``forward``: a batch alone has no meaningful retrieval score.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        similarity_fn: SimilarityFn | None = None,
        on_missing: str = "error",
        image_to_text: bool = True,
        i2t_on_missing: str = "skip",
        chunk_size: int | None = None,
        top_k: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("on_missing", on_missing), ("i2t_on_missing", i2t_on_missing)):
            if value not in ON_MISSING:
                raise ValueError(f"{name} must be one of {ON_MISSING}, got {value!r}")
        self.ks = check_ks(ks)
        self.similarity_fn = similarity_fn or cosine_similarity
        self.on_missing = on_missing
        self.image_to_text = image_to_text
        self.i2t_on_missing = i2t_on_missing
        self.chunk_size = chunk_size
        self.top_k = top_k
        self.skipped_queries: dict[str, int] = {}
        self.relevance: QueryRelevance | None = None
        self._gathered: GatheredEmbeddings | None = None
        self._per_query: PerQueryMetrics | None = None
        self._top: TopK | None = None
        for role in ("query", "gallery"):
            for field in ("embeddings", "pids", "indexes"):
                self.add_state(f"{role}_{field}", default=[], dist_reduce_fx="cat")

    def update(
        self,
        query_embeddings: torch.Tensor | None = None,
        query_pids: torch.Tensor | None = None,
        query_indexes: torch.Tensor | None = None,
        gallery_embeddings: torch.Tensor | None = None,
        gallery_pids: torch.Tensor | None = None,
        gallery_indexes: torch.Tensor | None = None,
    ) -> None:
        """Append a batch of queries (B, D), (B,), (B,) and/or gallery items (B, D), (B,), (B,)."""
        given = False
        for role, batch in (
            ("query", (query_embeddings, query_pids, query_indexes)),
            ("gallery", (gallery_embeddings, gallery_pids, gallery_indexes)),
        ):
            if all(item is None for item in batch):
                continue
            if any(item is None for item in batch):
                raise ValueError(f"{role} embeddings, pids and indexes must be given together")
            self._append(role, *batch)
            given = True
        if not given:
            raise ValueError("update() needs query or gallery tensors")

    def update_queries(self, embeddings: torch.Tensor, pids: torch.Tensor, indexes: torch.Tensor) -> None:
        """Append queries (captions): embeddings (B, D), pids (B,), dataset indexes (B,)."""
        self.update(query_embeddings=embeddings, query_pids=pids, query_indexes=indexes)

    def update_gallery(self, embeddings: torch.Tensor, pids: torch.Tensor, indexes: torch.Tensor) -> None:
        """Append gallery items (images): embeddings (B, D), pids (B,), dataset indexes (B,)."""
        self.update(gallery_embeddings=embeddings, gallery_pids=pids, gallery_indexes=indexes)

    def _append(self, role: str, embeddings: torch.Tensor, pids: torch.Tensor, indexes: torch.Tensor) -> None:
        embeddings = embeddings.detach()
        pids = torch.as_tensor(pids, device=embeddings.device).reshape(-1).long()
        indexes = torch.as_tensor(indexes, device=embeddings.device).reshape(-1).long()
        if embeddings.ndim != 2 or not embeddings.shape[0] == pids.numel() == indexes.numel():
            raise ValueError(
                f"{role}: expected (B, D) embeddings with (B,) pids and indexes, got "
                f"{tuple(embeddings.shape)}, {pids.numel()}, {indexes.numel()}"
            )
        getattr(self, f"{role}_embeddings").append(embeddings)
        getattr(self, f"{role}_pids").append(pids)
        getattr(self, f"{role}_indexes").append(indexes)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate only (no per-batch value)."""
        self.update(*args, **kwargs)

    def _collect(self, role: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states = [getattr(self, f"{role}_{field}") for field in ("embeddings", "pids", "indexes")]
        if isinstance(states[0], list) and not states[0]:
            method = "update_queries" if role == "query" else "update_gallery"
            raise ValueError(f"RetrievalMetric has no {role} samples; call {method}() first")
        embeddings, pids, indexes = (dim_zero_cat(state) for state in states)
        return deduplicate_by_index(embeddings, pids, indexes)

    def compute(self) -> dict[str, float]:
        """Metrics in percent: ``R{k}``, ``mAP``, ``mINP`` (and ``i2t_*``) over the deduplicated samples."""
        gathered = GatheredEmbeddings(*self._collect("query"), *self._collect("gallery"))
        self._gathered = gathered
        similarity = self.similarity_fn(gathered.query_embeddings, gathered.gallery_embeddings)
        if self.relevance is not None:
            positives, excluded = self.relevance.resolve(gathered.query_indexes, gathered.gallery_indexes)
            self.skipped_queries = {"t2i": int((positives.count == 0).sum())}
            scores = excluded_scores(similarity, positives, excluded)  # once, for the numbers and the top-k
            self._per_query = relevance_per_query(scores, positives)
            if self.top_k:
                self._top = rank_queries(scores, positives, None, self.top_k)
            metrics = summarize_per_query(self._per_query, self.ks, self.on_missing)
            if self.image_to_text and not len(excluded[0]):  # e.g. instance-level: an image finds its own captions
                inverse = self.relevance.inverse(gathered.query_indexes, gathered.gallery_indexes)
                self.skipped_queries["i2t"] = int((inverse.count == 0).sum())
                i2t = relevance_metrics(similarity.T, inverse, None, self.ks, self.i2t_on_missing)
                metrics.update({f"i2t_{name}": value for name, value in i2t.items()})
            return metrics
        directions = [("t2i", "", similarity, gathered.query_pids, gathered.gallery_pids, self.on_missing)]
        if self.image_to_text:
            directions.append(
                ("i2t", "i2t_", similarity.T, gathered.gallery_pids, gathered.query_pids, self.i2t_on_missing)
            )
        metrics: dict[str, float] = {}
        self.skipped_queries = {}
        for direction, prefix, scores, query_pids, gallery_pids, on_missing in directions:
            per_query = retrieval_metrics_per_query(scores, query_pids, gallery_pids, self.chunk_size)
            if direction == "t2i":
                self._per_query = per_query
                if self.top_k:
                    self._top = rank_queries(scores, PositiveLists.from_pids(query_pids, gallery_pids), None, self.top_k)
            summary = summarize_per_query(per_query, self.ks, on_missing)
            metrics.update({f"{prefix}{name}": value for name, value in summary.items()})
            self.skipped_queries[direction] = int((~per_query.has_positive).sum())
        return metrics

    def gathered(self) -> GatheredEmbeddings:
        """Deduplicated, index-ordered embeddings/pids/indexes of the last :meth:`compute`."""
        if self._gathered is None:
            raise RuntimeError("call compute() before gathered()")
        return self._gathered

    def per_query(self) -> PerQueryMetrics:
        """Text-to-image per-query results of the last :meth:`compute` (rows in :meth:`gathered` query order):
        the very ranks and APs its ``R{k}`` / ``mAP`` / ``mINP`` average."""
        if self._per_query is None:
            raise RuntimeError("call compute() before per_query()")
        return self._per_query

    def top(self) -> TopK:
        """Text-to-image top-``top_k`` of every query of the last :meth:`compute` (rows in :meth:`gathered` query
        order), ranked as the metric ranks."""
        if not self.top_k:
            raise RuntimeError("RetrievalMetric(top_k=0) keeps no top-k: create it with top_k > 0")
        if self._top is None:
            raise RuntimeError("call compute() before top()")
        return self._top

    def reset(self) -> None:
        """Clear the accumulated samples and the cached gathered embeddings and per-query results."""
        super().reset()
        self._gathered = None
        self._per_query = None
        self._top = None
        self.skipped_queries = {}
