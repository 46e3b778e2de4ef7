"""Shared loss functions (pure functions; ``nn.Module`` only where a loss owns parameters)."""

from xsearch.losses.contrastive import (
    LossOutput,
    clamp_logit_scale,
    entity_info_nce,
    info_nce,
    sdm_from_similarity,
    sdm_loss,
    weighted_sum,
)
from xsearch.losses.cria import IdentityCenters, cosine_logits, cria_center_loss, cria_loss
from xsearch.losses.fcam import (
    ArcFaceHead,
    arcface_logits,
    focal_loss,
    global_contrastive_loss,
    sentence_image_loss,
    word_region_loss,
    word_region_similarity,
)
from xsearch.losses.identity import IdentityClassifier, id_loss
from xsearch.losses.mlm import mask_tokens, mlm_loss
from xsearch.losses.mnrl import (
    EASY,
    HARD,
    LEVEL_NAMES,
    SEMI_HARD,
    DifficultyAwareLoss,
    DifficultyAwareMNRL,
    difficulty_aware_mnrl,
    difficulty_levels,
    multiple_negatives_ranking_loss,
)
from xsearch.losses.parts import cmr_loss, part_commonality, part_diversity, part_sdm_loss, part_similarities
from xsearch.losses.triplet import spt_loss

__all__ = [
    "entity_info_nce",
    "EASY",
    "HARD",
    "LEVEL_NAMES",
    "SEMI_HARD",
    "ArcFaceHead",
    "DifficultyAwareLoss",
    "DifficultyAwareMNRL",
    "IdentityCenters",
    "IdentityClassifier",
    "LossOutput",
    "arcface_logits",
    "clamp_logit_scale",
    "cmr_loss",
    "cosine_logits",
    "cria_center_loss",
    "cria_loss",
    "difficulty_aware_mnrl",
    "difficulty_levels",
    "focal_loss",
    "global_contrastive_loss",
    "id_loss",
    "info_nce",
    "mask_tokens",
    "mlm_loss",
    "multiple_negatives_ranking_loss",
    "part_commonality",
    "part_diversity",
    "part_sdm_loss",
    "part_similarities",
    "sdm_from_similarity",
    "sdm_loss",
    "sentence_image_loss",
    "spt_loss",
    "weighted_sum",
    "word_region_loss",
    "word_region_similarity",
]
