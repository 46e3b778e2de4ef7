"""Tests of xsearch.evaluation: exact metrics vs a brute-force reference, chunking, ties, the Metric."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch

from xsearch.evaluation import (
    RetrievalMetric,
    bidirectional_metrics,
    cosine_similarity,
    deduplicate_by_index,
    full_precision_matmul,
    retrieval_metrics,
    retrieval_metrics_per_query,
)
from xsearch.evaluation import retrieval as retrieval_module

KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def reference_per_query(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor):
    """Brute force: Python's stable sort on (-score, index), then walk the ranked list."""
    scores, qp, gp = similarity.tolist(), query_pids.tolist(), gallery_pids.tolist()
    results = []
    for row, pid in zip(scores, qp):
        ranked = sorted(range(len(row)), key=lambda j: (-row[j], j))
        positions = [p + 1 for p, j in enumerate(ranked) if gp[j] == pid]
        if not positions:
            results.append(None)
            continue
        n = len(positions)
        ap = sum((i + 1) / p for i, p in enumerate(positions)) / n
        results.append((positions[0], positions[-1], ap, n / positions[-1]))
    return results


def reference_metrics(similarity, query_pids, gallery_pids, ks=(1, 5, 10), skip_missing=False):
    per_query = [r for r in reference_per_query(similarity, query_pids, gallery_pids) if r is not None]
    assert skip_missing or len(per_query) == len(query_pids)
    out = {f"R{k}": 100.0 * sum(r[0] <= k for r in per_query) / len(per_query) for k in ks}
    out["mAP"] = 100.0 * sum(r[2] for r in per_query) / len(per_query)
    out["mINP"] = 100.0 * sum(r[3] for r in per_query) / len(per_query)
    return out


def assert_metrics_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], abs=1e-9), key


