"""Composed-query protocol (X-Modal): reference face + modification text -> target face.

The protocol: docs/protocol.md#composed-queries.

A query is a reference image ``x_r`` of person ``p`` plus a sentence saying how the target ``x_t`` (another
image of ``p``) differs ("now with eyeglasses and without a hat"). The reference is removed from that
query's ranking; the positives are ``x_t`` and every other image of ``p`` that shows the target's values of
the changed attributes. Ranking, ties and the R@K / mAP / mINP definitions are the shared evaluator's
(:mod:`xsearch.evaluation.retrieval`): only who counts as a positive differs, so the numbers are computed
by the same exact code.

Relevance is given by dataset indexes (:class:`QueryRelevance`) and resolved against the gathered,
deduplicated query and gallery indexes when the metric is computed, so it works across ranks.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from xsearch.evaluation.retrieval import (PerQueryMetrics, PositiveLists, check_ks, ranked_positives_per_query,
                                         summarize_per_query)

__all__ = ["QueryRelevance", "composed_relevance", "relevance_metrics", "relevance_per_query"]


@dataclass(frozen=True)
class QueryRelevance:
    """Per query (by dataset index): its positives and the gallery items removed from its ranking.

    Attributes:
        positives: query index -> gallery (image) indexes that count as correct.
        excluded: query index -> gallery indexes the query must not see (its own reference image).
    """

    positives: Mapping[int, Sequence[int]]
    excluded: Mapping[int, Sequence[int]] = field(default_factory=dict)

    def resolve(
        self, query_indexes: torch.Tensor, gallery_indexes: torch.Tensor
    ) -> tuple[PositiveLists, tuple[torch.Tensor, torch.Tensor]]:
        """Dataset indexes -> positions in the (Q, G) similarity matrix.

        Args:
            query_indexes: (Q,) dataset indexes of the similarity rows.
            gallery_indexes: (G,) dataset indexes of the columns.

        Returns:
            positives as gallery positions, and the excluded cells as (rows, columns) int64 tensors.
            Gallery indexes that are not in the gallery are ignored (a subset was evaluated).
        """
        column = {int(g): j for j, g in enumerate(gallery_indexes.tolist())}
        positive_lists, rows, columns = [], [], []
        for row, query in enumerate(query_indexes.tolist()):
            if query not in self.positives:
                raise KeyError(f"query index {query} has no relevance entry (is the query set composed?)")
            positive_lists.append([column[g] for g in self.positives[query] if g in column])
            for g in self.excluded.get(query, ()):
                if g in column:
                    rows.append(row)
                    columns.append(column[g])
        device = gallery_indexes.device
        excluded = (torch.tensor(rows, dtype=torch.int64, device=device), torch.tensor(columns, dtype=torch.int64, device=device))
        return PositiveLists.from_lists(positive_lists, device), excluded


    def inverse(self, query_indexes: torch.Tensor, gallery_indexes: torch.Tensor) -> PositiveLists:
        """Image-to-text positives: for every gallery column, the query rows it is a positive of."""
        column = {int(g): j for j, g in enumerate(gallery_indexes.tolist())}
        lists: list[list[int]] = [[] for _ in column]
        for row, query in enumerate(query_indexes.tolist()):
            if query not in self.positives:
                raise KeyError(f"query index {query} has no relevance entry (is the query set composed?)")
            for g in self.positives[query]:
                if g in column:
                    lists[column[g]].append(row)
        return PositiveLists.from_lists(lists, gallery_indexes.device)


def relevance_metrics(
    similarity: torch.Tensor,
    positives: PositiveLists,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    on_missing: str = "error",
) -> dict[str, float]:
    """R@K, mAP, mINP (percent) with explicit positives and per-query excluded gallery items
    (:func:`relevance_per_query` averaged).

    Args:
        similarity: (Q, G) scores.
        positives: Q lists of gallery positions.
        excluded: (rows, columns) cells removed from the rankings.
    """
    ks = check_ks(ks)
    return summarize_per_query(relevance_per_query(similarity, positives, excluded), ks, on_missing)


def relevance_per_query(
    similarity: torch.Tensor,
    positives: PositiveLists,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PerQueryMetrics:
    """Per-query ranks, AP and INP with explicit positives and per-query excluded gallery items.

    An excluded item is scored ``-inf``: it then follows every finite score, so no positive's position
    changes, exactly as if it were removed from that query's gallery (an excluded positive is an error).

    Args:
        similarity: (Q, G) scores.
        positives: Q lists of gallery positions.
        excluded: (rows, columns) cells removed from the rankings.
    """
    return ranked_positives_per_query(excluded_scores(similarity, positives, excluded), positives)


def excluded_scores(
    similarity: torch.Tensor, positives: PositiveLists, excluded: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """(Q, G) ``similarity`` with the ``excluded`` (rows, columns) cells set to ``-inf`` (a copy when any is);
    ``ValueError`` when an excluded cell is a positive of its query."""
    if excluded is None or not excluded[0].numel():
        return similarity
    rows, columns = (t.to(similarity.device) for t in excluded)
    num_gallery = similarity.shape[1]
    owner = torch.repeat_interleave(torch.arange(len(positives.count), device=similarity.device), positives.count.to(similarity.device))
    positive_cells = owner * num_gallery + positives.gallery_order.to(similarity.device)
    if bool(torch.isin(rows * num_gallery + columns, positive_cells).any()):
        raise ValueError("an excluded gallery item is also a positive of the same query")
    similarity = similarity.to(torch.float64 if similarity.dtype == torch.float64 else torch.float32).clone()
    similarity[rows, columns] = float("-inf")
    return similarity


def composed_relevance(
    query_indexes: Sequence[int],
    references: Sequence[int],
    targets: Sequence[int],
    changed: Sequence[Sequence[int]],
    gallery_indexes: Sequence[int],
    gallery_pids: Sequence[int],
    gallery_attributes: np.ndarray,
) -> QueryRelevance:
    """Relevance of composed queries: the target, and every other image of its person with the target's
    values of the changed attributes; the reference is excluded.

    Args:
        query_indexes: (Q,) dataset indexes of the composed queries.
        references, targets: (Q,) gallery (image) indexes of each query's reference and target.
        changed: per query, the attribute columns whose value differs between reference and target.
        gallery_indexes: (G,) image indexes of the gallery. gallery_pids: (G,) their identities.
        gallery_attributes: (G, A) bool attribute values of the gallery images, rows in ``gallery_indexes`` order.
    """
    row_of = {int(g): i for i, g in enumerate(gallery_indexes)}
    by_pid: dict[int, list[int]] = {}
    for row, pid in enumerate(gallery_pids):
        by_pid.setdefault(int(pid), []).append(row)
    positives, excluded = {}, {}
    for query, reference, target, columns in zip(query_indexes, references, targets, changed):
        target_row = row_of[int(target)]
        columns = list(columns)
        wanted = gallery_attributes[target_row, columns]
        rows = [r for r in by_pid[int(gallery_pids[target_row])]
                if int(gallery_indexes[r]) != int(reference) and np.array_equal(gallery_attributes[r, columns], wanted)]
        positives[int(query)] = [int(gallery_indexes[r]) for r in rows]
        excluded[int(query)] = [int(reference)]
    return QueryRelevance(positives, excluded)
