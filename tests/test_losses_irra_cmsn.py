"""Hand-checked tests for IRRA's MLM and CMSN's CRIA / SPT losses (xsearch.losses).

Definitions: docs/methods.md#irra-architecture-and-losses and docs/methods.md#cmsn-losses.

SDM is covered by the hand-computed 4x4 case in tests/test_losses.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xsearch.losses import (
    IdentityCenters,
    cosine_logits,
    cria_center_loss,
    cria_loss,
    mask_tokens,
    mlm_loss,
    spt_loss,
)

MASK, SOT, EOT = 49405, 49406, 49407


def _norm(v: list[float]) -> list[float]:
    length = math.sqrt(sum(x * x for x in v))
    return [x / length for x in v]


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(_norm(a), _norm(b)))


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- mask_tokens


def _random_captions(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """SOT + 10..75 word ids in [1, 49405) + EOT + pad 0."""
    ids = torch.zeros(batch, length, dtype=torch.long)
    words = torch.randint(10, length - 1, (batch,), generator=gen)
    for row, n in enumerate(words.tolist()):
        ids[row, 0] = SOT
        ids[row, 1 : n + 1] = torch.randint(1, MASK, (n,), generator=gen)
        ids[row, n + 1] = EOT
    return ids


def test_mask_tokens_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    ids = _random_captions(4000, 77, gen)
    masked, labels = mask_tokens(ids, generator=torch.Generator().manual_seed(1))
    assert masked.shape == labels.shape == ids.shape and masked.dtype == labels.dtype == ids.dtype

    special = (ids == 0) | (ids == SOT) | (ids == EOT)
    picked = labels != 0
    assert not (picked & special).any()
    assert torch.equal(masked[special], ids[special])  # specials never touched (pads included)
    assert torch.equal(labels[picked], ids[picked])  # labels = original ids, 0 elsewhere
    assert torch.equal(masked[~picked], ids[~picked])  # nothing changes outside the picked positions

    rate = picked.sum().item() / (~special).sum().item()  # ~160k real tokens: std ~0.001
    assert rate == pytest.approx(0.15, abs=0.005)
    total = picked.sum().item()  # ~24k picked: std of each share < 0.003
    to_mask = (masked[picked] == MASK).float().mean().item()
    unchanged = (masked[picked] == ids[picked]).float().mean().item()
    replaced = masked[picked & (masked != MASK) & (masked != ids)]
    assert to_mask == pytest.approx(0.8, abs=0.012)
    assert unchanged == pytest.approx(0.1, abs=0.012)
    assert replaced.numel() / total == pytest.approx(0.1, abs=0.012)
    assert replaced.min() >= 1 and replaced.max() < MASK  # random ids from [1, 49405)


def test_mask_tokens_fallback_and_empty_caption() -> None:
    ids = torch.tensor(
        [
            [SOT, 11, 12, 13, EOT, 0],
            [SOT, 21, EOT, 0, 0, 0],
            [SOT, EOT, 0, 0, 0, 0],  # empty caption: position 1 is EOT -> left alone
            [0, 0, 0, 0, 0, 0],  # padding row
        ]
    )
    masked, labels = mask_tokens(ids, probability=0.0, generator=torch.Generator().manual_seed(0))
    assert masked.tolist() == [
        [SOT, MASK, 12, 13, EOT, 0],
        [SOT, MASK, EOT, 0, 0, 0],
        [SOT, EOT, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    assert labels.tolist() == [[0, 11, 0, 0, 0, 0], [0, 21, 0, 0, 0, 0], [0] * 6, [0] * 6]


def test_mask_tokens_fallback_always_uses_the_mask_id() -> None:
    # 2000 one-word captions at probability 0.0: every fallback is the mask, never a random / kept token.
    ids = torch.tensor([[SOT, 7, EOT]]).repeat(2000, 1)
    masked, labels = mask_tokens(ids, probability=0.0, generator=torch.Generator().manual_seed(0))
    assert (masked[:, 1] == MASK).all() and (labels[:, 1] == 7).all()


def test_mask_tokens_probability_one_picks_exactly_the_real_tokens() -> None:
    ids = _random_captions(50, 77, torch.Generator().manual_seed(2))
    _, labels = mask_tokens(ids, probability=1.0, generator=torch.Generator().manual_seed(3))
    real = (ids != 0) & (ids != SOT) & (ids != EOT)
    assert torch.equal(labels != 0, real)


def test_mask_tokens_deterministic_with_generator() -> None:
    ids = _random_captions(64, 77, torch.Generator().manual_seed(4))
    first = mask_tokens(ids, generator=torch.Generator().manual_seed(5))
    again = mask_tokens(ids, generator=torch.Generator().manual_seed(5))
    other = mask_tokens(ids, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    torch.manual_seed(7)
    global_a = mask_tokens(ids)
    torch.manual_seed(7)
    global_b = mask_tokens(ids)
    assert torch.equal(global_a[0], global_b[0])


def test_mask_tokens_custom_specials_and_int32() -> None:
    ids = torch.tensor([[SOT, 5, 9, 9, EOT]], dtype=torch.int32)
    masked, labels = mask_tokens(ids, probability=1.0, special_ids=(0, SOT, EOT, 9))
    assert labels.tolist() == [[0, 5, 0, 0, 0]] and masked.dtype == torch.int32
    assert masked[0, 2:].tolist() == [9, 9, EOT]


def test_mask_tokens_errors() -> None:
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        mask_tokens(torch.tensor([SOT, 5, EOT]))
    with pytest.raises(ValueError, match="integer"):
        mask_tokens(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(torch.zeros(2, 4, dtype=torch.long), probability=1.5)
    with pytest.raises(ValueError, match="must contain 0"):
        mask_tokens(torch.zeros(2, 4, dtype=torch.long), special_ids=(SOT, EOT))
    with pytest.raises(ValueError, match="vocab_low"):
        mask_tokens(torch.zeros(2, 4, dtype=torch.long), vocab_low=5, vocab_high=5)


# ---------------------------------------------------------------- mlm_loss


def test_mlm_loss_equals_hand_loop() -> None:
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[0, 3, 0, 5], [1, 0, 0, 0]])
    rows = logits.tolist()
    terms = [_ce(rows[b][i], labels[b, i].item()) for b in range(2) for i in range(4) if labels[b, i] != 0]
    expected = sum(terms) / len(terms)
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)
    assert mlm_loss(logits.reshape(8, 6), labels.reshape(8)).item() == pytest.approx(expected, rel=1e-12)
    # bf16 logits are upcast to fp32: the value matches up to the bf16 rounding of the inputs
    low = mlm_loss(logits.bfloat16(), labels)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(expected, rel=2e-2)


def test_mlm_loss_without_labels_is_zero_with_gradient() -> None:
    logits = torch.randn(3, 5, 7, requires_grad=True)
    loss = mlm_loss(logits, torch.zeros(3, 5, dtype=torch.long))
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_mlm_loss_errors() -> None:
    with pytest.raises(ValueError, match="labels"):
        mlm_loss(torch.zeros(2, 4, 6), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, V=6\)"):
        mlm_loss(torch.zeros(2, 4, 6), torch.full((2, 4), 6))


# ---------------------------------------------------------------- CRIA

# Labels [0, 0, 1]. Normalised rows: v = (1,0), (0,1), (.6,.8); t = (1,0), (1,0), (.8,.6); c = (0,1), (0,1), (.6,.8).
CRIA_V = [[2.0, 0.0], [0.0, 0.5], [3.0, 4.0]]
CRIA_T = [[1.0, 0.0], [3.0, 0.0], [0.8, 0.6]]
CRIA_C = [[0.0, 2.0], [0.0, 1.0], [6.0, 8.0]]
CRIA_LABELS = [0, 0, 1]
CRIA_W = [[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]]


def test_cria_center_hand_two_identities() -> None:
    # id 0: c_v ~ (1,1)/sqrt2, c_t = (1,0), c_c = (0,1): (1 - 1/sqrt2) + (1 - 0) + (1 - 1/sqrt2) = 3 - sqrt2
    # id 1: c_v = c_c = (.6,.8), c_t = (.8,.6): 0 + 0.04 + 0.04. Identities weigh equally (not samples).
    expected = (3 - math.sqrt(2) + 0.08) / 2
    got = cria_center_loss(_t(CRIA_V), _t(CRIA_T), _t(CRIA_C), torch.tensor(CRIA_LABELS))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_cria_center_zero_when_identity_means_coincide() -> None:
    # id 0: v rows swap t rows (same mean, different samples); c rows both along the mean. id 1: one sample.
    a, b = [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]
    mid = [0.5, 0.3, 0.4]
    image = _t([a, b, [0.0, 0.0, 2.0]])
    text = _t([b, a, [0.0, 0.0, 5.0]])
    combined = _t([[2 * x for x in mid], mid, [0.0, 0.0, 1.0]])
    labels = torch.tensor([3, 3, 8])
    assert cria_center_loss(image, text, combined, labels).item() == pytest.approx(0.0, abs=1e-12)
    # per-sample alignment differs (v0 != t0), so a per-sample penalty would not be 0
    assert cria_center_loss(image[:1], text[:1], combined[:1], labels[:1]).item() > 0.1


def test_cria_ce_hand_and_total() -> None:
    scale = 2.0
    expected_ce = 0.0
    for features in (CRIA_V, CRIA_T, CRIA_C):
        for row, label in zip(features, CRIA_LABELS):
            logits = [scale * _cos(row, w) for w in CRIA_W]
            expected_ce += _ce(logits, label) / (3 * len(CRIA_LABELS))
    expected_center = (3 - math.sqrt(2) + 0.08) / 2
    out = cria_loss(
        _t(CRIA_V), _t(CRIA_T), _t(CRIA_C), torch.tensor(CRIA_LABELS), _t(CRIA_W), center_weight=0.5,
        logit_scale=scale,
    )
    assert set(out) == {"cria_ce", "cria_center", "loss"}
    assert out["cria_ce"].item() == pytest.approx(expected_ce, rel=1e-12)
    assert out["cria_center"].item() == pytest.approx(expected_center, rel=1e-12)
    assert out["loss"].item() == pytest.approx(expected_ce + 0.5 * expected_center, rel=1e-12)


def test_cria_default_scale_is_30_and_cosine() -> None:
    features, centres = _t(CRIA_V), _t(CRIA_W)
    logits = cosine_logits(features, centres)
    assert logits[2, 0].item() == pytest.approx(30 * 0.6)  # cos((.6,.8), (1,0)) = .6, whatever the norms
    assert torch.allclose(cosine_logits(3 * features, 7 * centres), logits)
    labels = torch.tensor(CRIA_LABELS)
    default = cria_loss(features, _t(CRIA_T), _t(CRIA_C), labels, centres)
    explicit = cria_loss(features, _t(CRIA_T), _t(CRIA_C), labels, centres, logit_scale=30.0)
    assert default["loss"].item() == pytest.approx(explicit["loss"].item(), rel=1e-12)


def test_identity_centers_module() -> None:
    torch.manual_seed(0)
    head = IdentityCenters(16, 5, logit_scale=10.0, center_weight=0.5)
    assert head.weight.shape == (5, 16) and len(list(head.parameters())) == 1  # one shared, bias-free matrix
    assert head.weight.norm(dim=1).mean().item() == pytest.approx(1.0, abs=0.25)
    image, text, combined = (torch.randn(6, 16, requires_grad=True) for _ in range(3))
    labels = torch.tensor([0, 0, 4, 4, 2, 2])
    assert head(image).shape == (6, 5)
    out = head.loss(image, text, combined, labels)
    reference = cria_loss(image, text, combined, labels, head.weight, center_weight=0.5, logit_scale=10.0)
    assert torch.allclose(out["loss"], reference["loss"])
    assert out["cria_center"].item() > 0
    out["loss"].backward()
    for grad in (head.weight.grad, image.grad, text.grad, combined.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_cria_errors() -> None:
    features, labels = torch.randn(3, 4), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="same shape"):
        cria_loss(features, features, torch.randn(3, 5), labels, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"labels of shape \(3,\)"):
        cria_loss(features, features, features, labels[:2], torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"centers of shape \(C, 4\)"):
        cria_loss(features, features, features, labels, torch.randn(2, 5))
    with pytest.raises(ValueError, match="max label 2"):
        cria_loss(features, features, features, torch.tensor([0, 2, 1]), torch.randn(2, 4))


# ---------------------------------------------------------------- SPT

# 2 ids x 2 pairs, pids [0, 0, 1, 1]; unit vectors, so the cosines are the dot products:
#   s(t_i, v_j): t0 [.8, .96, .6, 0]   t1 [0, .8, 1, .8]   t2 [.6, 1, .8, .28]   t3 [-.8, 0, .6, .96]
#   s(t_i, t_j): t0 [1, .6, .96, -.28] t1 [.6, 1, .8, .6]  t2 [.96, .8, 1, 0]    t3 [-.28, .6, 0, 1]
SPT_V = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]]
SPT_T = [[0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-0.8, 0.6]]
SPT_PIDS = [0, 0, 1, 1]


def test_spt_hand_4_items() -> None:
    relu = lambda x: max(0.0, x)  # noqa: E731
    # text anchors: p = own image; sp = other image + other text of the id; n_hard = best other-id image
    t0 = relu(0.2 - 0.8 + 0.6) + (relu(0.1 - 0.96 + 0.6) + relu(0.1 - 0.6 + 0.6)) / 2  # n = v2 (.6)
    t1 = relu(0.2 - 0.8 + 1.0) + (relu(0.1 - 0.0 + 1.0) + relu(0.1 - 0.6 + 1.0)) / 2  # n = v2 (1)
    t2 = relu(0.2 - 0.8 + 1.0) + (relu(0.1 - 0.28 + 1.0) + relu(0.1 - 0.0 + 1.0)) / 2  # n = v1 (1)
    t3 = relu(0.2 - 0.96 + 0.0) + (relu(0.1 - 0.6 + 0.0) + relu(0.1 - 0.0 + 0.0)) / 2  # n = v1 (0)
    # image anchors: p = own text; sp = the other text of the id; n_hard = best other-id text
    v0 = relu(0.2 - 0.8 + 0.6) + relu(0.1 - 0.0 + 0.6)  # n = t2 (.6)
    v1 = relu(0.2 - 0.8 + 1.0) + relu(0.1 - 0.96 + 1.0)  # n = t2 (1)
    v2 = relu(0.2 - 0.8 + 1.0) + relu(0.1 - 0.6 + 1.0)  # n = t1 (1)
    v3 = relu(0.2 - 0.96 + 0.8) + relu(0.1 - 0.28 + 0.8)  # n = t1 (.8)
    expected = (t0 + t1 + t2 + t3 + v0 + v1 + v2 + v3) / 8
    assert expected == pytest.approx(5.46 / 8)
    got = spt_loss(_t(SPT_V), _t(SPT_T), torch.tensor(SPT_PIDS))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # input norms do not matter (cosine)
    scaled = spt_loss(3 * _t(SPT_V), 0.5 * _t(SPT_T), torch.tensor(SPT_PIDS))
    assert scaled.item() == pytest.approx(expected, rel=1e-12)


def test_spt_hand_with_text_negatives() -> None:
    # other-id texts join the text anchors' negatives: t0's n_hard becomes t2 (.96), t3's becomes t1 (.6);
    # t1 and t2 keep n = 1.0, image anchors are unchanged (2.8 in total).
    relu = lambda x: max(0.0, x)  # noqa: E731
    t0 = relu(0.2 - 0.8 + 0.96) + (relu(0.1 - 0.96 + 0.96) + relu(0.1 - 0.6 + 0.96)) / 2
    t3 = relu(0.2 - 0.96 + 0.6) + (relu(0.1 - 0.6 + 0.6) + relu(0.1 - 0.0 + 0.6)) / 2
    expected = (t0 + 1.2 + 1.36 + t3 + 2.8) / 8
    got = spt_loss(_t(SPT_V), _t(SPT_T), torch.tensor(SPT_PIDS), text_negatives=True)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.8)


def test_spt_zero_when_margins_met_and_hand_when_not() -> None:
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    image = _t([e1, e1, e2, e2])
    text = _t([e1, e1, e2, e2])
    pids = torch.tensor([5, 5, 9, 9])
    # s(a, p) = s(a, sp) = 1, s(a, n) = 0: both hinges 0.2 - 1 < 0 and 0.1 - 1 < 0.
    assert spt_loss(image, text, pids).item() == 0.0
    # margins 1.5: every anchor pays 1.5 - 1 + 0 (main) + 1.5 - 1 + 0 (each semi-positive) = 1.0
    assert spt_loss(image, text, pids, margin=1.5, semi_margin=1.5).item() == pytest.approx(1.0)


def test_spt_degenerate_batches() -> None:
    gen = torch.Generator().manual_seed(9)
    image = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    text = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    # one identity: no anchor has a negative -> 0 (finite, with a graph)
    single = spt_loss(image.requires_grad_(), text, torch.tensor([1, 1, 1, 1]))
    assert single.item() == 0.0
    single.backward()
    assert torch.isfinite(image.grad).all()
    # all pids distinct: no semi-positives -> bidirectional VSE++ max-of-hinges
    sim = F.normalize(text, dim=1) @ F.normalize(image.detach(), dim=1).t()
    off = ~torch.eye(4, dtype=torch.bool)
    t_hard = sim.masked_fill(~off, -2).max(dim=1).values
    v_hard = sim.t().masked_fill(~off, -2).max(dim=1).values
    vse = (F.relu(0.2 - sim.diagonal() + t_hard).sum() + F.relu(0.2 - sim.diagonal() + v_hard).sum()) / 8
    assert spt_loss(image.detach(), text, torch.tensor([0, 1, 2, 3])).item() == pytest.approx(vse.item(), rel=1e-12)


def test_spt_gradient_direction_on_violated_anchor() -> None:
    # pids [0, 1]: t0 is closer to the negative v1 than to its pair v0 (violated). A gradient step on t0 must
    # raise s(t0, v0) and lower s(t0, v1).
    image = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    text = torch.tensor([[0.3, 0.9, 0.3], [0.1, 0.2, 1.0]], dtype=torch.float64, requires_grad=True)
    pids = torch.tensor([0, 1])

    def sims(t: torch.Tensor) -> tuple[float, float]:
        t0 = F.normalize(t[0], dim=0)
        return (t0 @ image[0]).item(), (t0 @ image[1]).item()

    before_p, before_n = sims(text.detach())
    assert 0.2 - before_p + before_n > 0  # the main hinge is active
    spt_loss(image, text, pids).backward()
    grad = text.grad[0]
    # directional derivatives: d s(t0, v0) along -grad > 0, d s(t0, v1) along -grad < 0
    t0 = text.detach()[0].clone().requires_grad_()
    s_p = F.normalize(t0, dim=0) @ image[0]
    (ds_p,) = torch.autograd.grad(s_p, t0)
    s_n = F.normalize(t0, dim=0) @ image[1]
    (ds_n,) = torch.autograd.grad(s_n, t0)
    assert torch.dot(-grad, ds_p) > 0
    assert torch.dot(-grad, ds_n) < 0
    stepped = text.detach().clone()
    stepped[0] -= 0.05 * grad
    after_p, after_n = sims(stepped)
    assert after_p > before_p and after_n < before_n


def test_spt_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        spt_loss(torch.randn(4, 8), torch.randn(3, 8), torch.arange(4))
    with pytest.raises(ValueError, match=r"pids of shape \(4,\)"):
        spt_loss(torch.randn(4, 8), torch.randn(4, 8), torch.arange(3))
    with pytest.raises(ValueError, match="non-empty"):
        spt_loss(torch.randn(0, 8), torch.randn(0, 8), torch.arange(0))
