"""Contrastive image-text losses shared by all methods (docs/methods.md#shared-losses).

All losses are pure functions: tensors in, scalar tensor out. Embeddings are L2-normalised inside every loss,
so callers may pass raw projections.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossOutput", "clamp_logit_scale", "info_nce", "sdm_from_similarity", "sdm_loss", "weighted_sum"]

LossOutput = dict[str, Tensor]
"""Convention for every method's loss: named terms plus key ``"loss"`` (their weighted sum)."""


def _check_pair(image_embeddings: Tensor, text_embeddings: Tensor) -> None:
    if image_embeddings.dim() != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            "expected image and text embeddings of the same shape (B, D), got "
            f"{tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )


def _check_pids(pids: Tensor, batch_size: int) -> None:
    if pids.dim() != 1 or pids.shape[0] != batch_size:
        raise ValueError(f"expected pids of shape ({batch_size},), got {tuple(pids.shape)}")


def _cosine_similarity(image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
    """(B, D), (B, D) -> (B, B) cosine similarities, rows = images, columns = texts."""
    image_norm = F.normalize(image_embeddings, dim=-1)
    text_norm = F.normalize(text_embeddings, dim=-1)
    return image_norm @ text_norm.t()


def clamp_logit_scale(log_scale: Tensor | float, max_scale: float = 100.0) -> Tensor | float:
    """Turn a (learnable) log temperature into the logit multiplier ``s = min(exp(log_scale), max_scale)``.

    Args:
        log_scale: scalar tensor (e.g. an ``nn.Parameter`` initialised at ``log(1 / 0.07)``) or a float.
        max_scale: upper bound on ``s`` (CLIP uses 100).

    Returns:
        ``s`` with the same kind as ``log_scale`` (tensor in, tensor out). Gradient flows while unclamped.
    """
    if isinstance(log_scale, Tensor):
        return log_scale.exp().clamp(max=max_scale)
    return min(math.exp(log_scale), max_scale)


def info_nce(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    logit_scale: Tensor | float,
    pids: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE / ITC: ``1/2 [CE(s I T^T, arange(B)) + CE(s T I^T, arange(B))]``.

    Args:
        image_embeddings: (B, D); L2-normalised inside.
        text_embeddings: (B, D); L2-normalised inside. Row i is the positive of image row i.
        logit_scale: the multiplier ``s = 1 / tau`` (float, or scalar tensor when learnable; see
            :func:`clamp_logit_scale`).
        pids: optional (B,) identities. When given, off-diagonal pairs with the same identity are not treated
            as negatives: they are masked out of the softmax denominator (the diagonal stays the only target).
            With all pids distinct this equals the plain loss.

    Returns:
        Scalar tensor (mean over the batch, averaged over both directions).
    """
    _check_pair(image_embeddings, text_embeddings)
    batch_size = image_embeddings.shape[0]
    logits = logit_scale * _cosine_similarity(image_embeddings, text_embeddings)  # (B, B) image -> text
    if pids is not None:
        _check_pids(pids, batch_size)
        same_identity = pids.view(-1, 1) == pids.view(1, -1)
        eye = torch.eye(batch_size, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same_identity & ~eye, float("-inf"))  # symmetric mask
    targets = torch.arange(batch_size, device=logits.device)
    loss_i2t = F.cross_entropy(logits, targets)
    loss_t2i = F.cross_entropy(logits.t(), targets)
    return 0.5 * (loss_i2t + loss_t2i)


def entity_info_nce(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    pids: Tensor,
    logit_scale: Tensor | float,
    targets: str = "softmax",
) -> Tensor:
    """Id-CLIP's entity-aware InfoNCE: every same-identity pair in the batch is a positive.

    With ``M_ij = [pid_i == pid_j]`` (float 0/1) and ``S = s I T^T`` (rows images, columns texts):

    * ``softmax`` (the authors' ``InfoNCELossEntityAware``): ``1/2 [CE(S, softmax_row(M)) + CE(S^T, softmax_row(M^T))]``
      with soft targets. ``softmax`` of a 0/1 row keeps a little mass (``1/e`` of a positive's) on every negative,
      as the authors compute it. Their text direction takes ``softmax(M, dim=0)`` row by row, which is not a
      distribution when identities repeat unevenly; xsearch uses its transpose (the column-wise softmax read
      as rows), which is what a symmetric loss means and equal to theirs for symmetric ``M``.
    * ``bce``: ``BCE-with-logits(S, M)`` averaged over all ``B x B`` pairs (the ``info-nce-entity-bce`` setup).

    Args:
        image_embeddings, text_embeddings: (B, D), L2-normalised inside; row i of each is one training pair.
        pids: (B,) identities.
        logit_scale: ``s = 1 / tau``.

    Returns:
        Scalar tensor. With all pids distinct, ``softmax`` is a label-smoothed :func:`info_nce`.
    """
    _check_pair(image_embeddings, text_embeddings)
    _check_pids(pids, image_embeddings.shape[0])
    logits = logit_scale * _cosine_similarity(image_embeddings, text_embeddings)  # (B, B)
    same = (pids.view(-1, 1) == pids.view(1, -1)).to(logits.dtype)
    if targets == "softmax":
        return 0.5 * (F.cross_entropy(logits, same.softmax(dim=1)) + F.cross_entropy(logits.t(), same.t().softmax(dim=1)))
    if targets == "bce":
        return F.binary_cross_entropy_with_logits(logits, same)
    raise ValueError(f"targets must be 'softmax' or 'bce', got {targets!r}")


def sdm_loss(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    pids: Tensor,
    logit_scale: Tensor | float = 50.0,
    epsilon: float = 1e-8,
) -> Tensor:
    """Similarity Distribution Matching (IRRA): KL(p || q) in both directions, summed.

    ``y_ij = [pid_i == pid_j]``, ``q_ij = y_ij / sum_k y_ik``, ``p_ij = softmax_j(s cos(f^v_i, f^t_j))``,
    ``L_i2t = (1/B) sum_i sum_j p_ij (log p_ij - log(q_ij + epsilon))``; ``L_t2i`` is the same on the
    transposed similarity. Note the prediction comes first in the KL (IRRA's choice), so this is *not*
    cross-entropy even when all pids differ.

    Args:
        image_embeddings: (B, D); L2-normalised inside.
        text_embeddings: (B, D); L2-normalised inside.
        pids: (B,) identities.
        logit_scale: ``s = 1 / tau``; IRRA uses a constant 50 (tau 0.02).
        epsilon: added to q inside the log.

    Returns:
        Scalar tensor ``L_i2t + L_t2i``.
    """
    _check_pair(image_embeddings, text_embeddings)
    _check_pids(pids, image_embeddings.shape[0])
    return sdm_from_similarity(_cosine_similarity(image_embeddings, text_embeddings), pids, logit_scale, epsilon)


def sdm_from_similarity(
    similarity: Tensor,
    pids: Tensor,
    logit_scale: Tensor | float = 50.0,
    epsilon: float = 1e-8,
) -> Tensor:
    """SDM (see :func:`sdm_loss`) on a precomputed image -> text similarity matrix.

    Args:
        similarity: (..., B, B), ``similarity[..., i, j]`` = similarity of image i and text j (e.g. a cosine,
            or a mean of per-part cosines). Leading dimensions are independent problems sharing ``pids``.
        pids: (B,) identities.
        logit_scale: ``s = 1 / tau``; the logits are ``s * similarity``.
        epsilon: added to q inside the log.

    Returns:
        Tensor of shape ``similarity.shape[:-2]`` (a scalar for a (B, B) input): ``L_i2t + L_t2i`` per problem.
    """
    if similarity.dim() < 2 or similarity.shape[-1] != similarity.shape[-2]:
        raise ValueError(f"expected a similarity of shape (..., B, B), got {tuple(similarity.shape)}")
    _check_pids(pids, similarity.shape[-1])
    logits = logit_scale * similarity  # (..., B, B) image -> text
    labels = (pids.view(-1, 1) == pids.view(1, -1)).to(logits.dtype)  # symmetric
    log_target = torch.log(labels / labels.sum(dim=1, keepdim=True) + epsilon)

    def _direction(direction_logits: Tensor) -> Tensor:
        log_prob = F.log_softmax(direction_logits, dim=-1)
        return (log_prob.exp() * (log_prob - log_target)).sum(dim=-1).mean(dim=-1)

    return _direction(logits) + _direction(logits.transpose(-1, -2))


def weighted_sum(terms: dict[str, Tensor], weights: dict[str, float]) -> LossOutput:
    """Combine named loss terms into the ``LossOutput`` convention.

    Args:
        terms: named scalar loss tensors. Every term needs an entry in ``weights``; ``"loss"`` is reserved.
        weights: weight per term name; may hold extra names (terms a method did not compute). Terms with
            weight 0 are returned as given (for logging) but excluded from the sum.

    Returns:
        A new dict with all ``terms`` plus ``"loss" = sum(weights[k] * terms[k])`` over nonzero weights
        (a zero scalar if none).
    """
    if "loss" in terms:
        raise ValueError('"loss" is reserved for the weighted sum; rename that term')
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"no weight given for loss terms {missing}; known weights: {sorted(weights)}")
    if not terms:
        raise ValueError("weighted_sum needs at least one term")
    total: Tensor | None = None
    for name, term in terms.items():
        weight = weights[name]
        if weight == 0:
            continue
        contribution = weight * term
        total = contribution if total is None else total + contribution
    if total is None:
        first = next(iter(terms.values()))
        total = torch.zeros((), dtype=first.dtype, device=first.device)
    return {**terms, "loss": total}
