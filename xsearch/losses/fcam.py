"""TGFR losses (Hasan et al., WACV 2024, text-guided face recognition): FCAM alignment and identity heads.

Stage 1 (FCAM, fine-grained cross-modal alignment) trains the image and text encoders with the DAMSM losses of
AttnGAN (Xu et al. 2018):

* :func:`word_region_loss`: every word attends over the image regions; the image-caption score
  :func:`word_region_similarity` pools the word-context cosines with a log-sum-exp; symmetric CE on the (B, B)
  score matrix with the diagonal as targets.
* :func:`sentence_image_loss` / :func:`global_contrastive_loss`: symmetric CE on scaled cosines of global image
  and sentence features.

The identity heads are an ArcFace margin classifier (:func:`arcface_logits`, insightface's ``ArcMarginProduct``
with ``easy_margin=False``) trained with a focal loss (:func:`focal_loss`); :class:`ArcFaceHead` owns the class
weights.

All functions are pure: tensors in, tensor out. Losses are means over the batch (CE terms of both directions are
summed, as in AttnGAN / TGFR, not averaged).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.losses.contrastive import info_nce
from xsearch.losses.cria import cosine_logits
from xsearch.losses.identity import check_labels

__all__ = [
    "ArcFaceHead",
    "arcface_logits",
    "focal_loss",
    "global_contrastive_loss",
    "sentence_image_loss",
    "word_region_loss",
    "word_region_similarity",
]

_COSINE_EPS = 1e-8


def _check_words_regions(words: Tensor, word_mask: Tensor, regions: Tensor) -> None:
    if (
        words.dim() != 3
        or regions.dim() != 3
        or words.shape[0] != regions.shape[0]
        or words.shape[2] != regions.shape[2]
    ):
        raise ValueError(
            "expected words (B, T, D) and regions (B, R, D) with the same B and D, got "
            f"{tuple(words.shape)} and {tuple(regions.shape)}"
        )
    if word_mask.shape != words.shape[:2]:
        raise ValueError(
            f"expected word_mask of shape {tuple(words.shape[:2])} (B, T), got {tuple(word_mask.shape)}"
        )
    if word_mask.dtype != torch.bool:
        raise ValueError(f"expected a bool word_mask (True = real word), got dtype {word_mask.dtype}")
    if words.shape[0] > 0 and not bool(word_mask.any(dim=1).all()):
        empty = (~word_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"every caption needs at least one real word; captions {empty} have none")


def word_region_similarity(
    words: Tensor,
    word_mask: Tensor,
    regions: Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
) -> Tensor:
    """DAMSM word-level image-caption scores for all pairs of a batch (AttnGAN ``func_attention`` + ``words_loss``).

    For image k and caption i, with ``s_tr = e_t . v_r`` (word t of caption i, region r of image k):
    ``a_tr = softmax_t(s_tr)`` over the real words, ``alpha_tr = softmax_r(gamma1 * a_tr)``,
    ``c_t = sum_r alpha_tr v_r`` and ``S[k, i] = log sum_{t real} exp(gamma2 * cos(c_t, e_t))``.
    Padded words take no part anywhere (their values are ignored, even if non-finite).

    Args:
        words: (B, T, D) word features of B captions.
        word_mask: (B, T) bool, True = real word, False = padding; every caption needs >= 1 real word.
        regions: (B, R, D) region features of B images (e.g. R = 196 for a 14 x 14 map).
        gamma1: sharpness of the attention over regions.
        gamma2: sharpness of the pooling over words.

    Returns:
        (B_img, B_cap) scores; row k = image k, column i = caption i. Builds (B, B, T, R) and (B, B, T, D)
        intermediates (fine for B <= 64).
    """
    _check_words_regions(words, word_mask, regions)
    real = word_mask.unsqueeze(-1)  # (B, T, 1)
    words = words.masked_fill(~real, 0.0)  # padded garbage (even NaN / inf) cannot leak
    # scores[k, i, t, r] = e_{i,t} . v_{k,r}
    scores = torch.einsum("itd,krd->kitr", words, regions)  # (B_img, B_cap, T, R)
    scores = scores.masked_fill(~real.unsqueeze(0), float("-inf"))  # mask (1, B_cap, T, 1)
    attn = scores.softmax(dim=2)  # over the real words of caption i, per region
    attn = (gamma1 * attn).softmax(dim=3)  # over the regions, per word
    context = attn @ regions.unsqueeze(1)  # (B_img, B_cap, T, R) @ (B_img, 1, R, D) -> (B_img, B_cap, T, D)
    cosine = F.cosine_similarity(context, words.unsqueeze(0), dim=-1, eps=_COSINE_EPS)  # (B_img, B_cap, T)
    pooled = (gamma2 * cosine).masked_fill(~word_mask.unsqueeze(0), float("-inf"))
    return torch.logsumexp(pooled, dim=2)


def word_region_loss(
    words: Tensor,
    word_mask: Tensor,
    regions: Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    gamma3: float = 10.0,
) -> Tensor:
    """DAMSM word loss: ``CE(gamma3 S, arange(B)) + CE(gamma3 S^T, arange(B))`` with S from
    :func:`word_region_similarity`.

    Diagonal targets only; same-identity pairs are not masked (TGFR's code comments that mask out for the word
    loss).

    Args:
        words: (B, T, D). word_mask: (B, T) bool. regions: (B, R, D). See :func:`word_region_similarity`.
        gamma1, gamma2: as in :func:`word_region_similarity`.
        gamma3: multiplier of the scores in the logits.

    Returns:
        Scalar tensor (image -> caption plus caption -> image CE).
    """
    logits = gamma3 * word_region_similarity(words, word_mask, regions, gamma1, gamma2)  # (B_img, B_cap)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)


def sentence_image_loss(
    images: Tensor,
    sentences: Tensor,
    pids: Tensor | None = None,
    scale: float = 10.0,
) -> Tensor:
    """DAMSM sentence loss: ``CE(L, arange(B)) + CE(L^T, arange(B))`` with ``L[k, i] = scale * cos(image k,
    sentence i)``.

    Args:
        images: (B, D) global image features; normalised inside.
        sentences: (B, D) sentence features; normalised inside. Row i is the positive of image row i.
        pids: optional (B,) identities. When given, every off-diagonal pair of the same identity is set to
            -inf (left out of both softmaxes: not a negative); the diagonal stays the only target.
        scale: logit multiplier (AttnGAN's gamma3).

    Returns:
        Scalar tensor.
    """
    return 2.0 * info_nce(images, sentences, scale, pids)  # info_nce averages the two directions; TGFR sums them


def global_contrastive_loss(images: Tensor, sentences: Tensor, scale: float = 10.0) -> Tensor:
    """TGFR's global contrastive loss: :func:`sentence_image_loss` without identity masking.

    Args:
        images: (B, D). sentences: (B, D). scale: logit multiplier.

    Returns:
        Scalar tensor (TGFR weights it 2 in the total loss; the weight is the caller's).
    """
    return sentence_image_loss(images, sentences, pids=None, scale=scale)


def arcface_logits(
    embeddings: Tensor,
    weight: Tensor,
    labels: Tensor,
    scale: float = 30.0,
    margin: float = 0.5,
) -> Tensor:
    """ArcFace logits (insightface ``ArcMarginProduct``, ``easy_margin=False``).

    ``cos = norm(x) @ norm(W)^T``; the target class gets ``phi = cos(theta + m) = cos cos(m) - sin sin(m)``
    (``sin = sqrt(clamp(1 - cos^2, 0, 1))``), or ``cos - sin(pi - m) m`` where ``cos <= cos(pi - m)`` (there
    ``theta + m`` would pass pi and cos(theta + m) would rise again); the other classes keep ``cos``. All times
    ``scale``.

    Args:
        embeddings: (B, D) features; normalised inside.
        weight: (C, D) class weights; normalised inside.
        labels: (B,) integer class labels in [0, C).
        scale: logit multiplier s.
        margin: additive angular margin m (radians).

    Returns:
        (B, C) logits.
    """
    cosine = cosine_logits(embeddings, weight, 1.0)  # (B, C); checks the shapes
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"expected labels of shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    check_labels(labels, weight.shape[0])
    index = labels.long().unsqueeze(1)  # (B, 1)
    target_cos = cosine.gather(1, index)  # (B, 1); the margin only touches the target column
    sine = (1.0 - target_cos.pow(2)).clamp(0.0, 1.0).sqrt()
    phi = target_cos * math.cos(margin) - sine * math.sin(margin)
    threshold = math.cos(math.pi - margin)
    fallback = target_cos - math.sin(math.pi - margin) * margin
    phi = torch.where(target_cos > threshold, phi, fallback)
    return scale * cosine.scatter(1, index, phi)


def focal_loss(logits: Tensor, labels: Tensor, gamma: float = 2.0) -> Tensor:
    """TGFR's focal loss: the focal factor on the batch-mean cross-entropy, ``(1 - p)^gamma ce`` with
    ``ce = mean_i CE(logits_i, label_i)`` and ``p = exp(-ce)`` (the authors' ``FocalLoss`` around a mean-reduced
    ``CrossEntropyLoss``; not Lin et al.'s per-sample factor). ``gamma = 0`` is plain CE.

    Args:
        logits: (B, C) class logits.
        labels: (B,) integer labels in [0, C).
        gamma: focusing parameter (>= 0).

    Returns:
        Scalar tensor.
    """
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (B, C), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"expected labels of shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    check_labels(labels, logits.shape[1])
    ce = F.cross_entropy(logits, labels)  # scalar: the batch mean
    return (1.0 - torch.exp(-ce)).pow(gamma) * ce


class ArcFaceHead(nn.Module):
    """ArcFace classifier: class weights (num_classes, in_dim), xavier-uniform initialised.

    ``forward`` gives :func:`arcface_logits`; ``loss`` is :func:`focal_loss` on them (TGFR's identity loss).
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1 or in_dim < 1:
            raise ValueError(f"in_dim and num_classes must be positive, got {in_dim} and {num_classes}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """(B, in_dim) embeddings, (B,) labels -> (B, num_classes) ArcFace logits."""
        return arcface_logits(embeddings, self.weight, labels, self.scale, self.margin)

    def loss(self, embeddings: Tensor, labels: Tensor, gamma: float = 2.0) -> Tensor:
        """Scalar :func:`focal_loss` of the ArcFace logits; embeddings (B, in_dim), labels (B,)."""
        return focal_loss(self(embeddings, labels), labels, gamma)
