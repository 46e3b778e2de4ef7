"""Ranked-list figures: one row per text query, its caption on the left and the top-K gallery
images on the right, outlined green (correct identity) or red (wrong).

Layout (all sizes in pixels, deterministic for a given number of queries, K and thumbnail size)::

    | MARGIN | caption column (TEXT_WIDTH) | GAP | [border|thumb|border] GAP [...] ... | MARGIN |

Each row is ``LABEL_HEIGHT`` (rank numbers) + thumbnail height + 2 * ``BORDER`` + ``ROW_GAP`` tall.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from xsearch.evaluation import RankedLists
from xsearch.image_io import read_rgb

TEXT_WIDTH = 300
MARGIN = 8
GAP = 8
ROW_GAP = 10
BORDER = 4
LABEL_HEIGHT = 16
FONT_SIZE = 13
LINE_SPACING = 3
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)
GREEN = (0, 170, 0)
RED = (220, 0, 0)
PAD_COLOR = (200, 200, 200)

ImageLike = Image.Image | str | Path
PART_LABEL_WIDTH = 110
"""Minimum column width of :func:`part_attention_grid` (room for ``word 0.00`` under narrow images)."""


def default_font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font, at ``size`` when this Pillow supports sized default fonts."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _cell_width(thumb_size: tuple[int, int]) -> int:
    return thumb_size[1] + 2 * BORDER


def _row_height(thumb_size: tuple[int, int]) -> int:
    return LABEL_HEIGHT + thumb_size[0] + 2 * BORDER + ROW_GAP


def grid_size(num_queries: int, k: int, thumb_size: tuple[int, int] = (128, 64)) -> tuple[int, int]:
    """(width, height) of the ``ranked_grid`` figure for ``num_queries`` rows of ``k`` thumbnails."""
    width = 2 * MARGIN + TEXT_WIDTH + k * (GAP + _cell_width(thumb_size))
    height = 2 * MARGIN + num_queries * _row_height(thumb_size)
    return width, height


def thumb_box(row: int, rank: int, thumb_size: tuple[int, int] = (128, 64)) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the thumbnail at ``row`` and 0-based ``rank``, excluding its
    outline, which occupies the ``BORDER`` pixels around this box; right/bottom are exclusive."""
    height, width = thumb_size
    left = MARGIN + TEXT_WIDTH + GAP + rank * (GAP + _cell_width(thumb_size)) + BORDER
    top = MARGIN + row * _row_height(thumb_size) + LABEL_HEIGHT + BORDER
    return left, top, left + width, top + height


def load_thumb(image: ImageLike, thumb_size: tuple[int, int]) -> Image.Image:
    """RGB thumbnail of exactly (H, W) = ``thumb_size``, aspect kept by padding."""
    if isinstance(image, (str, Path)):
        image = read_rgb(image)
    else:
        image = image.convert("RGB")
    height, width = thumb_size
    return ImageOps.pad(image, (width, height), color=PAD_COLOR)


def wrap_text(text: str, font: ImageFont.ImageFont, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width`` pixels (long words are cut)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _draw_caption(
    draw: ImageDraw.ImageDraw, row: int, caption: str, ap: float | None, thumb_size: tuple[int, int]
) -> None:
    font = default_font()
    line_height = FONT_SIZE + LINE_SPACING
    top = MARGIN + row * _row_height(thumb_size)
    available = _row_height(thumb_size) - ROW_GAP
    max_lines = max(1, available // line_height - (1 if ap is not None else 0))
    lines = wrap_text(caption, font, TEXT_WIDTH - GAP, draw)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, len(lines[-1]) - 3)] + "..."
    for index, line in enumerate(lines):
        draw.text((MARGIN, top + index * line_height), line, fill=TEXT_COLOR, font=font)
    if ap is not None:
        draw.text((MARGIN, top + len(lines) * line_height), f"AP {ap:.2f}", fill=TEXT_COLOR, font=font)


def _draw_thumb(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, row: int, rank: int, thumb: Image.Image,
    is_correct: bool, thumb_size: tuple[int, int],
) -> None:
    left, top, right, bottom = thumb_box(row, rank, thumb_size)
    color = GREEN if is_correct else RED
    draw.rectangle((left - BORDER, top - BORDER, right - 1 + BORDER, bottom - 1 + BORDER), fill=color)
    canvas.paste(thumb, (left, top))
    draw.text((left - BORDER, top - BORDER - LABEL_HEIGHT + 1), f"#{rank + 1}", fill=color, font=default_font())


