"""CMSN-style Semi-Positive Triplet loss (re-implementation, docs/methods.md#cmsn-losses).

Items of a batch: images v_0..v_{B-1} and texts t_0..t_{B-1}, row i being a matched pair with identity pid_i.
``s`` is the cosine similarity. Anchors and their sets:

* text anchor t_i (text -> image retrieval, the evaluated direction):
  positive v_i; semi-positives {v_j : j != i, pid_j == pid_i} (cross-modal) and {t_j : j != i, pid_j == pid_i}
  (intra-modal); negatives {v_j : pid_j != pid_i}, plus {t_j : pid_j != pid_i} only if ``text_negatives``.
* image anchor v_i: positive t_i; semi-positives {t_j : j != i, pid_j == pid_i} (cross-modal only: other
  images are never semi-positives of an image); negatives {t_j : pid_j != pid_i}.

Per anchor a, with n_hard its most similar negative (VSE++ hardest negative):
``l_a = max(0, margin - s(a, p) + s(a, n_hard)) + mean_{sp} max(0, semi_margin - s(a, sp) + s(a, n_hard))``;
the second term is dropped when a has no semi-positive, and ``l_a = 0`` when a has no negative.
``L = mean of l_a over all 2B anchors``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["spt_loss"]


def _anchor_losses(
    positive: Tensor, blocks: list[tuple[Tensor, Tensor, Tensor]], margin: float, semi_margin: float
) -> Tensor:
    """Per-anchor SPT terms.

    Args:
        positive: (B,) s(a, p) per anchor.
        blocks: candidate groups ``(sim (B, N), semi_mask (B, N), negative_mask (B, N))``, concatenated along N.
        margin, semi_margin: hinge margins.

    Returns:
        (B,) per-anchor losses.
    """
    sims = torch.cat([sim for sim, _, _ in blocks], dim=1)
    semi = torch.cat([mask for _, mask, _ in blocks], dim=1)
    negative = torch.cat([mask for _, _, mask in blocks], dim=1)
    has_negative = negative.any(dim=1)
    hardest = sims.masked_fill(~negative, float("-inf")).max(dim=1).values
    hardest = torch.where(has_negative, hardest, torch.zeros_like(hardest))  # rows without negatives: dropped below
    main = F.relu(margin - positive + hardest)
    semi_hinges = F.relu(semi_margin - sims + hardest.unsqueeze(1)) * semi.to(sims.dtype)
    semi_term = semi_hinges.sum(dim=1) / semi.sum(dim=1).clamp(min=1).to(sims.dtype)
    return torch.where(has_negative, main + semi_term, torch.zeros_like(main))


def spt_loss(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    pids: Tensor,
    margin: float = 0.2,
    semi_margin: float = 0.1,
    text_negatives: bool = False,
) -> Tensor:
    """Semi-Positive Triplet loss in both directions (sets and formula in the module docstring).

    Args:
        image_embeddings: (B, D); L2-normalised inside. Row i is paired with text row i.
        text_embeddings: (B, D); L2-normalised inside.
        pids: (B,) identities. Semi-positives need >= 2 pairs per identity in the batch (P x K sampler).
        margin: hinge margin of the paired positive.
        semi_margin: hinge margin of the semi-positives.
        text_negatives: also count other-identity texts as negatives of a text anchor (default off: each
            anchor's negatives are other-modality items only, as in cross-modal VSE++).

    Returns:
        Scalar tensor (mean over the 2B anchors).
    """
    if image_embeddings.dim() != 2 or image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            "expected image and text embeddings of the same shape (B, D), got "
            f"{tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    batch = image_embeddings.shape[0]
    if batch == 0:
        raise ValueError("spt_loss needs a non-empty batch")
    if pids.shape != (batch,):
        raise ValueError(f"expected pids of shape ({batch},), got {tuple(pids.shape)}")

    image = F.normalize(image_embeddings, dim=-1)
    text = F.normalize(text_embeddings, dim=-1)
    text_image = text @ image.t()  # (B, B): row = text anchor, column = image
    text_text = text @ text.t()
    same = pids.view(-1, 1) == pids.view(1, -1)
    eye = torch.eye(batch, dtype=torch.bool, device=same.device)
    semi = same & ~eye
    negative = ~same
    positive = text_image.diagonal()

    text_anchor = _anchor_losses(
        positive,
        [(text_image, semi, negative), (text_text, semi, negative if text_negatives else torch.zeros_like(negative))],
        margin,
        semi_margin,
    )
    image_anchor = _anchor_losses(positive, [(text_image.t(), semi, negative)], margin, semi_margin)
    return torch.cat([text_anchor, image_anchor]).mean()
