"""Hand-checked tests for the part-level method's losses (xsearch.losses.parts; docs/methods.md#part-level-losses).

Most cases use 2-d unit vectors given by angles in degrees, so every cosine is cos(angle difference).
"""

from __future__ import annotations

import math

import pytest
import torch

from xsearch.losses import (
    cmr_loss,
    part_commonality,
    part_diversity,
    part_sdm_loss,
    part_similarities,
    sdm_from_similarity,
    sdm_loss,
)
from xsearch.losses.parts import _ranking


def _cosd(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def _parts(angles: list[list[float]]) -> torch.Tensor:
    """angles[k][i] (degrees) -> (B, K, 2) unit vectors, float64."""
    rad = torch.tensor(angles, dtype=torch.float64).t().deg2rad()  # (B, K)
    return torch.stack([rad.cos(), rad.sin()], dim=-1)


def _sdm_by_hand(sim: list[list[float]], pids: list[int], s: float, eps: float = 1e-8) -> float:
    """SDM from an image -> text similarity matrix, pure Python."""
    n = len(pids)

    def direction(matrix: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            z = sum(math.exp(s * v) for v in matrix[i])
            same = [1.0 if pids[i] == pids[j] else 0.0 for j in range(n)]
            for j in range(n):
                p = math.exp(s * matrix[i][j]) / z
                q = same[j] / sum(same)
                total += p * (math.log(p) - math.log(q + eps))
        return total / n

    transposed = [[sim[j][i] for j in range(n)] for i in range(n)]
    return direction(sim) + direction(transposed)


# ---------------------------------------------------------------- SDM on similarities / L_part


def test_sdm_from_similarity_matches_sdm_loss_and_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 2, 2, 2])
    cos = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
    expected = sdm_loss(image, text, pids, logit_scale=20.0)
    assert torch.allclose(sdm_from_similarity(cos, pids, 20.0), expected)
    stacked = torch.stack([cos, cos.t(), 0.5 * cos])
    batched = sdm_from_similarity(stacked, pids, 20.0)
    assert batched.shape == (3,)
    for row, sim in zip(batched, stacked):
        assert torch.allclose(row, sdm_from_similarity(sim, pids, 20.0))


def test_part_sdm_per_part_is_mean_of_slot_sdm() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(6, 4, 8, generator=gen, dtype=torch.float64)
    text = torch.randn(6, 4, 8, generator=gen, dtype=torch.float64)
    pids = torch.tensor([3, 3, 7, 7, 9, 1])
    out = part_sdm_loss(image, text, pids, logit_scale=10.0)
    slots = [sdm_loss(image[:, k], text[:, k], pids, logit_scale=10.0) for k in range(4)]
    assert out["per_part"].shape == ()
    assert out["per_part"].item() == pytest.approx(sum(s.item() for s in slots) / 4, rel=1e-10)
    assert out["per_part"].item() != pytest.approx(out["aggregated"].item(), rel=1e-3)  # two different terms


def test_part_sdm_aggregated_matches_hand_built_similarity() -> None:
    pids = [0, 0, 1]
    image_angles = [[0, 30, 120], [90, 45, 200]]  # [k][i]
    text_angles = [[10, 50, 100], [60, 80, 180]]
    s_part = [
        [sum(_cosd(image_angles[k][i] - text_angles[k][j]) for k in range(2)) / 2 for j in range(3)] for i in range(3)
    ]
    expected = _sdm_by_hand(s_part, pids, 5.0)
    out = part_sdm_loss(_parts(image_angles), _parts(text_angles), torch.tensor(pids), logit_scale=5.0)
    assert out["aggregated"].item() == pytest.approx(expected, rel=1e-9)
    per_slot = [
        _sdm_by_hand([[_cosd(image_angles[k][i] - text_angles[k][j]) for j in range(3)] for i in range(3)], pids, 5.0)
        for k in range(2)
    ]
    assert out["per_part"].item() == pytest.approx(sum(per_slot) / 2, rel=1e-9)


# ---------------------------------------------------------------- commonality


