"""``tgfr``: text-guided face recognition (Hasan, Sami, Nasrabadi, WACV 2024).

A frozen ArcFace iResNet gives each 112x112 face a 512-d embedding and a ``(256, 14, 14)`` layer-3 map; a BERT
(max 24 tokens, trained) gives token states. Two stages, each its own config:

* ``stage: face`` (only when no face-recognition weights exist, e.g. on synthetic faces): the iResNet itself
  is trained as a face recogniser (ArcFace + focal on its embedding, images only), standing in for the
  MS1MV3-trained insightface backbone; the next stage starts from it (``init_from``) and freezes it.

* ``stage: align`` (FCAM): an n-gram CNN text head (words ``(B, 22, 256)`` and sentence ``(B, 256)``) and an
  image head (global ``Linear 512->256``; local "IMIM": BN, 2-D self-attention, LayerNorm, 1x1 convs,
  per-region Linear, 196 regions of 256) are aligned by the word-region (DAMSM), sentence-image (same identity
  masked) and global contrastive losses, plus ArcFace + focal identity losses on sentence and face
  (:mod:`xsearch.losses.fcam`); ``L = L_w + L_s + 2 L_clip + 100 (L_id_text + L_id_image)``.
* ``stage: fuse`` (FCFM), started from a stage-1 checkpoint with ``--model.init_from``: a fine branch (word Gram
  map cross-attending the pooled region map -> 128) and a coarse branch (LayerNorm of face and sentence
  embeddings, 256 each) give the 640-d fused identity embedding, trained with ArcFace + focal.

Optimisers: stages ``align`` and ``fuse`` train with the authors' three optimisers and per-epoch schedules
(:data:`OPTIMIZER_GROUPS`, through the shared ``optimizer_groups``); stage ``face`` with the shared single one.

Evaluation: text -> face retrieval with the aligned sentence / face embeddings (shared evaluator), and with
``data.verification`` set, verification and identification of ``fused`` (stage 2: the 640-d FCFM embedding;
stage 1: ``[v_g | s]``, the code's concatenation baseline) next to ``image_only`` (the frozen backbone alone).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.config_types import PositiveFloat, PositiveInt
from xsearch.distributed import gather
from xsearch.losses import ArcFaceHead, global_contrastive_loss, sentence_image_loss, weighted_sum, word_region_loss
from xsearch.models.base import RetrievalModule
from xsearch.models.encoders import TextEncoder
from xsearch.models.export_contract import ExportTowers, ExportUnsupported
from xsearch.models.iresnet import IResNet
from xsearch.optim import OptimizerGroup
from xsearch.registry import METHODS

DEFAULT_WEIGHTS = {"word": 1.0, "sentence": 1.0, "global": 2.0, "text_id": 100.0, "image_id": 100.0}
"""Stage-1 loss weights of the authors' BERT configuration."""

OPTIMIZER_GROUPS: dict[str, list[dict[str, Any]]] = {
    "align": [  # three optimisers, as the authors' stage-1 script; schedules counted in epochs
        {"name": "text_encoder", "modules": ["text_encoder"], "optimizer": "adam", "clip_grad_norm": 1.0,
         "optimizer_args": {"lr": 2e-5, "betas": (0.9, 0.999), "weight_decay": 0.01}},
        {"name": "heads", "modules": ["text_head", "image_head"], "optimizer": "adam",
         "optimizer_args": {"lr": 1e-3, "betas": (0.5, 0.999)}, "schedule": "exponential", "schedule_args": {"gamma": 0.98}},
        {"name": "margin_heads", "modules": ["text_arcface", "image_arcface"], "optimizer": "sgd",
         "optimizer_args": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5},
         "schedule": "multistep", "schedule_args": {"milestones": [3, 8], "gamma": 0.1}},
    ],
    "fuse": [  # as the authors' fusion script
        {"name": "margin_head", "modules": ["fused_arcface"], "optimizer": "sgd",
         "optimizer_args": {"lr": 0.1, "weight_decay": 5e-4}, "schedule": "step", "schedule_args": {"step_size": 5, "gamma": 0.6}},
        {"name": "text_encoder", "modules": ["text_encoder"], "optimizer": "adam",
         "optimizer_args": {"lr": 1e-5, "betas": (0.9, 0.999), "weight_decay": 0.01},
         "schedule": "step", "schedule_args": {"step_size": 10, "gamma": 0.8}},
        {"name": "heads", "modules": ["text_head", "image_head", "fusion"], "optimizer": "adam",
         "optimizer_args": {"lr": 1e-3, "weight_decay": 5e-5}, "schedule": "step", "schedule_args": {"step_size": 5, "gamma": 0.97}},
    ],
}
"""The authors' optimisers and schedules per stage, the default ``optimizer_groups`` of stages
``align`` and ``fuse``: stage 1 BERT Adam 2e-5 (L2 0.01, gradient norm clipped to 1 before the step), heads Adam
1e-3 with betas (0.5, 0.999) x0.98 per epoch, ArcFace weights SGD 0.1 (momentum 0.9, 5e-5) x0.1 after epochs 3
and 8; stage 2 margin head SGD 0.1 (5e-4) x0.6 every 5 epochs, BERT Adam 1e-5 (0.01) x0.8 every 10, heads and
fusion Adam 1e-3 (5e-5) x0.97 every 5."""