def _validate(
    queries: Sequence[str], num_gallery: int, topk: Sequence[Sequence[int]],
    correct: Sequence[Sequence[bool]], query_ap: Sequence[float] | None,
) -> int:
    """Check lengths and indexes; returns K (the longest ranked list)."""
    if not (len(queries) == len(topk) == len(correct)):
        raise ValueError(
            f"queries, topk and correct must have one entry per query; got {len(queries)}, "
            f"{len(topk)}, {len(correct)}"
        )
    if query_ap is not None and len(query_ap) != len(queries):
        raise ValueError(f"query_ap has {len(query_ap)} entries for {len(queries)} queries")
    for row, (ranked, flags) in enumerate(zip(topk, correct)):
        if len(ranked) != len(flags):
            raise ValueError(f"query {row}: {len(ranked)} ranked items but {len(flags)} correct flags")
        bad = [index for index in ranked if not 0 <= index < num_gallery]
        if bad:
            raise ValueError(f"query {row}: gallery indexes {bad} out of range [0, {num_gallery})")
    return max((len(ranked) for ranked in topk), default=0)


def ranked_grid(
    queries: list[str],
    gallery_images: Sequence[ImageLike],
    topk: list[list[int]],
    correct: list[list[bool]],
    query_ap: list[float] | None = None,
    thumb_size: tuple[int, int] = (128, 64),
) -> Image.Image:
    """Figure of ranked lists: row ``i`` shows ``queries[i]`` (wrapped, plus ``AP`` if given) and the
    gallery items ``topk[i]`` in rank order, outlined green where ``correct[i][r]`` else red.

    ``gallery_images`` are PIL images or paths; only the ones ranked are loaded. ``thumb_size`` is
    (H, W). The size is ``grid_size(len(queries), K, thumb_size)`` with K the longest list.
    """
    k = _validate(queries, len(gallery_images), topk, correct, query_ap)
    canvas = Image.new("RGB", grid_size(len(queries), k, thumb_size), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    cache: dict[int, Image.Image] = {}
    for row, caption in enumerate(queries):
        _draw_caption(draw, row, caption, None if query_ap is None else query_ap[row], thumb_size)
        for rank, (index, is_correct) in enumerate(zip(topk[row], correct[row])):
            if index not in cache:
                cache[index] = load_thumb(gallery_images[index], thumb_size)
            _draw_thumb(canvas, draw, row, rank, cache[index], bool(is_correct), thumb_size)
    return canvas


def ranked_lists_grid(ranked: RankedLists, count: int, k: int = 5) -> tuple[Image.Image, str, int]:
    """:func:`ranked_grid` of ``count`` test queries spread evenly over an evaluation protocol's ranked lists (its own
    ranking), their top ``k``: the figure, its caption and the number of queries drawn."""
    gathered, top = ranked.gathered, ranked.top
    total = len(gathered.query_pids)
    count = min(count, total)
    rows = [round(i * (total - 1) / max(count - 1, 1)) for i in range(count)]
    queries = [ranked.query_texts[int(i)] for i in gathered.query_indexes[rows].tolist()]
    gallery = [ranked.gallery_paths[int(i)] for i in gathered.gallery_indexes.tolist()]
    figure = ranked_grid(queries, gallery, top.indices[rows, :k].tolist(), top.correct[rows, :k].tolist())
    caption = "green = correct identity" if ranked.relevance is None else "green = a positive of the query"
    return figure, caption, count


def part_attention_grid(
    images: Sequence[ImageLike],
    image_attention: torch.Tensor,
    words: Sequence[Sequence[str]],
    word_attention: torch.Tensor,
    thumb_size: tuple[int, int] = (128, 64),
    top_words: int = 3,
) -> Image.Image:
    """What each shared part token reads: one row per (image, caption) pair, one column per token.

    Args:
        images: N images (or paths).
        image_attention: (N, K, rows, cols) attention of each token over the patch grid.
        words: N lists of L word pieces (the caption's tokens, special ones included).
        word_attention: (N, K, L) attention of each token over the caption's tokens.

    Each cell is the image with the token's patch attention as a red overlay (normalised per cell)
    and, below it, the ``top_words`` word pieces the same token attends to most in the caption.
    """
    count, parts = image_attention.shape[:2]
    height, width = thumb_size
    font = default_font()
    label = 3 * (FONT_SIZE + LINE_SPACING)
    cell_w, cell_h = max(width, PART_LABEL_WIDTH) + GAP, height + label + GAP
    canvas = Image.new("RGB", (MARGIN * 2 + parts * cell_w, MARGIN * 2 + count * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row in range(count):
        thumb = load_thumb(images[row], thumb_size)
        for k in range(parts):
            heat = image_attention[row, k].float()
            heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)
            mask = Image.fromarray((heat * 180).byte().numpy(), "L").resize((width, height), Image.Resampling.BILINEAR)
            cell = Image.composite(Image.new("RGB", (width, height), RED), thumb, mask)
            left, top = MARGIN + k * cell_w, MARGIN + row * cell_h
            canvas.paste(cell, (left, top))
            order = torch.argsort(word_attention[row, k].float(), descending=True)[:top_words].tolist()
            for line, index in enumerate(order):
                text = f"{words[row][index]} {float(word_attention[row, k, index]):.2f}"
                draw.text((left, top + height + 2 + line * (FONT_SIZE + LINE_SPACING)), text, fill=TEXT_COLOR, font=font)
    return canvas
