"""Shared loss functions (pure functions; ``nn.Module`` only where a loss owns parameters)."""

from xsearch.losses.contrastive import LossOutput, clamp_logit_scale, info_nce, sdm_loss, weighted_sum
from xsearch.losses.identity import IdentityClassifier, id_loss

__all__ = [
    "IdentityClassifier",
    "LossOutput",
    "clamp_logit_scale",
    "id_loss",
    "info_nce",
    "sdm_loss",
    "weighted_sum",
]