class SelfAttention2d(nn.Module):
    """TGFR's 2-D attention over the positions of two ``(B, C, H, W)`` maps (1x1-conv projections, scaled by
    ``sqrt(C)``, no residual): keys and values from ``x``, queries from ``y``; position ``p`` of the output is the
    softmax over ``q`` of ``key_p . query_q`` applied to the values ``value_q``, as the authors' code computes it.
    ``y = x`` is self-attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.scale = math.sqrt(channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` maps ``x`` (keys, values), ``y`` (queries) -> ``(B, C, H, W)``."""
        b, c, h, w = x.shape
        query = self.query(y).flatten(2)  # (B, C, P)
        key = self.key(x).flatten(2).transpose(1, 2)  # (B, P, C)
        value = self.value(x).flatten(2).transpose(1, 2)  # (B, P, C)
        attention = torch.softmax(key @ query / self.scale, dim=-1)  # (B, P, P)
        return (attention @ value).transpose(1, 2).reshape(b, c, h, w)


class NGramTextHead(nn.Module):
    """TGFR's "textual feature refinement": 1-D convolutions over the word states (n = 2, 3, 4; ReLU).

    Word ``j`` = the element-wise max of the n-gram features starting at ``j`` (the last positions have only the
    shorter n-grams), L2-normalised; sentence = per-n max over the words, averaged over n, L2-normalised.
    Padding states are zeroed first (an n-gram at the end of a caption reads zeros beyond it, however far the
    batch was padded), and n-grams starting in the padding are masked out of the sentence max (the authors'
    code pools over BERT's outputs at padding positions)."""

    def __init__(self, in_dim: int, out_dim: int = 256, ngram_sizes: tuple[int, ...] = (2, 3, 4)) -> None:
        super().__init__()
        self.ngram_sizes = tuple(ngram_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, out_dim, n) for n in self.ngram_sizes)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token states ``(B, L, H)`` (CLS dropped) and mask ``(B, L)`` -> words ``(B, T, D)``, word mask ``(B, T)``
        bool and sentence ``(B, D)``, with ``T = L - min(n) + 1``."""
        positions = states.shape[1] - min(self.ngram_sizes) + 1
        if positions < 1:
            raise ValueError(f"captions of {states.shape[1]} tokens are shorter than the smallest n-gram {min(self.ngram_sizes)}")
        word_mask = mask[:, :positions].bool()
        states = states * mask[..., None].to(states.dtype)  # padding reads as zeros, whatever the batch padded to
        maps, pooled = [], []
        for conv in self.convs:
            features = F.relu(conv(states.transpose(1, 2)))  # (B, D, L - n + 1), >= 0
            valid = word_mask[:, None, : features.shape[2]]
            pooled.append(features.masked_fill(~valid, 0.0).amax(dim=2))  # masked max of non-negative values
            maps.append(F.pad(features, (0, positions - features.shape[2])))
        words = F.normalize(torch.stack(maps).amax(dim=0).transpose(1, 2), dim=-1)  # (B, T, D)
        sentence = F.normalize(torch.stack(pooled).mean(dim=0), dim=-1)
        return words, word_mask, sentence


class FaceImageHead(nn.Module):
    """Global ``Linear 512 -> D`` + L2 (``v_g``) and the local "IMIM" refinement of the layer-3 map: BN, 2-D
    self-attention, LayerNorm, 1x1 convs ``C -> C/2 -> C`` (ReLU), per-region ``Linear C -> D``, L2 (``v_l``)."""

    def __init__(self, global_dim: int = 512, local_dim: int = 256, map_size: int = 14, out_dim: int = 256) -> None:
        super().__init__()
        self.project_global = nn.Linear(global_dim, out_dim)
        self.norm = nn.BatchNorm2d(local_dim)
        self.attention = SelfAttention2d(local_dim)
        self.layer_norm = nn.LayerNorm([local_dim, map_size, map_size])
        self.convs = nn.Sequential(nn.Conv2d(local_dim, local_dim // 2, 1), nn.ReLU(), nn.Conv2d(local_dim // 2, local_dim, 1), nn.ReLU())
        self.project_local = nn.Linear(local_dim, out_dim)

    def forward(self, embedding: torch.Tensor, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 512)``, ``(B, C, S, S)`` -> ``v_g (B, D)`` and ``v_l (B, D, S, S)``, unit vectors (per region)."""
        x = self.norm(local)
        x = self.convs(self.layer_norm(self.attention(x, x)))
        regions = F.normalize(self.project_local(x.permute(0, 2, 3, 1)), dim=-1).permute(0, 3, 1, 2)
        return F.normalize(self.project_global(embedding), dim=-1), regions


