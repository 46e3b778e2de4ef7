"""MNRL and X-Modal's difficulty-aware MNRL (xsearch.losses.mnrl).

The pid-free loss is checked against the real sentence-transformers ``MultipleNegativesRankingLoss``; everything
identity- or difficulty-related against hand-computed cases built from 2-D unit vectors at chosen angles (the
cosines are then ``cos(angle difference)``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking import (
    MultipleNegativesRankingLoss,
)
from torch import nn

from xsearch.losses import (
    EASY,
    HARD,
    LEVEL_NAMES,
    SEMI_HARD,
    DifficultyAwareLoss,
    DifficultyAwareMNRL,
    difficulty_aware_mnrl,
    difficulty_levels,
    multiple_negatives_ranking_loss,
)


def _unit(degrees: list[float], length: float = 1.0) -> torch.Tensor:
    """(len, 2) float64 vectors at the given angles (``length`` checks the normalisation inside the loss)."""
    rad = [math.radians(d) for d in degrees]
    return torch.tensor([[length * math.cos(r), length * math.sin(r)] for r in rad], dtype=torch.float64)


def _cos_deg(a: float, b: float) -> float:
    return math.cos(math.radians(a - b))


def _ce(logits: list[float], positives: list[int]) -> float:
    """``-(1/|P|) sum_{p in P} log softmax(logits)_p``."""
    log_z = math.log(sum(math.exp(v) for v in logits))
    return sum(log_z - logits[p] for p in positives) / len(positives)


def _st_loss(columns: list[torch.Tensor], scale: float, **kwargs: object) -> torch.Tensor:
    loss = MultipleNegativesRankingLoss(nn.Identity(), scale=scale, **kwargs)  # type: ignore[arg-type]
    return loss.compute_loss_from_embeddings(columns, labels=None)


SYMMETRIC = {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"}


# ---------------------------------------------------------------- equality with sentence-transformers


@pytest.mark.parametrize("num_negatives", [0, 1, 2])
@pytest.mark.parametrize("scale", [20.0, 50.0])
@pytest.mark.parametrize("hardness_mode", [None, "in_batch_negatives", "hard_negatives", "all_negatives"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_equals_sentence_transformers(num_negatives: int, scale: float, hardness_mode: str | None, symmetric: bool):
    gen = torch.Generator().manual_seed(100 * num_negatives + int(scale))
    columns = [torch.randn(6, 16, generator=gen, dtype=torch.float64) for _ in range(2 + num_negatives)]
    for k in range(1, len(columns)):  # positives and explicit negatives near their anchor: the negatives are hard
        columns[k] = columns[0] + columns[k]
    strength = 5.0 if hardness_mode is not None else 0.0
    expected = _st_loss(
        columns,
        scale,
        hardness_mode=hardness_mode,
        hardness_strength=strength,
        **(SYMMETRIC if symmetric else {}),
    )
    got = multiple_negatives_ranking_loss(
        columns[0],
        torch.cat(columns[1:]),
        scale=scale,
        hardness_mode=hardness_mode,  # type: ignore[arg-type]
        hardness_strength=strength,
        symmetric=symmetric,
    )
    assert got.shape == ()
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    if hardness_mode is not None and (num_negatives > 0 or hardness_mode != "hard_negatives"):
        plain = multiple_negatives_ranking_loss(columns[0], torch.cat(columns[1:]), scale=scale, symmetric=symmetric)
        assert abs(got.item() - plain.item()) > 1e-8  # the penalty is really applied


def test_equals_sentence_transformers_float32() -> None:
    gen = torch.Generator().manual_seed(7)
    columns = [torch.randn(8, 32, generator=gen) for _ in range(3)]
    expected = _st_loss(columns, 20.0, hardness_mode="all_negatives", hardness_strength=5.0)
    got = multiple_negatives_ranking_loss(
        columns[0], torch.cat(columns[1:]), hardness_mode="all_negatives", hardness_strength=5.0
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_gradients_match_sentence_transformers(symmetric: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    anchors, positives, negatives = (torch.randn(5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    kwargs = {"hardness_mode": "hard_negatives", "hardness_strength": 5.0}

    ours_anchors = anchors.clone().requires_grad_(True)
    multiple_negatives_ranking_loss(
        ours_anchors, torch.cat([positives, negatives]), scale=20.0, symmetric=symmetric, **kwargs
    ).backward()
    st_anchors = anchors.clone().requires_grad_(True)
    _st_loss([st_anchors, positives, negatives], 20.0, **kwargs, **(SYMMETRIC if symmetric else {})).backward()

    assert ours_anchors.grad is not None and st_anchors.grad is not None
    assert ours_anchors.grad.abs().max() > 1e-4
    torch.testing.assert_close(ours_anchors.grad, st_anchors.grad, atol=1e-9, rtol=1e-7)


def test_hardness_tail_rows_are_shared_negatives() -> None:
    # N = 2B + 1: rows B..2B-1 are the anchors' own negatives, the last row belongs to no anchor
    gen = torch.Generator().manual_seed(4)
    anchors, candidates = torch.randn(3, 8, generator=gen), torch.randn(7, 8, generator=gen)
    kwargs = {"hardness_strength": 5.0}
    with_tail = multiple_negatives_ranking_loss(anchors, candidates, hardness_mode="hard_negatives", **kwargs)
    # the tail row is never an own hard negative: hard_negatives with tail == the ST layout plus an unpenalised row
    cos = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).t()
    logits = 20.0 * cos + 5.0 * cos * torch.eye(3, 7).roll(3, dims=1)  # own negatives = columns i + 3
    expected = (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
    assert with_tail.item() == pytest.approx(expected.item(), abs=1e-5)
    # with N < 2B there are no own negatives: hard_negatives is a no-op, in_batch_negatives == all_negatives
    short = candidates[:5]
    assert multiple_negatives_ranking_loss(anchors, short, hardness_mode="hard_negatives", **kwargs).item() == (
        multiple_negatives_ranking_loss(anchors, short).item()
    )
    in_batch = multiple_negatives_ranking_loss(anchors, short, hardness_mode="in_batch_negatives", **kwargs)
    all_negatives = multiple_negatives_ranking_loss(anchors, short, hardness_mode="all_negatives", **kwargs)
    assert in_batch.item() == all_negatives.item()


# ---------------------------------------------------------------- hand-computed cases

ANCHOR_DEG = [0.0, 60.0, 150.0]
CANDIDATE_DEG = [20.0, 90.0, 120.0]


def _hand_logits(scale: float, anchor_deg: list[float] = ANCHOR_DEG, cand_deg: list[float] = CANDIDATE_DEG):
    return [[scale * _cos_deg(a, c) for c in cand_deg] for a in anchor_deg]


def test_plain_loss_hand_computed() -> None:
    logits = _hand_logits(10.0)
    expected = sum(_ce(row, [i]) for i, row in enumerate(logits)) / 3
    got = multiple_negatives_ranking_loss(_unit(ANCHOR_DEG, 3.0), _unit(CANDIDATE_DEG, 0.5), scale=10.0)
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_plain_loss_extra_negative_rows_hand_computed() -> None:
    # 2 anchors, candidates = [2 positives; 1 extra negative row]: every anchor sees all 3 candidates
    anchor_deg, cand_deg = [0.0, 90.0], [30.0, 100.0, 45.0]
    logits = _hand_logits(20.0, anchor_deg, cand_deg)
    expected = (_ce(logits[0], [0]) + _ce(logits[1], [1])) / 2
    got = multiple_negatives_ranking_loss(_unit(anchor_deg), _unit(cand_deg), scale=20.0)
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_symmetric_hand_computed() -> None:
    logits = _hand_logits(10.0)  # [i][j] = anchor i -> candidate j
    forward = [_ce(row, [i]) for i, row in enumerate(logits)]
    backward = [_ce([logits[j][i] for j in range(3)], [i]) for i in range(3)]  # positive i -> anchors
    expected = sum(0.5 * (f + b) for f, b in zip(forward, backward)) / 3
    got = multiple_negatives_ranking_loss(_unit(ANCHOR_DEG), _unit(CANDIDATE_DEG), scale=10.0, symmetric=True)
    assert got.item() == pytest.approx(expected, abs=1e-9)


PIDS = torch.tensor([7, 7, 3])  # anchors 0 and 1 (and positives 0 and 1) share an identity


def test_same_identity_mask_hand_computed() -> None:
    logits = _hand_logits(10.0)
    expected = (
        _ce([logits[0][0], logits[0][2]], [0])  # column 1 (same identity) removed
        + _ce([logits[1][1], logits[1][2]], [0])  # column 0 removed
        + _ce(logits[2], [2])
    ) / 3
    got = multiple_negatives_ranking_loss(
        _unit(ANCHOR_DEG), _unit(CANDIDATE_DEG), scale=10.0, anchor_pids=PIDS, candidate_pids=PIDS
    )
    assert got.item() == pytest.approx(expected, abs=1e-9)
    plain = multiple_negatives_ranking_loss(_unit(ANCHOR_DEG), _unit(CANDIDATE_DEG), scale=10.0)
    assert got.item() < plain.item()  # masking removes denominator mass


def test_same_identity_mask_with_extra_negative_row() -> None:
    # an extra negative row of anchor 0's identity is masked for anchor 0 only
    anchor_deg, cand_deg = [0.0, 90.0], [30.0, 100.0, 10.0]
    anchor_pids, cand_pids = torch.tensor([1, 2]), torch.tensor([1, 2, 1])
    logits = _hand_logits(20.0, anchor_deg, cand_deg)
    expected = (_ce(logits[0][:2], [0]) + _ce(logits[1], [1])) / 2
    got = multiple_negatives_ranking_loss(
        _unit(anchor_deg), _unit(cand_deg), scale=20.0, anchor_pids=anchor_pids, candidate_pids=cand_pids
    )
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_same_identity_positive_hand_computed() -> None:
    logits = _hand_logits(10.0)
    expected = (_ce(logits[0], [0, 1]) + _ce(logits[1], [0, 1]) + _ce(logits[2], [2])) / 3
    got = multiple_negatives_ranking_loss(
        _unit(ANCHOR_DEG),
        _unit(CANDIDATE_DEG),
        scale=10.0,
        anchor_pids=PIDS,
        candidate_pids=PIDS,
        same_identity="positive",
    )
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_same_identity_none_equals_pid_free_loss() -> None:
    gen = torch.Generator().manual_seed(11)
    anchors, candidates = torch.randn(4, 8, generator=gen), torch.randn(8, 8, generator=gen)
    pids = torch.tensor([0, 0, 1, 1])
    for kwargs in ({}, {"hardness_mode": "all_negatives", "hardness_strength": 5.0}, {"symmetric": True}):
        plain = multiple_negatives_ranking_loss(anchors, candidates, **kwargs)
        ignored = multiple_negatives_ranking_loss(
            anchors, candidates, anchor_pids=pids, candidate_pids=pids.repeat(2), same_identity="none", **kwargs
        )
        assert ignored.item() == plain.item()


def test_distinct_pids_equal_pid_free_loss() -> None:
    gen = torch.Generator().manual_seed(12)
    anchors, candidates = torch.randn(4, 8, generator=gen), torch.randn(8, 8, generator=gen)
    pids = torch.arange(4)
    cand_pids = torch.cat([pids, pids + 10])
    for mode in ("mask", "positive"):
        got = multiple_negatives_ranking_loss(
            anchors, candidates, anchor_pids=pids, candidate_pids=cand_pids, same_identity=mode, symmetric=True
        )
        plain = multiple_negatives_ranking_loss(anchors, candidates, symmetric=True)
        assert got.item() == pytest.approx(plain.item(), abs=1e-6)


def test_symmetric_mask_hand_computed() -> None:
    logits = _hand_logits(10.0)
    forward = [
        _ce([logits[0][0], logits[0][2]], [0]),
        _ce([logits[1][1], logits[1][2]], [0]),
        _ce(logits[2], [2]),
    ]
    backward = [  # positive i against the anchors, same-identity anchors masked
        _ce([logits[0][0], logits[2][0]], [0]),
        _ce([logits[1][1], logits[2][1]], [0]),
        _ce([logits[j][2] for j in range(3)], [2]),
    ]
    expected = sum(0.5 * (f + b) for f, b in zip(forward, backward)) / 3
    got = multiple_negatives_ranking_loss(
        _unit(ANCHOR_DEG), _unit(CANDIDATE_DEG), scale=10.0, anchor_pids=PIDS, candidate_pids=PIDS, symmetric=True
    )
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_hardness_penalty_skips_same_identity_hand_computed() -> None:
    # all_negatives, alpha = 5: only true negatives get + 5 cos; same-identity positives stay unpenalised
    scale, alpha = 10.0, 5.0
    cos = [[_cos_deg(a, c) for c in CANDIDATE_DEG] for a in ANCHOR_DEG]
    same = [[PIDS[i] == PIDS[j] for j in range(3)] for i in range(3)]
    logits = [[scale * cos[i][j] + (0.0 if same[i][j] else alpha * cos[i][j]) for j in range(3)] for i in range(3)]
    expected = (_ce(logits[0], [0, 1]) + _ce(logits[1], [0, 1]) + _ce(logits[2], [2])) / 3
    got = multiple_negatives_ranking_loss(
        _unit(ANCHOR_DEG),
        _unit(CANDIDATE_DEG),
        scale=scale,
        anchor_pids=PIDS,
        candidate_pids=PIDS,
        same_identity="positive",
        hardness_mode="all_negatives",
        hardness_strength=alpha,
    )
    assert got.item() == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- difficulty_levels


def test_difficulty_levels_boundaries() -> None:
    positive = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    hardest = torch.tensor([0.75, 0.5, 0.375, 0.25, 0.0, -0.5, float("-inf")])
    levels = difficulty_levels(positive, hardest, margin=0.25)
    assert levels.dtype == torch.int64
    # s_n > s_p, s_n == s_p (hard), inside the band, s_n == s_p - m (semi-hard), below the band, ..., -inf (easy)
    assert levels.tolist() == [HARD, HARD, SEMI_HARD, SEMI_HARD, EASY, EASY, EASY]
    assert (EASY, SEMI_HARD, HARD) == (0, 1, 2) and LEVEL_NAMES == ("easy", "semi_hard", "hard")


def test_difficulty_levels_zero_margin_and_no_gradient() -> None:
    positive = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    hardest = torch.tensor([0.5, 0.4999, -1.0], requires_grad=True)
    levels = difficulty_levels(positive, hardest, margin=0.0)
    assert levels.tolist() == [HARD, EASY, EASY]  # the semi-hard band is empty
    assert not levels.requires_grad and levels.grad_fn is None


# ---------------------------------------------------------------- difficulty_aware_mnrl

# candidates at 0, 120, 240 degrees; anchor 0 at 0 (s_p = 1, s_n = -0.5: easy), anchor 1 at 65 (s_p = cos 55 =
# 0.574, s_n = cos 65 = 0.423: semi-hard), anchor 2 at 175 (s_p = cos 65 = 0.423 < s_n = cos 55 = 0.574: hard)
LEVEL_ANCHOR_DEG = [0.0, 65.0, 175.0]
LEVEL_CAND_DEG = [0.0, 120.0, 240.0]


def test_difficulty_aware_levels_and_weighted_loss() -> None:
    anchors = _unit(LEVEL_ANCHOR_DEG, 2.0).requires_grad_(True)
    out = difficulty_aware_mnrl(anchors, _unit(LEVEL_CAND_DEG), scale=20.0, margin=0.2)
    assert isinstance(out, DifficultyAwareLoss)
    assert out.levels.tolist() == [EASY, SEMI_HARD, HARD]
    assert out.levels.dtype == torch.int64 and not out.levels.requires_grad

    logits = _hand_logits(20.0, LEVEL_ANCHOR_DEG, LEVEL_CAND_DEG)
    ce = [_ce(row, [i]) for i, row in enumerate(logits)]
    torch.testing.assert_close(out.per_anchor, torch.tensor(ce, dtype=torch.float64), atol=1e-9, rtol=0)
    assert out.loss.item() == pytest.approx((0.5 * ce[0] + 1.0 * ce[1] + 1.5 * ce[2]) / 3, abs=1e-9)

    out.loss.backward()
    assert anchors.grad is not None and torch.isfinite(anchors.grad).all()


def test_difficulty_aware_ignores_same_identity_for_hardest_negative() -> None:
    anchors, candidates = _unit(LEVEL_ANCHOR_DEG), _unit(LEVEL_CAND_DEG)
    pids = torch.tensor([0, 1, 1])  # anchor 2's hard negative (candidate 1) is its own identity
    for mode in ("mask", "positive", "none"):  # the pids define true negatives whatever same_identity says
        out = difficulty_aware_mnrl(anchors, candidates, pids, pids, margin=0.2, same_identity=mode)
        # anchor 1: only candidate 0 is a true negative (cos 65): still semi-hard; anchor 2: cos 175 -> easy
        assert out.levels.tolist() == [EASY, SEMI_HARD, EASY]

    same = torch.tensor([4, 4])  # no true negative at all: hardest = -inf -> easy, even though s_n > s_p
    out = difficulty_aware_mnrl(_unit([0.0, 90.0]), _unit([80.0, 10.0]), same, same)
    assert out.levels.tolist() == [EASY, EASY]
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)  # every other candidate masked: CE = 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"symmetric": True},
        {"same_identity": "positive", "hardness_mode": "in_batch_negatives", "hardness_strength": 5.0},
        {"same_identity": "mask", "hardness_mode": "hard_negatives", "hardness_strength": 5.0, "symmetric": True},
    ],
)
@pytest.mark.parametrize("with_pids", [False, True])
def test_unit_weights_equal_plain_loss(kwargs: dict, with_pids: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    anchors, candidates = torch.randn(6, 8, generator=gen), torch.randn(12, 8, generator=gen)
    pids = torch.tensor([0, 0, 1, 2, 2, 3])
    pid_kwargs = {"anchor_pids": pids, "candidate_pids": pids.repeat(2)} if with_pids else {}
    out = difficulty_aware_mnrl(anchors, candidates, level_weights=(1.0, 1.0, 1.0), **pid_kwargs, **kwargs)
    plain = multiple_negatives_ranking_loss(anchors, candidates, **pid_kwargs, **kwargs)
    assert out.loss.item() == pytest.approx(plain.item(), abs=1e-6)
    assert out.per_anchor.mean().item() == pytest.approx(plain.item(), abs=1e-6)


def test_difficulty_aware_symmetric_matches_st_with_unit_weights() -> None:
    gen = torch.Generator().manual_seed(9)
    columns = [torch.randn(5, 8, generator=gen, dtype=torch.float64) for _ in range(2)]
    out = difficulty_aware_mnrl(columns[0], columns[1], level_weights=(1, 1, 1), symmetric=True)
    assert out.loss.item() == pytest.approx(_st_loss(columns, 20.0, **SYMMETRIC).item(), abs=1e-6)


def test_module_twin_and_level_shares() -> None:
    gen = torch.Generator().manual_seed(21)
    anchors, candidates = torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)
    module = DifficultyAwareMNRL(scale=20.0, margin=0.3, level_weights=(0.0, 1.0, 2.0), symmetric=True)
    out = module(anchors, candidates)
    expected = difficulty_aware_mnrl(anchors, candidates, margin=0.3, level_weights=(0.0, 1.0, 2.0), symmetric=True)
    assert torch.equal(out.loss, expected.loss) and torch.equal(out.levels, expected.levels)
    assert list(module.parameters()) == []

    shares = DifficultyAwareMNRL.level_shares(out.levels)
    assert list(shares) == list(LEVEL_NAMES)
    assert sum(s.item() for s in shares.values()) == pytest.approx(1.0)
    manual = DifficultyAwareMNRL.level_shares(torch.tensor([EASY, SEMI_HARD, HARD, HARD]))
    assert {k: v.item() for k, v in manual.items()} == {"easy": 0.25, "semi_hard": 0.25, "hard": 0.5}


# ---------------------------------------------------------------- validation


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anchors": _rand(4)}, "anchors"),
        ({"candidates": _rand(3, 8)}, "candidates"),
        ({"candidates": _rand(4, 6)}, "candidates"),
        ({"anchor_pids": torch.arange(4)}, "candidate_pids"),
        ({"anchor_pids": torch.arange(5), "candidate_pids": torch.arange(8)}, "anchor_pids"),
        ({"anchor_pids": torch.arange(4), "candidate_pids": torch.arange(4)}, "candidate_pids"),
        ({"scale": 0.0}, "scale"),
        ({"same_identity": "ignore"}, "same_identity"),
        ({"hardness_mode": "hardest"}, "hardness_mode"),
        ({"hardness_strength": -1.0}, "hardness_strength"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, match: str) -> None:
    args = {"anchors": _rand(4, 8), "candidates": _rand(8, 8), **kwargs}
    with pytest.raises(ValueError, match=match):
        multiple_negatives_ranking_loss(**args)
    with pytest.raises(ValueError, match=match):
        difficulty_aware_mnrl(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"margin": -0.1}, "margin"),
        ({"level_weights": (1.0, 1.0)}, "level_weights"),
        ({"level_weights": (1.0, -1.0, 1.0)}, "level_weights"),
        ({"level_weights": "abc"}, "level_weights"),
    ],
)
def test_bad_difficulty_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        difficulty_aware_mnrl(_rand(4, 8), _rand(4, 8), **kwargs)
    with pytest.raises(ValueError, match=match):
        DifficultyAwareMNRL(**kwargs)


def test_bad_levels_inputs_raise() -> None:
    with pytest.raises(ValueError, match="positive_scores"):
        difficulty_levels(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="margin"):
        difficulty_levels(torch.zeros(3), torch.zeros(3), margin=-1.0)
    with pytest.raises(ValueError, match="levels"):
        DifficultyAwareMNRL.level_shares(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="levels"):
        DifficultyAwareMNRL.level_shares(torch.zeros(0, dtype=torch.int64))


def test_relevant_mask_replaces_the_pid_comparison():
    torch.manual_seed(3)
    anchors, candidates = torch.randn(3, 4), torch.randn(5, 4)
    pids = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 0, 1])
    same = pids[0].view(-1, 1) == pids[1].view(1, -1)
    for mode in ("mask", "positive"):
        by_pids = difficulty_aware_mnrl(anchors, candidates, *pids, same_identity=mode)
        by_mask = difficulty_aware_mnrl(anchors, candidates, same_identity=mode, relevant=same)
        torch.testing.assert_close(by_mask.loss, by_pids.loss)
        assert torch.equal(by_mask.levels, by_pids.levels)
    # a custom mask: candidate 3 (pid 0) is NOT relevant to anchor 0, so it stays a negative
    custom = same.clone()
    custom[0, 3] = False
    masked_less = difficulty_aware_mnrl(anchors, candidates, *pids, relevant=custom, level_weights=(1, 1, 1))
    cos = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T
    logits = 20.0 * cos[0]
    torch.testing.assert_close(masked_less.per_anchor[0], torch.logsumexp(logits, 0) - logits[0])  # nothing masked
    by_pids = difficulty_aware_mnrl(anchors, candidates, *pids, level_weights=(1, 1, 1))
    keep = torch.tensor([True, True, True, False, True])  # the pids mask candidate 3 (pid 0)
    torch.testing.assert_close(by_pids.per_anchor[0], torch.logsumexp(logits[keep], 0) - logits[0])
    assert float(masked_less.per_anchor[0]) > float(by_pids.per_anchor[0]) + 1.0
    with pytest.raises(ValueError, match="relevant"):
        difficulty_aware_mnrl(anchors, candidates, relevant=same.float())
