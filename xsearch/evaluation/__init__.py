"""Evaluation: exact retrieval metrics (R@K, mAP, mINP) and a distributed torchmetrics wrapper."""

from xsearch.evaluation.metric import GatheredEmbeddings, RetrievalMetric, deduplicate_by_index
from xsearch.evaluation.retrieval import (
    PerQueryMetrics,
    bidirectional_metrics,
    cosine_similarity,
    full_precision_matmul,
    retrieval_metrics,
    retrieval_metrics_per_query,
    summarize_per_query,
)

__all__ = [
    "GatheredEmbeddings",
    "PerQueryMetrics",
    "RetrievalMetric",
    "bidirectional_metrics",
    "cosine_similarity",
    "deduplicate_by_index",
    "full_precision_matmul",
    "retrieval_metrics",
    "retrieval_metrics_per_query",
    "summarize_per_query",
]
