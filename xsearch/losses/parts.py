"""Losses of the part-level method (re-implementation, docs/methods.md#part-level-losses).

Inputs are part tokens from the shared-token decoder: ``image_parts`` P_v and ``text_parts`` P_t, both
(B, K, D), row i of both being a matched pair with identity ``pids[i]``; slot k is the same shared query in
both modalities. Parts are L2-normalised inside every function, so callers may pass raw tokens.

* :func:`part_sdm_loss` -- L_part: per-slot SDM averaged over k, and SDM on the aggregated part similarity
  ``s_part(i, j) = mean_k cos(P_v[i, k], P_t[j, k])``.
* :func:`part_commonality` -- ``c_k(i)``: how common part k of image i is across other identities (detached).
* :func:`cmr_loss` -- L_CMR: per-part margin ranking with margin ``max(min_margin, base_margin (1 - c_k(i)))``.
* :func:`part_diversity` -- mean off-diagonal cosine among one sample's K parts.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xsearch.losses.contrastive import sdm_from_similarity

__all__ = ["cmr_loss", "part_commonality", "part_diversity", "part_sdm_loss", "part_similarities"]

Negative = Literal["hardest", "semi_hard"]


def _check_parts(parts: Tensor, name: str = "parts") -> None:
    if parts.dim() != 3:
        raise ValueError(f"expected {name} of shape (B, K, D), got {tuple(parts.shape)}")
    if parts.shape[0] == 0 or parts.shape[1] == 0:
        raise ValueError(f"expected a non-empty batch and at least one part in {name}, got {tuple(parts.shape)}")


def _check_pair_and_pids(image_parts: Tensor, text_parts: Tensor, pids: Tensor) -> None:
    _check_parts(image_parts, "image_parts")
    if text_parts.shape != image_parts.shape:
        raise ValueError(
            "expected image_parts and text_parts of the same shape (B, K, D), got "
            f"{tuple(image_parts.shape)} and {tuple(text_parts.shape)}"
        )
    _check_pids(pids, image_parts.shape[0])


def _check_pids(pids: Tensor, batch: int) -> None:
    if pids.dim() != 1 or pids.shape[0] != batch:
        raise ValueError(f"expected pids of shape ({batch},), got {tuple(pids.shape)}")


def part_similarities(first: Tensor, second: Tensor) -> Tensor:
    """Per-part cosine similarities.

    Args:
        first: (B, K, D).
        second: (B', K, D).

    Returns:
        (K, B, B'): ``out[k, i, j] = cos(first[i, k], second[j, k])``.
    """
    return torch.einsum("ikd,jkd->kij", F.normalize(first, dim=-1), F.normalize(second, dim=-1))


def part_sdm_loss(
    image_parts: Tensor, text_parts: Tensor, pids: Tensor, logit_scale: Tensor | float = 50.0
) -> dict[str, Tensor]:
    """L_part: per-slot SDM and SDM on the aggregated part similarity.

    Args:
        image_parts: (B, K, D) P_v.
        text_parts: (B, K, D) P_t.
        pids: (B,) identities.
        logit_scale: ``s = 1 / tau`` (50 = tau 0.02), used for both terms.

    Returns:
        ``{"per_part": mean_k SDM(P_v[:, k], P_t[:, k]), "aggregated": SDM(s_part)}``, both scalars, where
        ``s_part(i, j) = mean_k cos(P_v[i, k], P_t[j, k])`` (image rows, text columns).
    """
    _check_pair_and_pids(image_parts, text_parts, pids)
    sims = part_similarities(image_parts, text_parts)  # (K, B, B) image -> text
    return {
        "per_part": sdm_from_similarity(sims, pids, logit_scale).mean(),
        "aggregated": sdm_from_similarity(sims.mean(dim=0), pids, logit_scale),
    }


@torch.no_grad()
def part_commonality(image_parts: Tensor, pids: Tensor) -> Tensor:
    """Commonality ``c_k(i) = mean_{j: pid_j != pid_i} max(0, cos(P_v[i, k], P_v[j, k]))`` (detached).

    Args:
        image_parts: (B, K, D) P_v.
        pids: (B,) identities.

    Returns:
        (B, K) values in [0, 1], no gradient. A common part ("black pants") -> ~1, a distinctive one -> ~0.
        Rows whose identity is the only one in the batch (no other-pid item) get 0, i.e. the full margin;
        in :func:`cmr_loss` such anchors have no negative and contribute 0 anyway.
    """
    _check_parts(image_parts, "image_parts")
    _check_pids(pids, image_parts.shape[0])
    sims = part_similarities(image_parts, image_parts).clamp(min=0)  # (K, B, B)
    other = (pids.view(-1, 1) != pids.view(1, -1)).to(sims.dtype)  # (B, B)
    total = (sims * other).sum(dim=-1)  # (K, B)
    count = other.sum(dim=-1).clamp(min=1)  # (B,); rows without other pids: total 0 -> c = 0
    return (total / count).t().detach()


def _ranking(sims: Tensor, margins: Tensor, negative_mask: Tensor, negative: Negative) -> Tensor:
    """Per-anchor, per-part hinge for one direction.

    Args:
        sims: (K, B, B), ``sims[k, i, j]`` = s_k(anchor i, candidate j); the positive is j = i.
        margins: (K, B) m_k(i).
        negative_mask: (B, B) True where candidate j is a negative of anchor i (other pid).
        negative: "hardest" or "semi_hard" (see :func:`cmr_loss`).

    Returns:
        (K, B) hinge values; 0 for anchors without negatives.
    """
    positive = sims.diagonal(dim1=-2, dim2=-1)  # (K, B)
    neg_inf = torch.tensor(float("-inf"), dtype=sims.dtype, device=sims.device)
    hardest = torch.where(negative_mask, sims, neg_inf).amax(dim=-1)  # (K, B)
    chosen = hardest
    if negative == "semi_hard":
        below = negative_mask & (sims < positive.unsqueeze(-1))  # (K, B, B)
        semi = torch.where(below, sims, neg_inf).amax(dim=-1)
        chosen = torch.where(below.any(dim=-1), semi, hardest)
    has_negative = negative_mask.any(dim=-1)  # (B,)
    chosen = torch.where(has_negative, chosen, positive)  # finite placeholder, masked out below
    hinge = F.relu(margins - positive + chosen)
    return hinge * has_negative.to(hinge.dtype)


def cmr_loss(
    image_parts: Tensor,
    text_parts: Tensor,
    pids: Tensor,
    base_margin: float = 0.2,
    min_margin: float = 0.05,
    negative: Negative = "hardest",
    commonality: Tensor | None = None,
) -> Tensor:
    """Commonality-based margin ranking loss L_CMR, both directions.

    Definitions (k a part, i an anchor, n a negative):

    * text -> image: ``s_k(i, j) = cos(P_t[i, k], P_v[j, k])``; image -> text: ``cos(P_v[i, k], P_t[j, k])``.
    * margin ``m_k(i) = max(min_margin, base_margin * (1 - c_k(i)))``, with the *image-side* commonality
      ``c_k(i)`` of pair i used for both directions (the pair shares one margin; how common a part looks is a
      visual property, and captions often omit parts).
    * negatives of anchor i: candidates j with ``pid_j != pid_i`` (same-pid items are never negatives).
      ``"hardest"``: n = argmax_j s_k(i, j) over negatives. ``"semi_hard"``: the hardest negative with
      ``s_k(i, n) < s_k(i, i)`` (strictly), falling back to the hardest negative when no negative is below the
      positive. Chosen per (i, k), deterministically (no random pick).
    * ``l_k(i) = max(0, m_k(i) - s_k(i, i) + s_k(i, n))``; anchors with no negative in the batch get 0.
    * ``L = 1/2 [mean_i sum_k l^{t->v}_k(i) + mean_i sum_k l^{v->t}_k(i)]`` (mean over all B anchors).

    Plain-margin ablation: pass ``commonality=torch.zeros(B, K)``, giving margin ``base_margin`` everywhere.

    Args:
        image_parts: (B, K, D) P_v.
        text_parts: (B, K, D) P_t.
        pids: (B,) identities.
        base_margin: margin of a fully distinctive part (c = 0).
        min_margin: floor of the margin (reached by common parts).
        negative: "hardest" or "semi_hard".
        commonality: optional (B, K) c_k(i) (e.g. from a running queue); default
            :func:`part_commonality` of the batch. Used detached.

    Returns:
        Scalar tensor.
    """
    _check_pair_and_pids(image_parts, text_parts, pids)
    if negative not in ("hardest", "semi_hard"):
        raise ValueError(f'negative must be "hardest" or "semi_hard", got {negative!r}')
    batch, parts = image_parts.shape[:2]
    if commonality is None:
        commonality = part_commonality(image_parts, pids)
    elif commonality.shape != (batch, parts):
        raise ValueError(f"expected commonality of shape ({batch}, {parts}), got {tuple(commonality.shape)}")
    margins = (base_margin * (1 - commonality.detach().to(image_parts))).clamp(min=min_margin).t()  # (K, B)

    negative_mask = pids.view(-1, 1) != pids.view(1, -1)  # (B, B), symmetric
    text_image = part_similarities(text_parts, image_parts)  # (K, B, B): text anchor i, image j
    text_to_image = _ranking(text_image, margins, negative_mask, negative)
    image_to_text = _ranking(text_image.transpose(-1, -2), margins, negative_mask, negative)
    return 0.5 * (text_to_image.sum(dim=0).mean() + image_to_text.sum(dim=0).mean())


def part_diversity(parts: Tensor) -> Tensor:
    """Diversity regulariser: mean off-diagonal cosine among each sample's K parts.

    Args:
        parts: (B, K, D), K >= 2.

    Returns:
        Scalar: ``mean_b 1/(K(K-1)) sum_{k != l} cos(parts[b, k], parts[b, l])``; 0 for mutually orthogonal
        parts, 1 for identical ones (can be negative, down to -1/(K-1)). Minimise it to spread the parts.
    """
    _check_parts(parts)
    count = parts.shape[1]
    if count < 2:
        raise ValueError(f"part_diversity needs at least 2 parts, got K={count}")
    unit = F.normalize(parts, dim=-1)
    gram = unit @ unit.transpose(-1, -2)  # (B, K, K)
    off_diagonal = gram.sum(dim=(-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return (off_diagonal / (count * (count - 1))).mean()
