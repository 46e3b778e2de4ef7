"""IRRA's masked-language-modelling target: token masking and the masked-position loss.

See docs/methods.md#irra-architecture-and-losses.

Token ids follow CLIP's BPE with IRRA's mask token: pad 0, ``<|mask|>`` 49405, SOT 49406, EOT 49407,
vocabulary 49408. Label 0 means "ignore" (pad is never a target).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_tokens", "mlm_loss"]

MASK_TOKEN_ID = 49405
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0


def mask_tokens(
    input_ids: Tensor,
    probability: float = 0.15,
    mask_token_id: int = MASK_TOKEN_ID,
    vocab_low: int = 1,
    vocab_high: int = MASK_TOKEN_ID,
    special_ids: Sequence[int] = (PAD_TOKEN_ID, SOT_TOKEN_ID, EOT_TOKEN_ID),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """IRRA's MLM corruption of a batch of token ids (vectorised, no loop over tokens).

    Rule:
      * every real token (any id not in ``special_ids``) is picked independently with ``probability``;
      * a picked token becomes ``mask_token_id`` with probability 0.8, a uniform random id from
        ``[vocab_low, vocab_high)`` with probability 0.1 (it may coincide with the original), and stays
        unchanged with probability 0.1;
      * fallback: a caption with nothing picked gets position 1 picked and replaced by ``mask_token_id``
        (always the mask, as in IRRA) -- but only if position 1 holds a real token. A caption without a real
        token at position 1 (e.g. an empty caption ``SOT EOT pad...``, or a row of padding) is left unchanged
        with all labels 0, so it adds nothing to :func:`mlm_loss`. (IRRA's code would mask and label the EOT
        there; we never touch special tokens.)

    Args:
        input_ids: (B, L) integer token ids (SOT at position 0 for CLIP captions).
        probability: pick rate of real tokens, in [0, 1].
        mask_token_id: id written at masked positions.
        vocab_low: smallest random replacement id (inclusive).
        vocab_high: random replacement ids are ``< vocab_high`` (exclusive; default excludes mask/SOT/EOT).
        special_ids: ids never picked. Must contain 0, since label 0 means "ignore".
        generator: optional ``torch.Generator`` for reproducibility. Random numbers are drawn on the
            generator's device and moved to ``input_ids.device``, so a CPU generator works for CUDA inputs.

    Returns:
        ``(masked_ids, labels)``, both (B, L) with the dtype and device of ``input_ids``. ``labels`` holds the
        original id at picked positions and 0 elsewhere.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"expected input_ids of shape (B, L), got {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"expected integer token ids, got dtype {input_ids.dtype}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {probability}")
    if not vocab_low < vocab_high:
        raise ValueError(f"need vocab_low < vocab_high, got [{vocab_low}, {vocab_high})")
    if PAD_TOKEN_ID not in special_ids:
        raise ValueError("special_ids must contain 0 (pad): label 0 means 'ignore', so id 0 cannot be a target")

    device = input_ids.device
    draw_device = generator.device if generator is not None else device
    shape = input_ids.shape
    pick_u = torch.rand(shape, generator=generator, device=draw_device).to(device)
    action_u = torch.rand(shape, generator=generator, device=draw_device).to(device)
    random_ids = torch.randint(vocab_low, vocab_high, shape, generator=generator, device=draw_device).to(device)

    specials = torch.tensor(list(special_ids), dtype=input_ids.dtype, device=device)
    real = ~torch.isin(input_ids, specials)
    picked = real & (pick_u < probability)
    to_mask = picked & (action_u < 0.8)
    to_random = picked & (action_u >= 0.8) & (action_u < 0.9)

    if shape[1] > 1:  # fallback: position 1 of captions with nothing picked (if it is a real token)
        fallback = ~picked.any(dim=1) & real[:, 1]
        picked[:, 1] |= fallback
        to_mask[:, 1] |= fallback
        to_random[:, 1] &= ~fallback

    masked_ids = torch.where(to_random, random_ids.to(input_ids.dtype), input_ids)
    masked_ids = masked_ids.masked_fill(to_mask, mask_token_id)
    labels = torch.where(picked, input_ids, torch.zeros_like(input_ids))
    return masked_ids, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Vocabulary cross-entropy over labelled positions only (label 0 = ignore), mean over those positions.

    Args:
        logits: (B, L, V) or (N, V) scores; fp16/bf16 are upcast to fp32 (as IRRA does).
        labels: (B, L) or (N,) integer targets in [0, V); 0 marks positions without a target.

    Returns:
        Scalar tensor. With no labelled position it is 0 (not NaN), still connected to ``logits`` so that
        ``backward`` works (with a zero gradient).
    """
    if logits.dim() not in (2, 3) or labels.shape != logits.shape[:-1]:
        raise ValueError(
            "expected logits (B, L, V) with labels (B, L), or logits (N, V) with labels (N,); got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    vocab = logits.shape[-1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= vocab):
        raise ValueError(
            f"MLM labels must lie in [0, V={vocab}); got min {int(labels.min())}, max {int(labels.max())}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    flat_logits = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=0, reduction="sum")
    count = (flat_labels != 0).sum().clamp(min=1)
    return total / count
