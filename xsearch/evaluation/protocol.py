"""Evaluation protocols as objects: what a split is evaluated by.

A protocol (:class:`EvaluationProtocol`, a torchmetrics ``Metric``) names the *roles* whose batches it reads (its
``inputs``: role -> dataset), takes their embeddings with :meth:`~EvaluationProtocol.update`, and turns them into
named metrics with :meth:`~EvaluationProtocol.compute`. The datamodule builds each split's protocols from its config
(:class:`~xsearch.evaluation.suite.EvaluationSuite`); a method only maps each role to one of its encoders
(``queries`` -> ``encode_queries``, ``gallery`` -> ``encode_gallery``, ``faces`` -> ``encode_faces``, ``entities`` ->
``encode_queries``) and logs what the protocols compute, so it knows none of them by name.

Implementations (registered in :data:`~xsearch.registry.PROTOCOLS`, each with its :data:`~xsearch.headlines.HEADLINES`
entry): :class:`~xsearch.evaluation.identity.IdentityRetrieval` (text -> gallery R@K / mAP / mINP, positives by pid or
explicit: composed queries, instance positives), :class:`~xsearch.evaluation.entity.EntityRetrieval` (Id-CLIP's
entity queries against the gallery) and :class:`~xsearch.evaluation.verification.FaceVerification` (pairs and rank-1
identification of every face embedding).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torchmetrics import Metric

from xsearch.evaluation.composed import QueryRelevance
from xsearch.evaluation.metric import GatheredEmbeddings
from xsearch.evaluation.retrieval import PerQueryMetrics
from xsearch.evaluation.topk import TopK
from xsearch.headlines import Headline

__all__ = ["ROLES", "EvaluationProtocol", "RankedLists", "single_process"]

ROLES: tuple[str, ...] = ("queries", "gallery", "faces", "entities")
"""What an evaluation loader holds: text (or composed) queries, gallery images, face samples (image + caption),
entity queries (prompts + a face)."""

SimilarityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RankedLists:
    """Every query's ranked gallery, as a protocol that ranks a gallery for text queries computed it: what
    ``test_rankings.npz`` (:func:`xsearch.rankings.query_rankings`) and the ranked-list picture show.

    Attributes:
        top: each query's top-k. gathered: the deduplicated embeddings, pids and indexes (rows and columns).
        per_query: the per-query ranks and APs its numbers average. relevance: explicit positives (``None``: by pid).
        query_texts: query index -> text. gallery_paths: gallery image index -> file.
    """

    top: TopK
    gathered: GatheredEmbeddings
    per_query: PerQueryMetrics
    relevance: QueryRelevance | None
    query_texts: Mapping[int, str]
    gallery_paths: Mapping[int, Path]


def single_process(what: str) -> None:
    """Raise when running distributed: ``what`` is evaluated from this process's samples only."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise NotImplementedError(f"{what} is evaluated in one process; run validate/test with trainer.devices=1")


class EvaluationProtocol(Metric):
    """One evaluation protocol of a split (torchmetrics' shape: ``update`` per batch, ``compute``, ``reset``).

    Subclasses set :attr:`headline` (:data:`~xsearch.headlines.HEADLINES`) and register in
    :data:`~xsearch.registry.PROTOCOLS` under the same name.

    Args:
        inputs: role (:data:`ROLES`) -> the dataset its loader iterates (``None``: loaders given by the caller). Two
            protocols of a suite that read the same dataset in the same role share its loader, encoded once.
    """

    headline: ClassVar[Headline]
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, inputs: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if unknown := sorted(set(inputs) - set(ROLES)):
            raise ValueError(f"unknown evaluation roles {unknown}; known: {ROLES}")
        self.inputs = dict(inputs)
        self.ks: tuple[int, ...] = (1, 5, 10)
        self.similarity_fn: SimilarityFn | None = None
        self.top_k = 0

    def configure(self, ks: Sequence[int], similarity_fn: SimilarityFn, top_k: int = 0) -> None:
        """The method's choices, before an evaluation: its R@K cut-offs, its ``(Q, D), (G, D) -> (Q, G)`` score, and
        how many ranked results per query to keep (:meth:`ranked_lists`, 0: none)."""
        self.ks, self.similarity_fn, self.top_k = tuple(ks), similarity_fn, top_k

    def update(self, role: str, embeddings: Any, batch: dict[str, Any]) -> None:
        """Take the embeddings of one batch of ``role`` (the encoder's output: a tensor, or named tensors for faces)."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Metric name -> value (logged as ``<split>/<name>``)."""
        raise NotImplementedError

    def report(self, metrics: dict[str, float]) -> str | None:
        """Text printed after a test besides the logged numbers (``None``: nothing)."""
        return None

    def ranked_lists(self) -> RankedLists | None:
        """The per-query rankings of the last :meth:`compute`, for protocols that rank a gallery per text query and
        were configured with ``top_k``; ``None`` otherwise."""
        return None
