"""The text tower's token head run on the real tokens of a padded batch only.

A token head is an ``nn.TransformerEncoder`` of pre-norm layers (``norm_first=True``, no dropout) over a text tower's
token states, after an input projection. In a batch padded to its longest caption, padding is a third of the rows
its linear layers multiply (a random quickstart batch: 30 real tokens a caption on average, padded to 48), and the
library's layer computes every one of them. :func:`run_token_head` gathers the real tokens into one ``(N, W)`` matrix
for the projections, the feed-forward block and the norms, and scatters them back only for the attention itself
(``scaled_dot_product_attention`` with the keys' padding as a boolean mask): the real tokens' outputs equal the
library's to float rounding, padding positions come out as zeros. On CPU the quickstart's whole training step is
1.07-1.23x faster for it (``benchmarks/quickstart_levers.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["run_token_head"]


def _packed_layer(layer: nn.TransformerEncoderLayer, x: Tensor, keep: Tensor, mask: Tensor) -> Tensor:
    """One pre-norm layer on ``(N, W)`` real tokens; ``keep`` ``(N,)`` their flat positions in the ``(B, L)``
    boolean ``mask`` (True = real token)."""
    attention = layer.self_attn
    batch, length = mask.shape
    width, heads = x.shape[1], attention.num_heads
    qkv = F.linear(layer.norm1(x), attention.in_proj_weight, attention.in_proj_bias)  # (N, 3W)
    padded = qkv.new_zeros(batch * length, 3 * width).index_copy(0, keep, qkv)
    q, k, v = padded.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # each (B, heads, L, W/heads)
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, heads, L, W/heads)
    mixed = mixed.transpose(1, 2).reshape(batch * length, width).index_select(0, keep)
    x = x + attention.out_proj(mixed)
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))


def run_token_head(head: nn.TransformerEncoder, project: nn.Module, states: Tensor, mask: Tensor) -> Tensor:
    """``(B, L, D)`` token states and their ``(B, L)`` attention mask (1 = real token) -> ``(B, L, W)``: ``project``
    (the input projection, ``D -> W``) then ``head``'s layers on the real tokens; zeros at padding. Every caption
    needs at least one real token. Under ``torch.compile`` / ``torch.export`` (ONNX export) the library's padded
    forward runs instead (same outputs at the real tokens): gathering has a data-dependent size."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        out = head(project(states), src_key_padding_mask=mask == 0)
        return out * mask[..., None].to(out.dtype)
    if any(not layer.norm_first or layer.training and layer.dropout.p > 0 for layer in head.layers):
        raise ValueError("run_token_head runs pre-norm layers without dropout (norm_first=True, dropout=0)")
    batch, length, _ = states.shape
    real = mask.bool()
    keep = real.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions of the real tokens
    x = project(states.reshape(batch * length, -1).index_select(0, keep))  # (N, W)
    for layer in head.layers:
        x = _packed_layer(layer, x, keep, real)
    if head.norm is not None:
        x = head.norm(x)
    return x.new_zeros(batch * length, x.shape[1]).index_copy(0, keep, x).view(batch, length, -1)
