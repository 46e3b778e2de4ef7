"""``partlevel``: part-level cross-modal correspondence (Park, Jeong, Kim, Kwak, arXiv 2501.00318).

Re-implementation from the abstract and the authors' sibling PLOT code (docs/methods.md#part-level-correspondence);
unknown choices are options. IRRA (:class:`~xsearch.models.irra.IRRA`) gives the coarse (global) embeddings and
their losses; a **shared-token decoder** gives K part embeddings per image and per caption: the same K learnable tokens
read the patch tokens of an image or the word tokens of a caption (one cross-attention with a norm per
modality, then a small shared transformer), so slot k of an image and slot k of a caption correspond by
construction, without part labels. Part losses (:mod:`xsearch.losses.parts`): per-slot and aggregated
SDM, and the commonality-based margin ranking loss (CMR: parts common across identities get a small
margin, distinctive ones the full margin), switched on after ``part_start_epoch``.

Ranking: ``S(q, g) = cos(global) + part_similarity_weight * mean_k cos(P_t[q, k], P_v[g, k])`` over the full gallery,
gallery parts encoded once; ``global_only`` ranks by the global cosine alone.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.config_types import NonNegativeFloat, NonNegativeInt, PositiveInt
from xsearch.distributed import gather
from xsearch.evaluation import cosine_similarity
from xsearch.losses import cmr_loss, part_diversity, part_sdm_loss
from xsearch.models.blocks import ResidualAttentionBlock, clip_init
from xsearch.models.export_contract import ExportTowers, ExportUnsupported
from xsearch.models.towers import TowerOutput, Towers
from xsearch.models.irra import IRRA
from xsearch.registry import METHODS


class SharedTokenDecoder(nn.Module):
    """K learnable query tokens shared by both modalities -> (B, K, D) part embeddings.

    ``queries`` (K, D), orthogonal init scaled by ``D^-0.5``; one cross-attention whose keys/values are
    the modality's tokens after that modality's LayerNorm (padding masked); ``layers`` self-attention
    blocks over the K tokens and a final LayerNorm, all shared.
    """

    def __init__(self, dim: int, heads: int, num_parts: int, layers: int = 2) -> None:
        super().__init__()
        queries = torch.empty(num_parts, dim)
        nn.init.orthogonal_(queries)
        self.queries = nn.Parameter(queries * dim ** -0.5)
        self.ln_query, self.ln_post = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ln_memory = nn.ModuleDict({"image": nn.LayerNorm(dim), "text": nn.LayerNorm(dim)})
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(dim, heads) for _ in range(layers))
        clip_init(self, dim, max(layers, 1))

    def forward(self, tokens: Tensor, modality: Literal["image", "text"], padding: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, N, D) tokens, (B, N) True at ignored tokens -> parts (B, K, D), attention (B, K, N)."""
        memory = self.ln_memory[modality](tokens)
        queries = self.ln_query(self.queries).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        x, attention = self.cross_attn(queries, memory, memory, key_padding_mask=padding, need_weights=True)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x), attention


def word_padding(text: TowerOutput) -> Tensor:
    """(B, L) True at the tokens parts must not read: the start token (position 0), the end token and padding."""
    positions = torch.arange(text.padding.shape[1], device=text.padding.device)
    return text.padding | (positions[None] == 0) | (positions[None] == text.eot[:, None])


