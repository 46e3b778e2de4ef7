"""OpenAI-CLIP image and text towers for text-based person search (IRRA's backbone; docs/methods.md#clip-towers).

``CLIPTowers`` wraps a transformers ``CLIPModel`` (hub name such as ``openai/clip-vit-base-patch16``,
a local folder, or a ``config`` dict for tiny random-initialised test models) and exposes what the
IRRA family needs:

* the image tower at a non-square input (384x128 -> a 24x8 patch grid): the 14x14 position table is
  resized once, bilinearly with the CLS position kept (TransReID / IRRA), and then trained at the new
  size;
* every token projected into the joint space (``post_layernorm`` + ``visual_projection`` for the image,
  ``final_layer_norm`` + ``text_projection`` for the text), the global feature being the CLS token and
  the EOT token (the first position holding the largest id, 49407);
* optionally the raw hidden states of chosen transformer layers (multi-depth features);
* CLIP's BPE tokenizer, from the vocabulary bundled with ``open_clip`` (identical for every OpenAI-layout
  CLIP, so it works offline): SOT + tokens + EOT, context 77, truncation keeps EOT last, padding 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.constants import CLIP_MEAN, CLIP_STD
from xsearch.models.towers import MaskedLanguage, TowerOutput, Towers
from xsearch.registry import TOWERS
SOT_ID, EOT_ID, MASK_ID = 49406, 49407, 49405
"""CLIP BPE ids: start and end of text, and the id IRRA reuses as ``<|mask|>``."""
PAD_ID = 0


class ClipTokenizer:
    """CLIP BPE tokenizer: ``texts -> (B, context_length)`` int64 ids, padded with 0.

    Uses ``open_clip``'s bundled vocabulary, so no download is needed; lower-casing and whitespace
    cleaning are CLIP's own. A caption longer than the context keeps its first tokens and ends in EOT.
    """

    def __init__(self, context_length: int = 77) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: Sequence[str]) -> Tensor:
        return self._bpe(list(texts), context_length=self.context_length)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The text of each token id (``<start_of_text>``, word pieces, ``<end_of_text>``, ``!`` for 0)."""
        return [self._bpe.decode([int(i)]).strip() or "_" for i in ids]


