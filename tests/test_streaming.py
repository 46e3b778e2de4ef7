"""The streaming evaluator gives exactly the full-matrix metrics, ties included, within its memory budget."""
from __future__ import annotations

import pytest
import torch

from xsearch.evaluation.retrieval import PositiveLists, retrieval_metrics, retrieval_metrics_per_query
from xsearch.evaluation.streaming import streaming_per_query, streaming_retrieval_metrics


def _case(seed: int, queries: int, gallery: int, identities: int, integer: bool | str):
    generator = torch.Generator().manual_seed(seed)
    if integer == "useful":  # positives score high: few candidates, the sparse comparison path
        qp, gp = torch.randint(identities, (queries,), generator=generator), torch.randint(identities, (gallery,), generator=generator)
        centres = torch.randn(identities, 16, generator=generator)
        q = torch.nn.functional.normalize(centres[qp] + 0.3 * torch.randn(queries, 16, generator=generator), dim=1)
        g = torch.nn.functional.normalize(centres[gp] + 0.3 * torch.randn(gallery, 16, generator=generator), dim=1)
        return q, g, qp, gp
    if integer:  # small integers: every dot product exact in fp32, so many exact ties
        q = torch.randint(-2, 3, (queries, 6), generator=generator).float()
        g = torch.randint(-2, 3, (gallery, 6), generator=generator).float()
    else:
        q = torch.nn.functional.normalize(torch.randn(queries, 16, generator=generator), dim=1)
        g = torch.nn.functional.normalize(torch.randn(gallery, 16, generator=generator), dim=1)
    return q, g, torch.randint(identities, (queries,), generator=generator), torch.randint(identities, (gallery,), generator=generator)


@pytest.mark.parametrize("integer", [True, False, "useful"])
@pytest.mark.parametrize("memory_mb", [0.002, 0.05, 64.0])
def test_streaming_equals_the_full_matrix_evaluator_per_query(integer, memory_mb):
    q, g, qp, gp = _case(0, 70, 300, 25, integer)
    full = retrieval_metrics_per_query(q @ g.T, qp, gp)
    visits = [None, torch.randperm(300, generator=torch.Generator().manual_seed(3)), torch.argsort(gp, stable=True)]
    for visit in visits:  # the order the gallery is visited in changes the work, not the result
        streamed = streaming_per_query(q, g, PositiveLists.from_pids(qp, gp), memory_mb=memory_mb, visit=visit)
        for name in ("num_positives", "first_positive_rank", "last_positive_rank"):
            assert torch.equal(getattr(streamed, name), getattr(full, name)), name
        for name in ("average_precision", "inverse_negative_penalty"):
            assert torch.equal(getattr(streamed, name).isnan(), getattr(full, name).isnan())
            assert torch.allclose(getattr(streamed, name).nan_to_num(), getattr(full, name).nan_to_num(), rtol=0, atol=1e-12)


def test_streaming_metrics_match_with_identical_gallery_items_and_missing_positives():
    q, g, qp, gp = _case(1, 40, 120, 60, True)
    g[60:] = g[:60]  # exact duplicates: a positive tied with a negative is ranked by gallery index
    expected = retrieval_metrics(q @ g.T, qp, gp, ks=(1, 5, 200), on_missing="skip")
    assert streaming_retrieval_metrics(q, g, qp, gp, ks=(1, 5, 200), memory_mb=0.004, on_missing="skip") == expected
    with pytest.raises(ValueError, match="without any positive|no positive"):
        streaming_retrieval_metrics(q, g, qp, gp)


def test_hand_computed_ranks():
    # query 0 (pid 1): scores 0.5 (neg), 0.9 (pos), 0.5 (pos) -> positions 1 and 3 (the tie goes to the lower index)
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.5, 0.0], [0.9, 0.0], [0.5, 1.0]])
    result = streaming_per_query(q, g, PositiveLists.from_pids(torch.tensor([1]), torch.tensor([0, 1, 1])), memory_mb=1e-5)
    assert result.first_positive_rank.tolist() == [1] and result.last_positive_rank.tolist() == [3]
    assert result.average_precision.item() == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result.inverse_negative_penalty.item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("bad, message", [
    (dict(q=torch.zeros(2, 3), g=torch.zeros(4, 5)), r"expected non-empty \(Q, D\) queries and \(G, D\) gallery"),
    (dict(memory_mb=0), "memory_mb must be positive"),
    (dict(g=torch.full((4, 3), float("nan"))), "NaN similarities"),
])
def test_bad_input_is_named(bad, message):
    args = dict(q=torch.ones(2, 3), g=torch.ones(4, 3), memory_mb=1.0) | bad
    with pytest.raises(ValueError, match=message):
        streaming_retrieval_metrics(args["q"], args["g"], torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1]),
                                    memory_mb=args["memory_mb"])
