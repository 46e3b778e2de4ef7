"""Id-CLIP entity metrics against a plain per-query loop and a hand-worked case."""
from __future__ import annotations

import pytest
import torch

from xsearch.evaluation.entity import entity_metrics


def _loop(similarity, query_pids, gallery_pids, ks):
    out = {f"entity_R@{k}": 0.0 for k in ks} | {f"kmin_R@{k}": 0.0 for k in ks} | {"mAP@10": 0.0}
    for row, pid in zip(similarity.tolist(), query_pids.tolist()):
        ranked = sorted(range(len(row)), key=lambda j: (-row[j], j))  # ties: lower index first
        rel = [gallery_pids[j].item() == pid for j in ranked]
        n_rel = sum(rel)
        for k in ks:
            hits = sum(rel[:k])
            out[f"entity_R@{k}"] += hits / n_rel
            out[f"kmin_R@{k}"] += hits / min(k, n_rel)
        out["mAP@10"] += sum(sum(rel[: p + 1]) / (p + 1) for p in range(min(10, len(rel))) if rel[p]) / 10
    return {k: 100 * v / len(query_pids) for k, v in out.items()}


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 1)])
def test_entity_metrics_equal_a_loop(seed, decimals):
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.randint(0, 6, (40,), generator=generator)
    query_pids = torch.unique(gallery_pids)
    similarity = torch.randn(len(query_pids), 40, generator=generator)
    if decimals is not None:
        similarity = torch.round(similarity, decimals=decimals)  # ties
    got = entity_metrics(similarity, query_pids, gallery_pids, ks=(1, 5, 10, 50))
    assert got == pytest.approx(_loop(similarity, query_pids, gallery_pids, (1, 5, 10, 50)))


def test_hand_worked_case():
    # one query, identity 7 has 3 images at gallery positions 1, 3, 4; ranking = 1, 0, 3, 2, 4
    similarity = torch.tensor([[0.8, 0.9, 0.1, 0.5, 0.0]])
    got = entity_metrics(similarity, torch.tensor([7]), torch.tensor([2, 7, 2, 7, 7]), ks=(1, 2, 5))
    assert got["entity_R@1"] == pytest.approx(100 / 3) and got["kmin_R@1"] == pytest.approx(100.0)
    assert got["entity_R@2"] == pytest.approx(100 / 3) and got["kmin_R@2"] == pytest.approx(50.0)
    assert got["entity_R@5"] == pytest.approx(100.0) and got["kmin_R@5"] == pytest.approx(100.0)
    assert got["mAP@10"] == pytest.approx(100 * (1 / 1 + 2 / 3 + 3 / 5) / 10)  # always divided by 10


def test_a_query_without_images_is_an_error():
    with pytest.raises(ValueError, match="1 of 2 entity queries have no image of their identity in the gallery"):
        entity_metrics(torch.zeros(2, 3), torch.tensor([1, 9]), torch.tensor([1, 1, 2]))
