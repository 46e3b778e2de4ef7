"""Id-CLIP's entity-retrieval metrics, as the authors define them.

One query per identity (an identity-only prompt such as "An image with [TOK]."); every gallery image of that
identity is relevant (``n_rel`` of them). With ``hits@K`` = relevant images among the first K:

* ``entity_R@K`` = hits@K / n_rel (recall of the identity's images);
* ``kmin_R@K`` = hits@K / min(K, n_rel) (1 when the first K are all relevant, or all n_rel are in them);
* ``mAP@10`` = (sum of precision@p over the relevant ranks p <= 10) / 10, always divided by 10 (not by the
  number of relevant images: an identity with 3 images scores at most 0.3).

All x100 and averaged over queries. Ranking: descending score, ties to the lower gallery index (the shared
evaluator's rule). A query whose identity has no gallery image is an error naming how many there are.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["entity_metrics"]


def entity_metrics(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor,
                   ks: Sequence[int] = (1, 5, 10, 50)) -> dict[str, float]:
    """``(Q, G)`` scores, ``(Q,)`` / ``(G,)`` identities -> ``{"entity_R@K", "kmin_R@K", "mAP@10"}`` in percent."""
    similarity = torch.as_tensor(similarity).float()
    query_pids, gallery_pids = torch.as_tensor(query_pids), torch.as_tensor(gallery_pids)
    if similarity.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"similarity must be (Q, G) = ({len(query_pids)}, {len(gallery_pids)}), got {tuple(similarity.shape)}")
    relevant = query_pids[:, None] == gallery_pids[None, :]  # (Q, G)
    n_rel = relevant.sum(1)
    if bool((n_rel == 0).any()):
        raise ValueError(f"{int((n_rel == 0).sum())} of {len(query_pids)} entity queries have no image of their identity in the gallery")
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices  # ties: lower gallery index first
    hits = relevant.gather(1, order).float()  # (Q, G) relevance in ranked order
    cumulative = hits.cumsum(1)
    metrics: dict[str, float] = {}
    for k in ks:
        found = cumulative[:, min(k, hits.shape[1]) - 1]
        metrics[f"entity_R@{k}"] = 100.0 * float((found / n_rel).mean())
        metrics[f"kmin_R@{k}"] = 100.0 * float((found / n_rel.clamp(max=k)).mean())
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float32)
    top = min(10, hits.shape[1])
    precision = cumulative[:, :top] / ranks[:top]
    metrics["mAP@10"] = 100.0 * float(((precision * hits[:, :top]).sum(1) / 10.0).mean())
    return metrics

