"""``idclip``: identity-aware CLIP retrieval (Messina et al., ECIR 2025; METHODS.md section 5).

A person's 512-d face descriptor becomes a pseudo-word: a small translator MLP maps it to one text-token
embedding, which replaces the ``[TOK]`` token of the caption right after the token lookup, before CLIP adds
position embeddings. The text tower then reads "A picture of [TOK] riding a horse" as a caption about that
person. Only the translator and ``prompt_tokens`` learnable visual prompt tokens (shallow VPT: appended after
CLS + patches at the input layer) train; CLIP stays frozen, so the gallery never needs re-indexing for a new
identity. Loss: symmetric InfoNCE at a fixed temperature 0.07 (learnable as an option).

Captions come from the ``coco_pfs`` parser with ``entity: slot`` (``[ENTITY]`` where the identity goes);
``entity_fill`` says what the slot becomes (``[TOK]`` = the paper's conf1). Batches carry ``face`` ``(B, 512)``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.datamodules.entity_captions import SLOT, fill_entity
from xsearch.losses import info_nce
from xsearch.models.base import RetrievalModule
from xsearch.models.clip import EOT_ID, PAD_ID, SOT_ID, CLIPTowers
from xsearch.registry import METHODS

TOKEN = "[TOK]"
"""The pseudo-word in a caption that carries the face."""
TOKEN_ID = EOT_ID + 1
"""Its id after tokenising (outside CLIP's vocabulary, as the authors' 49408); swapped before the lookup."""


def tokenize_with_token(bpe: Any, texts: Sequence[str], context_length: int = 77) -> tuple[Tensor, Tensor]:
    """Captions with ``[TOK]`` -> ``(B, L)`` CLIP ids (``[TOK]`` -> :data:`TOKEN_ID`) and ``(B, L)`` bool ``[TOK]``
    positions. SOT + tokens + EOT, truncated to keep EOT last, padded with 0 (CLIP's layout)."""
    ids = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        pieces = text.split(TOKEN)
        tokens: list[int] = []
        for k, piece in enumerate(pieces):
            tokens += ([TOKEN_ID] if k else []) + (bpe.encode(piece) if piece.strip() else [])
        tokens = [SOT_ID, *tokens][: context_length - 1] + [EOT_ID]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, ids == TOKEN_ID


class Translator(nn.Module):
    """Face descriptor -> one token embedding: ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)`` (no bias by
    default, the paper's "mlp-1-layer"); ``(B, in) -> (B, out)``, not normalised."""

    def __init__(self, in_dim: int = 512, hidden: int = 768, out_dim: int = 768, bias: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, out_dim, bias=bias))

    def forward(self, faces: Tensor) -> Tensor:
        return self.net(faces)


class PromptedEmbeddings(nn.Module):
    """Shallow visual prompt tuning: the image embeddings ``(B, 1 + P, W)`` followed by ``count`` learnable
    tokens ``(count, W)`` (N(0, 1) init), before CLIP's pre-LayerNorm; the output is still read at CLS."""

    def __init__(self, embeddings: nn.Module, width: int, count: int) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.prompts = nn.Parameter(torch.randn(count, width))

    def forward(self, pixel_values: Tensor, **kwargs: Any) -> Tensor:
        tokens = self.embeddings(pixel_values, **kwargs)
        return torch.cat([tokens, self.prompts.to(tokens.dtype).expand(tokens.shape[0], -1, -1)], dim=1)


@METHODS.register("idclip")
class IdCLIP(RetrievalModule):
    """Id-CLIP (see the module docstring).

    Args:
        clip: CLIP towers (``image_size`` square, e.g. 336 for ViT-L/14@336); frozen.
        face_dim: size of the face descriptors (512).
        translator_hidden / translator_bias: the translator MLP.
        prompt_tokens: shallow visual prompt tokens (0 = none; the paper: 5).
        temperature: InfoNCE temperature (0.07); ``learnable_temperature`` trains it (clamped at 100 x).
        entity_fill: what the caption's ``[ENTITY]`` slot becomes; ``[TOK]`` marks where the face goes.
        **kwargs: :class:`RetrievalModule` options (``lr`` is the translator's and the prompts' learning
            rate: 5e-5 in the paper, with AdamW, wd 0.01, no schedule).
    """

    def __init__(
        self,
        clip: CLIPTowers,
        face_dim: int = 512,
        translator_hidden: int = 768,
        translator_bias: bool = False,
        prompt_tokens: int = 5,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        entity_fill: str = TOKEN,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.clip = clip.requires_grad_(False).eval()
        self.translator = Translator(face_dim, translator_hidden, clip.text_width, translator_bias)
        if prompt_tokens:
            clip.vision.embeddings = PromptedEmbeddings(clip.vision.embeddings, clip.vision_width, prompt_tokens)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learnable_temperature)
        self.entity_fill = entity_fill

    def train(self, mode: bool = True) -> "IdCLIP":
        super().train(mode)
        self.clip.eval()  # frozen
        return self

    @contextmanager
    def _injected(self, positions: Tensor, vectors: Tensor) -> Iterator[None]:
        """While open, the text token lookup returns ``vectors`` ``(B, W)`` at ``positions`` ``(B, L)``."""
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            return torch.where(positions[..., None], vectors[:, None, :].to(output.dtype), output)

        handle = self.clip.text.embeddings.token_embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode_texts(self, texts: Sequence[str], faces: Tensor) -> Tensor:
        """``B`` captions (``[ENTITY]`` slot or ``[TOK]``) + ``(B, 512)`` faces -> ``(B, D)`` normalised."""
        filled = [fill_entity(t, self.entity_fill) if SLOT in t else t for t in texts]
        ids, positions = tokenize_with_token(self.clip.tokenizer._bpe, filled, self.clip.context_length)
        device = self.log_scale.device
        ids, positions = ids.to(device), positions.to(device)
        ids = ids.masked_fill(positions, PAD_ID)  # a valid id for the lookup; its embedding is replaced
        with self._injected(positions, self.translator(faces.to(device).float())):
            features = self.clip.encode_text(ids).global_features
        return F.normalize(features.float(), dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, D)`` normalised (through the visual prompts)."""
        return F.normalize(self.clip.encode_image(images).global_features.float(), dim=-1)

    def encode_queries(self, batch: dict[str, Any]) -> Tensor:
        if "face" not in batch:
            raise KeyError("idclip needs face descriptors in the batch ('face'): use a dataset with them (coco_pfs, synth_pfs)")
        return self.encode_texts(batch["text"], batch["face"])

    def encode_gallery(self, batch: dict[str, Any]) -> Tensor:
        return self.encode_images(batch["image"])

    def training_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = self.encode_images(batch["image"])
        texts = self.encode_queries(batch)
        scale = self.log_scale.exp().clamp(max=100.0)
        loss = info_nce(images, texts, scale)
        return {"itc": loss, "loss": loss}
