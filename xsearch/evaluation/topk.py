"""Every query's top-K, ranked exactly as the retrieval metrics rank (descending score, ties to the lower gallery
position, excluded cells last): what the per-query rankings of a test run (``xsearch inspect``) show."""
from __future__ import annotations

from typing import NamedTuple

import torch

from xsearch.evaluation.composed import excluded_scores
from xsearch.evaluation.retrieval import PositiveLists

__all__ = ["TopK", "positive_mask", "rank_queries"]

_ROW_CHUNK = 1024  # queries sorted at once


class TopK(NamedTuple):
    """Top-K of Q queries (on the CPU): ``indices`` (Q, K) int64 gallery positions, best first; ``scores`` (Q, K)
    float32; ``correct`` (Q, K) bool, a positive of the query; ``best`` (Q,) int64 the best-ranked positive (-1: none)."""

    indices: torch.Tensor
    scores: torch.Tensor
    correct: torch.Tensor
    best: torch.Tensor


def positive_mask(positives: PositiveLists, lo: int, hi: int, num_gallery: int) -> torch.Tensor:
    """(hi - lo, G) bool: row ``i`` marks the positives of query ``lo + i``."""
    mask = torch.zeros(hi - lo, num_gallery, dtype=torch.bool)
    count = positives.count.cpu()[lo:hi]
    total = int(count.sum())
    if not total:
        return mask
    owner = torch.repeat_interleave(torch.arange(hi - lo), count)  # (total,) row of each positive
    within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    mask[owner, positives.gallery_order.cpu()[positives.start.cpu()[lo:hi][owner] + within]] = True
    return mask


@torch.no_grad()
def rank_queries(
    similarity: torch.Tensor,
    positives: PositiveLists,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
    k: int = 10,
) -> TopK:
    """Top-``k`` of every query of ``similarity`` (Q, G), in the metric's order; ``positives``: Q lists of gallery
    positions; ``excluded``: (rows, columns) cells ranked after every other item."""
    scores = excluded_scores(similarity, positives, excluded).detach()  # on its device; compared as the metric does:
    scores = scores if scores.dtype == torch.float64 else scores.float()  # float64 kept, anything else in fp32
    num_queries, num_gallery = scores.shape
    k = min(k, num_gallery)
    outputs: list[tuple[torch.Tensor, ...]] = []
    for lo in range(0, num_queries, _ROW_CHUNK):
        hi = min(num_queries, lo + _ROW_CHUNK)
        rows = scores[lo:hi]
        order = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :k]
        mask = positive_mask(positives, lo, hi, num_gallery).to(scores.device)
        best = rows.masked_fill(~mask, float("-inf")).argmax(dim=1)  # first maximum = the lower index among ties
        best = torch.where(mask.any(dim=1), best, torch.full_like(best, -1))
        outputs.append(tuple(t.cpu() for t in (order, rows.gather(1, order).float(), mask.gather(1, order), best)))
    return TopK(*(torch.cat(parts) for parts in zip(*outputs)))
