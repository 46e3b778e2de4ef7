"""Hand-checked tests for TGFR's FCAM alignment losses and ArcFace / focal identity heads (xsearch.losses.fcam)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xsearch.losses import (
    ArcFaceHead,
    arcface_logits,
    focal_loss,
    global_contrastive_loss,
    sentence_image_loss,
    word_region_loss,
    word_region_similarity,
)


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _cos(a: list[float], b: list[float]) -> float:
    return _dot(a, b) / max(math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b)), 1e-8)


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _random_batch(lengths: list[int], T: int = 4, R: int = 5, D: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B = len(lengths)
    words = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    regions = torch.randn(B, R, D, generator=gen, dtype=torch.float64)
    mask = torch.arange(T).view(1, -1) < torch.tensor(lengths).view(-1, 1)
    return words, mask, regions


# ---------------------------------------------------------------- word_region_similarity


def _reference_similarity(
    words: torch.Tensor, lengths: list[int], regions: torch.Tensor, gamma1: float, gamma2: float
) -> list[list[float]]:
    """AttnGAN func_attention + words_loss, written out with loops over k, i, t, r."""
    B, R = regions.shape[0], regions.shape[1]
    out = [[0.0] * B for _ in range(B)]
    for k in range(B):
        v = regions[k].tolist()
        for i in range(B):
            e = words[i, : lengths[i]].tolist()  # real words only
            n_words = len(e)
            s = [[_dot(e[t], v[r]) for r in range(R)] for t in range(n_words)]
            # softmax over words, per region
            a = [[0.0] * R for _ in range(n_words)]
            for r in range(R):
                column = _softmax([s[t][r] for t in range(n_words)])
                for t in range(n_words):
                    a[t][r] = column[t]
            total = 0.0
            for t in range(n_words):
                alpha = _softmax([gamma1 * a[t][r] for r in range(R)])  # over regions, per word
                c = [sum(alpha[r] * v[r][d] for r in range(R)) for d in range(len(v[0]))]
                total += math.exp(gamma2 * _cos(c, e[t]))
            out[k][i] = math.log(total)
    return out


@pytest.mark.parametrize(("gamma1", "gamma2"), [(4.0, 5.0), (1.0, 2.0)])
def test_word_region_similarity_matches_loop_reference(gamma1: float, gamma2: float) -> None:
    lengths = [4, 2, 3]
    words, mask, regions = _random_batch(lengths)
    got = word_region_similarity(words, mask, regions, gamma1, gamma2)
    expected = _t(_reference_similarity(words, lengths, regions, gamma1, gamma2))
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # float32 agrees with the float64 reference as well
    got32 = word_region_similarity(words.float(), mask, regions.float(), gamma1, gamma2)
    torch.testing.assert_close(got32.double(), expected, atol=1e-5, rtol=0)


def test_word_region_similarity_ignores_padding() -> None:
    lengths = [4, 2, 3]
    words, mask, regions = _random_batch(lengths, seed=1)
    base = word_region_similarity(words, mask, regions)
    gen = torch.Generator().manual_seed(2)
    # overwrite the padded positions with garbage and append three more padded positions
    garbage_words = words.clone()
    garbage_words[~mask] = 100.0 * torch.randn(int((~mask).sum()), words.shape[2], generator=gen, dtype=words.dtype)
    extra = 50.0 * torch.randn(3, 3, words.shape[2], generator=gen, dtype=words.dtype)
    extra[0, 0, 0] = float("nan")
    extra[1, 2, 3] = float("inf")
    long_words = torch.cat([garbage_words, extra], dim=1).requires_grad_(True)
    long_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    padded = word_region_similarity(long_words, long_mask, regions)
    torch.testing.assert_close(padded, base, atol=1e-12, rtol=0)
    word_region_loss(long_words, long_mask, regions).backward()
    assert torch.isfinite(long_words.grad).all()
    assert (long_words.grad[~long_mask] == 0).all()
    assert long_words.grad[long_mask].abs().sum() > 0


def test_word_region_similarity_validates() -> None:
    words, mask, regions = _random_batch([4, 2, 3])
    with pytest.raises(ValueError, match=r"\(3, 4, 6\) and \(3, 5, 7\)"):
        word_region_similarity(words, mask, torch.zeros(3, 5, 7, dtype=words.dtype))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        word_region_similarity(words, torch.ones(3, 5, dtype=torch.bool), regions)
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"at least one real word; captions \[1\]"):
        word_region_similarity(words, empty, regions)


# ---------------------------------------------------------------- word_region_loss


def test_word_region_loss_equals_ce_of_similarity() -> None:
    words, mask, regions = _random_batch([4, 2, 3], seed=3)
    S = word_region_similarity(words, mask, regions, 4.0, 5.0).tolist()
    logits = [[10.0 * x for x in row] for row in S]
    rows = sum(_ce(logits[k], k) for k in range(3)) / 3
    cols = sum(_ce([logits[k][i] for k in range(3)], i) for i in range(3)) / 3
    got = word_region_loss(words, mask, regions, gamma1=4.0, gamma2=5.0, gamma3=10.0)
    assert got.item() == pytest.approx(rows + cols, abs=1e-9)


def test_word_region_loss_closed_form() -> None:
    # All regions of image k equal v_k, so every context c_t = v_k whatever the attention; all words of caption i
    # equal e_i. Then S[k, i] = log(L_i exp(gamma2 cos(v_k, e_i))) = log L_i + gamma2 cos(v_k, e_i).
    v = [[2.0, 0.0], [0.0, 3.0]]
    e = [[1.0, 0.0], [0.0, 0.5]]
    regions = _t([[v[0]] * 5, [v[1]] * 5])
    words = _t([[e[0]] * 3, [e[1]] * 3])
    mask = torch.tensor([[True, False, False], [True, True, False]])
    S = word_region_similarity(words, mask, regions)
    expected_S = [[math.log(1) + 5.0, math.log(2) + 0.0], [math.log(1) + 0.0, math.log(2) + 5.0]]
    torch.testing.assert_close(S, _t(expected_S), atol=1e-12, rtol=0)
    logits = [[50.0, 10 * math.log(2)], [0.0, 10 * math.log(2) + 50.0]]
    rows = 0.5 * (_ce(logits[0], 0) + _ce(logits[1], 1))
    cols = 0.5 * (_ce([logits[0][0], logits[1][0]], 0) + _ce([logits[0][1], logits[1][1]], 1))
    assert word_region_loss(words, mask, regions).item() == pytest.approx(rows + cols, abs=1e-12)


# ---------------------------------------------------------------- sentence / global


def test_sentence_image_loss_hand_2x2() -> None:
    images = _t([[3.0, 0.0], [0.0, 1.0]])
    sentences = _t([[1.0, 1.0], [0.0, 2.0]])
    c = 1 / math.sqrt(2)
    logits = [[10 * c, 0.0], [10 * c, 10.0]]  # [image k][sentence i]
    i2t = 0.5 * (_ce(logits[0], 0) + _ce(logits[1], 1))
    t2i = 0.5 * (_ce([logits[0][0], logits[1][0]], 0) + _ce([logits[0][1], logits[1][1]], 1))
    assert sentence_image_loss(images, sentences).item() == pytest.approx(i2t + t2i, abs=1e-12)
    assert sentence_image_loss(images, sentences, scale=1.0).item() != pytest.approx(i2t + t2i, abs=1e-3)


def test_sentence_image_loss_masks_same_identity() -> None:
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    sentences = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1])
    cos = [[_cos(images[k].tolist(), sentences[i].tolist()) for i in range(3)] for k in range(3)]
    logits = [[10.0 * x for x in row] for row in cos]
    excluded = {(0, 1), (1, 0)}
    i2t = 0.0
    t2i = 0.0
    for a in range(3):
        keep = [b for b in range(3) if (a, b) not in excluded]
        i2t += _ce([logits[a][b] for b in keep], keep.index(a))
        keep = [b for b in range(3) if (b, a) not in excluded]
        t2i += _ce([logits[b][a] for b in keep], keep.index(a))
    expected = (i2t + t2i) / 3
    got = sentence_image_loss(images, sentences, pids)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    unmasked = sentence_image_loss(images, sentences)
    assert unmasked.item() != pytest.approx(expected, abs=1e-3)
    assert sentence_image_loss(images, sentences, torch.tensor([0, 1, 2])).item() == pytest.approx(unmasked.item())
    assert global_contrastive_loss(images, sentences).item() == unmasked.item()
    assert global_contrastive_loss(images, sentences, scale=3.0).item() == pytest.approx(
        sentence_image_loss(images, sentences, None, 3.0).item(), abs=0
    )


def test_sentence_image_loss_validates() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 5\)"):
        sentence_image_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"pids of shape \(3,\)"):
        sentence_image_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1]))


# ---------------------------------------------------------------- arcface / focal


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def test_arcface_logits_margin_and_fallback() -> None:
    s, m = 30.0, 0.5
    embeddings = _t([[2.0, 0.0], [0.0, -1.0]])  # angles 0 and -pi/2
    class_angles = [math.pi / 3, math.radians(170.0), 2.0]
    weight = _t([[3 * x for x in _unit(a)] for a in class_angles])
    labels = torch.tensor([0, 1])
    got = arcface_logits(embeddings, weight, labels, scale=s, margin=m)
    cos = [[math.cos(a - b) for a in class_angles] for b in (0.0, -math.pi / 2)]
    # sample 0, class 0: theta = pi/3, theta + m < pi -> cos(theta + m)
    assert got[0, 0].item() == pytest.approx(s * math.cos(math.acos(cos[0][0]) + m), abs=1e-10)
    # sample 1, class 1: theta = 170 deg - (-90 deg) = 260 deg -> angle 100 deg, cos = -0.17 > cos(pi - m): margin
    assert got[1, 1].item() == pytest.approx(s * math.cos(math.acos(cos[1][1]) + m), abs=1e-10)
    # non-target classes keep s * cos
    for row, label in enumerate(labels.tolist()):
        for col in range(3):
            if col != label:
                assert got[row, col].item() == pytest.approx(s * cos[row][col], abs=1e-10)
    # fallback: sample 0 labelled class 1 (170 deg): cos = -0.985 <= cos(pi - m) = -0.878
    assert cos[0][1] <= math.cos(math.pi - m)
    fallback = arcface_logits(embeddings, weight, torch.tensor([1, 1]), scale=s, margin=m)
    assert fallback[0, 1].item() == pytest.approx(s * (cos[0][1] - math.sin(math.pi - m) * m), abs=1e-10)
    assert fallback[0, 0].item() == pytest.approx(s * cos[0][0], abs=1e-10)
    # margin 0 is the scaled cosine classifier
    plain = arcface_logits(embeddings, weight, labels, scale=s, margin=0.0)
    torch.testing.assert_close(plain, s * _t(cos), atol=1e-10, rtol=0)


def test_arcface_logits_validates() -> None:
    embeddings, weight = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"num_classes=3"):
        arcface_logits(embeddings, weight, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\(2, 4\) and \(3, 5\)"):
        arcface_logits(embeddings, torch.randn(3, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\)"):
        arcface_logits(embeddings, weight, torch.tensor([0, 1, 2]))


def test_focal_loss_gamma0_is_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(focal_loss(logits, labels, gamma=0.0), F.cross_entropy(logits, labels))


def test_focal_loss_hand_case_is_the_factor_on_the_batch_mean() -> None:
    logits = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    labels = [0, 2]
    ce = (_ce(logits[0], 0) + _ce(logits[1], 2)) / 2  # TGFR's FocalLoss: CE of the batch first, then the factor
    expected = (1 - math.exp(-ce)) ** 2 * ce
    per_sample = sum((1 - math.exp(-_ce(row, label))) ** 2 * _ce(row, label) for row, label in zip(logits, labels)) / 2
    got = focal_loss(_t(logits), torch.tensor(labels), gamma=2.0)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    assert abs(expected - per_sample) > 1e-3  # the two definitions differ on this batch
    assert got.item() < F.cross_entropy(_t(logits), torch.tensor(labels)).item()
    with pytest.raises(ValueError, match=r"num_classes=3"):
        focal_loss(_t(logits), torch.tensor([0, -1]))


def test_arcface_head() -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(8, 5, scale=16.0, margin=0.3)
    assert head.num_classes == 5
    assert head.weight.shape == (5, 8)
    assert head.weight.abs().max().item() <= math.sqrt(6 / (8 + 5))  # xavier-uniform bound
    embeddings = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 2])
    logits = head(embeddings, labels)
    torch.testing.assert_close(logits, arcface_logits(embeddings, head.weight, labels, 16.0, 0.3))
    loss = head.loss(embeddings, labels)
    assert loss.item() == pytest.approx(focal_loss(logits, labels, 2.0).item())
    loss.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"num_classes=5"):
        head.loss(embeddings, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"\(4, 7\) and \(5, 8\)"):
        head(torch.randn(4, 7), labels)
