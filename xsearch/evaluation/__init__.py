"""Evaluation: exact retrieval metrics (R@K, mAP, mINP), a distributed torchmetrics wrapper, the composed-query
protocol, the streaming evaluator for large galleries (:mod:`xsearch.evaluation.streaming`), face
verification / identification metrics (:mod:`xsearch.evaluation.verification`), and the evaluation protocols as
objects (:mod:`xsearch.evaluation.protocol`) that a split's :class:`~xsearch.evaluation.suite.EvaluationSuite` runs."""

from xsearch.evaluation.composed import QueryRelevance, composed_relevance, relevance_metrics
from xsearch.evaluation.entity import EntityRetrieval
from xsearch.evaluation.identity import IdentityRetrieval
from xsearch.evaluation.metric import GatheredEmbeddings, RetrievalMetric, deduplicate_by_index
from xsearch.evaluation.retrieval import (
    PerQueryMetrics,
    PositiveLists,
    bidirectional_metrics,
    cosine_similarity,
    full_precision_matmul,
    ranked_positives_per_query,
    retrieval_metrics,
    retrieval_metrics_per_query,
    summarize_per_query,
)
from xsearch.evaluation.protocol import ROLES, EvaluationProtocol, RankedLists
from xsearch.evaluation.streaming import streaming_per_query, streaming_retrieval_metrics
from xsearch.evaluation.suite import EvaluationSuite
from xsearch.evaluation.verification import FaceVerification

__all__ = [
    "ROLES",
    "EntityRetrieval",
    "EvaluationProtocol",
    "EvaluationSuite",
    "FaceVerification",
    "GatheredEmbeddings",
    "IdentityRetrieval",
    "PerQueryMetrics",
    "PositiveLists",
    "QueryRelevance",
    "RankedLists",
    "RetrievalMetric",
    "bidirectional_metrics",
    "composed_relevance",
    "cosine_similarity",
    "deduplicate_by_index",
    "full_precision_matmul",
    "ranked_positives_per_query",
    "relevance_metrics",
    "retrieval_metrics",
    "retrieval_metrics_per_query",
    "streaming_per_query",
    "streaming_retrieval_metrics",
    "summarize_per_query",
]
