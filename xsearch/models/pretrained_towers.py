"""``PretrainedTowers``: a timm image model and a transformers text model as :class:`~xsearch.models.towers.Towers`.

The towers are an :class:`~xsearch.models.encoders.ImageEncoder` and a
:class:`~xsearch.models.encoders.TextEncoder` (their weights, ``pkg:`` offline packages, frozen stages and
frozen layers load exactly as for the dual encoder), each followed by a linear projection into the joint
width ``embed_dim``:

* image: the backbone's final feature map (B, C, h, w) -> (B, h*w, D) tokens (row-major) and its average
  as the global feature; stage ``l`` of ``hidden`` is timm's ``l``-th intermediate feature map (its
  ``feature_info``), flattened to (B, h_l*w_l, C_l);
* text: the transformer's last token states (through the text encoder's token head when it has one)
  -> (B, L, D) tokens; the global feature is the mean over real tokens or the first (CLS) token, as the
  text encoder pools; ``hidden`` layer ``l`` is the output of transformer layer ``l``.

Text tower frozen except its last ``k`` layers (``trainable_layers: k``, ``0`` = all frozen): the frozen
prefix runs in eval mode and its token states are computed once per caption and cached (keyed by the
caption's ids, kept in the text encoder's ``cache_dtype``); the trainable layers run on them every step, in
float32. ``encode_text(..., cache=False)`` (masked ids of IRRA's MLM) and a traced forward (ONNX export) run
the whole transformer and cache nothing. The cached path calls the embedding module and the layers one by one:
BERT-style encoders (``embeddings`` + one list of layers).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from xsearch.config_types import PositiveInt
from xsearch.models.encoders import ImageEncoder, TextEncoder, cache_dtype, mean_pool
from xsearch.models.towers import MaskedLanguage, TowerOutput, Towers
from xsearch.registry import TOWERS


def _flatten(feature_map: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """(B, C, h, w) -> (B, h*w, C) tokens (row-major) and the grid (h, w)."""
    return feature_map.flatten(2).transpose(1, 2), (int(feature_map.shape[2]), int(feature_map.shape[3]))


@TOWERS.register("pretrained_towers")
class PretrainedTowers(Towers):
    """Pretrained timm image tower + transformers text tower with token outputs (see the module docstring).

    Args:
        image_encoder: the timm image tower (a CNN: its final features are a (B, C, h, w) map; ``stripes`` 0).
        text_encoder: the text tower; its ``max_length`` is the context length, its ``trainable_layers`` the
            frozen prefix (``None``: everything trains, nothing is cached), its token head (if any) applies to
            the last token states.
        embed_dim: joint width D of the tokens and global features.
    """

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder, embed_dim: PositiveInt = 256) -> None:
        super().__init__()
        if image_encoder.stripes:
            raise ValueError("PretrainedTowers: the image encoder should keep its feature map (stripes: 0)")
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.embed_dim, self.context_length = embed_dim, text_encoder.max_length
        self._stages = [int(info["num_chs"]) for info in image_encoder.backbone.feature_info]
        self.image_projection = nn.Linear(image_encoder.backbone.num_features, embed_dim)
        self.text_projection = nn.Linear(text_encoder.out_dim, embed_dim)
        transformer = text_encoder.transformer
        self._layers = next(m for m in transformer.modules() if isinstance(m, nn.ModuleList))
        trainable = text_encoder.trainable_layers
        self._frozen_depth = None if trainable is None else len(self._layers) - trainable
        tokenizer = text_encoder.tokenizer
        special = tuple(sorted(set(tokenizer.all_special_ids)))
        if tokenizer.mask_token_id is None or 0 not in special:
            raise ValueError(f"{text_encoder.name}: masked-language modelling needs a mask token and id 0 special "
                             f"(label 0 = ignore); special ids {special}, mask {tokenizer.mask_token_id}")
        self._masked_language = MaskedLanguage(int(tokenizer.mask_token_id), len(tokenizer), special, 1, len(tokenizer))
        self._pad_id = int(tokenizer.pad_token_id)
        self._cache: dict[tuple[tuple[int, ...], tuple[int, ...]], dict[int, Tensor]] = {}
        self.register_load_state_dict_post_hook(lambda module, keys: module._cache.clear())

    # -- the contract --------------------------------------------------------------------
    @property
    def image_layers(self) -> int:
        return len(self._stages)

    @property
    def text_layers(self) -> int:
        return len(self._layers)

    def image_layer_width(self, layer: int) -> int:
        return self._stages[layer - 1]

    def text_layer_width(self, layer: int) -> int:
        return int(self.text_encoder.transformer.config.hidden_size)

    @property
    def masked_language(self) -> MaskedLanguage:
        """The text tokenizer's mask token and vocabulary; its special tokens are never masked."""
        return self._masked_language

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(B,) captions -> (B, L) ids on the towers' device, L = the longest caption (at most ``context_length``)."""
        return self.text_encoder.tokenize(list(texts))[0].to(self.image_projection.weight.device)

    def tokenize_with_mask(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(B,) captions -> (B, context_length) ids and attention mask, on the CPU (padded to the fixed export length)."""
        tokens = self.text_encoder.tokenizer(list(texts), padding="max_length", truncation=True,
                                             max_length=self.context_length, return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]

    def save_tokenizer(self, folder: Path) -> dict[str, Any]:
        return {**self.text_encoder.save_tokenizer(folder), "padding": f"max_length ({self.context_length})"}

    def pretrained_modules(self) -> list[nn.Module]:
        """The timm backbone and the transformer; the projections and the token head are new modules."""
        return [self.image_encoder.backbone, self.text_encoder.transformer]

    def token_pieces(self, ids: Sequence[int]) -> list[str]:
        return self.text_encoder.tokenizer.convert_ids_to_tokens([int(i) for i in ids])

    # -- image ---------------------------------------------------------------------------
    def encode_image(self, images: Tensor, layers: Sequence[int] = ()) -> TowerOutput:
        """``uint8`` (B, 3, H, W) -> tokens (B, h*w, D) of the final feature map, global (B, D) = their mean;
        ``hidden`` stage ``l`` (B, h_l*w_l, C_l)."""
        encoder = self.image_encoder
        pixels = encoder.normalise(images.float())
        hidden: dict[int, Tensor] = {}
        grids: dict[int, tuple[int, int]] = {}
        if layers:
            final, maps = encoder.backbone.forward_intermediates(pixels, indices=[layer - 1 for layer in layers])
            for layer, feature_map in zip(layers, maps):
                hidden[layer], grids[layer] = _flatten(feature_map)
        else:
            final = encoder.backbone.forward_features(pixels)
        features, grid = _flatten(final)
        tokens = self.image_projection(features)
        return TowerOutput(tokens, tokens.mean(dim=1), hidden, grid=grid, hidden_grids=grids)

    # -- text ----------------------------------------------------------------------------
    def encode_text(self, input_ids: Tensor, layers: Sequence[int] = (), cache: bool = True) -> TowerOutput:
        """(B, L) ids -> tokens (B, L, D), global (B, D) (mean over real tokens or CLS), ``padding`` (B, L),
        ``eot`` (B,) the last real token; ``hidden`` layer ``l`` (B, L, W). The frozen prefix comes from the
        cache unless ``cache`` is false."""
        mask = (input_ids != self._pad_id).long()
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()  # ONNX export: one graph, no cache
        if cache and self._frozen_depth is not None and not tracing:
            states, hidden = self._cached_prefix(input_ids, mask, layers)
            states, hidden = self._run_layers(states, mask, self._frozen_depth, layers, hidden)
        else:
            out = self.text_encoder.transformer(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            states, hidden = out.last_hidden_state, {layer: out.hidden_states[layer] for layer in layers}
        tokens = self.text_projection(self.text_encoder.head_tokens(states, mask))
        pooled = tokens[:, 0] if self.text_encoder.pooling == "cls" else mean_pool(tokens, mask)
        return TowerOutput(tokens, pooled, hidden, padding=mask == 0, eot=mask.sum(1) - 1)

    def _run_layers(self, states: Tensor, mask: Tensor, first: int, layers: Sequence[int],
                    hidden: dict[int, Tensor], last: int | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        """Transformer layers ``first + 1 .. last`` (1-based; ``None``: to the end) on (B, L, W) states; the
        listed layers' outputs are added to ``hidden``."""
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.text_encoder.transformer.config, inputs_embeds=states,
                                              attention_mask=mask)
        for number in range(first + 1, (last if last is not None else len(self._layers)) + 1):
            out = self._layers[number - 1](states, attention_mask=attention)
            states = out[0] if isinstance(out, tuple) else out
            if number in layers:
                hidden[number] = states
        return states, hidden

    def _frozen_prefix(self, input_ids: Tensor, mask: Tensor, layers: Sequence[int]) -> tuple[Tensor, dict[int, Tensor]]:
        """Embeddings + the frozen layers (no gradient): (B, L, W) states and the listed frozen layers' outputs."""
        with torch.no_grad():
            states = self.text_encoder.transformer.embeddings(input_ids=input_ids)
            return self._run_layers(states, mask, 0, layers, {}, self._frozen_depth)

    def _cached_prefix(self, input_ids: Tensor, mask: Tensor, layers: Sequence[int]) -> tuple[Tensor, dict[int, Tensor]]:
        """The frozen prefix's states of each caption computed once (CPU cache keyed by its ids and the frozen layers
        asked for), padded back to (B, L, W)."""
        frozen_layers = tuple(layer for layer in layers if layer <= self._frozen_depth)
        lengths = mask.sum(1).tolist()
        keys = [(tuple(row[:n]), frozen_layers) for row, n in zip(input_ids.tolist(), lengths)]
        first: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        todo = [i for key, i in first.items() if key not in self._cache]
        if todo:
            dtype = cache_dtype(self.text_encoder.cache_dtype, input_ids.device)
            with torch.autocast(input_ids.device.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
                states, hidden = self._frozen_prefix(input_ids[todo], mask[todo], frozen_layers)
            for row, i in enumerate(todo):
                n = lengths[i]
                self._cache[keys[i]] = {0: states[row, :n].to(dtype).cpu(),
                                        **{layer: hidden[layer][row, :n].to(dtype).cpu() for layer in frozen_layers}}
        length = input_ids.shape[1]
        def padded(index: int) -> Tensor:
            """(B, L, W) float32 on the ids' device: the cached rows, zero-padded on the CPU and moved at once."""
            rows = [self._cache[key][index] for key in keys]
            states = nn.utils.rnn.pad_sequence(rows, batch_first=True)
            return nn.functional.pad(states, (0, 0, 0, length - states.shape[1])).to(input_ids.device, torch.float32)
        return padded(0), {layer: padded(layer) for layer in frozen_layers}

    def train(self, mode: bool = True) -> "PretrainedTowers":
        super().train(mode)
        if self._frozen_depth is not None:  # the frozen prefix never uses dropout, so its states can be cached
            self.text_encoder.transformer.embeddings.eval()
            for layer in list(self._layers)[: self._frozen_depth]:
                layer.eval()
        return self
