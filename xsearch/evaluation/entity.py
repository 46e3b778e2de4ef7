"""Id-CLIP's entity-retrieval metrics, as the authors define them.

One query per identity (an identity-only prompt such as "An image with [TOK]."); every gallery image of that
identity is relevant (``n_rel`` of them). With ``hits@K`` = relevant images among the first K:

* ``entity_R@K`` = hits@K / n_rel (recall of the identity's images);
* ``kmin_R@K`` = hits@K / min(K, n_rel) (1 when the first K are all relevant, or all n_rel are in them);
* ``mAP@10`` = (sum of precision@p over the relevant ranks p <= 10) / 10, always divided by 10 (not by the
  number of relevant images: an identity with 3 images scores at most 0.3).

All x100 and averaged over queries. Ranking: descending score, ties to the lower gallery index (the shared
evaluator's rule). A query whose identity has no gallery image is an error naming how many there are.

:class:`EntityRetrieval` is the protocol: the entity queries against the split's gallery, the query faces' own images
left out.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch

from xsearch.evaluation.metric import deduplicate_by_index
from xsearch.evaluation.protocol import EvaluationProtocol, single_process
from xsearch.headlines import HEADLINES
from xsearch.registry import PROTOCOLS

__all__ = ["EntityRetrieval", "entity_metrics"]


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



@PROTOCOLS.register("entity_retrieval")
class EntityRetrieval(EvaluationProtocol):
    """Id-CLIP's entity retrieval (:func:`entity_metrics`): the entity queries (role ``entities``, encoded as queries)
    rank the gallery (role ``gallery``, the identity protocol's, encoded once) without the ``excluded`` images (the
    held-out query faces). Evaluated in one process.

    Args:
        queries: the entity query set. gallery: the split's gallery set. excluded: gallery image indexes left out.
    """

    headline = HEADLINES["entity_retrieval"]

    def __init__(self, queries: Any, gallery: Any, excluded: Collection[int]) -> None:
        super().__init__({"entities": queries, "gallery": gallery})
        self.excluded = excluded
        self._queries: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._gallery: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, role: str, embeddings: Any, batch: dict[str, Any]) -> None:
        if role == "entities":
            self._queries.append((embeddings.detach().float().cpu(), torch.as_tensor(batch["pid"]).cpu()))
        else:
            embeddings = embeddings.detach().float()
            self._gallery.append((embeddings, torch.as_tensor(batch["pid"], device=embeddings.device).reshape(-1).long(),
                                  torch.as_tensor(batch["index"], device=embeddings.device).reshape(-1).long()))

    def compute(self) -> dict[str, float]:
        if not self._queries:
            return {}
        single_process("entity retrieval")
        gallery, gallery_pids, gallery_indexes = deduplicate_by_index(*(torch.cat(part) for part in zip(*self._gallery)))
        keep = torch.tensor([int(i) not in self.excluded for i in gallery_indexes.tolist()], dtype=torch.bool)
        queries = torch.cat([q for q, _ in self._queries])
        pids = torch.cat([p for _, p in self._queries])
        gallery = gallery[keep.to(gallery.device)]
        similarity = self.similarity_fn(queries.to(gallery.device), gallery)
        return entity_metrics(similarity.cpu(), pids, gallery_pids.cpu()[keep], self.ks)

    def reset(self) -> None:
        super().reset()
        self._queries, self._gallery = [], []
