"""``dual_encoder``: the baseline method. timm image tower + transformer text tower + projection heads.

Losses (``xsearch.losses``): symmetric InfoNCE with a learnable temperature, optionally IRRA's
SDM and a shared identity classifier, weighted and summed.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from xsearch.config_types import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from xsearch.distributed import gather
from xsearch.losses import IdentityClassifier, info_nce, sdm_loss, weighted_sum
from xsearch.models.base import RetrievalModule
from xsearch.models.encoders import ImageEncoder, Projection, TextEncoder
from xsearch.models.export_contract import ExportTowers, ExportUnsupported
from xsearch.registry import METHODS


@METHODS.register("dual_encoder")
class DualEncoder(RetrievalModule):
    """Two towers into one ``embed_dim`` space; cosine similarity.

    Args:
        image_encoder: the timm image tower.
        text_encoder: the text tower.
        embed_dim: joint embedding size.
        projection_hidden: hidden width of 2-layer projection heads (``None`` = linear).
        temperature: initial InfoNCE temperature (learnable unless ``learn_temperature=False``).
        itc_weight / sdm_weight / id_weight: loss weights (0 switches a term off).
        identity_aware_itc: same-identity pairs are not InfoNCE negatives.
        sdm_scale: SDM logit scale (IRRA: 50, i.e. tau 0.02).
        num_classes: training identities for the ID loss; ``None`` = read from the datamodule.
        **kwargs: :class:`RetrievalModule` options (learning rates, schedule...).
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        embed_dim: PositiveInt = 256,
        projection_hidden: PositiveInt | None = None,
        projection_dropout: ClosedUnitInterval = 0.0,
        temperature: PositiveFloat = 0.07,
        learn_temperature: bool = True,
        itc_weight: NonNegativeFloat = 1.0,
        sdm_weight: NonNegativeFloat = 0.0,
        sdm_scale: PositiveFloat = 50.0,
        id_weight: NonNegativeFloat = 0.0,
        identity_aware_itc: bool = True,
        num_classes: PositiveInt | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_projection = Projection(image_encoder.out_dim, embed_dim, projection_hidden, projection_dropout)
        self.text_projection = Projection(text_encoder.out_dim, embed_dim, projection_hidden, projection_dropout)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.loss_weights = {"itc": itc_weight, "sdm": sdm_weight, "id": id_weight}
        self.id_head: IdentityClassifier | None = None
        if num_classes is not None:
            self._ensure_identity_modules(num_classes)

    def build_identity_modules(self, num_classes: int) -> None:
        if self.loss_weights["id"] > 0 and self.id_head is None:
            self.id_head = IdentityClassifier(self.hparams.embed_dim, num_classes)

    def on_fit_start(self) -> None:
        """A frozen text tower encodes every training caption once, up front, in large batches."""
        train_set = getattr(self.trainer.datamodule, "train_set", None) if self.trainer.datamodule else None
        if self.text_encoder.frozen and train_set is not None and hasattr(train_set, "captions"):
            self.text_encoder.precompute([c.text for c in train_set.captions], progress=True)

    # -- encoders ------------------------------------------------------------------------
    def backbone_modules(self) -> list[nn.Module]:
        return [self.image_encoder.backbone, self.text_encoder.transformer]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, embed_dim)`` (not normalised)."""
        return self.image_projection(self.image_encoder(images))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``B`` captions -> ``(B, embed_dim)`` (not normalised)."""
        return self.text_projection(self.text_encoder(texts))

    def encode_queries(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.encode_texts(batch["text"])

    def export_towers(self) -> ExportTowers:
        """Image tower: pixels -> timm backbone -> projection; text tower: ids + mask -> transformer -> pooling ->
        projection (cosine ranking)."""
        if not isinstance(self.text_encoder, TextEncoder):
            raise ExportUnsupported(f"dual_encoder: export needs a TextEncoder text tower (ids + mask in), this one is "
                                    f"{type(self.text_encoder).__name__}")
        text = self.text_encoder
        return ExportTowers(
            image=lambda pixels: self.image_projection(self.image_encoder.encode_pixels(pixels)),
            text=lambda ids, mask: self.text_projection(text.encode_tokens(ids, mask)),
            tokenize=text.tokenize, save_tokenizer=text.save_tokenizer)

    def encode_gallery(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.encode_images(batch["image"])

    # -- losses --------------------------------------------------------------------------
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image_embeddings = self.encode_images(batch["image"])
        text_embeddings = self.encode_texts(batch["text"])
        pids = batch["pid"]
        terms: dict[str, torch.Tensor] = {}
        every_image, every_text, every_pid = gather(image_embeddings, text_embeddings, pids)  # DDP: the global batch
        if self.loss_weights["itc"] > 0:
            scale = self.log_scale.exp().clamp(max=100.0)
            terms["itc"] = info_nce(every_image, every_text, scale, every_pid if self.hparams.identity_aware_itc else None)
        if self.loss_weights["sdm"] > 0:
            terms["sdm"] = sdm_loss(every_image, every_text, every_pid, self.hparams.sdm_scale)
        if self.loss_weights["id"] > 0:
            if self.id_head is None:
                raise RuntimeError("id_weight > 0 needs num_classes (or a datamodule with num_train_identities)")
            terms["id"] = self.id_head.loss(image_embeddings.float(), text_embeddings.float(), pids)
        output = weighted_sum(terms, self.loss_weights)
        output["temperature"] = 1.0 / self.log_scale.exp().detach()
        return output
