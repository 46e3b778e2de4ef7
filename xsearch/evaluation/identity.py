"""The identity-retrieval protocol: text (or composed) queries rank the gallery; R@K, mAP, mINP both ways."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xsearch.evaluation.composed import QueryRelevance
from xsearch.evaluation.metric import RetrievalMetric
from xsearch.evaluation.protocol import EvaluationProtocol, RankedLists, SimilarityFn
from xsearch.headlines import HEADLINES
from xsearch.registry import PROTOCOLS

__all__ = ["IdentityRetrieval"]


@PROTOCOLS.register("identity_retrieval")
class IdentityRetrieval(EvaluationProtocol):
    """Queries (role ``queries``) against the gallery (role ``gallery``) through a
    :class:`~xsearch.evaluation.RetrievalMetric` (gathered from every rank): ``R{k}``, ``mAP``, ``mINP``, the
    image-to-text ``i2t_*`` ones, and ``rsum`` = the sum of the text-to-image R@K (Id-CLIP's selection rule:
    ``checkpoint.monitor: val/rsum``).

    Args:
        queries, gallery: the datasets of the two roles (``None``: loaders given by the caller); for the ranked
            lists, ``queries.captions`` (``.index``, ``.text``) and ``gallery.images`` (``.index``, ``.path``).
        relevance: explicit positives by dataset index (composed queries, instance positives); ``None``: every
            gallery image of the query's pid.
    """

    headline = HEADLINES["identity_retrieval"]

    def __init__(self, queries: Any = None, gallery: Any = None, relevance: QueryRelevance | None = None) -> None:
        super().__init__({"queries": queries, "gallery": gallery})
        self.relevance = relevance
        self.metric = RetrievalMetric()

    def configure(self, ks: Sequence[int], similarity_fn: SimilarityFn, top_k: int = 0) -> None:
        super().configure(ks, similarity_fn, top_k)
        self.metric = RetrievalMetric(ks=ks, similarity_fn=similarity_fn, top_k=top_k).to(self.device)
        self.metric.relevance = self.relevance

    def update(self, role: str, embeddings: Any, batch: dict[str, Any]) -> None:
        add = self.metric.update_queries if role == "queries" else self.metric.update_gallery
        add(embeddings.float(), batch["pid"], batch["index"])

    def compute(self) -> dict[str, float]:
        values = self.metric.compute()
        values["rsum"] = sum(float(values[f"R{k}"]) for k in self.metric.ks)
        return values

    def reset(self) -> None:
        super().reset()
        self.metric.reset()

    def ranked_lists(self) -> RankedLists | None:
        queries, gallery = self.inputs["queries"], self.inputs["gallery"]
        if not self.metric.top_k or queries is None or gallery is None:
            return None
        return RankedLists(self.metric.top(), self.metric.gathered(), self.metric.per_query(), self.relevance,
                           {c.index: c.text for c in queries.captions}, {r.index: r.path for r in gallery.images})
