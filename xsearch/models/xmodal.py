"""``xmodal``: X-Modal (Fatima et al., NCA 2026), face retrieval from a text query or from a reference face
plus a modification sentence (docs/methods.md#x-modal; only the abstract is public, so every guessed choice is
an argument).

Reading A: a timm image tower (ViT-B/16 or ResNet-50 in the paper configs) and a sentence-transformers text
tower, each followed by a 2-layer head into a shared L2-normalised space. A composed query fuses the reference
image's embedding with the modification text's (:mod:`xsearch.models.fusion`). Both query kinds are trained
with the difficulty-aware multiple-negatives ranking loss (:mod:`xsearch.losses.mnrl`): queries are anchors,
the batch's images the candidates; ``L = text_weight L_text + composed_weight L_composed``.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.config_types import NonNegativeFloat, NonNegativeInt, PositiveInt
from xsearch.distributed import gather
from xsearch.losses import DifficultyAwareMNRL, weighted_sum
from xsearch.models.base import RetrievalModule
from xsearch.models.encoders import ImageEncoder, Projection, SentenceEncoder, TextEncoder
from xsearch.models.export_contract import ExportTowers, ExportUnsupported
from xsearch.models.fusion import FUSIONS
from xsearch.registry import METHODS


class EmbeddingBank(nn.Module):
    """FIFO of recent (detached) image embeddings and their pids, the source of mined hard negatives.

    Args:
        size: entries kept. dim: embedding size.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(size, dim), persistent=False)
        self.register_buffer("pids", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.position, self.filled = 0, 0

    @torch.no_grad()
    def add(self, embeddings: torch.Tensor, pids: torch.Tensor) -> None:
        """Append ``(B, D)`` embeddings with ``(B,)`` pids, overwriting the oldest."""
        size = self.embeddings.shape[0]
        for start in range(0, len(pids), size):
            chunk, chunk_pids = embeddings[start : start + size], pids[start : start + size]
            rows = (self.position + torch.arange(len(chunk_pids), device=chunk_pids.device)) % size
            self.embeddings[rows] = F.normalize(chunk.detach().float(), dim=1).to(self.embeddings.dtype)
            self.pids[rows] = chunk_pids
            self.position = (self.position + len(chunk_pids)) % size
            self.filled = min(size, self.filled + len(chunk_pids))

    @torch.no_grad()
    def hardest(self, queries: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per query ``(B, D)``, the most similar entry of another identity: ``(B, D)`` embeddings and
        ``(B,)`` pids; ``None`` while the bank is empty or holds no other identity."""
        if self.filled == 0:
            return None
        bank, bank_pids = self.embeddings[: self.filled], self.pids[: self.filled]
        scores = F.normalize(queries.detach().float(), dim=1) @ bank.float().T
        scores = scores.masked_fill(bank_pids[None, :] == pids[:, None], float("-inf"))
        best = scores.argmax(dim=1)
        if bool(torch.isinf(scores.gather(1, best[:, None])).any()):
            return None
        return bank[best], bank_pids[best]


@METHODS.register("xmodal")
class XModal(RetrievalModule):
    """Text -> face and (face + text) -> face retrieval in one cosine space.

    Args:
        image_encoder: timm image tower. text_encoder: sentence-transformers (or plain transformers) tower.
        embed_dim / head_hidden: shared space size and the heads' hidden width (``None``: linear heads).
        fusion: composed-query fusion (``gated`` = TIRG gate + residual, ``sum``); fusion_hidden: its MLP width.
        composed_query: what a composed query is encoded as at evaluation: ``fused`` (the method),
            ``reference`` (the reference image alone) or ``text`` (the modification sentence alone), the
            two baselines of the composed protocol.
        text_weight / composed_weight: weights of the text-query and composed-query losses (0 = off).
        scale, margin, level_weights, same_identity, hardness_mode, hardness_strength, symmetric: the
            loss options of :class:`~xsearch.losses.DifficultyAwareMNRL` (``level_weights=[1, 1, 1]`` with
            ``same_identity="none"`` is sentence-transformers' plain MNRL).
        image_lr_factor: the image backbone trains at ``lr x image_lr_factor`` (docs/methods.md#x-modal-recipe:
            ResNet-50 at 1e-4 while the text transformer and a ViT use 2e-5).
        hard_negative_bank: size of a FIFO of recent image embeddings from which each query gets its most
            similar other-identity image as one extra (detached) negative; 0 = in-batch negatives only.
        **kwargs: :class:`RetrievalModule` options (learning rates, schedule...).
    """

    composed_queries = True  # encode_queries fuses a batch's reference_image with its text

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: SentenceEncoder | TextEncoder,
        embed_dim: PositiveInt = 512,
        head_hidden: PositiveInt | None = 512,
        fusion: str = "gated",
        fusion_hidden: PositiveInt = 512,
        composed_query: Literal["fused", "reference", "text"] = "fused",
        text_weight: NonNegativeFloat = 1.0,
        composed_weight: NonNegativeFloat = 1.0,
        scale: float = 20.0,
        margin: float = 0.2,
        level_weights: tuple[float, float, float] = (0.5, 1.0, 1.5),
        same_identity: Literal["mask", "positive", "none"] = "mask",
        hardness_mode: Literal["in_batch_negatives", "hard_negatives", "all_negatives"] | None = None,
        hardness_strength: float = 0.0,
        symmetric: bool = False,
        image_lr_factor: NonNegativeFloat = 1.0,
        hard_negative_bank: NonNegativeInt = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_head = Projection(image_encoder.out_dim, embed_dim, head_hidden)
        self.text_head = Projection(text_encoder.out_dim, embed_dim, head_hidden)
        self.fusion = FUSIONS.get(fusion)(embed_dim, fusion_hidden)
        self.criterion = DifficultyAwareMNRL(
            scale=scale, margin=margin, level_weights=tuple(level_weights), same_identity=same_identity,
            hardness_mode=hardness_mode, hardness_strength=hardness_strength, symmetric=symmetric,
        )
        self.bank = EmbeddingBank(hard_negative_bank, embed_dim) if hard_negative_bank else None
        self.loss_weights = {"text": text_weight, "composed": composed_weight}

    # -- encoders ------------------------------------------------------------------------
    def backbone_modules(self) -> list[nn.Module]:
        text = self.text_encoder.model if isinstance(self.text_encoder, SentenceEncoder) else self.text_encoder.transformer
        return [self.image_encoder.backbone, text]

    def lr_factors(self) -> list[tuple[nn.Module, float]]:
        return [(self.image_encoder.backbone, self.hparams.image_lr_factor)]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, embed_dim)`` L2-normalised."""
        return F.normalize(self.image_head(self.image_encoder(images)), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``B`` strings -> ``(B, embed_dim)`` L2-normalised."""
        return F.normalize(self.text_head(self.text_encoder(texts)), dim=-1)

    def compose(self, reference_embeddings: torch.Tensor, text_embeddings: torch.Tensor, how: str = "fused") -> torch.Tensor:
        """``(B, D)`` reference images + ``(B, D)`` modification texts -> ``(B, D)`` normalised queries."""
        if how == "reference":
            return reference_embeddings
        if how == "text":
            return text_embeddings
        return F.normalize(self.fusion(reference_embeddings, text_embeddings), dim=-1)

    def encode_queries(self, batch: dict[str, Any]) -> torch.Tensor:
        """Text queries (``text``), or composed ones when the batch has ``reference_image``."""
        if "reference_image" not in batch:
            return self.encode_texts(batch["text"])
        how = self.hparams.composed_query
        reference = self.encode_images(batch["reference_image"]) if how != "text" else None
        text = self.encode_texts(batch["text"]) if how != "reference" else None
        return self.compose(reference, text, how)

    def encode_gallery(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.encode_images(batch["image"])

    def export_towers(self) -> ExportTowers:
        raise ExportUnsupported("xmodal cannot be exported as two towers: its composed queries fuse a reference face "
                                "with a sentence (TIRG gate), a query tower of image and text; a text-only export of its "
                                "sentence-transformers tower is not implemented")

    # -- losses --------------------------------------------------------------------------
    def _ranking_loss(self, name: str, queries: torch.Tensor, query_pids: torch.Tensor, candidates: torch.Tensor,
                      candidate_pids: torch.Tensor, relevant: torch.Tensor | None = None) -> torch.Tensor:
        """Difficulty-aware MNRL of ``(Q, D)`` queries whose positives are the first Q of ``(N, D)``
        candidates (``relevant`` ``(Q, N)``: which candidates also fit a query; default: same pid);
        logs the epoch share of each difficulty level as ``train/<name>_<level>``.
        Mined negatives go right after the positives (row ``Q + i`` is query ``i``'s own hard negative,
        sentence-transformers' layout, which its ``hardness_mode`` options rely on)."""
        if self.bank is not None and (mined := self.bank.hardest(queries, query_pids)) is not None:
            q = len(query_pids)
            candidates = torch.cat([candidates[:q], mined[0].to(candidates.dtype), candidates[q:]])
            candidate_pids = torch.cat([candidate_pids[:q], mined[1], candidate_pids[q:]])
            if relevant is not None:  # mined rows are other identities: never relevant
                relevant = torch.cat([relevant[:, :q], relevant.new_zeros(q, q), relevant[:, q:]], dim=1)
        out = self.criterion(queries, candidates, query_pids, candidate_pids, relevant)
        for level, share in self.criterion.level_shares(out.levels).items():
            self.log(f"train/{name}_{level}", share, on_step=False, on_epoch=True, batch_size=len(query_pids))
        return out.loss

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pids = batch["pid"]
        images = self.encode_images(batch["image"])  # (B, D): positives of both query kinds
        terms: dict[str, torch.Tensor] = {}
        if self.loss_weights["text"] > 0:
            texts, every_image, every_pid = gather(self.encode_texts(batch["text"]), images, pids)  # DDP: global batch
            terms["text"] = self._ranking_loss("text", texts, every_pid, every_image, every_pid)
        if self.loss_weights["composed"] > 0:
            if "has_reference" not in batch:
                raise RuntimeError("composed_weight > 0 needs composed training pairs: set data.composed (e.g. `composed: {}`)")
            has = batch["has_reference"].to(images.device).bool()
            if bool(has.any()):
                rows = has.nonzero().squeeze(1)
                queries = self.compose(
                    self.encode_images(batch["reference_image"][rows]),
                    self.encode_texts([batch["modification"][i] for i in rows.tolist()]),
                )
                order = torch.cat([rows, (~has).nonzero().squeeze(1)])  # the targets first: candidate i is query i's positive
                relevant = self._composed_relevant(batch, rows, order)
                terms["composed"] = self._ranking_loss("composed", queries, pids[rows], images[order], pids[order], relevant)
            else:
                terms["composed"] = images.sum() * 0.0
        if self.bank is not None:
            self.bank.add(images, pids)
        return weighted_sum(terms, self.loss_weights)

    @staticmethod
    def _composed_relevant(batch: dict[str, Any], rows: torch.Tensor, order: torch.Tensor) -> torch.Tensor | None:
        """``(Q, N)`` bool: candidate ``order[j]`` also fits composed query ``rows[i]`` (same person, and the
        target's values of the changed attributes), as in the composed evaluation; ``None`` (same pid) when the
        batch has no attributes. Other images of the person that do not fit stay negatives: they are exactly
        what the modification sentence must rule out."""
        if "changed" not in batch:
            return None
        pids, attributes, changed = batch["pid"], batch["attributes"].bool(), batch["changed"].bool()
        agree = (attributes[order][None, :, :] == attributes[rows][:, None, :]) | ~changed[rows][:, None, :]
        return (pids[order][None, :] == pids[rows][:, None]) & agree.all(dim=-1)
