"""``irra``: IRRA (Jiang & Ye, CVPR 2023), the reference baseline of text-based person search.

Any :class:`~xsearch.models.towers.Towers` (IRRA's: :class:`~xsearch.models.clip.CLIPTowers`, ViT-B/16 at
384x128, whose global features are the image CLS token and the text EOT token in the 512-d joint space).
Training losses (docs/methods.md#irra-architecture-and-losses):

* SDM on the global features (tau 0.02, both directions summed, same-identity pairs are positives);
* optionally (``itc_weight``, off in IRRA) identity-aware InfoNCE with a learnable temperature, the usual
  CLIP fine-tuning loss that SDM replaces (IRRA's ablation "InfoNCE instead of SDM");
* ID: one linear classifier shared by both modalities;
* IRR / MLM, training only: 15% of the caption's word tokens are masked (80/10/10), the masked caption
  goes through the same text tower, its tokens attend to the image tokens (one cross-attention layer +
  a 4-layer transformer) and an MLM head predicts the original tokens.

At test time only the two towers run: text global vs image global, cosine.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from xsearch.config_types import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from xsearch.distributed import gather
from xsearch.losses import IdentityClassifier, info_nce, sdm_loss, weighted_sum
from xsearch.losses.mlm import mask_tokens, mlm_loss
from xsearch.models.base import RetrievalModule
from xsearch.models.blocks import CrossModalTransformer, MLMHead
from xsearch.models.export_contract import ExportTowers
from xsearch.models.towers import TowerOutput, Towers
from xsearch.registry import METHODS


@METHODS.register("irra")
class IRRA(RetrievalModule):
    """IRRA on any :class:`Towers`.

    Args:
        towers: the image and text towers (e.g. :class:`~xsearch.models.clip.CLIPTowers`,
            :class:`~xsearch.models.pretrained_towers.PretrainedTowers`).
        sdm_weight / id_weight / mlm_weight / itc_weight: loss weights (0 switches a term and its modules off).
        sdm_scale: SDM logit scale (50 = tau 0.02, fixed).
        temperature: initial temperature of the InfoNCE term (learnable; only with ``itc_weight > 0``).
        mlm_probability: share of word tokens masked for the IRR branch.
        cross_layers: self-attention layers of the cross-modal transformer after the cross-attention.
        num_classes: training identities; ``None`` = read from the datamodule.
        **kwargs: :class:`RetrievalModule` options (IRRA's recipe: ``lr`` 1e-5, ``new_module_lr_factor``
            5, ``optimizer`` adam, ``adam_eps`` 1e-3, ``bias_lr_factor`` 2, ``weight_decay`` 4e-5,
            ``warmup_epochs`` 5, cosine).
    """

    image_interpolation = "bilinear"  # torchvision Resize((384, 128)) in IRRA's build_transforms

    def __init__(
        self,
        towers: Towers,
        sdm_weight: NonNegativeFloat = 1.0,
        id_weight: NonNegativeFloat = 1.0,
        mlm_weight: NonNegativeFloat = 1.0,
        sdm_scale: PositiveFloat = 50.0,
        itc_weight: NonNegativeFloat = 0.0,
        temperature: PositiveFloat = 0.07,
        mlm_probability: ClosedUnitInterval = 0.15,
        cross_layers: int = 4,
        num_classes: PositiveInt | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.towers = towers
        self.loss_weights = {"sdm": sdm_weight, "itc": itc_weight, "id": id_weight, "mlm": mlm_weight}
        width = towers.embed_dim
        if itc_weight > 0:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        if mlm_weight > 0:
            self.cross_former = CrossModalTransformer(width, max(1, width // 64), cross_layers)
            self.mlm_head = MLMHead(width, towers.masked_language.vocab_size, cross_layers)
        self.id_head: IdentityClassifier | None = None
        if num_classes is not None:
            self._ensure_identity_modules(num_classes)

    def build_identity_modules(self, num_classes: int) -> None:
        if self.loss_weights["id"] > 0:
            self.id_head = IdentityClassifier(self.towers.embed_dim, num_classes)

    def backbone_modules(self) -> list[nn.Module]:
        return self.towers.pretrained_modules()

    # -- encoders ------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> TowerOutput:
        """``uint8`` (B, 3, H, W) -> image tokens and the (B, D) global feature used for ranking."""
        return self.towers.encode_image(images)

    def text_features(self, input_ids: Tensor) -> TowerOutput:
        """(B, L) ids -> text tokens and the (B, D) global feature used for ranking."""
        return self.towers.encode_text(input_ids)

    def encode_queries(self, batch: dict[str, Any]) -> Tensor:
        return self.text_features(self.towers.tokenize(batch["text"])).global_features

    def encode_gallery(self, batch: dict[str, Any]) -> Tensor:
        return self.image_features(batch["image"]).global_features

    def export_towers(self) -> ExportTowers:
        """The global features: image CLS and text EOT (through :meth:`image_features` / :meth:`text_features`, so
        a subclass's fused features too), compared by cosine."""
        return ExportTowers(
            image=lambda pixels: self.image_features(pixels).global_features,
            text=lambda ids, mask: self.text_features(ids).global_features,
            tokenize=self.towers.tokenize_with_mask, save_tokenizer=self.towers.save_tokenizer,
            text_length=self.towers.context_length)

    # -- losses --------------------------------------------------------------------------
    def global_losses(self, image: TowerOutput, text: TowerOutput, labels: Tensor) -> dict[str, Tensor]:
        """SDM, InfoNCE and ID on the (B, D) global features; ``labels`` are the contiguous train ids (B,)."""
        terms = {}
        if self.loss_weights["sdm"] > 0 or self.loss_weights["itc"] > 0:
            every_image, every_text, every_label = gather(image.global_features, text.global_features, labels)
        if self.loss_weights["sdm"] > 0:
            terms["sdm"] = sdm_loss(every_image, every_text, every_label, self.hparams.sdm_scale)
        if self.loss_weights["itc"] > 0:
            terms["itc"] = info_nce(every_image, every_text, self.log_scale.exp().clamp(max=100.0), every_label)
        if self.loss_weights["id"] > 0:
            if self.id_head is None:
                raise RuntimeError("id_weight > 0 needs num_classes (or a datamodule with num_train_identities)")
            terms["id"] = self.id_head.loss(image.global_features.float(), text.global_features.float(), labels)
        return terms

    def mlm_terms(self, input_ids: Tensor, image: TowerOutput) -> dict[str, Tensor]:
        """IRR branch: mask ``input_ids`` (B, L), encode, attend to the image tokens, predict the originals."""
        vocabulary = self.towers.masked_language
        masked, labels = mask_tokens(input_ids, self.hparams.mlm_probability, mask_token_id=vocabulary.mask_id,
                                     vocab_low=vocabulary.random_low, vocab_high=vocabulary.random_high,
                                     special_ids=vocabulary.special_ids)
        masked_text = self.towers.encode_text(masked, cache=False)  # new ids every step: never cached
        picked = labels != 0
        # the vocabulary head only at the masked positions: the same loss as over all (B, L), ~7x less work
        logits = self.mlm_head(self.cross_former(masked_text.tokens, image.tokens)[picked])  # (N, vocab)
        targets = labels[picked]
        accuracy = (logits.argmax(-1) == targets).float().mean() if len(targets) else logits.new_zeros(())
        return {"mlm": mlm_loss(logits.float(), targets), "mlm_accuracy": accuracy.detach()}

    def extra_terms(self, image: TowerOutput, text: TowerOutput, labels: Tensor) -> dict[str, Tensor]:
        """Loss terms a method adds on top of IRRA's (named as in ``loss_weights``); none here."""
        return {}

    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        input_ids = self.towers.tokenize(batch["text"])
        image = self.image_features(batch["image"])
        text = self.text_features(input_ids)
        labels = batch["pid"]
        terms = {**self.global_losses(image, text, labels), **self.extra_terms(image, text, labels)}
        logged: dict[str, Tensor] = {}
        if self.loss_weights["mlm"] > 0:
            mlm = self.mlm_terms(input_ids, image)
            terms["mlm"] = mlm.pop("mlm")
            logged.update(mlm)
        if self.loss_weights["itc"] > 0:
            logged["temperature"] = 1.0 / self.log_scale.detach().exp()
        return {**weighted_sum(terms, self.loss_weights), **logged}
