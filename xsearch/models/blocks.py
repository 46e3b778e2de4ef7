"""Transformer blocks the CLIP-based methods add on top of the towers (IRRA's IRR branch, CMSN's modules).

All follow OpenAI CLIP's layout (pre-norm residual attention blocks, QuickGELU MLP) and CLIP's
initialisation (:func:`clip_init`), as IRRA does for its new modules.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """CLIP's activation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm self-attention + MLP block (CLIP): ``x + attn(ln_1 x)``, then ``+ mlp(ln_2 x)``. (B, L, W) -> (B, L, W)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class CrossModalTransformer(nn.Module):
    """IRRA's cross-former: queries attend to a memory once, then ``layers`` self-attention blocks.

    ``x = cross_attn(ln_q(queries), ln_m(memory), ln_m(memory))``; ``x = blocks(x)``; ``ln_post(x)``.
    (B, Lq, W) queries and (B, Lm, W) memory -> (B, Lq, W). As in IRRA there is no residual around the
    cross-attention and no padding mask.
    """

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.ln_query, self.ln_memory, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))
        clip_init(self, width, layers)

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        memory = self.ln_memory(memory)
        x = self.cross_attn(self.ln_query(queries), memory, memory, need_weights=False)[0]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class MLMHead(nn.Module):
    """``Linear(W, W) -> QuickGELU -> LayerNorm -> Linear(W, vocab)``: (..., W) -> (..., vocab) logits.

    ``layers``: depth of the cross-modal transformer it follows (sets the init std as in IRRA).
    """

    def __init__(self, width: int, vocab_size: int, layers: int = 4) -> None:
        super().__init__()
        self.dense, self.act, self.norm = nn.Linear(width, width), QuickGELU(), nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size)
        nn.init.normal_(self.dense.weight, std=(2 * width) ** -0.5)  # IRRA: fc std, proj std of the cross-former
        nn.init.normal_(self.decoder.weight, std=width ** -0.5 * (2 * max(layers, 1)) ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(x))))


def clip_init(module: nn.Module, width: int, layers: int) -> None:
    """CLIP's initialisation of new transformer modules (IRRA): attention ``in_proj`` std ``W^-0.5``,
    output projections std ``W^-0.5 (2 layers)^-0.5``, MLP ``fc`` std ``(2W)^-0.5``; norms 1/0, biases 0."""
    attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * max(layers, 1)) ** -0.5, (2 * width) ** -0.5
    for sub in module.modules():
        if isinstance(sub, nn.MultiheadAttention):
            nn.init.normal_(sub.in_proj_weight, std=attn_std)
            nn.init.normal_(sub.out_proj.weight, std=proj_std)
            nn.init.zeros_(sub.in_proj_bias)
            nn.init.zeros_(sub.out_proj.bias)
        elif isinstance(sub, ResidualAttentionBlock):
            nn.init.normal_(sub.mlp[0].weight, std=fc_std)
            nn.init.normal_(sub.mlp[2].weight, std=proj_std)