def test_commonality_hand_values() -> None:
    # part 0: identical across identities -> 1; part 1: orthogonal across identities -> 0;
    # part 2: cos 60 = 0.5 to one other-pid item, cos 180 -> clipped to 0 for the other: c = 0.25 for item 0.
    angles = [[0, 0, 0], [0, 90, 90], [0, 60, 180]]
    c = part_commonality(_parts(angles), torch.tensor([0, 1, 2]))
    expected = torch.tensor(
        [
            [1.0, 0.0, (0.5 + 0.0) / 2],  # item 0: part 1 vs 90, 90 -> 0; part 2 vs 60, 180
            [1.0, 0.0 + 0.5, (0.5 + 0.0) / 2],  # item 1: part 1 vs 0 (-> 0) and 90 (-> 1): 0.5; part 2 vs 0, 180
            [1.0, 0.5, 0.0],  # item 2: part 2 vs 0 (-1 -> 0) and 60 (cos 120 -> 0)
        ],
        dtype=torch.float64,
    )
    assert c.shape == (3, 3)
    assert torch.allclose(c, expected, atol=1e-12)


def test_commonality_ignores_same_pid_and_lone_identity_gets_zero() -> None:
    parts = _parts([[0, 0, 0]])  # one part, identical everywhere
    c = part_commonality(parts, torch.tensor([5, 5, 8]))
    assert torch.allclose(c, torch.ones(3, 1, dtype=torch.float64))
    lone = part_commonality(parts, torch.tensor([5, 5, 5]))  # no other identity at all
    assert torch.equal(lone, torch.zeros(3, 1, dtype=torch.float64))


def test_commonality_is_detached() -> None:
    parts = _parts([[0, 40, 80]]).requires_grad_(True)
    c = part_commonality(parts, torch.tensor([0, 1, 2]))
    assert not c.requires_grad


# ---------------------------------------------------------------- CMR margins


def test_cmr_common_part_gets_floor_margin_distinctive_part_full_margin() -> None:
    pids = torch.tensor([0, 0, 1, 1])
    # part 0 identical for every image and text: c = 1, positive == negative in both directions -> hinge = margin.
    # part 1 orthogonal across identities (c = 0) and text == image: positive 1, negative 0 -> met, hinge 0.
    image = _parts([[0, 0, 0, 0], [90, 90, 0, 0]])
    text = _parts([[0, 0, 0, 0], [90, 90, 0, 0]])
    assert torch.allclose(part_commonality(image, pids), torch.tensor([[1.0, 0.0]] * 4, dtype=torch.float64))
    assert cmr_loss(image, text, pids).item() == pytest.approx(0.05, abs=1e-9)  # floor max(0.05, 0.2 * 0)
    # Same images, but part 1 of every text at 45 degrees: positive == negative (cos 45) -> hinge = full margin.
    text_45 = _parts([[0, 0, 0, 0], [45, 45, 45, 45]])
    assert cmr_loss(image, text_45, pids).item() == pytest.approx(0.05 + 0.2, abs=1e-9)
    # Plain-margin ablation: zero commonality -> base margin 0.2 everywhere.
    plain = torch.zeros(4, 2, dtype=torch.float64)
    assert cmr_loss(image, text, pids, commonality=plain).item() == pytest.approx(0.2, abs=1e-9)
    assert cmr_loss(image, text_45, pids, commonality=plain).item() == pytest.approx(0.4, abs=1e-9)
    # Other margins are honoured too.
    assert cmr_loss(image, text_45, pids, base_margin=0.3, min_margin=0.1).item() == pytest.approx(0.4, abs=1e-9)


