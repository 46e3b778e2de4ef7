"""The headline metric names of each evaluation protocol, in one place (a leaf module: no torch, nothing from xsearch).

Each protocol of :data:`~xsearch.registry.PROTOCOLS` (:mod:`xsearch.evaluation.protocol`) carries its
:class:`Headline` from :data:`HEADLINES` (same name); the command line's one-line summary after a test and the
leaderboard's columns read them here, so the results, leaderboard and report modules never import torch.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    """What summaries show of one protocol's metrics (the results store keeps every metric).

    Attributes:
        columns: leaderboard columns, in order, shown when a dataset's runs have them.
        summary: the ones printed on the line after a test (``xsearch test``), in order.
        per_embedding: the metrics are named ``<embedding>/<metric>``, one set per embedding the method returns
            (``fused/TAR@FAR=0.001``): ``columns`` and ``summary`` name the ``<metric>`` part.
    """

    columns: tuple[str, ...]
    summary: tuple[str, ...] = ()
    per_embedding: bool = False


HEADLINES: dict[str, Headline] = {
    "identity_retrieval": Headline(columns=("R1", "R5", "R10", "mAP", "mINP", "R50", "i2t_R1"),
                                   summary=("R1", "R5", "R10", "mAP", "mINP")),
    "entity_retrieval": Headline(columns=("entity_R@1", "entity_R@10", "kmin_R@10", "mAP@10"),
                                 summary=("entity_R@10", "kmin_R@10", "mAP@10")),
    "face_verification": Headline(columns=("TAR@FAR=0.001", "EER", "Acc", "Rank1"), per_embedding=True),
}
"""Protocol name -> its headline; the order is the leaderboard's column order (identity retrieval first)."""

DEFAULT_METRICS: tuple[str, ...] = HEADLINES["identity_retrieval"].summary
"""The columns of a table none of whose runs has a headline metric."""


def summary_metrics(metrics: Iterable[str]) -> list[str]:
    """The names of ``metrics`` that the line after a test shows, in protocol order."""
    present = set(metrics)
    return [name for headline in HEADLINES.values() if not headline.per_embedding
            for name in headline.summary if name in present]


def table_metrics(metrics: Iterable[str]) -> list[str]:
    """A leaderboard table's columns for runs that have ``metrics``: the headline columns present, protocol by
    protocol, then each per-embedding protocol's columns per embedding (``fused/TAR@FAR=0.001``...)."""
    present = dict.fromkeys(metrics)
    names = [name for headline in HEADLINES.values() if not headline.per_embedding
             for name in headline.columns if name in present]
    for headline in HEADLINES.values():
        if headline.per_embedding:
            embeddings = dict.fromkeys(k.split("/")[0] for k in present if "/" in k and k.split("/", 1)[1] in headline.columns)
            names += [f"{e}/{m}" for e in embeddings for m in headline.columns if f"{e}/{m}" in present]
    return names