class GridPositionEmbeddings(nn.Module):
    """CLIP patch + CLS + position embeddings for a fixed ``(rows, cols)`` patch grid.

    Built from a pretrained square embedding module: the patch convolution and the class embedding are
    reused, the position table is resized once (bilinear, CLS kept) and is trained at the new size.
    """

    def __init__(self, square: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.patch_embedding = square.patch_embedding
        self.class_embedding = square.class_embedding
        self.patch_size = square.patch_size
        self.grid = tuple(grid)
        table = square.position_embedding.weight.detach()  # (1 + g*g, W)
        side = int(round((table.shape[0] - 1) ** 0.5))
        patches = table[1:].reshape(side, side, -1).permute(2, 0, 1)[None]  # (1, W, g, g)
        resized = F.interpolate(patches, size=self.grid, mode="bilinear", align_corners=False)
        resized = resized[0].permute(1, 2, 0).reshape(self.grid[0] * self.grid[1], -1)
        self.position_embedding = nn.Embedding(1 + resized.shape[0], table.shape[1])
        with torch.no_grad():
            self.position_embedding.weight.copy_(torch.cat([table[:1], resized]))

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + rows*cols, W) embeddings; the input must give the configured grid."""
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, W, rows, cols)
        if tuple(patches.shape[-2:]) != self.grid:
            size = (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
            raise ValueError(f"image of size {tuple(pixel_values.shape[-2:])} does not give the {self.grid} patch grid; "
                             f"the towers were built for {size}")
        tokens = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(tokens.shape[0], 1, -1)
        return torch.cat([cls, tokens], dim=1) + self.position_embedding.weight[None]


@TOWERS.register("clip_towers")
class CLIPTowers(Towers):
    """CLIP image + text towers with token outputs (see the module docstring); a :class:`Towers`.

    Args:
        name: hub name or local folder of a CLIP checkpoint in transformers format
            (``openai/clip-vit-base-patch16``); ignored when ``config`` is given.
        config: ``CLIPConfig`` keyword arguments for a random-initialised model (tests, CPU runs);
            the text vocabulary must be CLIP's (49408).
        image_size: ``(H, W)`` of the input images; must be a multiple of the patch size.
        context_length: text tokens per caption (77 in CLIP).
    """

    def __init__(
        self,
        name: str = "openai/clip-vit-base-patch16",
        config: dict[str, Any] | None = None,
        image_size: tuple[int, int] = (384, 128),
        context_length: int = 77,
    ) -> None:
        super().__init__()
        from transformers import CLIPConfig, CLIPModel

        model = CLIPModel(CLIPConfig(**config)) if config is not None else CLIPModel.from_pretrained(name)
        if model.config.text_config.vocab_size != EOT_ID + 1:
            raise ValueError(f"CLIP text vocabulary should have {EOT_ID + 1} entries, got {model.config.text_config.vocab_size}")
        patch = model.config.vision_config.patch_size
        if image_size[0] % patch or image_size[1] % patch:
            raise ValueError(f"image_size {tuple(image_size)} should be a multiple of the patch size {patch}")
        self.vision, self.text = model.vision_model, model.text_model
        self.vision.embeddings = GridPositionEmbeddings(self.vision.embeddings, (image_size[0] // patch, image_size[1] // patch))
        self.visual_projection, self.text_projection = model.visual_projection, model.text_projection
        self.embed_dim = model.config.projection_dim
        self.vision_width = model.config.vision_config.hidden_size
        self.text_width = model.config.text_config.hidden_size
        self.image_size, self.context_length = tuple(image_size), context_length
        self.tokenizer = ClipTokenizer(context_length)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def image_layers(self) -> int:
        return len(self.vision.encoder.layers)

    @property
    def text_layers(self) -> int:
        return len(self.text.encoder.layers)

    def image_layer_width(self, layer: int) -> int:
        return self.vision_width

    def text_layer_width(self, layer: int) -> int:
        return self.text_width

    @property
    def masked_language(self) -> MaskedLanguage:
        """IRRA's: ``<|mask|>`` 49405, vocabulary 49408, pad / SOT / EOT never masked, random ids below the mask."""
        return MaskedLanguage(MASK_ID, EOT_ID + 1, (PAD_ID, SOT_ID, EOT_ID), 1, MASK_ID)

    def token_pieces(self, ids: Sequence[int]) -> list[str]:
        return self.tokenizer.pieces(ids)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(B,) captions -> (B, context_length) ids on the towers' device."""
        return self.tokenizer(texts).to(self.mean.device)

    def tokenize_with_mask(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(B,) captions -> (B, context_length) ids and attention mask (1 up to and including EOT), on the CPU."""
        ids = self.tokenizer(texts)
        eot = (ids == EOT_ID).int().argmax(dim=-1)
        return ids, (torch.arange(ids.shape[1])[None] <= eot[:, None]).long()

    def save_tokenizer(self, folder: Path) -> dict[str, Any]:
        """Copy the BPE vocabulary into ``folder``; returns how to tokenise with it (a JSON-able dict)."""
        import shutil

        from open_clip.tokenizer import default_bpe

        folder.mkdir(parents=True, exist_ok=True)
        vocabulary = Path(default_bpe())
        shutil.copyfile(vocabulary, folder / vocabulary.name)
        return {"library": "open_clip", "load": f"open_clip.tokenizer.SimpleTokenizer(bpe_path=<folder>/{vocabulary.name}, "
                f"context_length={self.context_length})", "vocabulary": vocabulary.name,
                "context_length": self.context_length, "sot_id": SOT_ID, "eot_id": EOT_ID, "pad_id": PAD_ID,
                "rules": "lower-cased, whitespace cleaned; SOT + BPE tokens + EOT, a longer caption keeps its first "
                         "tokens and ends in EOT; padded with 0 to context_length; attention_mask = 1 up to EOT (the "
                         "text tower reads the EOT token under CLIP's causal mask, so the mask does not change it)",
                "returns": ["input_ids", "attention_mask"]}

    def encode_image(self, images: Tensor, layers: Sequence[int] = ()) -> TowerOutput:
        """``uint8`` (B, 3, H, W) images (0-255, already resized) -> image :class:`TowerOutput`: tokens (B, 1 + h*w, D),
        CLS first; global = CLS; ``hidden`` (B, 1 + h*w, W) per listed layer."""
        pixels = (images.float() - self.mean) / self.std
        out = self.vision(pixel_values=pixels, output_hidden_states=bool(layers))
        tokens = self.visual_projection(self.vision.post_layernorm(out.last_hidden_state))
        hidden = {layer: out.hidden_states[layer] for layer in layers}
        grid = self.vision.embeddings.grid
        return TowerOutput(tokens, tokens[:, 0], hidden, grid=grid, hidden_grids={layer: grid for layer in layers})

    def encode_text(self, input_ids: Tensor, layers: Sequence[int] = (), cache: bool = True) -> TowerOutput:
        """(B, L) CLIP ids -> text :class:`TowerOutput` (global feature at the first EOT); nothing is cached."""
        out = self.text(input_ids=input_ids, output_hidden_states=bool(layers))
        tokens = self.text_projection(out.last_hidden_state)  # last_hidden_state is after final_layer_norm
        eot = (input_ids == EOT_ID).int().argmax(dim=-1)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = {layer: out.hidden_states[layer] for layer in layers}
        global_features = tokens[torch.arange(eot.shape[0], device=eot.device), eot]  # shape, not len(): ONNX export keeps B dynamic
        return TowerOutput(tokens, global_features, hidden, positions[None] > eot[:, None], eot)


def tiny_clip_config(width: int = 64, layers: int = 2, heads: int = 2, embed_dim: int = 64, patch: int = 16) -> dict[str, Any]:
    """``CLIPConfig`` kwargs of a small random CLIP with the real vocabulary (tests and CPU runs)."""
    return {
        "text_config": {"vocab_size": EOT_ID + 1, "hidden_size": width, "num_hidden_layers": layers,
                        "num_attention_heads": heads, "intermediate_size": 4 * width, "max_position_embeddings": 77},
        "vision_config": {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads,
                          "intermediate_size": 4 * width, "image_size": 224, "patch_size": patch},
        "projection_dim": embed_dim,
    }
