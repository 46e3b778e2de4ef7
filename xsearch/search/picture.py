"""A picture of search results: the query (and its reference image) on top, then the ranked images in rows, each
labelled with its rank and score and its file name. Sizes are deterministic (:func:`picture_size`); drawing reuses
the ranked-list helpers of :mod:`xsearch.visualize` (fonts, word wrap, padded thumbnails)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from xsearch.visualize import BACKGROUND, BORDER, FONT_SIZE, GAP, LABEL_HEIGHT, LINE_SPACING, MARGIN, PAD_COLOR, \
    TEXT_COLOR, default_font, load_thumb, wrap_text

COLUMNS = 10
"""Results per row of the picture."""
QUERY_LINES = 3
"""Lines of query text drawn above the results (longer queries end in ``...``)."""
MIN_CELL_WIDTH = 96
"""Narrowest result column, room for ``#20 0.873``."""
THUMB_HEIGHT = 128
OUTLINE = (90, 90, 90)
REFERENCE_OUTLINE = (30, 90, 200)


def thumb_size_for(image_size: Sequence[int], height: int = THUMB_HEIGHT) -> tuple[int, int]:
    """``(H, W)`` thumbnails ``height`` tall with the aspect ratio of the model's ``image_size`` (width 32-256)."""
    return height, max(32, min(256, round(height * image_size[1] / image_size[0])))


def _thumb(path: str | Path, thumb_size: tuple[int, int]) -> Image.Image:
    """The padded thumbnail of ``path``, or a grey tile when the file is gone or unreadable since it was indexed."""
    try:
        return load_thumb(path, thumb_size)
    except OSError:
        return Image.new("RGB", (thumb_size[1], thumb_size[0]), PAD_COLOR)


def _cell(thumb_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of one result: rank/score line, outlined thumbnail, file name line, gap."""
    return max(thumb_size[1] + 2 * BORDER, MIN_CELL_WIDTH), LABEL_HEIGHT + thumb_size[0] + 2 * BORDER + LABEL_HEIGHT + GAP


def _header_height(thumb_size: tuple[int, int], reference: bool) -> int:
    text = QUERY_LINES * (FONT_SIZE + LINE_SPACING)
    return max(text, LABEL_HEIGHT + thumb_size[0] + 2 * BORDER if reference else 0) + GAP


def picture_size(count: int, thumb_size: tuple[int, int] = (128, 64), columns: int = COLUMNS,
                 reference: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of :func:`results_picture` for ``count`` results."""
    cell_w, cell_h = _cell(thumb_size)
    cols = max(1, min(columns, count))
    rows = math.ceil(count / columns) if count else 0
    width = 2 * MARGIN + cols * cell_w + (cols - 1) * GAP
    if reference:
        width = max(width, 2 * MARGIN + thumb_size[1] + 2 * BORDER + GAP + 200)
    return width, 2 * MARGIN + _header_height(thumb_size, reference) + rows * cell_h


def results_picture(query: str, images: Sequence[str | Path], scores: Sequence[float],
                    labels: Sequence[str] | None = None, reference: str | Path | None = None,
                    thumb_size: tuple[int, int] = (128, 64), columns: int = COLUMNS) -> Image.Image:
    """Draw ranked results: ``images[i]`` (paths, best first) with ``#i+1`` and ``scores[i]`` above it and
    ``labels[i]`` (default: the file name) below; the query text on top, after the ``reference`` image of a composed
    query. ``thumb_size`` is (H, W); the size is :func:`picture_size`."""
    if len(images) != len(scores) or (labels is not None and len(labels) != len(images)):
        raise ValueError(f"{len(images)} images, {len(scores)} scores, {len(labels) if labels else 0} labels: one each")
    labels = list(labels) if labels is not None else [Path(p).name for p in images]
    canvas = Image.new("RGB", picture_size(len(images), thumb_size, columns, reference is not None), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = default_font()
    left = MARGIN
    if reference is not None:
        draw.text((MARGIN, MARGIN), "reference", fill=REFERENCE_OUTLINE, font=font)
        top = MARGIN + LABEL_HEIGHT
        draw.rectangle((MARGIN, top, MARGIN + thumb_size[1] + 2 * BORDER - 1, top + thumb_size[0] + 2 * BORDER - 1),
                       fill=REFERENCE_OUTLINE)
        canvas.paste(load_thumb(reference, thumb_size), (MARGIN + BORDER, top + BORDER))
        left = MARGIN + thumb_size[1] + 2 * BORDER + GAP
    lines = wrap_text(query, font, canvas.width - left - MARGIN, draw)
    if len(lines) > QUERY_LINES:
        lines = lines[:QUERY_LINES]
        lines[-1] = lines[-1][: max(0, len(lines[-1]) - 3)] + "..."
    for number, line in enumerate(lines):
        draw.text((left, MARGIN + number * (FONT_SIZE + LINE_SPACING)), line, fill=TEXT_COLOR, font=font)
    cell_w, cell_h = _cell(thumb_size)
    first_row = MARGIN + _header_height(thumb_size, reference is not None)
    for rank, (path, score, label) in enumerate(zip(images, scores, labels)):
        x = MARGIN + (rank % columns) * (cell_w + GAP)
        y = first_row + (rank // columns) * cell_h
        draw.text((x, y), f"#{rank + 1} {score:.3f}", fill=TEXT_COLOR, font=font)
        box_top = y + LABEL_HEIGHT
        draw.rectangle((x, box_top, x + thumb_size[1] + 2 * BORDER - 1, box_top + thumb_size[0] + 2 * BORDER - 1), fill=OUTLINE)
        canvas.paste(_thumb(path, thumb_size), (x + BORDER, box_top + BORDER))
        name = label
        while len(name) > 4 and draw.textlength(name, font=font) > cell_w:
            name = "..." + name[4:]
        draw.text((x, box_top + thumb_size[0] + 2 * BORDER + 1), name, fill=TEXT_COLOR, font=font)
    return canvas
