"""The towers contract: image and text towers with token-level outputs in one joint space.

Methods that read tokens (IRRA, CMSN, part-level) take a :class:`Towers` and use only what it declares:
``encode_image`` / ``encode_text`` (:class:`TowerOutput`), the tokenizer, the masked-language vocabulary
(:class:`MaskedLanguage`), the joint width ``embed_dim``, the number and width of the hidden layers
(stages) and ``context_length``. Implementations: :class:`~xsearch.models.clip.CLIPTowers`,
:class:`~xsearch.models.pretrained_towers.PretrainedTowers`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn


@dataclass
class TowerOutput:
    """Per-token output of one tower.

    ``tokens``: (B, N, D) tokens in the joint space (D = ``embed_dim``). ``global_features``: (B, D).
    ``hidden``: layer (stage) number, 1-based -> (B, N_l, W_l) hidden states of that layer, before any
    final norm or projection (W_l = the tower's ``image_layer_width(l)`` / ``text_layer_width(l)``).

    Images: ``grid`` (h, w): the last ``h * w`` of ``tokens`` are the patch (feature-map) tokens in
    row-major order (:attr:`patches`); tokens before them (e.g. a CLS token) are global tokens.
    ``hidden_grids``: the same for each hidden layer.

    Text: ``padding`` (B, L) True at padding positions; ``eot`` (B,) position of the end token (the last
    real token); position 0 holds the start token.
    """

    tokens: Tensor
    global_features: Tensor
    hidden: dict[int, Tensor] = field(default_factory=dict)
    padding: Tensor | None = None
    eot: Tensor | None = None
    grid: tuple[int, int] | None = None
    hidden_grids: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def patches(self) -> Tensor:
        """Image: the (B, h*w, D) patch tokens (row-major over ``grid``)."""
        if self.grid is None:
            raise ValueError("patches: this output has no patch grid (not an image output)")
        return self.tokens[:, self.tokens.shape[1] - self.grid[0] * self.grid[1]:]


@dataclass(frozen=True)
class MaskedLanguage:
    """What masked-language modelling needs of a text tower's vocabulary.

    ``mask_id``: id written at masked positions; ``vocab_size``: classes of an MLM head; ``special_ids``:
    ids never masked (padding must be 0 and among them: label 0 means "ignore"); random replacements are
    drawn from ``[random_low, random_high)``.
    """

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    random_low: int
    random_high: int


class Towers(nn.Module, ABC):
    """Image + text towers with token outputs (see the module docstring).

    Attributes set by an implementation: ``embed_dim`` (joint width D) and ``context_length`` (the most
    tokens per caption).
    """

    embed_dim: int
    context_length: int

    @abstractmethod
    def encode_image(self, images: Tensor, layers: Sequence[int] = ()) -> TowerOutput:
        """``uint8`` (B, 3, H, W) images (0-255, already resized) -> image output (with ``grid``), ``hidden``
        holding the listed layers (stages)."""

    @abstractmethod
    def encode_text(self, input_ids: Tensor, layers: Sequence[int] = (), cache: bool = True) -> TowerOutput:
        """(B, L) ids of :meth:`tokenize` -> text output (with ``padding`` and ``eot``), ``hidden`` holding the
        listed layers. ``cache=False``: never read or fill a cache of frozen states (e.g. masked ids)."""

    @property
    @abstractmethod
    def image_layers(self) -> int:
        """Number of image layers (stages) ``encode_image`` can return in ``hidden`` (1..image_layers)."""

    @property
    @abstractmethod
    def text_layers(self) -> int:
        """Number of text layers ``encode_text`` can return in ``hidden`` (1..text_layers)."""

    @abstractmethod
    def image_layer_width(self, layer: int) -> int:
        """Channels W of image hidden layer ``layer``."""

    @abstractmethod
    def text_layer_width(self, layer: int) -> int:
        """Width W of text hidden layer ``layer``."""

    @property
    @abstractmethod
    def masked_language(self) -> MaskedLanguage:
        """The text vocabulary as masked-language modelling needs it."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(B,) captions -> (B, L) int64 ids on the towers' device (L <= ``context_length``)."""

    @abstractmethod
    def tokenize_with_mask(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(B,) captions -> (B, L) ids and (B, L) attention mask (1 = real token), on the CPU (export)."""

    @abstractmethod
    def save_tokenizer(self, folder: Path) -> dict[str, Any]:
        """Write the tokenizer's files into ``folder``; returns how to tokenise with them (JSON-able)."""

    def pretrained_modules(self) -> list[nn.Module]:
        """The modules holding pretrained weights (a method trains them at its backbone learning rate); the
        towers' other modules (projections, heads) are new. Default: the whole towers."""
        return [self]

    @abstractmethod
    def token_pieces(self, ids: Sequence[int]) -> list[str]:
        """The text of each token id of one caption (pictures of what a token reads)."""