@METHODS.register("partlevel")
class PartLevel(IRRA):
    """Part-level correspondence on IRRA (see the module docstring).

    Args:
        towers: the image and text towers (any :class:`~xsearch.models.towers.Towers`).
        num_parts: K shared tokens (fine parts; PLOT: 8).
        coarse_parts: extra shared tokens forming a coarse group (e.g. 2: upper / lower body), decoded
            and trained like the others but weighted separately in the ranking score (0 = none).
        decoder_layers / decoder_heads: the decoder's self-attention depth / heads (``None``: width // 64).
        part_weight: weight of the part SDM losses (per-slot mean + aggregated similarity).
        cmr_weight / cmr_base_margin / cmr_min_margin / cmr_negative: CMR loss weight, margin
            ``max(min, base * (1 - commonality))``, negative choice.
        commonality: scale margins by part commonality; ``False`` is the plain-margin ablation.
        diversity_weight: weight of the mean off-diagonal cosine among a sample's parts (0 = off).
        part_start_epoch: part losses are added from this epoch on (0-based).
        part_similarity_weight: ``w`` of the (fine) part term in the ranking score.
        coarse_similarity_weight: weight of the coarse group's mean cosine in the ranking score.
        global_only: rank by the global cosine only (ablation / fast mode).
        **kwargs: :class:`IRRA` options and the optimiser.
    """

    def __init__(
        self,
        towers: Towers,
        num_parts: PositiveInt = 8,
        coarse_parts: NonNegativeInt = 0,
        decoder_layers: int = 2,
        decoder_heads: PositiveInt | None = None,
        part_weight: NonNegativeFloat = 1.0,
        cmr_weight: NonNegativeFloat = 1.0,
        cmr_base_margin: float = 0.2,
        cmr_min_margin: float = 0.05,
        cmr_negative: Literal["hardest", "semi_hard"] = "hardest",
        commonality: bool = True,
        diversity_weight: NonNegativeFloat = 0.0,
        part_start_epoch: NonNegativeInt = 5,
        part_similarity_weight: float = 1.0,
        coarse_similarity_weight: float = 1.0,
        global_only: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(towers, **kwargs)
        dim = towers.embed_dim
        self.decoder = SharedTokenDecoder(dim, decoder_heads or max(1, dim // 64), coarse_parts + num_parts, decoder_layers)
        self.loss_weights.update({"part": part_weight, "cmr": cmr_weight, "diversity": diversity_weight})

    # -- parts ---------------------------------------------------------------------------
    def image_parts(self, image: TowerOutput) -> tuple[Tensor, Tensor]:
        """Parts (B, K, D) and attention (B, K, h*w) from the image's patch tokens (a CLS token excluded)."""
        return self.decoder(image.patches, "image")

    def text_parts(self, text: TowerOutput) -> tuple[Tensor, Tensor]:
        """Parts (B, K, D) and attention (B, K, L) from the caption's word tokens."""
        return self.decoder(text.tokens, "text", word_padding(text))

    def encode_queries(self, batch: dict[str, Any]) -> Tensor:
        """(B, D + K*D): the global text feature followed by the flattened parts (split in ``similarity``)."""
        text = self.text_features(self.towers.tokenize(batch["text"]))
        return torch.cat([text.global_features, self.text_parts(text)[0].flatten(1)], dim=1)

    def encode_gallery(self, batch: dict[str, Any]) -> Tensor:
        image = self.image_features(batch["image"])
        return torch.cat([image.global_features, self.image_parts(image)[0].flatten(1)], dim=1)

    def export_towers(self) -> ExportTowers:
        """IRRA's towers with ``global_only``; otherwise the ranking is not one embedding per side (see below)."""
        if not self.hparams.global_only:
            raise ExportUnsupported("partlevel cannot be exported as two towers: its score adds the mean cosine of K "
                                    "part embeddings per side to the global cosine (similarity over (D + K*D) "
                                    "features), not one cosine of two embeddings (a checkpoint saved with "
                                    "global_only true ranks by the global features alone, and exports)")
        return super().export_towers()

    def similarity(self, query_embeddings: Tensor, gallery_embeddings: Tensor) -> Tensor:
        """(Q, D + K*D), (G, D + K*D) -> (Q, G): global cosine + per group (coarse, fine) its weight x the
        mean over the group's tokens of the part cosines."""
        hp, dim = self.hparams, self.towers.embed_dim
        scores = cosine_similarity(query_embeddings[:, :dim], gallery_embeddings[:, :dim])
        if hp.global_only:
            return scores
        groups = ((0, hp.coarse_parts, hp.coarse_similarity_weight), (hp.coarse_parts, hp.coarse_parts + hp.num_parts, hp.part_similarity_weight))
        def unit_parts(embeddings: Tensor, first: int, last: int) -> Tensor:
            """(N, (last - first) * D): parts ``first..last-1`` of each row, each L2-normalised, flattened."""
            parts = embeddings[:, dim * (1 + first): dim * (1 + last)].float().view(len(embeddings), last - first, dim)
            return F.normalize(parts, dim=-1).flatten(1)

        for first, last, weight in groups:
            if last > first and weight != 0:
                # the flattened unit parts have norm sqrt(n), so their cosine is the mean part cosine
                part_cosine = cosine_similarity(unit_parts(query_embeddings, first, last), unit_parts(gallery_embeddings, first, last))
                scores = scores + weight * part_cosine
        return scores

    # -- losses --------------------------------------------------------------------------
    def extra_terms(self, image: TowerOutput, text: TowerOutput, labels: Tensor) -> dict[str, Tensor]:
        if self._trainer is not None and self.current_epoch < self.hparams.part_start_epoch:
            return {}
        image_parts, _ = self.image_parts(image)
        text_parts, _ = self.text_parts(text)
        terms: dict[str, Tensor] = {}
        if self.loss_weights["diversity"] > 0:  # per sample: this rank's batch
            terms["diversity"] = 0.5 * (part_diversity(image_parts) + part_diversity(text_parts))
        image_parts, text_parts, labels = gather(image_parts, text_parts, labels)  # batch-wise: the global batch
        if self.loss_weights["part"] > 0:
            part = part_sdm_loss(image_parts, text_parts, labels, self.hparams.sdm_scale)
            terms["part"] = part["per_part"] + part["aggregated"]
        if self.loss_weights["cmr"] > 0:
            common = None if self.hparams.commonality else image_parts.new_zeros(image_parts.shape[:2])
            terms["cmr"] = cmr_loss(image_parts, text_parts, labels, self.hparams.cmr_base_margin,
                                    self.hparams.cmr_min_margin, self.hparams.cmr_negative, common)
        return terms

    # -- what each part token reads ------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.hparams.visualize_queries and self.trainer.is_global_zero:
            self.draw_part_attention(min(4, self.hparams.visualize_queries))

    @torch.no_grad()
    def draw_part_attention(self, count: int) -> None:
        """Save ``test_parts.png`` (and log ``test/parts``): each token's attention over a few test
        queries' own images and captions (:func:`xsearch.visualize.part_attention_grid`)."""
        from xsearch.visualize import part_attention_grid

        datamodule = self.trainer.datamodule
        if "test" not in getattr(datamodule, "eval_sets", {}):
            return
        query_set, gallery_set = datamodule.eval_sets["test"]
        rows = [round(i * (len(query_set) - 1) / max(count - 1, 1)) for i in range(min(count, len(query_set)))]
        items = [query_set[row] for row in rows]
        images = torch.stack([gallery_set.store(item["image_index"]) for item in items]).to(self.device)
        ids = self.towers.tokenize([item["text"] for item in items])
        image = self.image_features(images)
        _, image_attention = self.image_parts(image)
        _, word_attention = self.text_parts(self.text_features(ids))
        paths = {r.index: r.path for r in gallery_set.images}
        figure = part_attention_grid(
            [paths[item["image_index"]] for item in items],
            image_attention.float().cpu().view(len(items), -1, *image.grid),
            [self.towers.token_pieces(row) for row in ids.tolist()],
            word_attention.float().cpu(),
        )
        self.save_figure(figure, "test_parts.png", "test/parts", "red = patches each part token reads; its top words below")
