"""Decoding image files: :func:`read_rgb` and the one error an unreadable file raises, :class:`UnreadableImage`.

A leaf module (it imports nothing from xsearch): the data pipeline (:mod:`xsearch.datamodules.transforms`), the
pictures (:mod:`xsearch.visualize`) and ``xsearch inspect`` read images through it.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image


class UnreadableImage(OSError):
    """An image file that cannot be decoded (corrupt, truncated, not an image); ``path`` names it."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        super().__init__(str(path) if reason is None else f"{path}: cannot read image ({reason})")
        self.path = str(path)  # (the whole message when re-raised from a DataLoader worker)


def read_rgb(path: str | Path) -> Image.Image:
    """Decode an image file as RGB. Anything that is not a readable image raises :class:`UnreadableImage` naming the
    file: corrupt, truncated (PIL's ``LOAD_TRUNCATED_IMAGES`` stays off: no half-grey image), not an image, or a
    decompression bomb (more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` allows twice over: refused from its header,
    before any pixel is decoded)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImage(path, str(error)) from error
