"""What a method hands ``xsearch export``: its two towers (:class:`ExportTowers`), or :class:`ExportUnsupported` saying
why it has none (:meth:`~xsearch.models.RetrievalModule.export_towers`).

The method contract lives with the methods; the ONNX driver (:mod:`xsearch.onnx_export`) sits above them and only reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor


class ExportUnsupported(ValueError):
    """A method (or configuration) whose ranking is not two independent towers compared by cosine."""


@dataclass(frozen=True)
class ExportTowers:
    """A method's two towers for export; the cosine of their outputs must be the method's ranking score.

    Attributes:
        image: float pixels ``(B, 3, H, W)`` on the 0-255 scale (resized, RGB) -> ``(B, D)`` embeddings.
        text: token ids ``(B, L)`` and attention mask ``(B, L)`` (int64) -> ``(B, D)`` embeddings.
        tokenize: ``B`` captions -> ``((B, L), (B, L))`` ids and mask, as the method tokenises them (CPU).
        save_tokenizer: writes the tokenizer's files into a folder and returns how to use them (JSON-able).
        text_length: a fixed ``L`` (CLIP's context length), or ``None`` when any length up to the tokenizer's
            ``max_length`` is accepted.
    """

    image: Callable[[Tensor], Tensor]
    text: Callable[[Tensor, Tensor], Tensor]
    tokenize: Callable[[list[str]], tuple[Tensor, Tensor]]
    save_tokenizer: Callable[[Path], dict[str, Any]]
    text_length: int | None = None