class FCFM(nn.Module):
    """Face-caption fusion ("Working" in the authors' code) -> ``(B, fine_dim + 2 D)`` (640 for D = 256).

    Fine branch: regions ``v_l`` -> 3x3 conv (no padding) to ``c`` channels, ReLU, 2x2 max-pool, BN (``c`` maps of
    ``s x s``, ``c = s^2``: 36 of 6x6 for a 14x14 map); words -> per-word ``Linear D -> c`` (every position,
    padding included, as the authors' code; ``mask_padding=True`` zeroes the padding words), Gram
    ``W^T W / sqrt(c)`` ``(c, c)`` reshaped to ``(c, s, s)``, BN; the word maps cross-attend the image maps
    (:class:`SelfAttention2d`), LayerNorm, 2x2 max-pool, ``Linear -> fine_dim``. Coarse branch: LayerNorm of
    ``v_g`` and of the sentence."""

    def __init__(self, dim: int = 256, map_size: int = 14, fine_dim: int = 128, mask_padding: bool = False) -> None:
        super().__init__()
        self.mask_padding = mask_padding
        side = (map_size - 2) // 2
        channels = side * side
        self.side, self.channels = side, channels
        self.image_conv = nn.Conv2d(dim, channels, 3)
        self.image_norm = nn.BatchNorm2d(channels)
        self.word_projection = nn.Linear(dim, channels)
        self.word_norm = nn.BatchNorm2d(channels)
        self.cross_attention = SelfAttention2d(channels)
        self.layer_norm = nn.LayerNorm([channels, side, side])
        self.fine = nn.Linear(channels * (side // 2) ** 2, fine_dim)
        self.global_norm = nn.LayerNorm(dim)
        self.sentence_norm = nn.LayerNorm(dim)
        self.out_dim = fine_dim + 2 * dim

    def forward(self, regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, face: torch.Tensor,
                sentence: torch.Tensor) -> torch.Tensor:
        """``v_l (B, D, S, S)``, words ``(B, T, D)`` + mask ``(B, T)``, ``v_g (B, D)``, sentence ``(B, D)`` -> ``(B, out_dim)``."""
        image = self.image_norm(F.max_pool2d(F.relu(self.image_conv(regions)), 2))  # (B, c, s, s)
        projected = self.word_projection(words)  # (B, T, c)
        if self.mask_padding:
            projected = projected * word_mask[..., None].to(words.dtype)
        gram = projected.transpose(1, 2) @ projected / math.sqrt(self.channels)  # (B, c, c)
        text = self.word_norm(gram.reshape(-1, self.channels, self.side, self.side))
        fused = F.max_pool2d(self.layer_norm(self.cross_attention(image, text)), 2).flatten(1)
        return torch.cat([self.fine(fused), self.global_norm(face), self.sentence_norm(sentence)], dim=1)


@METHODS.register("tgfr")
class TGFR(RetrievalModule):
    """TGFR in two stages (``align`` = FCAM, ``fuse`` = FCFM); see the module docstring.

    Args:
        face_encoder: the face backbone (:class:`~xsearch.models.iresnet.IResNet`, insightface weights via its
            ``weights``); frozen (eval mode, no gradient) except in stage ``face``.
        text_encoder: BERT-family :class:`~xsearch.models.encoders.TextEncoder` (``max_length`` 24; trained).
        stage: ``face`` (train the backbone as a face recogniser), ``align`` (stage 1) or ``fuse`` (stage 2;
            initialise each from the previous one with ``init_from``).
        feature_dim: size of every aligned feature (words, sentence, regions, face): 256.
        ngram_sizes: the text head's n-grams.
        gamma1 / gamma2 / gamma3: word-region attention sharpness, word-score aggregation, logit scale.
        sentence_scale: logit scale of the sentence-image and global contrastive losses (10).
        loss_weights: stage-1 weights of ``word``, ``sentence``, ``global``, ``text_id``, ``image_id``
            (missing keys keep :data:`DEFAULT_WEIGHTS`; 0 = off).
        text_margin / image_margin / fused_margin: ``(scale, margin)`` of the ArcFace heads on the sentence,
            the face (also the backbone's in stage ``face``) and the fused embedding ((35, 0.5), (30, 0.5), (30, 0.5)).
        focal_gamma: focal loss exponent after every ArcFace head (2).
        fine_dim: output of FCFM's fine branch (128; fused size = fine_dim + 2 feature_dim).
        fusion_mask_padding: zero the padding words in FCFM's word Gram map (off: every position counts, as the
            authors' code).
        **kwargs: :class:`RetrievalModule` options. Stages ``align`` and ``fuse`` train with
            ``optimizer_groups`` (default: the authors' :data:`OPTIMIZER_GROUPS` of the stage), so ``lr``,
            ``optimizer``, ``weight_decay``, ``warmup_epochs``... reach only a configured group without
            ``modules``; stage ``face`` uses them (one optimiser, warm-up + schedule) unless groups are given.
    """

    def __init__(
        self,
        face_encoder: IResNet,
        text_encoder: TextEncoder,
        stage: Literal["face", "align", "fuse"] = "align",
        feature_dim: PositiveInt = 256,
        ngram_sizes: tuple[int, ...] = (2, 3, 4),
        gamma1: float = 4.0,
        gamma2: float = 5.0,
        gamma3: float = 10.0,
        sentence_scale: PositiveFloat = 10.0,
        loss_weights: dict[str, float] | None = None,
        text_margin: tuple[float, float] = (35.0, 0.5),
        image_margin: tuple[float, float] = (30.0, 0.5),
        fused_margin: tuple[float, float] = (30.0, 0.5),
        focal_gamma: float = 2.0,
        fine_dim: PositiveInt = 128,
        fusion_mask_padding: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if stage not in ("face", "align", "fuse"):
            raise ValueError(f"stage must be 'face', 'align' or 'fuse', got {stage!r}")
        unknown = set(loss_weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; expected some of {sorted(DEFAULT_WEIGHTS)}")
        self.face_encoder = face_encoder.requires_grad_(False)
        self.face_encoder.train(stage == "face")  # frozen (eval mode: BatchNorm statistics kept) unless trained
        self.text_encoder = text_encoder
        map_size = 14  # layer 3 of an iResNet on 112x112 faces
        self.text_head = NGramTextHead(text_encoder.out_dim, feature_dim, tuple(ngram_sizes))
        self.image_head = FaceImageHead(face_encoder.out_dim, face_encoder.local_dim, map_size, feature_dim)
        self.fusion = FCFM(feature_dim, map_size, fine_dim, fusion_mask_padding) if stage == "fuse" else None
        self.loss_weights = {**DEFAULT_WEIGHTS, **(loss_weights or {})}
        self.stage = stage
        if stage == "face":  # only the backbone learns
            self.requires_grad_(False)
            self.face_encoder.requires_grad_(True)
            self.face_encoder.features.weight.requires_grad_(False)  # insightface keeps the last BN's scale at 1

    # -- identity heads ------------------------------------------------------------------
    def build_identity_modules(self, num_classes: int) -> None:
        hp, dim = self.hparams, self.hparams.feature_dim
        if self.stage == "face":
            self.face_arcface = ArcFaceHead(self.face_encoder.out_dim, num_classes, *hp.image_margin)
        elif self.stage == "align":
            self.text_arcface = ArcFaceHead(dim, num_classes, *hp.text_margin)
            self.image_arcface = ArcFaceHead(dim, num_classes, *hp.image_margin)
        else:
            self.fused_arcface = ArcFaceHead(self.fusion.out_dim, num_classes, *hp.fused_margin)

    def optimizer_group_specs(self) -> list[OptimizerGroup]:
        """The configured ``optimizer_groups``, else the authors' groups of the stage (:data:`OPTIMIZER_GROUPS`),
        else (stage ``face``) the shared single optimiser."""
        if self._optimizer_groups or self.stage not in OPTIMIZER_GROUPS:
            return super().optimizer_group_specs()
        return [OptimizerGroup.from_config(dict(entry)) for entry in OPTIMIZER_GROUPS[self.stage]]

    def backbone_modules(self) -> list[nn.Module]:
        return [self.face_encoder] if self.stage == "face" else [self.text_encoder.transformer]

    def train(self, mode: bool = True) -> "TGFR":
        super().train(mode)
        if self.stage != "face":
            self.face_encoder.eval()  # frozen: BatchNorm statistics and dropout stay as loaded
        return self

    # -- features ------------------------------------------------------------------------
    def face_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, 112, 112)`` uint8 -> the backbone's embedding ``(B, 512)`` and map ``(B, 256, 14, 14)`` (no
        gradient unless in stage ``face``)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage == "face"):
            embedding, local = self.face_encoder(images)
        return embedding.float(), local.float()

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Faces -> backbone embedding ``(B, 512)``, ``v_g (B, D)`` and ``v_l (B, D, 14, 14)``."""
        embedding, local = self.face_features(images)
        face, regions = self.image_head(embedding, local)
        return embedding, face, regions

    def text_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B`` captions -> words ``(B, T, D)``, word mask ``(B, T)`` and sentence ``(B, D)`` (CLS dropped)."""
        states, mask = self.text_encoder.token_states(texts, pad_to_max_length=True)
        return self.text_head(states[:, 1:], mask[:, 1:])

    def fuse(self, regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, face: torch.Tensor,
             sentence: torch.Tensor) -> torch.Tensor:
        """The identity embedding of face + caption: FCFM's ``(B, 640)`` (stage 2) or ``[v_g | s]`` ``(B, 2D)``
        (stage 1)."""
        if self.fusion is None:
            return torch.cat([face, sentence], dim=1)
        return self.fusion(regions, words, word_mask, face, sentence)

    def encode_queries(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.text_features(batch["text"])[2]

    def encode_gallery(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.image_features(batch["image"])[1]

    def export_towers(self) -> ExportTowers:
        raise ExportUnsupported("tgfr cannot be exported as two towers: its identity embedding fuses a face with its "
                                "caption (FCFM / [v_g | s]), which needs both inputs at once; an export of its "
                                "text-to-face retrieval towers alone is not implemented")

    def encode_faces(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``fused`` (face + its caption) and ``image_only`` (the frozen backbone's embedding), each ``(B, .)``
        (stage ``face``: ``image_only``)."""
        if self.stage == "face":
            return {"image_only": self.face_features(batch["image"])[0]}
        embedding, face, regions = self.image_features(batch["image"])
        words, word_mask, sentence = self.text_features(batch["text"])
        return {"fused": self.fuse(regions, words, word_mask, face, sentence), "image_only": embedding}

    # -- losses --------------------------------------------------------------------------
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        labels = batch["pid"]
        if self.stage == "face":
            embedding = self.face_features(batch["image"])[0]
            return weighted_sum({"face_id": self.face_arcface.loss(embedding, labels, self.hparams.focal_gamma)}, {"face_id": 1.0})
        _, face, regions = self.image_features(batch["image"])
        words, word_mask, sentence = self.text_features(batch["text"])
        hp, weights, terms = self.hparams, self.loss_weights, {}
        if self.stage == "fuse":
            fused = self.fuse(regions, words, word_mask, face, sentence)
            return weighted_sum({"fused_id": self.fused_arcface.loss(fused, labels, hp.focal_gamma)}, {"fused_id": 1.0})
        every = dict(zip(("words", "mask", "regions", "face", "sentence", "labels"),  # DDP: batch-wise terms, global batch
                         gather(words, word_mask, regions.flatten(2).transpose(1, 2), face, sentence, labels)))
        if weights["word"]:
            terms["word"] = word_region_loss(every["words"], every["mask"], every["regions"], hp.gamma1, hp.gamma2, hp.gamma3)
        if weights["sentence"]:
            terms["sentence"] = sentence_image_loss(every["face"], every["sentence"], every["labels"], hp.sentence_scale)
        if weights["global"]:
            terms["global"] = global_contrastive_loss(every["face"], every["sentence"], hp.sentence_scale)
        if weights["text_id"]:
            terms["text_id"] = self.text_arcface.loss(sentence, labels, hp.focal_gamma)
        if weights["image_id"]:
            terms["image_id"] = self.image_arcface.loss(face, labels, hp.focal_gamma)
        return weighted_sum(terms, weights)
