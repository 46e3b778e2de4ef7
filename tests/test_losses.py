"""Hand-computed checks for the shared losses (xsearch.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from xsearch.losses import (
    IdentityClassifier,
    clamp_logit_scale,
    id_loss,
    info_nce,
    sdm_loss,
    weighted_sum,
)


def _softmax_row(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _cos_matrix(image: list[list[float]], text: list[list[float]]) -> list[list[float]]:
    def norm(v: list[float]) -> list[float]:
        length = math.sqrt(sum(x * x for x in v))
        return [x / length for x in v]

    image_n = [norm(v) for v in image]
    text_n = [norm(v) for v in text]
    return [[sum(a * b for a, b in zip(i, t)) for t in text_n] for i in image_n]


# ---------------------------------------------------------------- info_nce


def test_info_nce_hand_2x2() -> None:
    # cos(I, T) = [[1, 0.6], [0, 0.8]]; inputs are scaled to check the normalisation inside.
    image = torch.tensor([[3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    text = torch.tensor([[5.0, 0.0], [1.2, 1.6]], dtype=torch.float64)
    s = 2.0
    # logits (image -> text) = [[2, 1.2], [0, 1.6]]
    i2t = (
        -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
        - math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    ) / 2
    # transposed logits = [[2, 0], [1.2, 1.6]]
    t2i = (
        -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
        - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    ) / 2
    expected = 0.5 * (i2t + t2i)
    assert info_nce(image, text, s).item() == pytest.approx(expected, rel=1e-10)
    assert info_nce(image, text, torch.tensor(s, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-10)


def test_info_nce_symmetric_in_modalities() -> None:
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    pids = torch.tensor([0, 0, 1, 2, 2, 3])
    assert torch.allclose(info_nce(image, text, 10.0), info_nce(text, image, 10.0), atol=1e-6)
    assert torch.allclose(info_nce(image, text, 10.0, pids), info_nce(text, image, 10.0, pids), atol=1e-6)


def test_info_nce_identity_mask() -> None:
    gen = torch.Generator().manual_seed(1)
    image, text = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    plain = info_nce(image, text, 20.0)
    distinct = info_nce(image, text, 20.0, pids=torch.tensor([4, 1, 7, 2, 9]))
    assert torch.allclose(plain, distinct, atol=1e-6)
    duplicated = info_nce(image, text, 20.0, pids=torch.tensor([4, 4, 7, 2, 2]))
    assert duplicated < plain
    assert torch.isfinite(duplicated)


def test_info_nce_identity_mask_hand() -> None:
    # pids [1, 1]: each row keeps only its diagonal, so the loss is exactly 0.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert info_nce(image, text, 2.0, pids=torch.tensor([1, 1])).item() == pytest.approx(0.0, abs=1e-7)


def test_info_nce_gradients_and_learnable_scale() -> None:
    gen = torch.Generator().manual_seed(2)
    image = torch.randn(4, 8, generator=gen, requires_grad=True)
    text = torch.randn(4, 8, generator=gen, requires_grad=True)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    loss = info_nce(image, text, clamp_logit_scale(log_scale), pids=torch.tensor([0, 0, 1, 2]))
    loss.backward()
    for grad in (image.grad, text.grad, log_scale.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert log_scale.grad.abs() > 0


def test_clamp_logit_scale() -> None:
    assert clamp_logit_scale(math.log(1 / 0.07)) == pytest.approx(1 / 0.07)
    assert clamp_logit_scale(10.0) == 100.0
    clamped = clamp_logit_scale(torch.tensor(10.0), max_scale=50.0)
    assert isinstance(clamped, torch.Tensor) and clamped.item() == pytest.approx(50.0)


def test_info_nce_shape_errors() -> None:
    with pytest.raises(ValueError):
        info_nce(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), 1.0, pids=torch.tensor([0, 1]))


# ---------------------------------------------------------------- SDM


def _sdm_by_hand(image: list[list[float]], text: list[list[float]], pids: list[int], s: float, eps: float) -> float:
    batch = len(pids)
    cos = _cos_matrix(image, text)
    y = [[1.0 if pids[i] == pids[j] else 0.0 for j in range(batch)] for i in range(batch)]
    q = [[y[i][j] / sum(y[i]) for j in range(batch)] for i in range(batch)]
    total = 0.0
    for sim in (cos, [list(col) for col in zip(*cos)]):  # i2t, then t2i on the transpose
        direction = 0.0
        for i in range(batch):
            p = _softmax_row([s * sim[i][j] for j in range(batch)])
            for j in range(batch):
                direction += p[j] * (math.log(p[j]) - math.log(q[i][j] + eps))
        total += direction / batch
    return total


IMAGE_4 = [[1.0, 0.2, 0.0], [0.8, 0.5, 0.1], [0.0, 1.0, 0.3], [0.2, 0.1, 1.0]]
TEXT_4 = [[0.9, 0.1, 0.2], [1.0, 0.4, 0.0], [0.1, 0.9, 0.1], [0.3, 0.3, 0.8]]


def test_sdm_hand_4x4_two_identities() -> None:
    pids = [1, 1, 2, 3]
    for s in (5.0, 50.0):
        expected = _sdm_by_hand(IMAGE_4, TEXT_4, pids, s, 1e-8)
        got = sdm_loss(
            torch.tensor(IMAGE_4, dtype=torch.float64),
            torch.tensor(TEXT_4, dtype=torch.float64),
            torch.tensor(pids),
            logit_scale=s,
        )
        assert got.item() == pytest.approx(expected, rel=1e-9)


def test_sdm_default_scale_is_50() -> None:
    image, text, pids = torch.tensor(IMAGE_4), torch.tensor(TEXT_4), torch.tensor([1, 1, 2, 3])
    assert torch.allclose(sdm_loss(image, text, pids), sdm_loss(image, text, pids, logit_scale=50.0))


def test_sdm_symmetric_in_modalities() -> None:
    gen = torch.Generator().manual_seed(3)
    image, text = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    pids = torch.tensor([0, 0, 1, 2, 2, 2])
    assert torch.allclose(sdm_loss(image, text, pids), sdm_loss(text, image, pids), atol=1e-5)


def test_sdm_all_distinct_pids_is_reverse_kl_to_one_hot() -> None:
    # q is one-hot, so L_i2t = (1/B) sum_i [sum_j p_ij log p_ij - p_ii log(1 + eps) - (1 - p_ii) log eps]:
    # KL(p || one-hot), not cross-entropy (the prediction comes first in IRRA's KL).
    eps, s = 1e-8, 5.0
    image = torch.tensor(IMAGE_4, dtype=torch.float64)
    text = torch.tensor(TEXT_4, dtype=torch.float64)
    cos = _cos_matrix(IMAGE_4, TEXT_4)
    expected = 0.0
    for sim in (cos, [list(col) for col in zip(*cos)]):
        for i in range(4):
            p = _softmax_row([s * v for v in sim[i]])
            neg_entropy = sum(pj * math.log(pj) for pj in p)
            expected += (neg_entropy - p[i] * math.log(1 + eps) - (1 - p[i]) * math.log(eps)) / 4
    got = sdm_loss(image, text, torch.tensor([0, 1, 2, 3]), logit_scale=s, epsilon=eps)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_sdm_near_zero_when_matched() -> None:
    # Orthogonal matched pairs with a large scale: p ~ q (one-hot) in both directions, so the loss ~ 0,
    # like cross-entropy in the same limit.
    eye = torch.eye(4, dtype=torch.float64)
    assert sdm_loss(eye, eye, torch.tensor([0, 1, 2, 3]), logit_scale=50.0).item() < 1e-10


def test_sdm_gradients() -> None:
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(4, 8, generator=gen, requires_grad=True)
    text = torch.randn(4, 8, generator=gen, requires_grad=True)
    scale = torch.tensor(50.0, requires_grad=True)
    sdm_loss(image, text, torch.tensor([1, 1, 2, 3]), logit_scale=scale).backward()
    for grad in (image.grad, text.grad, scale.grad):
        assert grad is not None and torch.isfinite(grad).all()


# ---------------------------------------------------------------- identity


def test_id_loss_hand() -> None:
    logits_image = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    logits_text = torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    ce_image = (
        -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(1))) - math.log(1 / 3)
    ) / 2
    ce_text = (-math.log(1 / 3) - math.log(math.exp(3) / (1 + math.exp(3) + math.exp(-1)))) / 2
    expected = 0.5 * (ce_image + ce_text)
    assert id_loss(logits_image, logits_text, labels).item() == pytest.approx(expected, rel=1e-10)


def test_identity_classifier_init_and_sharing() -> None:
    torch.manual_seed(0)
    head = IdentityClassifier(512, 1000)
    assert head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert abs(head.classifier.weight.mean().item()) < 1e-4
    assert torch.count_nonzero(head.classifier.bias) == 0
    assert len(list(head.parameters())) == 2  # one Linear shared by both modalities
    features = torch.randn(3, 512)
    assert head(features).shape == (3, 1000)


def test_identity_classifier_loss_and_gradient() -> None:
    torch.manual_seed(0)
    head = IdentityClassifier(8, 5)
    image = torch.randn(4, 8, requires_grad=True)
    text = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 2])
    loss = head.loss(image, text, labels)
    assert torch.allclose(loss, id_loss(head(image), head(text), labels))
    loss.backward()
    assert head.classifier.weight.grad is not None and torch.isfinite(head.classifier.weight.grad).all()
    assert image.grad is not None and text.grad is not None


def test_identity_bad_label_raises() -> None:
    head = IdentityClassifier(8, 5)
    features = torch.randn(2, 8)
    with pytest.raises(ValueError, match="max label 5"):
        head.loss(features, features, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="num_classes=5"):
        head.loss(features, features, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="max label 7"):
        id_loss(torch.zeros(2, 5), torch.zeros(2, 5), torch.tensor([7, 0]))


# ---------------------------------------------------------------- weighted_sum


def test_weighted_sum() -> None:
    terms = {"sdm": torch.tensor(2.0), "id": torch.tensor(3.0), "mlm": torch.tensor(7.0)}
    out = weighted_sum(terms, {"sdm": 1.0, "id": 0.5, "mlm": 0.0, "unused": 4.0})
    assert out["loss"].item() == pytest.approx(3.5)
    assert {k: v.item() for k, v in out.items() if k != "loss"} == {"sdm": 2.0, "id": 3.0, "mlm": 7.0}
    assert "loss" not in terms  # input untouched
    zero = weighted_sum({"a": torch.tensor(1.0)}, {"a": 0.0})
    assert zero["loss"].item() == 0.0
    with pytest.raises(KeyError, match="id"):
        weighted_sum({"id": torch.tensor(1.0)}, {"sdm": 1.0})
    with pytest.raises(ValueError):
        weighted_sum({"loss": torch.tensor(1.0)}, {"loss": 1.0})