def random_problem(seed: int, num_queries: int, num_gallery: int, num_ids: int, decimals: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.randint(0, num_ids, (num_gallery,), generator=generator)
    query_pids = gallery_pids[torch.randint(0, num_gallery, (num_queries,), generator=generator)]
    similarity = torch.randn(num_queries, num_gallery, generator=generator)
    similarity += 1.5 * (query_pids[:, None] == gallery_pids[None, :])
    if decimals is not None:
        similarity = torch.round(similarity, decimals=decimals)
    return similarity, query_pids, gallery_pids


# --- exactness against the brute-force reference ---------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_matches_reference(seed: int) -> None:
    similarity, qp, gp = random_problem(seed, 37, 53, 9)
    assert_metrics_equal(retrieval_metrics(similarity, qp, gp), reference_metrics(similarity, qp, gp))


@pytest.mark.parametrize("seed", range(3))
def test_heavy_ties_match_reference(seed: int) -> None:
    similarity, qp, gp = random_problem(seed, 40, 30, 5, decimals=0)
    # duplicated columns: identical scores for different gallery items, same and different pids
    similarity[:, 10:20] = similarity[:, 0:10]
    similarity = torch.round(similarity * 10) / 10
    assert_metrics_equal(retrieval_metrics(similarity, qp, gp), reference_metrics(similarity, qp, gp))


def test_all_scores_equal_ranks_by_index() -> None:
    similarity = torch.zeros(3, 6)
    gallery_pids = torch.tensor([0, 1, 2, 0, 1, 2])
    query_pids = torch.tensor([0, 1, 2])
    per_query = retrieval_metrics_per_query(similarity, query_pids, gallery_pids)
    assert per_query.first_positive_rank.tolist() == [1, 2, 3]
    assert per_query.last_positive_rank.tolist() == [4, 5, 6]


RANKING_PATHS = ("counted", "keyed", "dense", "binned", "sorted", "candidate")


def rank_with(name: str, similarity: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(C, P) positions of the positives by one of the evaluator's ranking paths."""
    if name == "sorted":
        return retrieval_module._sorted_ranks(similarity, positive_index)
    if name == "keyed":
        return retrieval_module._keyed_ranks(similarity, positive_index)
    if name == "candidate":  # however many the candidates
        share = retrieval_module._CANDIDATE_SHARE
        retrieval_module._CANDIDATE_SHARE = 0
        try:
            return retrieval_module._candidate_ranks(similarity, positive_index, valid)
        finally:
            retrieval_module._CANDIDATE_SHARE = share
    return getattr(retrieval_module, f"_{name}_ranks")(similarity, positive_index, valid)


def assert_path_matches_reference(
    name: str, similarity: torch.Tensor, qp: torch.Tensor, gp: torch.Tensor, label: str = ""
) -> None:
    """Every positive's position by ranking path ``name`` equals the brute-force one (queries with a positive)."""
    gallery_order, start, count = retrieval_module._positive_lists(qp, gp)
    keep = count > 0
    similarity, qp, start, count = similarity[keep], qp[keep], start[keep], count[keep]
    positive_index, valid = retrieval_module.padded_positives(gallery_order, start, count)
    ranks = rank_with(name, similarity, positive_index, valid)
    for q, row in enumerate(similarity.tolist()):
        ranked = sorted(range(len(row)), key=lambda j: (-row[j], j))
        expected = sorted(p + 1 for p, j in enumerate(ranked) if int(gp[j]) == int(qp[q]))
        assert sorted(ranks[q][valid[q]].tolist()) == expected, (name, label, q)


def adversarial_problems() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Small (Q, G) score matrices that defeat shortcuts: ties, deep and last positives, outliers, many positives."""
    generator = torch.Generator().manual_seed(31)
    problems = {}
    similarity, qp, gp = random_problem(7, 25, 40, 3, decimals=0)  # ~13 positives each, many ties
    problems["rounded, many positives"] = (similarity, qp, gp)
    similarity, qp, gp = random_problem(8, 30, 60, 12)
    duplicated = torch.cat([similarity, similarity[:, :20]], 1)
    problems["ties by duplicated columns"] = (duplicated, qp, torch.cat([gp, gp[:20]]))
    similarity, qp, gp = random_problem(9, 30, 60, 12)
    deep = torch.randn(30, 60, generator=generator) + 0.2 * (qp[:, None] == gp[None, :])
    problems["deep positives"] = (deep, qp, gp)
    last = torch.rand(30, 60, generator=generator)
    last[qp[:, None] == gp[None, :]] -= 2.0
    problems["all positives last"] = (last, qp, gp)
    tied_last = torch.rand(30, 60, generator=generator)
    tied_last[qp[:, None] == gp[None, :]] = 0.0
    tied_last[:, ::3] = 0.0  # every positive tied with many negatives, some before it and some after
    problems["positives tied with negatives"] = (tied_last, qp, gp)
    problems["constant scores"] = (torch.zeros(30, 60), qp, gp)
    signed_zero = torch.round(torch.randn(30, 60, generator=generator))
    signed_zero[signed_zero == 0] = -0.0
    signed_zero[:, ::2] = signed_zero[:, ::2].abs()  # -0.0 and +0.0 tie
    problems["signed zeros"] = (signed_zero, qp, gp)
    outlier = torch.randn(30, 60, generator=generator)
    outlier[:, 5], outlier[:, 50] = 1e30, -1e30
    problems["outliers"] = (outlier, qp, gp)
    infinite = torch.round(torch.randn(30, 60, generator=generator))
    infinite[:, ::4], infinite[:, 1::7] = float("inf"), -float("inf")
    problems["infinite scores"] = (infinite, qp, gp)
    problems["subnormal scores"] = (torch.randn(30, 60, generator=generator) * 1e-42, qp, gp)
    many_qp = torch.randint(0, 2, (12,), generator=generator)
    many_gp = torch.randint(0, 2, (120,), generator=generator)
    many = torch.round(torch.randn(12, 120, generator=generator) * 3)
    many[0, :] = 0.5  # a constant row
    problems["many positives, ties"] = (many, many_qp, many_gp)
    return problems


@pytest.mark.parametrize("name", RANKING_PATHS)
def test_each_ranking_path_matches_reference(name: str) -> None:
    for problem, (similarity, qp, gp) in adversarial_problems().items():
        assert_path_matches_reference(name, similarity, qp, gp, problem)


@pytest.mark.parametrize("name", ["counted", "dense", "binned"])
def test_each_ranking_path_on_float64(name: str) -> None:
    similarity, qp, gp = random_problem(12, 20, 35, 3, decimals=1)
    similarity = similarity.double()
    similarity[:, 3] = similarity[:, 4] + 1e-12  # equal in fp32, not in fp64
    assert_path_matches_reference(name, similarity, qp, gp)


def test_binned_conflicts_zooms_and_fallback_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few bins: bins hold positives of different scores (conflicts), crowded ones are re-binned, and after
    the last re-binning counted densely; every route stays exact."""
    calls: dict[str, int] = {}

    def spy(function_name: str):
        original = getattr(retrieval_module, function_name)

        def wrapper(*args, **kwargs):
            calls[function_name] = calls.get(function_name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(retrieval_module, function_name, wrapper)

    for function_name in ("_earlier_ties", "_resolve_conflicts", "_dense_ranks", "_binned_ranks"):
        spy(function_name)
    monkeypatch.setattr(retrieval_module, "_BIN_DIVISOR", 64)  # 16 bins
    monkeypatch.setattr(retrieval_module, "_HEAVY_GROUP_SHARE", 0.0)  # any crowded conflict bin is re-binned
    generator = torch.Generator().manual_seed(3)
    exponential = torch.exp(torch.randn(20, 150, generator=generator) * 30)  # scores spread over many decades
    qp, gp = torch.randint(0, 2, (20,), generator=generator), torch.randint(0, 2, (150,), generator=generator)
    for similarity in (exponential, torch.round(torch.randn(20, 150, generator=generator) * 4)):
        assert_path_matches_reference("binned", similarity, qp, gp)
    assert calls["_binned_ranks"] > 1 and calls["_resolve_conflicts"] and calls["_earlier_ties"]
    assert calls["_dense_ranks"]  # a crowded conflict bin still crowded after the last re-binning


@pytest.mark.parametrize("dense_max", [0, 10**6])
def test_metrics_match_reference_on_adversarial_problems(dense_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The public evaluator, all queries through the histogram path (0) or the counting path (10**6)."""
    monkeypatch.setattr(retrieval_module, "_DENSE_MAX_POSITIVES", dense_max)
    monkeypatch.setattr(retrieval_module, "_SORT_FALLBACK_POSITIVES", 10**6)
    monkeypatch.setattr(retrieval_module, "_CANDIDATE_SHARE", 10**9)  # no shortcut: the path under test
    for problem, (similarity, qp, gp) in adversarial_problems().items():
        per_query = retrieval_metrics_per_query(similarity, qp, gp)
        for q, expected in enumerate(reference_per_query(similarity, qp, gp)):
            if expected is None:
                assert int(per_query.first_positive_rank[q]) == 0, problem
                continue
            first, last, ap, inp = expected
            positions = (int(per_query.first_positive_rank[q]), int(per_query.last_positive_rank[q]))
            assert positions == (first, last), problem
            assert float(per_query.average_precision[q]) == pytest.approx(ap, abs=1e-12), problem
            assert float(per_query.inverse_negative_penalty[q]) == pytest.approx(inp, abs=1e-12), problem


def test_positive_ranked_last_on_every_path() -> None:
    similarity = torch.arange(20.0).repeat(2, 1)  # the only positive scores lowest: every item precedes it
    positive_index = torch.tensor([[0], [0]])
    valid = torch.ones(2, 1, dtype=torch.bool)
    for name in RANKING_PATHS:
        assert rank_with(name, similarity, positive_index, valid).tolist() == [[20], [20]]
    assert retrieval_module._candidate_ranks(similarity, positive_index, valid) is None  # every item a candidate


@pytest.mark.parametrize("share", [0, 10**9])
def test_candidate_shortcut_on_or_off_gives_the_same_metrics(share: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrieval_module, "_CANDIDATE_SHARE", share)  # 0: always taken; 10**9: never
    for problem, (similarity, qp, gp) in adversarial_problems().items():
        reference = reference_metrics(similarity, qp, gp, skip_missing=True)
        assert_metrics_equal(retrieval_metrics(similarity, qp, gp, on_missing="skip"), reference)


def test_many_positives_use_sort_fallback_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrieval_module, "_SORT_FALLBACK_POSITIVES", 32)
    similarity, qp, gp = random_problem(3, 12, 200, 2, decimals=1)  # ~100 positives per query
    assert int(retrieval_module._positive_lists(qp, gp)[2].max()) > retrieval_module._SORT_FALLBACK_POSITIVES
    assert_metrics_equal(retrieval_metrics(similarity, qp, gp), reference_metrics(similarity, qp, gp))


def test_per_query_values_match_reference() -> None:
    similarity, qp, gp = random_problem(11, 30, 45, 8, decimals=1)
    per_query = retrieval_metrics_per_query(similarity, qp, gp)
    for q, (first, last, ap, inp) in enumerate(reference_per_query(similarity, qp, gp)):
        assert int(per_query.first_positive_rank[q]) == first
        assert int(per_query.last_positive_rank[q]) == last
        assert float(per_query.average_precision[q]) == pytest.approx(ap, abs=1e-12)
        assert float(per_query.inverse_negative_penalty[q]) == pytest.approx(inp, abs=1e-12)


def test_hand_computed_case() -> None:
    # Query 0 (pid 7): order by score is g1 (0.9, pid 7), g0 (0.5, pid 3), g2 (0.5, pid 7; tie with g0,
    # lower index g0 goes first), g3 (0.1, pid 3). Positives at positions 1 and 3.
    #   AP = (1/1 + 2/3) / 2 = 5/6; INP = 2/3; first hit at 1.
    # Query 1 (pid 3): order g3 (0.8, pid 3), g0 (0.4, pid 3)... no: scores [0.4, 0.7, 0.7, 0.2]:
    #   g1 (0.7, pid 7), g2 (0.7, pid 7), g0 (0.4, pid 3), g3 (0.2, pid 3). Positives at 3 and 4.
    #   AP = (1/3 + 2/4) / 2 = 5/12; INP = 2/4 = 1/2; first hit at 3.
    similarity = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.4, 0.7, 0.7, 0.2]])
    query_pids = torch.tensor([7, 3])
    gallery_pids = torch.tensor([3, 7, 7, 3])
    metrics = retrieval_metrics(similarity, query_pids, gallery_pids, ks=(1, 2, 3))
    assert metrics["R1"] == pytest.approx(50.0)
    assert metrics["R2"] == pytest.approx(50.0)
    assert metrics["R3"] == pytest.approx(100.0)
    assert metrics["mAP"] == pytest.approx(100 * (5 / 6 + 5 / 12) / 2)
    assert metrics["mINP"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_k_larger_than_gallery() -> None:
    similarity, qp, gp = random_problem(5, 10, 6, 3)
    metrics = retrieval_metrics(similarity, qp, gp, ks=(1, 6, 50))
    assert metrics["R50"] == 100.0 and metrics["R6"] == 100.0
    assert_metrics_equal(metrics, reference_metrics(similarity, qp, gp, ks=(1, 6, 50)))


def test_single_positive_and_all_positive_queries() -> None:
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(4, 8, generator=generator)
    gallery_pids = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])
    query_pids = torch.tensor([1, 1, 0, 0])  # one positive / seven of eight positives
    assert_metrics_equal(
        retrieval_metrics(similarity, query_pids, gallery_pids),
        reference_metrics(similarity, query_pids, gallery_pids),
    )
    everything = retrieval_metrics(similarity, torch.zeros(4, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    assert everything == {key: 100.0 for key in KEYS}


@pytest.mark.parametrize("chunk_size", [1, 3, 22, 23, 24, 1000, None])
def test_chunk_boundaries(chunk_size: int | None) -> None:
    similarity, qp, gp = random_problem(21, 23, 31, 6, decimals=1)
    expected = reference_metrics(similarity, qp, gp)
    assert_metrics_equal(retrieval_metrics(similarity, qp, gp, chunk_size=chunk_size), expected)


def test_small_working_set_and_copied_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    similarity, qp, gp = random_problem(8, 29, 41, 5, decimals=1)
    expected = reference_metrics(similarity, qp, gp)
    monkeypatch.setattr(retrieval_module, "_TARGET_BLOCK_ELEMENTS", 50)  # one row, positives blocked
    monkeypatch.setattr(retrieval_module, "_BLOCK_COPY_BYTES", 41 * 4 * 4)  # 4-row copied blocks
    monkeypatch.setattr(retrieval_module, "_COPY_TILE_COLUMNS", 16)  # copied 16 + 16 + 9 columns at a time
    monkeypatch.setattr(retrieval_module, "_DENSE_MAX_POSITIVES", 10**6)  # count every query densely
    monkeypatch.setattr(retrieval_module, "_CANDIDATE_SHARE", 10**9)
    assert_metrics_equal(retrieval_metrics(similarity.half().float().T.contiguous().T, qp, gp), expected)
    assert_metrics_equal(retrieval_metrics(similarity.T.contiguous().T, qp, gp), expected)


def test_dtypes_and_strided_input() -> None:
    similarity, qp, gp = random_problem(9, 20, 30, 4)
    half = similarity.half()
    expected = reference_metrics(half.float(), qp, gp)
    assert_metrics_equal(retrieval_metrics(half, qp, gp), expected)
    assert_metrics_equal(retrieval_metrics(half.bfloat16(), qp, gp), reference_metrics(half.bfloat16().float(), qp, gp))
    assert_metrics_equal(retrieval_metrics(similarity.double(), qp, gp), reference_metrics(similarity, qp, gp))
    transposed = similarity.T.contiguous()
    assert_metrics_equal(retrieval_metrics(transposed.T, qp, gp), reference_metrics(similarity, qp, gp))


def test_float64_is_not_downcast() -> None:
    similarity = torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)  # equal in fp32, not in fp64
    per_query = retrieval_metrics_per_query(similarity, torch.tensor([0]), torch.tensor([0, 1]))
    assert int(per_query.first_positive_rank[0]) == 2


def test_image_to_text_is_transpose() -> None:
    similarity, qp, gp = random_problem(13, 30, 20, 10)
    metrics = bidirectional_metrics(similarity, qp, gp, on_missing="skip")
    reverse = retrieval_metrics(similarity.T, gp, qp, on_missing="skip")
    assert_metrics_equal(reverse, reference_metrics(similarity.T.contiguous(), gp, qp, skip_missing=True))
    assert {key: metrics[f"i2t_{key}"] for key in KEYS} == reverse
    assert {key: metrics[key] for key in KEYS} == retrieval_metrics(similarity, qp, gp, on_missing="skip")


# --- missing positives and input checks -------------------------------------------------------------


def test_missing_positive_error_names_count() -> None:
    similarity = torch.randn(5, 4)
    query_pids = torch.tensor([0, 9, 1, 8, 7])
    gallery_pids = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"^3 of 5 queries have no positive in the gallery; pass on_missing='skip'"):
        retrieval_metrics(similarity, query_pids, gallery_pids)


def test_missing_positive_skip() -> None:
    similarity, qp, gp = random_problem(17, 20, 25, 5)
    qp = qp.clone()
    qp[[2, 5, 11]] = 99
    metrics = retrieval_metrics(similarity, qp, gp, on_missing="skip")
    keep = qp != 99
    assert_metrics_equal(metrics, reference_metrics(similarity[keep], qp[keep], gp))
    per_query = retrieval_metrics_per_query(similarity, qp, gp)
    assert per_query.has_positive.tolist() == keep.tolist()
    assert int(per_query.first_positive_rank[2]) == 0 and math.isnan(float(per_query.average_precision[2]))
    with pytest.raises(ValueError, match="4 of 4 queries"):
        retrieval_metrics(torch.randn(4, 3), torch.full((4,), 5), torch.zeros(3, dtype=torch.long), on_missing="skip")


def test_invalid_inputs() -> None:
    similarity = torch.randn(3, 4)
    qp, gp = torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="pids"):
        retrieval_metrics(similarity, qp[:2], gp)
    with pytest.raises(ValueError, match="on_missing"):
        retrieval_metrics(similarity, qp, gp, on_missing="zero")
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(similarity, qp, gp, ks=(0,))
    similarity[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(similarity, qp, gp)


def test_returns_exact_keys_as_floats() -> None:
    similarity, qp, gp = random_problem(1, 10, 12, 3)
    metrics = retrieval_metrics(similarity, qp, gp)
    assert tuple(metrics) == KEYS
    assert all(type(value) is float and 0.0 <= value <= 100.0 for value in metrics.values())


# --- similarity -------------------------------------------------------------------------------------


def test_cosine_similarity_is_fp32_for_low_precision_inputs() -> None:
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(5, 16, generator=generator).bfloat16()
    gallery = torch.randn(7, 16, generator=generator).half()
    similarity = cosine_similarity(queries, gallery)
    assert similarity.dtype == torch.float32 and similarity.shape == (5, 7)
    expected = torch.nn.functional.normalize(queries.double(), dim=1) @ torch.nn.functional.normalize(
        gallery.double(), dim=1
    ).T
    torch.testing.assert_close(similarity.double(), expected, atol=1e-6, rtol=0)
    assert cosine_similarity(queries.double(), gallery).dtype == torch.float64
    zero = cosine_similarity(torch.zeros(1, 16), gallery.float())
    assert torch.isfinite(zero).all() and (zero == 0).all()


def test_full_precision_matmul_restores_settings() -> None:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with full_precision_matmul():
            assert torch.get_float32_matmul_precision() in ("highest", "ieee") or not torch.is_autocast_enabled()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pass
        assert torch.get_float32_matmul_precision() == "high"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cosine_similarity(torch.randn(3, 8), torch.randn(4, 8))
        assert out.dtype == torch.float32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


# --- the torchmetrics Metric ------------------------------------------------------------------------


def embedding_problem(seed: int = 0, num_ids: int = 6, per_id: int = 3, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.arange(num_ids).repeat_interleave(per_id)
    query_pids = torch.arange(num_ids).repeat_interleave(2 * per_id)
    identity = torch.randn(num_ids, dim, generator=generator)
    gallery = identity[gallery_pids] + 0.8 * torch.randn(len(gallery_pids), dim, generator=generator)
    queries = identity[query_pids] + 0.8 * torch.randn(len(query_pids), dim, generator=generator)
    return queries, query_pids, gallery, gallery_pids


def test_metric_matches_functional() -> None:
    queries, qp, gallery, gp = embedding_problem()
    metric = RetrievalMetric()
    metric.update_queries(queries, qp, torch.arange(len(qp)))
    metric.update_gallery(gallery, gp, torch.arange(len(gp)))
    result = metric.compute()
    expected = bidirectional_metrics(cosine_similarity(queries, gallery), qp, gp)
    assert result == expected
    assert list(result) == [*KEYS, *(f"i2t_{key}" for key in KEYS)]
    assert metric.skipped_queries == {"t2i": 0, "i2t": 0}


def test_metric_dedupes_overlapping_shuffled_ranks() -> None:
    queries, qp, gallery, gp = embedding_problem(seed=1)
    reference = RetrievalMetric(image_to_text=False)
    reference.update_queries(queries, qp, torch.arange(len(qp)))
    reference.update_gallery(gallery, gp, torch.arange(len(gp)))
    expected = reference.compute()

    # two simulated ranks in DistributedSampler style (interleaved, padded with repeats), fed shuffled
    generator = torch.Generator().manual_seed(3)
    metric = RetrievalMetric(image_to_text=False)
    for embeddings, pids, update in ((queries, qp, metric.update_queries), (gallery, gp, metric.update_gallery)):
        count = len(pids)
        padded = torch.cat([torch.arange(count), torch.arange(3)])  # 3 duplicates pad the last batch
        for rank in (1, 0):
            indexes = padded[rank::2]
            indexes = indexes[torch.randperm(len(indexes), generator=generator)]
            for batch in indexes.split(4):
                update(embeddings[batch], pids[batch], batch)
    assert metric.compute() == expected
    gathered = metric.gathered()
    assert gathered.query_indexes.tolist() == list(range(len(qp)))
    assert gathered.gallery_indexes.tolist() == list(range(len(gp)))
    torch.testing.assert_close(gathered.query_embeddings, queries)
    torch.testing.assert_close(gathered.gallery_pids, gp)
    metric.reset()
    with pytest.raises(RuntimeError):
        metric.gathered()


def test_deduplicate_keeps_first_occurrence() -> None:
    embeddings = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    pids = torch.tensor([10, 20, 30, 40])
    indexes = torch.tensor([5, 2, 5, 1])
    kept_embeddings, kept_pids, kept_indexes = deduplicate_by_index(embeddings, pids, indexes)
    assert kept_indexes.tolist() == [1, 2, 5]
    assert kept_pids.tolist() == [40, 20, 10]
    assert kept_embeddings.squeeze(1).tolist() == [4.0, 2.0, 1.0]


def test_metric_custom_similarity_and_missing() -> None:
    queries, qp, gallery, gp = embedding_problem(seed=2)
    calls = []

    def dot(query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor) -> torch.Tensor:
        calls.append((query_embeddings.shape, gallery_embeddings.shape))
        return query_embeddings @ gallery_embeddings.T

    keep_gallery = gp != 0  # pid 0 has captions but no image: t2i misses, i2t is fine
    metric = RetrievalMetric(ks=(1, 3), similarity_fn=dot, on_missing="skip")
    metric.update_queries(queries, qp, torch.arange(len(qp)))
    metric.update_gallery(gallery[keep_gallery], gp[keep_gallery], torch.arange(int(keep_gallery.sum())))
    result = metric.compute()
    assert calls == [((len(qp), 8), (int(keep_gallery.sum()), 8))]
    assert set(result) == {"R1", "R3", "mAP", "mINP", "i2t_R1", "i2t_R3", "i2t_mAP", "i2t_mINP"}
    assert metric.skipped_queries == {"t2i": 6, "i2t": 0}
    strict = RetrievalMetric(on_missing="error")
    strict.update_queries(queries, qp, torch.arange(len(qp)))
    strict.update_gallery(gallery[keep_gallery], gp[keep_gallery], torch.arange(int(keep_gallery.sum())))
    with pytest.raises(ValueError, match="6 of 36 queries"):
        strict.compute()


def test_metric_requires_both_sides() -> None:
    metric = RetrievalMetric()
    metric.update_queries(torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="gallery"):
        metric.compute()
    with pytest.raises(ValueError, match="together"):
        metric.update(query_embeddings=torch.randn(2, 4))


# --- two-process gloo run ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, result_file: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        queries, qp, gallery, gp = embedding_problem(seed=4)
        metric = RetrievalMetric()
        for embeddings, pids, update in ((queries, qp, metric.update_queries), (gallery, gp, metric.update_gallery)):
            padded = torch.cat([torch.arange(len(pids)), torch.arange(1)])  # odd count: one repeat
            indexes = padded[rank::world_size]
            update(embeddings[indexes], pids[indexes], indexes)
        result = metric.compute()
        if rank == 0:
            torch.save({"metrics": result, "query_indexes": metric.gathered().query_indexes}, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 gloo processes (~15 s on 2 cores, mostly imports)
def test_metric_gloo_two_processes(tmp_path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo backend not available")
    result_file = str(tmp_path / "result.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), result_file), nprocs=2, join=True)
    gathered = torch.load(result_file)
    queries, qp, gallery, gp = embedding_problem(seed=4)
    expected = bidirectional_metrics(cosine_similarity(queries, gallery), qp, gp)
    assert gathered["metrics"] == pytest.approx(expected, abs=1e-12)
    assert gathered["query_indexes"].tolist() == list(range(len(qp)))


def test_thread_count_restored() -> None:
    before = torch.get_num_threads()
    similarity, qp, gp = random_problem(2, 10, 12, 3)
    retrieval_metrics(similarity, qp, gp)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [1, 3])
def test_chunks_in_worker_threads_match_reference_and_raise(threads: int) -> None:
    """torch's intra-op thread count sets how many worker threads take the chunks: same per-query results, and
    a worker's error reaches the caller."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        similarity, qp, gp = random_problem(5, 40, 50, 4, decimals=1)
        per_query = retrieval_metrics_per_query(similarity, qp, gp, chunk_size=3)  # 14 chunks
        for q, (first, last, ap, inp) in enumerate(reference_per_query(similarity, qp, gp)):
            assert (int(per_query.first_positive_rank[q]), int(per_query.last_positive_rank[q])) == (first, last)
            assert float(per_query.average_precision[q]) == pytest.approx(ap, abs=1e-12)
        with torch.inference_mode():  # as in Trainer.test: the workers write into inference tensors
            assert_metrics_equal(retrieval_metrics(similarity, qp, gp, chunk_size=3),
                                 reference_metrics(similarity, qp, gp))
        similarity[37, 5] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            retrieval_metrics(similarity, qp, gp, chunk_size=3)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
