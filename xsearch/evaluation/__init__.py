"""Evaluation: exact retrieval metrics (R@K, mAP, mINP), a distributed torchmetrics wrapper, the composed-query
protocol, the streaming evaluator for large galleries (:mod:`xsearch.evaluation.streaming`), and face
verification / identification metrics (:mod:`xsearch.evaluation.verification`)."""

from xsearch.evaluation.composed import QueryRelevance, composed_relevance, relevance_metrics
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
from xsearch.evaluation.streaming import streaming_per_query, streaming_retrieval_metrics

__all__ = [
    "GatheredEmbeddings",
    "PerQueryMetrics",
    "PositiveLists",
    "QueryRelevance",
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
