"""CMSN-style Combined-Representation Identity Alignment loss (re-implementation, docs/methods.md#cmsn-losses).

``L_cria = CE part + center_weight * center part``:

* CE part: one shared, bias-free *cosine* classifier. Features and class rows are both L2-normalised and the
  cosines are multiplied by ``logit_scale``: ``logits = s * norm(f) @ norm(W)^T``; CE on f_v, f_t, f_c,
  averaged over the three. The rows of W act as learnable identity centres shared by the three feature types.
* Center part: for every identity y present in the batch, the means c_v(y), c_t(y), c_c(y) of the L2-normalised
  features of that identity per feature type; penalty
  ``mean_y [(1 - cos(c_v, c_c)) + (1 - cos(c_t, c_c)) + (1 - cos(c_v, c_t))]`` (identities weighted equally,
  whatever their number of samples). It is 0 exactly when the three means of every identity point the same way.

Why a scale: with normalised features *and* weights the logits lie in [-1, 1], and CE over ~11k classes could not
fall much below log(11k) ~ 9.3, so the class-probability gradient would stay saturated. NormFace (Wang et al.
2017) shows the scale must exceed ``log((C - 1) P / (1 - P))`` for a sample sitting on its centre to reach
probability P: ~13.9 for C = 11,003 and P = 0.99. The default 30 clears that with room for a margin between
classes and is the common value for normalised-softmax classifiers (CosFace/AM-softmax use 30-64); 50
(SDM's 1/0.02) works too. A scalar tensor may be passed for a learnable scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.losses.contrastive import LossOutput
from xsearch.losses.identity import check_labels

__all__ = ["IdentityCenters", "cria_loss", "cria_center_loss", "cosine_logits"]

DEFAULT_CRIA_SCALE = 30.0


def cosine_logits(embeddings: Tensor, centers: Tensor, logit_scale: Tensor | float = DEFAULT_CRIA_SCALE) -> Tensor:
    """(B, D) features, (C, D) class centres -> (B, C) logits ``s * cos(f_i, w_c)``."""
    if embeddings.dim() != 2 or centers.dim() != 2 or embeddings.shape[1] != centers.shape[1]:
        raise ValueError(
            f"expected embeddings (B, D) and centers (C, D), got {tuple(embeddings.shape)} and "
            f"{tuple(centers.shape)}"
        )
    return logit_scale * (F.normalize(embeddings, dim=-1) @ F.normalize(centers, dim=-1).t())


def cria_center_loss(
    image_embeddings: Tensor, text_embeddings: Tensor, combined_embeddings: Tensor, labels: Tensor
) -> Tensor:
    """Center-consistency part of CRIA (vectorised; no ``unique``, no host sync).

    Args:
        image_embeddings, text_embeddings, combined_embeddings: (B, D) each; L2-normalised inside.
        labels: (B,) identities (any integers; only equality matters).

    Returns:
        Scalar ``mean_y [(1 - cos(c_v, c_c)) + (1 - cos(c_t, c_c)) + (1 - cos(c_v, c_t))]`` over the identities
        in the batch, where ``c_m(y)`` is the mean of the normalised features of identity y in modality m.
    """
    _check_three(image_embeddings, text_embeddings, combined_embeddings, labels)
    same = (labels.view(-1, 1) == labels.view(1, -1)).to(image_embeddings.dtype)  # (B, B)
    counts = same.sum(dim=1)  # samples of row i's identity
    # Row i holds the centre of row i's identity; each identity appears counts[i] times, so weighting rows by
    # 1 / counts gives every identity weight 1, and sum(1 / counts) is the number of identities.
    centres = [
        same @ F.normalize(f, dim=-1) / counts.unsqueeze(1)
        for f in (image_embeddings, text_embeddings, combined_embeddings)
    ]
    c_v, c_t, c_c = (F.normalize(c, dim=-1) for c in centres)
    per_row = (1 - (c_v * c_c).sum(-1)) + (1 - (c_t * c_c).sum(-1)) + (1 - (c_v * c_t).sum(-1))
    weights = 1.0 / counts
    return (per_row * weights).sum() / weights.sum()


def cria_loss(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    combined_embeddings: Tensor,
    labels: Tensor,
    centers: Tensor,
    center_weight: float = 1.0,
    logit_scale: Tensor | float = DEFAULT_CRIA_SCALE,
) -> LossOutput:
    """CRIA = cosine-classifier CE on f_v, f_t, f_c (averaged) + ``center_weight`` x center consistency.

    Args:
        image_embeddings: (B, D) f_v. text_embeddings: (B, D) f_t. combined_embeddings: (B, D) f_c.
        labels: (B,) training identity ids in [0, C).
        centers: (C, D) weight of the shared bias-free classifier (rows = identity centres); normalised inside.
        center_weight: weight of the center part in ``"loss"``.
        logit_scale: multiplier of the cosine logits (see the module docstring for the default 30).

    Returns:
        ``{"cria_ce": CE part, "cria_center": center part, "loss": cria_ce + center_weight * cria_center}``.
    """
    _check_three(image_embeddings, text_embeddings, combined_embeddings, labels)
    if centers.dim() != 2 or centers.shape[1] != image_embeddings.shape[1]:
        raise ValueError(
            f"expected centers of shape (C, {image_embeddings.shape[1]}), got {tuple(centers.shape)}"
        )
    check_labels(labels, centers.shape[0])
    ce = sum(
        F.cross_entropy(cosine_logits(f, centers, logit_scale), labels)
        for f in (image_embeddings, text_embeddings, combined_embeddings)
    ) / 3
    center = cria_center_loss(image_embeddings, text_embeddings, combined_embeddings, labels)
    return {"cria_ce": ce, "cria_center": center, "loss": ce + center_weight * center}


def _check_three(
    image_embeddings: Tensor, text_embeddings: Tensor, combined_embeddings: Tensor, labels: Tensor
) -> None:
    if (
        image_embeddings.dim() != 2
        or text_embeddings.shape != image_embeddings.shape
        or combined_embeddings.shape != image_embeddings.shape
    ):
        raise ValueError(
            "expected image, text and combined embeddings of the same shape (B, D), got "
            f"{tuple(image_embeddings.shape)}, {tuple(text_embeddings.shape)} and {tuple(combined_embeddings.shape)}"
        )
    if labels.shape != (image_embeddings.shape[0],):
        raise ValueError(f"expected labels of shape ({image_embeddings.shape[0]},), got {tuple(labels.shape)}")


class IdentityCenters(nn.Module):
    """Learnable identity centres (C, D) for CRIA: a bias-free cosine classifier shared by f_v, f_t, f_c.

    Rows are initialised N(0, 1/D), i.e. roughly unit norm, so optimiser steps change their directions at a
    moderate rate (only directions matter in a cosine classifier).
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        logit_scale: float = DEFAULT_CRIA_SCALE,
        center_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or embed_dim < 1:
            raise ValueError(f"embed_dim and num_classes must be positive, got {embed_dim} and {num_classes}")
        self.num_classes = num_classes
        self.logit_scale = logit_scale
        self.center_weight = center_weight
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * embed_dim**-0.5)

    def forward(self, embeddings: Tensor) -> Tensor:
        """(B, embed_dim) -> (B, num_classes) scaled cosine logits."""
        return cosine_logits(embeddings, self.weight, self.logit_scale)

    def loss(
        self, image_embeddings: Tensor, text_embeddings: Tensor, combined_embeddings: Tensor, labels: Tensor
    ) -> LossOutput:
        """:func:`cria_loss` with these centres; inputs (B, embed_dim), labels (B,)."""
        return cria_loss(
            image_embeddings,
            text_embeddings,
            combined_embeddings,
            labels,
            self.weight,
            center_weight=self.center_weight,
            logit_scale=self.logit_scale,
        )
