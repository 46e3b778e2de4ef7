"""Exact retrieval metrics from embeddings, streaming over gallery chunks within a fixed memory budget.

The (Q, G) similarity matrix of 10,000 queries x 1,000,000 gallery items is 40 GB in fp32; this evaluator never
holds it. For a block of queries it walks the gallery in chunks twice, recomputing each chunk's scores
``queries @ gallery_chunk.T`` in full fp32 (TF32 and autocast off):

1. the scores of the block's positives are read from the chunks that hold them (the gallery is visited in
   identity order and queries in the order of their positives, so a block's positives lie in a few chunks and this
   pass costs a small part of the second);
2. every chunk adds, per positive ``j`` of query ``q``, ``#{k : s_qk > s_qj}`` and ``#{k < j : s_qk == s_qj}``;
   only items scoring at least the query's worst positive can count, so when they are few (a useful model) only
   they are compared, else the whole chunk is.

A positive's position is ``1 + both counts``: the same tie rule (equal scores in ascending gallery order) and the
same numbers as :func:`xsearch.evaluation.retrieval.retrieval_metrics` on the full matrix. The positives' scores
come from the very matmul (same operands, same shapes) that the counting pass recomputes, so a positive is never
compared with a differently rounded copy of itself. Working memory: about ``memory_mb`` MiB
(``chunk x (rows x (4 + 3 P) + 4 D)`` bytes for ``P`` positives per query: the block's scores and comparisons
plus its gathered gallery rows) whatever ``G`` is.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from xsearch.evaluation.retrieval import (PerQueryMetrics, PositiveLists, padded_positives, summarize_ranks,
                                          full_precision_matmul, summarize_per_query)

__all__ = ["streaming_per_query", "streaming_retrieval_metrics"]

# Bytes a candidate costs (row and column indexes, value, gathered positive scores/indexes): the sparse comparison
# is used while the candidates fit in the memory the dense (C, chunk, P) comparison would take.
_CANDIDATE_BYTES = 64


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(total, lo + size)) for lo in range(0, total, size)]


def _block_ranks(queries: torch.Tensor, gallery: torch.Tensor, visit: torch.Tensor, place: torch.Tensor,
                 positive_index: torch.Tensor, valid: torch.Tensor, chunk: int) -> torch.Tensor:
    """(C, D) queries, (G, D) gallery visited in the order ``visit`` (``place`` its inverse), (C, P) positive gallery
    indices -> (C, P) 1-based positions (ties: ascending gallery index)."""
    spans = _chunks(gallery.shape[0], chunk)

    def scores_of(lo: int, hi: int) -> torch.Tensor:  # the same operands and shapes in both passes
        return queries @ gallery.index_select(0, visit[lo:hi]).T

    scores = torch.full(positive_index.shape, float("nan"), dtype=queries.dtype, device=queries.device)
    position = place[positive_index]  # where each positive is visited
    owner = position // chunk
    for c in torch.unique(owner[valid]).tolist():
        lo, hi = spans[c]
        inside = valid & (owner == c)
        scores[inside] = scores_of(lo, hi).gather(1, (position - lo).clamp(0, hi - lo - 1))[inside]
    if bool(torch.isnan(scores[valid]).any()):
        raise ValueError("embeddings give NaN similarities")
    before = torch.zeros(positive_index.shape, dtype=torch.int64, device=queries.device)
    worst = scores.masked_fill(~valid, float("inf")).amin(1, keepdim=True)  # (C, 1): only items >= it can precede
    for lo, hi in spans:
        block = scores_of(lo, hi)  # (C, chunk)
        if bool(torch.isnan(block).any()):
            raise ValueError("embeddings give NaN similarities")
        candidate = block >= worst
        found = int(candidate.sum())
        if found * _CANDIDATE_BYTES <= block.numel() * (block.element_size() + 3 * positive_index.shape[1]):
            # few candidates (a useful model): compare only them with each positive of their query
            row, column = candidate.nonzero(as_tuple=True)
            value, index = block[row, column][:, None], visit[lo + column][:, None]
            precedes = (value > scores[row]) | ((value == scores[row]) & (index < positive_index[row]))
            before.index_add_(0, row, precedes.long())
        else:
            dense = block[:, :, None]  # (C, chunk, 1) against (C, 1, P)
            before += (dense > scores[:, None, :]).sum(1)
            ties = dense == scores[:, None, :]
            if bool(ties.any()):
                before += (ties & (visit[lo:hi][None, :, None] < positive_index[:, None, :])).sum(1)
    return before + 1


def streaming_per_query(queries: torch.Tensor, gallery: torch.Tensor, positives: PositiveLists,
                        memory_mb: float = 256.0, visit: torch.Tensor | None = None) -> PerQueryMetrics:
    """Per-query first/last positive position, AP and INP of ``queries @ gallery.T`` without forming it.

    Args:
        queries: (Q, D) embeddings (normalise them first for cosine similarity); computed in fp32 (float64 kept).
        gallery: (G, D) embeddings, same dtype handling.
        positives: the Q queries' positive gallery positions (:class:`PositiveLists`).
        memory_mb: working-memory budget of the score and comparison blocks.
        visit: (G,) permutation of the gallery in which chunks are cut (default: gallery order). Queries are
            processed in the order of their first positive in it, so when it groups each query's positives (gallery
            sorted by identity), the first pass only computes the chunks that hold them. The result does not depend
            on it.
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
    visit = torch.arange(num_gallery, device=device) if visit is None else visit.to(device=device, dtype=torch.int64)
    place = torch.empty_like(visit).scatter_(0, visit, torch.arange(num_gallery, device=device))
    first = torch.zeros(num_queries, dtype=torch.int64, device=device)
    last = torch.zeros_like(first)
    average_precision = torch.full((num_queries,), float("nan"), dtype=torch.float64, device=device)
    inverse_negative_penalty = average_precision.clone()
    budget = int(memory_mb * 2**20)
    has = torch.nonzero(count > 0).squeeze(1)
    n = count[has]  # each query's positives, flattened: their owner and where they are visited
    owner = torch.repeat_interleave(torch.arange(has.numel(), device=device), n)
    offsets = torch.repeat_interleave(start[has] - (torch.cumsum(n, 0) - n), n) + torch.arange(int(n.sum()), device=device)
    first_place = torch.full((has.numel(),), num_gallery, dtype=torch.int64, device=device).scatter_reduce(
        0, owner, place[gallery_order[offsets]], "amin")
    order = has[torch.argsort(first_place, stable=True)]  # neighbours in the visit order share chunks
    lo = 0
    with full_precision_matmul():
        while lo < order.numel():
            # rows and chunk such that rows x chunk x (bytes of a score + 3 P comparison bytes) fits the budget
            widest = int(count[order[lo: lo + 256]].max())
            rows = max(1, min(256, order.numel() - lo, budget // ((dtype.itemsize + 3 * widest) * 1024)))
            index = order[lo: lo + rows]
            n = count[index]
            # per gallery column: the rows' scores and comparison bytes, plus the gathered (chunk, D) gallery rows
            per_column = (dtype.itemsize + 3 * int(n.max())) * rows + gallery.shape[1] * dtype.itemsize
            chunk = max(1, min(num_gallery, budget // per_column))
            positive_index, valid = padded_positives(gallery_order, start[index], n)
            ranks = _block_ranks(queries[index], gallery, visit, place, positive_index, valid, chunk)
            first[index], last[index], average_precision[index], inverse_negative_penalty[index] = \
                summarize_ranks(ranks, valid, n)
            lo += rows
    return PerQueryMetrics(count, first, last, average_precision, inverse_negative_penalty)


def streaming_retrieval_metrics(queries: torch.Tensor, gallery: torch.Tensor, query_pids: torch.Tensor,
                                gallery_pids: torch.Tensor, ks: Sequence[int] = (1, 5, 10), memory_mb: float = 256.0,
                                on_missing: str = "error") -> dict[str, float]:
    """``{"R1", ..., "mAP", "mINP"}`` in percent, as :func:`~xsearch.evaluation.retrieval.retrieval_metrics` of
    ``queries @ gallery.T`` (every gallery item with the query's pid is a positive), streamed over the gallery."""
    positives = PositiveLists.from_pids(torch.as_tensor(query_pids).to(queries.device),
                                        torch.as_tensor(gallery_pids).to(queries.device))
    visit = torch.argsort(torch.as_tensor(gallery_pids).to(queries.device), stable=True)  # identities together
    return summarize_per_query(streaming_per_query(queries, gallery, positives, memory_mb, visit), ks, on_missing)
