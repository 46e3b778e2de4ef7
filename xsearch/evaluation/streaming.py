"""Exact retrieval metrics from embeddings, streaming over gallery chunks within a fixed memory budget.

The (Q, G) similarity matrix of 10,000 queries x 1,000,000 gallery items is 40 GB in fp32; this evaluator never
holds it. For a block of queries it walks the gallery in chunks twice, recomputing each chunk's scores
``queries @ gallery_chunk.T`` in full fp32 (TF32 and autocast off):

1. the scores of the block's positives are read from the chunks that hold them;
2. every chunk adds, per positive ``j`` of query ``q``, ``#{k : s_qk > s_qj}`` and ``#{k < j : s_qk == s_qj}``.

A positive's position is ``1 + both counts``: the same tie rule (equal scores in ascending gallery order) and the
same numbers as :func:`xsearch.evaluation.retrieval.retrieval_metrics` on the full matrix. The positives' scores
come from the very matmul (same operands, same shapes) that the counting pass recomputes, so a positive is never
compared with a differently rounded copy of itself. Working memory: about ``memory_mb`` MiB
(``rows x chunk x (4 + 3 P)`` bytes for ``P`` positives per query) whatever ``G`` is.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from xsearch.evaluation.retrieval import (PerQueryMetrics, PositiveLists, _padded_positives, _summarize_ranks,
                                          full_precision_matmul, summarize_per_query)

__all__ = ["streaming_per_query", "streaming_retrieval_metrics"]


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(total, lo + size)) for lo in range(0, total, size)]


def _block_ranks(queries: torch.Tensor, gallery: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor,
                 chunk: int) -> torch.Tensor:
    """(C, D) queries, (G, D) gallery, (C, P) positive gallery indices -> (C, P) 1-based positions."""
    spans = _chunks(gallery.shape[0], chunk)
    scores = torch.full(positive_index.shape, float("nan"), dtype=queries.dtype, device=queries.device)
    owner = positive_index // chunk  # which chunk holds each positive
    for c in torch.unique(owner[valid]).tolist():
        lo, hi = spans[c]
        inside = valid & (owner == c)
        block = queries @ gallery[lo:hi].T
        scores[inside] = block.gather(1, (positive_index - lo).clamp(0, hi - lo - 1))[inside]
    if bool(torch.isnan(scores[valid]).any()):
        raise ValueError("embeddings give NaN similarities")
    before = torch.zeros(positive_index.shape, dtype=torch.int64, device=queries.device)
    target = scores[:, None, :]  # (C, 1, P)
    for lo, hi in spans:
        block = (queries @ gallery[lo:hi].T)[:, :, None]  # (C, chunk, 1)
        if bool(torch.isnan(block).any()):
            raise ValueError("embeddings give NaN similarities")
        before += (block > target).sum(1)
        ties = block == target
        if bool(ties.any()):
            index = torch.arange(lo, hi, device=queries.device)[None, :, None]
            before += (ties & (index < positive_index[:, None, :])).sum(1)
    return before + 1


def streaming_per_query(queries: torch.Tensor, gallery: torch.Tensor, positives: PositiveLists,
                        memory_mb: float = 256.0) -> PerQueryMetrics:
    """Per-query first/last positive position, AP and INP of ``queries @ gallery.T`` without forming it.

    Args:
        queries: (Q, D) embeddings (normalise them first for cosine similarity); computed in fp32 (float64 kept).
        gallery: (G, D) embeddings, same dtype handling.
        positives: the Q queries' positive gallery positions (:class:`PositiveLists`).
        memory_mb: working-memory budget of the score and comparison blocks.
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1] or 0 in (*queries.shape, *gallery.shape):
        raise ValueError(f"expected non-empty (Q, D) queries and (G, D) gallery, got {tuple(queries.shape)} and "
                         f"{tuple(gallery.shape)}")
    if positives.count.numel() != queries.shape[0]:
        raise ValueError(f"{positives.count.numel()} positive lists for {queries.shape[0]} queries")
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    dtype = torch.float64 if queries.dtype == torch.float64 else torch.float32
    queries, gallery = queries.to(dtype).contiguous(), gallery.to(dtype).contiguous()
    device = queries.device
    gallery_order, start, count = (t.to(device) for t in (positives.gallery_order, positives.start, positives.count))
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    if gallery_order.numel() and (int(gallery_order.min()) < 0 or int(gallery_order.max()) >= num_gallery):
        raise ValueError(f"positive gallery positions must lie in [0, {num_gallery})")
    first = torch.zeros(num_queries, dtype=torch.int64, device=device)
    last = torch.zeros_like(first)
    average_precision = torch.full((num_queries,), float("nan"), dtype=torch.float64, device=device)
    inverse_negative_penalty = average_precision.clone()
    budget = int(memory_mb * 2**20)
    counts_sorted, order = torch.sort(count, stable=True)  # similar positive counts share a block: tight padding
    skip = int((counts_sorted == 0).sum())
    order, counts_sorted = order[skip:], counts_sorted[skip:]
    lo = 0
    with full_precision_matmul():
        while lo < order.numel():
            rows_n = counts_sorted[lo:]
            # rows and chunk such that rows x chunk x (bytes of a score + 3 P comparison bytes) fits the budget
            per_item = dtype.itemsize + 3 * int(rows_n[min(len(rows_n) - 1, 255)])
            rows = max(1, min(256, len(rows_n), budget // (per_item * 1024)))
            hi = lo + rows
            n = counts_sorted[lo:hi]
            per_item = dtype.itemsize + 3 * int(n.max())
            chunk = max(1, min(num_gallery, budget // (per_item * rows)))
            index = order[lo:hi]
            positive_index, valid = _padded_positives(gallery_order, start[index], n)
            ranks = _block_ranks(queries[index], gallery, positive_index, valid, chunk)
            first[index], last[index], average_precision[index], inverse_negative_penalty[index] = \
                _summarize_ranks(ranks, valid, n)
            lo = hi
    return PerQueryMetrics(count, first, last, average_precision, inverse_negative_penalty)


def streaming_retrieval_metrics(queries: torch.Tensor, gallery: torch.Tensor, query_pids: torch.Tensor,
                                gallery_pids: torch.Tensor, ks: Sequence[int] = (1, 5, 10), memory_mb: float = 256.0,
                                on_missing: str = "error") -> dict[str, float]:
    """``{"R1", ..., "mAP", "mINP"}`` in percent, as :func:`~xsearch.evaluation.retrieval.retrieval_metrics` of
    ``queries @ gallery.T`` (every gallery item with the query's pid is a positive), streamed over the gallery."""
    positives = PositiveLists.from_pids(torch.as_tensor(query_pids).to(queries.device),
                                        torch.as_tensor(gallery_pids).to(queries.device))
    return summarize_per_query(streaming_per_query(queries, gallery, positives, memory_mb), ks, on_missing)
