"""Composed-query fusion: a reference image embedding and a modification-text embedding -> one query.

``gated`` is TIRG's gate + residual (docs/methods.md#x-modal-architecture), ``sum`` the plain baseline. Both take
and return ``(B, D)`` embeddings; the caller L2-normalises the output.
"""
from __future__ import annotations

import torch
from torch import nn

from xsearch.registry import Registry

FUSIONS: Registry[type[nn.Module]] = Registry("composed-query fusion")


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


@FUSIONS.register("gated")
class GatedResidualFusion(nn.Module):
    """``q = w_g * sigmoid(gate([f_img; f_txt])) * f_img + w_r * res([f_img; f_txt])``.

    ``gate`` and ``res`` are 2-layer ReLU MLPs ``2D -> hidden -> D``; ``w_g``, ``w_r`` are learnable scalars
    initialised to 1.0 and 0.1, so training starts close to "the reference image, slightly edited".
    """

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.gate, self.residual = _mlp(2 * dim, hidden, dim), _mlp(2 * dim, hidden, dim)
        self.gate_weight = nn.Parameter(torch.tensor(1.0))
        self.residual_weight = nn.Parameter(torch.tensor(0.1))

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` reference images, ``(B, D)`` modification texts -> ``(B, D)`` queries."""
        joint = torch.cat([image_embeddings, text_embeddings], dim=1)
        gated = torch.sigmoid(self.gate(joint)) * image_embeddings
        return self.gate_weight * gated + self.residual_weight * self.residual(joint)


@FUSIONS.register("sum")
class SumFusion(nn.Module):
    """``q = f_img + f_txt`` (no parameters): the baseline the gated fusion must beat."""

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        return image_embeddings + text_embeddings
