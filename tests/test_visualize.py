"""Ranked-list figures and the top-K selection they show."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from xsearch.evaluation import PositiveLists
from xsearch.evaluation.topk import rank_queries
from xsearch.visualize import BORDER, GREEN, RED, grid_size, ranked_grid, thumb_box

THUMB = (40, 20)  # (H, W)


def _gallery(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (30 + i, 60), (40 * i % 256, 100, 150)) for i in range(count)]


@pytest.mark.parametrize("num_queries,k", [(1, 1), (2, 3), (3, 5)])
def test_grid_size_depends_on_queries_and_k(num_queries: int, k: int) -> None:
    queries = [f"a person wearing a red coat number {i}" for i in range(num_queries)]
    topk = [[(i + r) % 6 for r in range(k)] for i in range(num_queries)]
    correct = [[r % 2 == 0 for r in range(k)] for _ in range(num_queries)]
    image = ranked_grid(queries, _gallery(6), topk, correct, thumb_size=THUMB)
    assert image.size == grid_size(num_queries, k, THUMB)
    bigger_k = grid_size(num_queries, k + 1, THUMB)
    more_queries = grid_size(num_queries + 1, k, THUMB)
    assert bigger_k[0] > image.size[0] and bigger_k[1] == image.size[1]
    assert more_queries[1] > image.size[1] and more_queries[0] == image.size[0]


def test_size_independent_of_caption_and_ap() -> None:
    gallery = _gallery(3)
    short = ranked_grid(["x"], gallery, [[0, 1]], [[True, False]], thumb_size=THUMB)
    long = ranked_grid(["word " * 200], gallery, [[0, 1]], [[True, False]], query_ap=[0.5], thumb_size=THUMB)
    assert short.size == long.size


def test_outline_colors_and_thumbnail_placement(tmp_path: Path) -> None:
    gallery = _gallery(4)
    path = tmp_path / "g.png"
    Image.new("RGB", (20, 40), (0, 0, 255)).save(path)
    paths_gallery: list[Image.Image | Path] = [*gallery[:3], path]
    topk = [[3, 0, 1], [2, 3, 0]]
    correct = [[True, False, True], [False, True, False]]
    image = ranked_grid(["query one", "query two"], paths_gallery, topk, correct, query_ap=[0.8, 0.1],
                        thumb_size=THUMB)
    for row in range(2):
        for rank in range(3):
            left, top, right, bottom = thumb_box(row, rank, THUMB)
            expected = GREEN if correct[row][rank] else RED
            mid_y, mid_x = (top + bottom) // 2, (left + right) // 2
            assert image.getpixel((left - BORDER // 2 - 1, mid_y)) == expected
            assert image.getpixel((right + BORDER // 2, mid_y)) == expected
            assert image.getpixel((mid_x, bottom + BORDER // 2)) == expected
            if topk[row][rank] == 3:  # the solid blue image loaded from disk fills its box
                assert image.getpixel((mid_x, mid_y)) == (0, 0, 255)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="out of range"):
        ranked_grid(["q"], _gallery(2), [[5]], [[True]])
    with pytest.raises(ValueError, match="one entry per query"):
        ranked_grid(["q", "r"], _gallery(2), [[0]], [[True]])


def _top(similarity: torch.Tensor, k: int) -> list[list[int]]:
    """The drawn ranked lists: the test metric's top-k (pids make gallery item 0 every query's positive)."""
    positives = PositiveLists.from_pids(torch.zeros(similarity.shape[0], dtype=torch.long), torch.arange(similarity.shape[1]))
    return rank_queries(similarity, positives, None, k).indices.tolist()


def test_topk_ties_go_to_lower_index() -> None:
    similarity = torch.tensor([
        [0.5, 0.9, 0.5, 0.9, 0.1, 0.5],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 0.2, 0.3, 0.3, 0.2, 0.9],
    ])
    assert _top(similarity, 4) == [[1, 3, 0, 2], [0, 1, 2, 3], [5, 2, 3, 1]]
    assert _top(similarity, 10)[1] == [0, 1, 2, 3, 4, 5]


def test_topk_ties_large_row() -> None:
    similarity = torch.zeros(2, 5000)
    similarity[1, 4321] = 1.0
    assert _top(similarity, 3) == [[0, 1, 2], [4321, 0, 1]]


def test_part_attention_grid_marks_the_attended_patch_and_lists_top_words():
    from PIL import Image

    from xsearch.visualize import part_attention_grid

    image = Image.new("RGB", (64, 128), (0, 0, 255))
    attention = torch.zeros(1, 2, 4, 2)
    attention[0, 0, 0, 0] = 1.0  # token 0 reads the top-left patch
    attention[0, 1, 3, 1] = 1.0  # token 1 the bottom-right one
    words = [["<start_of_text>", "red", "coat", "<end_of_text>"]]
    word_attention = torch.tensor([[[0.0, 0.9, 0.1, 0.0], [0.0, 0.2, 0.8, 0.0]]])
    figure = part_attention_grid([image], attention, words, word_attention, thumb_size=(128, 64))
    first, second = (figure.getpixel((8 + k * (110 + 8) + 8, 8 + 8)) for k in range(2))
    assert first[0] > 150 and first[2] < 100  # red overlay where token 0 attends
    assert second == (0, 0, 255)  # token 1 does not attend there: the image shows through
    assert figure.size[0] == 8 * 2 + 2 * (110 + 8)