def test_cmr_margin_formula_per_anchor_and_part() -> None:
    # Every similarity is 1, so each (anchor, part) hinge equals its margin in both directions.
    parts = torch.ones(5, 3, 4, dtype=torch.float64)
    pids = torch.tensor([0, 1, 2, 3, 4])
    c = torch.tensor([[0.0, 0.5, 0.9], [1.0, 0.2, 0.75], [0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [0.8, 0.6, 0.1]])
    margins = [[max(0.05, 0.2 * (1 - v)) for v in row] for row in c.tolist()]
    expected = sum(sum(row) for row in margins) / 5
    assert cmr_loss(parts, parts, pids, commonality=c).item() == pytest.approx(expected, abs=1e-9)


def test_cmr_zero_when_every_margin_is_met() -> None:
    eye = torch.eye(4, dtype=torch.float64)
    image = torch.stack([eye[[0, 1]], eye[[0, 1]], eye[[2, 3]], eye[[2, 3]]])  # (4, K=2, D=4), ids 0, 0, 1, 1
    text = image + 0.1 * torch.stack([eye[[1, 0]], eye[[1, 0]], eye[[3, 2]], eye[[3, 2]]])  # same-id leak only
    pids = torch.tensor([0, 0, 1, 1])
    for negative in ("hardest", "semi_hard"):
        assert cmr_loss(image, text, pids, negative=negative).item() == 0.0
        assert cmr_loss(image, text, pids, negative=negative, commonality=torch.zeros(4, 2)).item() == 0.0


def test_cmr_hand_computed_four_items_two_parts() -> None:
    pids = torch.tensor([0, 0, 1, 1])
    image_angles = [[0, 40, 80, 170], [0, 20, 90, 100]]  # [k][i]
    text_angles = [[10, 70, 100, 150], [30, 10, 60, 110]]
    image, text = _parts(image_angles), _parts(text_angles)

    # Commonality of the three anchors/parts whose hinge fires (negative cosines are clipped to 0):
    c01 = (_cosd(40 - 80) + 0.0) / 2  # image 1, part 0 vs images 2 (80) and 3 (170: cos 130 < 0)
    c02 = (_cosd(80 - 0) + _cosd(80 - 40)) / 2  # image 2, part 0 vs images 0, 1
    c12 = (0.0 + _cosd(90 - 20)) / 2  # image 2, part 1 vs images 0 (cos 90 = 0), 1
    m01, m02, m12 = (max(0.05, 0.2 * (1 - c)) for c in (c01, c02, c12))
    assert torch.allclose(part_commonality(image, pids)[[1, 2, 2], [0, 0, 1]], torch.tensor([c01, c02, c12]).double())

    # text -> image, hardest negative; all other (anchor, part) pairs meet their margin.
    t2i_1_0 = m01 - _cosd(70 - 40) + _cosd(70 - 80)  # text 1, part 0: positive cos 30, hardest image 2 (cos 10)
    # text 2, part 1: positive image 2 (cos 30); other-pid images 0 (cos 60) and 1 (cos 40): hardest is image 1.
    t2i_2_1 = m12 - _cosd(60 - 90) + _cosd(60 - 20)
    # image -> text: image 2, part 0: positive text 2 (cos 20), hardest text 1 (cos 10).
    i2t_2_0 = m02 - _cosd(80 - 100) + _cosd(80 - 70)
    hardest = 0.5 * ((t2i_1_0 + t2i_2_1) / 4 + i2t_2_0 / 4)
    assert hardest == pytest.approx(0.05739, abs=1e-5)  # (0.2422 + 0.0658 + 0.1511) / 8
    assert cmr_loss(image, text, pids).item() == pytest.approx(hardest, abs=1e-12)

    # Semi-hard: text 1 part 0 and image 2 part 0 have their hardest negative above the positive; the hardest
    # below it (text 1: image 3, cos 100 < 0; image 2: text 0, cos 70) meets the margin. Text 2 part 1's hardest
    # (cos 40) is already below the positive (cos 30 = 0.866), so it stays.
    semi = 0.5 * (t2i_2_1 / 4)
    assert semi == pytest.approx(0.00823, abs=1e-5)
    assert cmr_loss(image, text, pids, negative="semi_hard").item() == pytest.approx(semi, abs=1e-12)


def test_ranking_selects_hardest_or_semi_hard_negative() -> None:
    # One part, three anchors; candidate 0 is anchor 0's positive etc. (diagonal). pids 0, 1, 2, 3.
    sims = torch.tensor(
        [
            [
                [0.8, 0.9, 0.7, 0.1],  # anchor 0: hardest 0.9 (above positive), semi-hard 0.7 (below)
                [0.95, 0.6, 0.6, 0.2],  # anchor 1: a tie is not below: semi-hard 0.2, hardest 0.95
                [0.99, 0.97, 0.5, 0.98],  # anchor 2: nothing below 0.5 -> semi-hard falls back to hardest 0.99
                [0.3, 0.2, 0.1, 0.4],  # anchor 3: everything below -> both pick 0.3
            ]
        ],
        dtype=torch.float64,
    )
    margins = torch.full((1, 4), 0.2, dtype=torch.float64)
    negative_mask = ~torch.eye(4, dtype=torch.bool)
    hardest = _ranking(sims, margins, negative_mask, "hardest")
    semi = _ranking(sims, margins, negative_mask, "semi_hard")
    assert torch.allclose(hardest, torch.tensor([[0.3, 0.55, 0.69, 0.1]], dtype=torch.float64))
    assert torch.allclose(semi, torch.tensor([[0.1, 0.0, 0.69, 0.1]], dtype=torch.float64))
    # A same-pid candidate is never a negative, however similar; an anchor with no negative contributes 0.
    same_pid = negative_mask.clone()
    same_pid[0, 1] = same_pid[1, 0] = False  # anchors 0 and 1 share a pid
    assert _ranking(sims, margins, same_pid, "hardest")[0, 0].item() == pytest.approx(0.2 - 0.8 + 0.7)
    alone = torch.zeros(4, 4, dtype=torch.bool)
    assert torch.equal(_ranking(sims, margins, alone, "hardest"), torch.zeros(1, 4, dtype=torch.float64))


def test_cmr_gradient_raises_positive_and_lowers_negative() -> None:
    pids = torch.tensor([0, 1])
    image = _parts([[0, 60]]).requires_grad_(True)
    text = _parts([[40, 90]]).requires_grad_(True)  # text 0: positive cos 40, negative cos 20 -> violated

    def sims() -> torch.Tensor:
        return part_similarities(text, image)[0]  # (B, B): text anchor, image candidate

    before = sims().detach()
    loss = cmr_loss(image, text, pids)
    assert loss.item() > 0
    loss.backward()
    with torch.no_grad():
        image -= 0.05 * image.grad
        text -= 0.05 * text.grad
    after = sims().detach()
    assert after[0, 0] > before[0, 0]  # positive pulled together
    assert after[0, 1] < before[0, 1]  # other-pid pair pushed apart
    assert cmr_loss(image, text, pids).item() < loss.item()


def test_cmr_default_commonality_carries_no_gradient() -> None:
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    text = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    (grad_default,) = torch.autograd.grad(cmr_loss(image, text, pids), image)
    c = part_commonality(image, pids)
    (grad_given,) = torch.autograd.grad(cmr_loss(image, text, pids, commonality=c), image)
    assert torch.allclose(grad_default, grad_given)


# ---------------------------------------------------------------- diversity


def test_diversity_orthogonal_identical_and_hand_value() -> None:
    eye = torch.eye(4, dtype=torch.float64)
    assert part_diversity(torch.stack([eye, 2 * eye])).item() == pytest.approx(0.0, abs=1e-12)
    assert part_diversity(torch.ones(3, 5, 4)).item() == pytest.approx(1.0, abs=1e-6)
    # sample 0: angles 0, 60 -> 0.5; sample 1: 0, 90, 180 -> pairs 0, -1, 0 -> -1/3
    two = part_diversity(_parts([[0], [60]]))
    assert two.item() == pytest.approx(0.5, abs=1e-12)
    three = part_diversity(_parts([[0], [90], [180]]))
    assert three.item() == pytest.approx(-1 / 3, abs=1e-12)


# ---------------------------------------------------------------- shape errors


def test_readable_shape_errors() -> None:
    parts = torch.zeros(4, 2, 3)
    pids = torch.arange(4)
    with pytest.raises(ValueError, match=r"same shape \(B, K, D\).*\(4, 2, 3\) and \(4, 3, 3\)"):
        cmr_loss(parts, torch.zeros(4, 3, 3), pids)
    with pytest.raises(ValueError, match=r"image_parts of shape \(B, K, D\), got \(4, 3\)"):
        part_sdm_loss(torch.zeros(4, 3), torch.zeros(4, 3), pids)
    with pytest.raises(ValueError, match=r"pids of shape \(4,\), got \(3,\)"):
        part_sdm_loss(parts, parts, torch.arange(3))
    with pytest.raises(ValueError, match=r"pids of shape \(4,\)"):
        part_commonality(parts, torch.arange(5))
    with pytest.raises(ValueError, match=r"commonality of shape \(4, 2\), got \(2, 4\)"):
        cmr_loss(parts, parts, pids, commonality=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="semi_hard"):
        cmr_loss(parts, parts, pids, negative="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 parts"):
        part_diversity(torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., B, B\), got \(3, 4\)"):
        sdm_from_similarity(torch.zeros(3, 4), torch.arange(3))
