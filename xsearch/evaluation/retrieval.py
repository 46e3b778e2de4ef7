"""Exact text-based person search metrics (R@K, mAP, mINP) by chunked counting.

Protocol (the IRRA evaluator; docs/protocol.md#retrieval-metrics):

* every gallery item whose pid equals the query's pid is a positive (no camera filter, no junk);
* per query the gallery is ordered by descending score; **equal scores are ordered by ascending
  gallery index** (a stable descending sort), so results are deterministic and device-independent;
* ``R@K`` is the hit rate: 1 if a positive is among the first ``K`` positions (``K > G`` is allowed);
* ``AP = (1/n) * sum_i i / r_i`` with ``r_1 < ... < r_n`` the 1-based positions of all ``n``
  positives (non-interpolated, over all positives);
* ``INP = n / r_n`` (positives over the position of the hardest positive);
* reported as ``100 * mean`` over queries.

Instead of argsorting the (Q, G) matrix, the position of a positive ``j`` of query ``q`` is counted:
``r = 1 + #{k : s_qk > s_qj} + #{k < j : s_qk == s_qj}``, which equals its position under the stable
descending sort. Queries are processed in small chunks (ordered by positive count, so padding is
tight), so extra memory is a few MB whatever Q and G are. Per chunk, the cheapest exact method is used,
and none depends on where the positives rank or on how many scores tie:

* candidates: only items scoring at least the query's worst positive can precede a positive; when they
  are few (a useful model), they alone are compared with each positive (after a chunk where they were
  too many, the check is skipped for the next few chunks);
* keys (up to ``_DENSE_MAX_POSITIVES`` positives, fp32): each score becomes an int64 key, its order-preserving
  integer image shifted up 32 bits plus a column term, so that keys are distinct and order items exactly as the
  ranking does; one comparison pass over the row per positive counts the items ahead of it, ties included
  (other dtypes: ``>`` and ``>=`` passes, and one more on rows with exact ties);
* histogram (more positives): the row is cut into equal-width score bins; one ``bincount`` gives each bin's size
  and, for bins holding a positive, how many of their items score above / exactly at that positive; a position
  is then the items of higher bins plus those of its own bin ahead of it, in a fixed number of passes whatever
  the number of positives (exact ties get a second ``bincount`` by positive and gallery-index segment; bins
  holding positives of different scores have their items ordered by two stable sorts, or are re-binned over
  their own range when crowded, as outliers make them);
* sorting: queries with more than ``_SORT_FALLBACK_POSITIVES`` positives use a chunked stable sort.

On CPU, chunks run side by side in as many Python threads as torch has intra-op threads (at most 8), each op on
one intra-op thread (restored afterwards): small ops then need no OpenMP barrier, which stalls them when the
machine is shared. ``benchmarks/RESULTS.md`` has the timings (at CUHK-PEDES size, on thirteen score distributions,
against the argsort evaluator, identical numbers).

Image-to-text retrieval is the same computation on the transposed matrix:
``retrieval_metrics(similarity.T, gallery_pids, query_pids)`` (see :func:`bidirectional_metrics`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = [
    "PerQueryMetrics",
    "PositiveLists",
    "bidirectional_metrics",
    "cosine_similarity",
    "full_precision_matmul",
    "ranked_positives_per_query",
    "retrieval_metrics",
    "retrieval_metrics_per_query",
    "summarize_per_query",
]

# Target number of elements of a chunk's working tensors ((rows, positives, G) comparisons, (rows, G) bins): small
# enough to stay in cache and reuse allocator blocks (measured: 256 x 3 x 3,074 is ~7x faster than 6,156 x 3 x 3,074).
_TARGET_BLOCK_ELEMENTS = 1 << 20
# Queries with at most this many positives are counted with one comparison pass per positive; above it, the
# histogram path (a fixed number of passes over the row, whatever the number of positives) is cheaper.
_DENSE_MAX_POSITIVES = 8
# Queries with more positives than this are ranked by a (chunked) stable sort: the histogram path's tables grow
# with the square of the positive count.
_SORT_FALLBACK_POSITIVES = 256
# Candidates (items scoring at least a query's worst positive, the only ones that can precede a positive) are
# compared alone with the positives while they are at most 1 / _CANDIDATE_SHARE of the chunk's items (x P / 4
# for more positives): gathering and comparing one costs several passes' worth per item. After a chunk where
# they were too many, the next _CANDIDATE_RETRY - 1 chunks skip the check (a weak model fails it everywhere).
_CANDIDATE_SHARE = 8
_CANDIDATE_RETRY = 8
# A chunk holds at least this many rows when that keeps it within _MAX_BLOCK_ELEMENTS (large galleries: fewer
# chunks, less per-chunk overhead).
_MIN_CHUNK_ROWS = 8
_MAX_BLOCK_ELEMENTS = 1 << 23
# Histogram bins per row: the next power of two above G / _BIN_DIVISOR, within [16, 2**15].
_BIN_DIVISOR = 4
# A conflict group (a bin holding positives of different scores) with more items than this share of the row is
# re-binned over its own score range (at most _MAX_ZOOMS times, then counted densely) instead of compared item by item.
_HEAVY_GROUP_SHARE = 1 / 16
_MAX_ZOOMS = 2
# Rows of a non-contiguous (e.g. transposed) or non-fp32 input are copied in blocks of this many bytes, into one
# reused buffer, _COPY_TILE_COLUMNS columns at a time (a transposed view: 6x faster than one strided copy per block).
_BLOCK_COPY_BYTES = 16 << 20
_COPY_TILE_COLUMNS = 256
# Worker threads on CPU (one per intra-op thread torch had): more would mostly wait for the GIL between small ops.
_MAX_WORKERS = 8
ON_MISSING = ("error", "skip")


@dataclass(frozen=True)
class PerQueryMetrics:
    """Per-query results, one entry per query (row of the similarity matrix), in query order.

    Attributes:
        num_positives: (Q,) int64, gallery items sharing the query's pid.
        first_positive_rank: (Q,) int64, 1-based position of the best-ranked positive (0: no positive).
        last_positive_rank: (Q,) int64, 1-based position of the worst-ranked positive (0: no positive).
        average_precision: (Q,) float64 in [0, 1] (NaN: no positive).
        inverse_negative_penalty: (Q,) float64 in (0, 1] (NaN: no positive).
    """

    num_positives: torch.Tensor
    first_positive_rank: torch.Tensor
    last_positive_rank: torch.Tensor
    average_precision: torch.Tensor
    inverse_negative_penalty: torch.Tensor

    @property
    def has_positive(self) -> torch.Tensor:
        """(Q,) bool, queries with at least one positive in the gallery."""
        return self.num_positives > 0


@dataclass(frozen=True)
class PositiveLists:
    """Every query's positives as gallery positions, in CSR form.

    Attributes:
        gallery_order: (M,) int64 gallery positions; query ``q``'s positives are
            ``gallery_order[start[q] : start[q] + count[q]]``, ascending.
        start: (Q,) int64 offsets. count: (Q,) int64 number of positives.
    """

    gallery_order: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor

    @classmethod
    def from_pids(cls, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> PositiveLists:
        """The person-search protocol: every gallery item sharing the query's pid."""
        return cls(*_positive_lists(query_pids, gallery_pids))

    @classmethod
    def from_lists(cls, positives: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> PositiveLists:
        """Explicit positives: ``positives[q]`` = gallery positions of query ``q`` (any order, no repeats)."""
        count = torch.tensor([len(p) for p in positives], dtype=torch.int64, device=device)
        start = torch.cumsum(count, 0) - count
        flat = [int(j) for p in positives for j in sorted(p)]
        return cls(torch.tensor(flat, dtype=torch.int64, device=device), start, count)


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """Run fp32 matmuls in full IEEE fp32 (no TF32 / bf16 shortcuts, no autocast), then restore.

    Safe on CPU and on builds without CUDA; restores every setting it touched, even on error.
    """
    saved: list[tuple[object, str, object]] = []
    backends = [getattr(torch.backends, "cuda", None), getattr(torch.backends, "mkldnn", None)]
    matmul_backends = [getattr(b, "matmul", None) for b in backends if b is not None]
    new_api = [m for m in matmul_backends if m is not None and hasattr(m, "fp32_precision")]
    try:
        if new_api:  # torch >= 2.9: per-backend precision; reading legacy flags may raise after its use
            for backend in new_api:
                saved.append((backend, "fp32_precision", backend.fp32_precision))
                backend.fp32_precision = "ieee"
        else:  # older torch: legacy global switches
            saved.append((torch, "float32_matmul_precision", torch.get_float32_matmul_precision()))
            torch.set_float32_matmul_precision("highest")
            saved.append((torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32))
            torch.backends.cuda.matmul.allow_tf32 = False
        with contextlib.ExitStack() as stack:
            for device_type in ("cpu", "cuda"):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            yield
    finally:
        for owner, name, value in reversed(saved):
            if owner is torch and name == "float32_matmul_precision":
                torch.set_float32_matmul_precision(str(value))
            else:
                setattr(owner, name, value)


def _full_float_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype (fp16, bf16, fp32, ints) computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cosine_similarity(
    query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Cosine similarity of L2-normalised embeddings in full fp32.

    Args:
        query_embeddings: (Q, D), any float dtype (cast up to fp32, float64 kept).
        gallery_embeddings: (G, D).
        eps: norm floor guarding zero vectors.

    Returns:
        (Q, G) fp32 (float64 if an input is float64) similarity matrix.
    """
    if query_embeddings.ndim != 2 or gallery_embeddings.ndim != 2:
        raise ValueError("expected (Q, D) and (G, D) embeddings")
    if query_embeddings.shape[1] != gallery_embeddings.shape[1]:
        raise ValueError(
            f"embedding sizes differ: {query_embeddings.shape[1]} vs {gallery_embeddings.shape[1]}"
        )
    dtype = torch.promote_types(
        _full_float_dtype(query_embeddings.dtype), _full_float_dtype(gallery_embeddings.dtype)
    )
    queries = F.normalize(query_embeddings.to(dtype), dim=1, eps=eps)
    gallery = F.normalize(gallery_embeddings.to(dtype), dim=1, eps=eps)
    with full_precision_matmul():
        return queries @ gallery.T


def _validate(
    similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    similarity = torch.as_tensor(similarity)
    query_pids = torch.as_tensor(query_pids, device=similarity.device).reshape(-1)
    gallery_pids = torch.as_tensor(gallery_pids, device=similarity.device).reshape(-1)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (Q, G), got shape {tuple(similarity.shape)}")
    num_queries, num_gallery = similarity.shape
    if num_queries == 0 or num_gallery == 0:
        raise ValueError(f"empty similarity matrix of shape {tuple(similarity.shape)}")
    if query_pids.numel() != num_queries or gallery_pids.numel() != num_gallery:
        raise ValueError(
            f"pids do not match similarity {tuple(similarity.shape)}: "
            f"{query_pids.numel()} query pids, {gallery_pids.numel()} gallery pids"
        )
    return similarity, query_pids, gallery_pids


def _positive_lists(
    query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gallery indices grouped by pid (CSR); per query, where its positives start and how many.

    Returns:
        gallery_order: (G,) gallery indices sorted by pid, ascending index within a pid.
        start: (Q,) offset of the query's positives in ``gallery_order``.
        count: (Q,) number of positives.
    """
    sorted_pids, gallery_order = torch.sort(gallery_pids, stable=True)
    start = torch.searchsorted(sorted_pids, query_pids, right=False)
    end = torch.searchsorted(sorted_pids, query_pids, right=True)
    return gallery_order, start, end - start


def _check_not_nan(scores: torch.Tensor) -> None:
    """Raise ValueError if the (C, G) scores hold a NaN (one max reduction: NaN propagates)."""
    if bool(torch.isnan(scores.amax())):
        raise ValueError("similarity contains NaN")


def _counted_ranks(
    scores: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """1-based stable-descending positions of the positives, by counting (any float dtype).

    Per positive, ``#{k : s_k > t}`` and ``#{k : s_k >= t}``; where they differ by more than the positive itself
    (an exact tie), the rows concerned get one more pass adding ``#{k < j : s_k == t}``.

    Args:
        scores: (C, G) float rows.
        positive_index: (C, P) gallery index of each (padded) positive.
        valid: (C, P) bool, False for padding.

    Returns:
        (C, P) int64 positions (undefined where not valid).
    """
    num_rows, num_gallery = scores.shape
    num_pos = positive_index.shape[1]
    thresholds = scores.gather(1, positive_index)
    block = max(1, min(num_pos, _TARGET_BLOCK_ELEMENTS // max(1, num_rows * num_gallery)))
    greater = torch.empty(num_rows, num_pos, dtype=torch.int32, device=scores.device)
    greater_equal = torch.empty_like(greater)
    rows = scores[:, None, :]
    for lo in range(0, num_pos, block):
        threshold = thresholds[:, lo : lo + block, None]
        greater[:, lo : lo + block] = _count_true(rows > threshold)
        greater_equal[:, lo : lo + block] = _count_true(rows >= threshold)
    # ">=" counts the positive itself; more than that means an exact tie to break by gallery index.
    tied_rows = (valid & (greater_equal - greater > 1)).any(dim=1).nonzero().squeeze(1)
    if tied_rows.numel():
        sub_rows = scores.index_select(0, tied_rows)[:, None, :]
        sub_thresholds = thresholds.index_select(0, tied_rows)
        sub_index = positive_index.index_select(0, tied_rows).to(torch.int32)
        columns = torch.arange(num_gallery, device=scores.device, dtype=torch.int32)
        earlier_ties = torch.empty_like(sub_index)
        for lo in range(0, num_pos, block):
            equal = sub_rows == sub_thresholds[:, lo : lo + block, None]
            earlier_ties[:, lo : lo + block] = _count_true(equal & (columns < sub_index[:, lo : lo + block, None]))
        greater.index_add_(0, tied_rows, earlier_ties)
    return greater.to(torch.int64) + 1


def _candidate_ranks(
    scores: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor | None:
    """Positions of the positives counted among the few items that score at least the worst positive.

    Any item placed before a positive scores at least as much as it, hence at least the row's lowest
    positive score; when such candidates are rare (a useful model), comparing them alone with every
    positive is much cheaper than a pass over the row per positive. Returns None when they are too many.

    Args / Returns: as :func:`_counted_ranks`.
    """
    num_rows, num_gallery = scores.shape
    num_pos = positive_index.shape[1]
    thresholds = scores.gather(1, positive_index)  # (C, P)
    lowest = thresholds.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)  # (C, 1)
    candidate = scores >= lowest  # (C, G)
    num_candidates = int(candidate.view(torch.uint8).sum(dtype=torch.int64))
    if num_candidates * _CANDIDATE_SHARE * max(1, num_pos // 4) > scores.numel():
        return None
    flat = candidate.view(-1).nonzero().squeeze(1)  # (M,) row-major positions
    row = flat // num_gallery
    column = flat - row * num_gallery
    value = scores.view(-1).index_select(0, flat)[:, None]  # (M, 1)
    row_thresholds = thresholds.index_select(0, row)  # (M, P)
    earlier = column[:, None] < positive_index.index_select(0, row)  # (M, P)
    beats = (value > row_thresholds) | ((value == row_thresholds) & earlier)
    counts = torch.zeros_like(positive_index).index_add_(0, row, beats.to(positive_index.dtype))
    return counts + 1


def _count_true(mask: torch.Tensor) -> torch.Tensor:
    """(..., G) bool -> (...) int32 number of True (summed as bytes: about twice as fast as a bool sum)."""
    return mask.view(torch.uint8).sum(dim=-1, dtype=torch.int32)


def _ordered_keys(scores: torch.Tensor) -> torch.Tensor:
    """(C, G) fp32 -> (C, G) int64 keys, distinct within a row, ordered like the ranking.

    ``key = ord(score) * 2**32 + (2**31 - 1 - column)`` where ``ord`` maps fp32 bits to int32 in score order
    (-0.0 and +0.0 to the same value): a larger key ranks first, equal scores rank by ascending column.
    """
    bits = scores.view(torch.int32)
    # negatives: -(magnitude bits) = (bits ^ 0x7FFFFFFF) + 1; every step in place on one int32 temporary
    ordered = (bits >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits).sub_(bits >> 31)
    column_term = (1 << 31) - 1 - torch.arange(scores.shape[1], device=scores.device, dtype=torch.int64)
    return torch.add(column_term, ordered, alpha=1 << 32)  # one pass: widen, shift and add


def _keyed_ranks(scores: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
    """:func:`_counted_ranks` for fp32 rows: one comparison pass per positive on :func:`_ordered_keys`, whose
    column part breaks ties, so exact ties cost nothing extra. (C, G) fp32, (C, P) -> (C, P) int64."""
    num_rows, num_gallery = scores.shape
    num_pos = positive_index.shape[1]
    keys = _ordered_keys(scores)
    positive_keys = keys.gather(1, positive_index)
    block = max(1, min(num_pos, _TARGET_BLOCK_ELEMENTS // max(1, num_rows * num_gallery)))
    before = torch.empty(num_rows, num_pos, dtype=torch.int32, device=scores.device)
    rows = keys[:, None, :]
    for lo in range(0, num_pos, block):
        before[:, lo : lo + block] = _count_true(rows > positive_keys[:, lo : lo + block, None])
    return before.to(torch.int64) + 1


def _dense_ranks(scores: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One comparison pass per positive: keyed for fp32, counted otherwise. (C, G), (C, P) -> (C, P) int64."""
    if scores.dtype == torch.float32:
        return _keyed_ranks(scores, positive_index)
    return _counted_ranks(scores, positive_index, valid)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D table and an index of any shape (index_select: cheaper than advanced indexing)."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _num_bins(num_gallery: int) -> int:
    """Histogram bins per row (a power of two)."""
    return 1 << max(4, min(15, (max(1, num_gallery // _BIN_DIVISOR) - 1).bit_length()))


def _binned_ranks(
    scores: torch.Tensor,
    positive_index: torch.Tensor,
    valid: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    zooms: int = 0,
    checked: bool = False,
) -> torch.Tensor:
    """:func:`_counted_ranks` in a fixed number of passes over the rows, whatever the number of positives.

    Each row's scores are cut into ``B`` equal-width bins over ``bounds`` (default: the row's min and max;
    scores outside are clamped into the end bins). Binning is monotone, so an item in a higher bin precedes
    every positive of a lower bin. One ``bincount`` over ``(row, bin, class)`` gives, per bin, its size and,
    relative to the score of the positive in that bin (its *reference*), how many items score higher
    (``class 2``) or exactly the same (``class 1``). A positive's position is then ``1 + items in higher bins +
    items of its bin scoring higher + items scoring the same at a lower gallery index``. The last term is 0
    without exact ties; rows with ties get a second ``bincount`` over ``(positive, number of positives at a
    lower gallery index)`` (see :func:`_earlier_ties`). A bin holding positives of different scores (a
    *conflict*: its reference is one of them) gets a NaN reference, so that its items fall in class 0 and are
    found again and ordered by sorting (:func:`_resolve_conflicts`); when it holds many (scores concentrated by an
    outlier), the row is binned again over that bin's range.

    Args / Returns: as :func:`_counted_ranks`; ``bounds``: ((C,), (C,)) score range to bin (finite rows);
    ``checked``: the rows are known to hold no NaN.
    """
    num_rows, num_gallery = scores.shape
    num_bins = _num_bins(num_gallery)
    if num_rows * num_bins > 1 << 24:  # row offsets must stay exact in fp32
        half = num_rows // 2
        parts = [slice(0, half), slice(half, num_rows)]
        return torch.cat([
            _binned_ranks(scores[part], positive_index[part], valid[part],
                          None if bounds is None else (bounds[0][part], bounds[1][part]), zooms)
            for part in parts
        ])
    if bounds is None:
        low, high = scores.amin(dim=1), scores.amax(dim=1)
        if not checked and bool(torch.isnan(high).any()):
            raise ValueError("similarity contains NaN")
    else:
        low, high = bounds
    width = high - low
    finite = torch.isfinite(width)
    if not bool(finite.all()):  # infinite scores or an overflowing range: count those rows densely
        ranks = torch.empty_like(positive_index)
        for rows, binned in (((~finite).nonzero().squeeze(1), False), (finite.nonzero().squeeze(1), True)):
            if rows.numel():
                args = (scores.index_select(0, rows), positive_index.index_select(0, rows), valid.index_select(0, rows))
                part = (low.index_select(0, rows), high.index_select(0, rows))
                ranks[rows] = _binned_ranks(*args, part, zooms) if binned else _dense_ranks(*args)
        return ranks

    device, cells = scores.device, num_rows * num_bins
    scale = (num_bins - 1) / width
    scale = torch.where((width > 0) & torch.isfinite(scale), scale, torch.zeros_like(scale))
    row_start = torch.arange(0, cells, num_bins, device=device, dtype=torch.int32)  # (C,)
    # group = row * B + bin, monotone in the score within a row (every step rounds monotonically)
    binned = torch.sub(scores, low[:, None]).mul_(scale[:, None]).clamp_(0, num_bins - 1)
    group = binned.add_(row_start.to(scores.dtype)[:, None]).to(torch.int32)  # (C, G)
    del binned
    thresholds = scores.gather(1, positive_index)  # (C, P)
    positive_group = group.gather(1, positive_index).to(torch.int64)  # (C, P)
    reference = torch.full((cells,), float("inf"), dtype=scores.dtype, device=device)
    reference[positive_group[valid]] = thresholds[valid]  # one positive's score per positive bin
    conflict = valid & (_lookup(reference, positive_group) != thresholds)  # reference: another positive's score
    any_conflict = bool(conflict.any())
    if any_conflict:  # NaN reference: every item of a conflict bin is class 0 and found again by isnan
        reference[positive_group[conflict]] = float("nan")
    item_reference = reference.index_select(0, group.view(-1)).view_as(scores)  # +inf: bin without a positive
    item_class = (scores > item_reference).view(torch.uint8) + (scores >= item_reference).view(torch.uint8)
    counts = torch.bincount(torch.add(group, item_class, alpha=cells).view(-1), minlength=3 * cells).view(3, cells)
    del item_class
    bin_size = counts.sum(dim=0)
    through_bin = bin_size.view(num_rows, num_bins).cumsum(dim=1).view(-1)  # items in bins <= b
    higher_bins = num_gallery - _lookup(through_bin, positive_group)
    ranks = 1 + higher_bins + _lookup(counts[2], positive_group)
    equal = _lookup(counts[1], positive_group)  # 0 in conflict bins
    tied_rows = (valid & (equal > 1)).any(dim=1).nonzero().squeeze(1)
    if tied_rows.numel():
        ranks.index_add_(0, tied_rows, _earlier_ties(scores, item_reference, group, positive_index, valid,
                                                     positive_group, tied_rows, cells))
    if any_conflict:
        ranks = _resolve_conflicts(scores, group, item_reference, positive_index, valid, positive_group,
                                   reference.isnan(), bin_size, higher_bins, ranks, zooms)
    return ranks


def _earlier_ties(
    scores: torch.Tensor,
    item_reference: torch.Tensor,
    group: torch.Tensor,
    positive_index: torch.Tensor,
    valid: torch.Tensor,
    positive_group: torch.Tensor,
    rows: torch.Tensor,
    cells: int,
) -> torch.Tensor:
    """(R, P) ``#{k < j : s_k == t}`` for the positives of ``rows`` (those whose bin has no conflict).

    ``segment_k`` = number of the row's positives at a gallery index below ``k``; items scoring exactly their
    bin's reference are counted per (bin's positive slot, segment). Positive ``p`` (slots are in ascending
    gallery index) is preceded by the tied items of its bin with ``segment <= p``, itself excluded.
    """
    num_gallery = scores.shape[1]
    num_pos = positive_index.shape[1]
    num_sub, device = rows.numel(), scores.device
    sub_index, sub_valid = positive_index.index_select(0, rows), valid.index_select(0, rows)
    marker = torch.zeros(num_sub, num_gallery + 1, dtype=torch.int32, device=device)
    marker.scatter_add_(1, sub_index + 1, sub_valid.to(torch.int32))
    segment = marker[:, :num_gallery].cumsum(dim=1, dtype=torch.int32)  # (R, G)
    # compact slot of each positive bin: local row * P + the slot of one positive in it
    slots = num_sub * num_pos
    slot_id = torch.arange(slots, device=device, dtype=torch.int32).view(num_sub, num_pos)
    sub_group = positive_group.index_select(0, rows)
    slot_of_group = torch.full((cells,), slots, dtype=torch.int32, device=device)
    slot_of_group[sub_group[sub_valid]] = slot_id[sub_valid]
    positive_slot = _lookup(slot_of_group, sub_group).clamp_(max=slots - 1).to(torch.int64)  # (R, P)
    item_slot = slot_of_group.index_select(0, group.index_select(0, rows).view(-1)).view(num_sub, num_gallery)
    tied = scores.index_select(0, rows) == item_reference.index_select(0, rows)
    key = torch.where(tied, item_slot * (num_pos + 1) + segment, slots * (num_pos + 1))
    per_segment = torch.bincount(key.view(-1), minlength=slots * (num_pos + 1) + 1)[:-1].view(slots, num_pos + 1)
    through = per_segment.cumsum(dim=1)  # tied items with segment <= s
    own_segment = torch.arange(num_pos, device=device).expand(num_sub, num_pos)
    return torch.where(sub_valid, through[positive_slot, own_segment] - 1, 0)


def _resolve_conflicts(
    scores: torch.Tensor,
    group: torch.Tensor,
    item_reference: torch.Tensor,
    positive_index: torch.Tensor,
    valid: torch.Tensor,
    positive_group: torch.Tensor,
    in_conflict: torch.Tensor,
    bin_size: torch.Tensor,
    higher_bins: torch.Tensor,
    ranks: torch.Tensor,
    zooms: int,
) -> torch.Tensor:
    """Exact positions for the positives of conflict bins (see :func:`_binned_ranks`).

    The items of the conflict bins (``item_reference`` NaN) are gathered and ordered by (bin, descending score,
    ascending gallery index) with two stable sorts; a positive's position is ``1 + higher_bins`` plus the items
    of its bin ordered before it. Rows whose conflict bins hold many items are binned again over those bins'
    range (or counted densely after ``_MAX_ZOOMS`` re-binnings).

    Args: ``in_conflict`` (cells,) bool and ``bin_size`` (cells,) int64 per (row, bin) cell; ``higher_bins`` (C, P)
    items in higher bins than each positive; ``ranks`` (C, P) updated in place and returned.
    """
    num_rows, num_gallery = scores.shape
    affected = _lookup(in_conflict, positive_group) & valid  # (C, P) every positive of a conflict bin
    members_per_row = torch.where(in_conflict, bin_size, 0).view(num_rows, -1).sum(dim=1)  # (C,)
    heavy = members_per_row > max(32, int(num_gallery * _HEAVY_GROUP_SHARE))
    member = item_reference.isnan()  # (C, G) items of conflict bins
    if bool(heavy.any()):
        heavy_rows = heavy.nonzero().squeeze(1)
        args = (scores.index_select(0, heavy_rows), positive_index.index_select(0, heavy_rows),
                valid.index_select(0, heavy_rows))
        if zooms < _MAX_ZOOMS:  # re-bin over the range of the conflict bins' items
            sub_scores, inside = args[0], member.index_select(0, heavy_rows)
            low = sub_scores.masked_fill(~inside, float("inf")).amin(dim=1)
            high = sub_scores.masked_fill(~inside, -float("inf")).amax(dim=1)
            ranks[heavy_rows] = _binned_ranks(*args, (low, high), zooms + 1)
        else:
            ranks[heavy_rows] = _dense_ranks(*args)
        affected[heavy_rows] = False
        member[heavy_rows] = False
    items = member.view(-1).nonzero().squeeze(1)  # (M,) ascending row-major positions
    if not items.numel():
        return ranks
    value = scores.reshape(-1).index_select(0, items)
    item_group = group.reshape(-1).index_select(0, items)
    by_score = torch.sort(value, descending=True, stable=True).indices  # ties keep ascending gallery index
    by_bin = torch.sort(item_group.index_select(0, by_score), stable=True)
    order = by_score.index_select(0, by_bin.indices)  # (M,) items by bin, then by rank within the bin
    place = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    ahead_in_bin = place - torch.searchsorted(by_bin.values, item_group)  # (M,)
    rows, slots = affected.nonzero(as_tuple=True)
    item = torch.searchsorted(items, rows * num_gallery + positive_index[rows, slots])
    ranks[rows, slots] = 1 + higher_bins[rows, slots] + ahead_in_bin.index_select(0, item)
    return ranks


def _sorted_ranks(scores: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
    """Same as :func:`_counted_ranks` via a stable descending sort of the rows: (C, G) -> (C, P)."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    position_of_item = torch.empty_like(order).scatter_(1, order, positions)
    return position_of_item.gather(1, positive_index)


def padded_positives(
    gallery_order: torch.Tensor, start: torch.Tensor, num_positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, P) gallery indices of each query's positives (ascending, padded with the first) and validity."""
    slot = torch.arange(int(num_positives.max()), device=start.device)
    valid = slot[None, :] < num_positives[:, None]
    offsets = (start[:, None] + slot[None, :]).clamp_(max=gallery_order.numel() - 1)
    positive_index = torch.where(valid, gallery_order[offsets], gallery_order[offsets[:, :1]])
    return positive_index, valid


def _positive_ranks(
    scores: torch.Tensor, positive_index: torch.Tensor, valid: torch.Tensor, try_candidates: bool = True
) -> tuple[torch.Tensor, bool]:
    """(C, P) 1-based positions of the positives and whether the candidate shortcut served them.

    Few candidates: compare them alone; else count for few positives, bin for more, sort for very many.
    """
    num_pos = positive_index.shape[1]
    _check_not_nan(scores)
    if try_candidates and num_pos <= _SORT_FALLBACK_POSITIVES:
        ranks = _candidate_ranks(scores, positive_index, valid)
        if ranks is not None:
            return ranks, True
    if num_pos > _SORT_FALLBACK_POSITIVES:
        return _sorted_ranks(scores, positive_index), False
    if num_pos > _DENSE_MAX_POSITIVES:
        return _binned_ranks(scores, positive_index, valid, checked=True), False
    return _dense_ranks(scores, positive_index, valid), False


def summarize_ranks(
    ranks: torch.Tensor, valid: torch.Tensor, num_positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """First/last positive position, AP and INP from (C, P) positive positions (all C rows have n >= 1)."""
    sentinel = torch.iinfo(torch.int64).max
    ranks = torch.sort(ranks.masked_fill(~valid, sentinel), dim=1).values
    ordinal = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    precision = torch.where(valid, ordinal / ranks.to(torch.float64), 0.0)
    n = num_positives.to(torch.float64)
    average_precision = precision.sum(dim=1) / n
    last = ranks.gather(1, (num_positives - 1)[:, None]).squeeze(1)
    return ranks[:, 0], last, average_precision, n / last.to(torch.float64)


def _row_cost(num_positives: int, num_gallery: int) -> int:
    """Working-set elements one query row needs (comparison tensor, bins and tables, or sort buffers)."""
    if num_positives <= _DENSE_MAX_POSITIVES:
        return num_gallery * (2 + max(1, num_positives))
    if num_positives <= _SORT_FALLBACK_POSITIVES:  # bins, tables; fewer, larger chunks (measured ~10% faster)
        return 2 * num_gallery + num_positives * (num_positives + 1)
    return 4 * num_gallery


def _rows_within(budget: int, row_cost: int) -> int:
    """Rows per chunk: within ``budget`` elements, or at least _MIN_CHUNK_ROWS within _MAX_BLOCK_ELEMENTS."""
    return max(1, budget // row_cost, min(_MIN_CHUNK_ROWS, _MAX_BLOCK_ELEMENTS // row_cost))


def _row_chunks(
    counts: list[int], num_gallery: int, chunk_size: int | None
) -> Iterator[tuple[int, int]]:
    """Yield (lo, hi) slices over queries sorted by ascending positive count.

    With ``chunk_size=None`` a chunk holds as many rows as keep ``rows x positives x G`` (its largest
    positive count, capped at the sort fallback) within the working-set target.
    """
    total, lo = len(counts), 0
    while lo < total:
        if chunk_size is not None:
            hi = min(total, lo + chunk_size)
        else:
            budget = _TARGET_BLOCK_ELEMENTS
            hi = min(total, lo + _rows_within(budget, _row_cost(counts[lo], num_gallery)))
            # counts ascend, so the last row of a chunk is its most expensive one
            while hi - lo > 1 and hi - lo > _rows_within(budget, _row_cost(counts[hi - 1], num_gallery)):
                hi = lo + _rows_within(budget, _row_cost(counts[hi - 1], num_gallery))
        yield lo, hi
        lo = hi


def retrieval_metrics_per_query(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    chunk_size: int | None = None,
) -> PerQueryMetrics:
    """Per-query positions of the first/last positive, AP and INP (exact; ties -> lower gallery index).

    Args:
        similarity: (Q, G) scores, higher = more similar. fp16/bf16/fp32/int are compared in fp32,
            float64 in float64 (never downcast).
        query_pids: (Q,) int identities of the queries.
        gallery_pids: (G,) int identities of the gallery items.
        chunk_size: queries per chunk; ``None`` picks it from a small working-set budget.

    Returns:
        :class:`PerQueryMetrics`; queries without positives get positions 0 and NaN AP/INP.

    Raises:
        ValueError: on shape mismatches or NaN scores in an evaluated row.
    """
    similarity, query_pids, gallery_pids = _validate(similarity, query_pids, gallery_pids)
    with _single_cpu_thread(similarity.device):  # small ops: see _single_cpu_thread
        positives = PositiveLists.from_pids(query_pids, gallery_pids)
    return ranked_positives_per_query(similarity, positives, chunk_size)


def ranked_positives_per_query(
    similarity: torch.Tensor, positives: PositiveLists, chunk_size: int | None = None
) -> PerQueryMetrics:
    """:func:`retrieval_metrics_per_query` with explicit positives instead of pid equality.

    For protocols whose relevance is not "same identity" (composed queries: the target and the images
    of the person that show the asked-for attributes). ``similarity`` is (Q, G); ``positives`` has Q lists.
    """
    similarity = torch.as_tensor(similarity)
    if similarity.ndim != 2 or 0 in similarity.shape:
        raise ValueError(f"similarity must be a non-empty (Q, G) matrix, got shape {tuple(similarity.shape)}")
    if positives.count.numel() != similarity.shape[0]:
        raise ValueError(f"{positives.count.numel()} positive lists for {similarity.shape[0]} queries")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_queries = similarity.shape[0]
    dtype = _full_float_dtype(similarity.dtype)
    device = similarity.device
    gallery_order, start, count = (t.to(device) for t in (positives.gallery_order, positives.start, positives.count))
    if gallery_order.numel() and (int(gallery_order.min()) < 0 or int(gallery_order.max()) >= similarity.shape[1]):
        raise ValueError(f"positive gallery positions must lie in [0, {similarity.shape[1]})")

    first = torch.zeros(num_queries, dtype=torch.int64, device=device)
    last = torch.zeros_like(first)
    average_precision = torch.full((num_queries,), float("nan"), dtype=torch.float64, device=device)
    inverse_negative_penalty = average_precision.clone()
    results = (first, last, average_precision, inverse_negative_penalty)
    with _single_cpu_thread(device) as workers:
        _rank_all(similarity, dtype, gallery_order, start, count, chunk_size, results, workers)
    return PerQueryMetrics(count, *results)


@contextlib.contextmanager
def _single_cpu_thread(device: torch.device) -> Iterator[int]:
    """Run CPU work with one intra-op thread, then restore the thread count; yields the count it replaced.

    The chunked loop issues many small ops; with several OpenMP threads each op ends in a barrier, and on
    a shared machine a descheduled thread stalls every op (measured on 2 busy cores: 10-50x slower
    ops, the evaluator 0.1 s -> 3.8 s). The cores are used instead by running chunks side by side in that
    many Python threads (:func:`_rank_all`): no barrier between them, so a busy core only slows its own chunks.
    Yields 1 on other devices.
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield min(previous, _MAX_WORKERS)
    finally:
        torch.set_num_threads(previous)


def _copy_in_tiles(source: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Copy (R, G) rows of any strides and dtype into the contiguous ``out``, ``_COPY_TILE_COLUMNS`` at a time."""
    for lo in range(0, source.shape[1], _COPY_TILE_COLUMNS):
        out[:, lo : lo + _COPY_TILE_COLUMNS].copy_(source[:, lo : lo + _COPY_TILE_COLUMNS])
    return out


def _rank_all(
    similarity: torch.Tensor,
    dtype: torch.dtype,
    gallery_order: torch.Tensor,
    start: torch.Tensor,
    count: torch.Tensor,
    chunk_size: int | None,
    results: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    workers: int = 1,
) -> None:
    """Fill ``results`` (first, last, AP, INP; each (Q,)) for every query with a positive.

    Rows are taken in blocks (the whole matrix when its rows are already unit-stride in the compute dtype); a
    block's chunks are independent (disjoint rows of ``results``) and ``workers`` threads take them in turn
    (:func:`_in_workers`).
    """
    num_queries, num_gallery = similarity.shape
    dtype_bytes = torch.finfo(dtype).bits // 8
    in_place = similarity.dtype == dtype and similarity.stride(1) == 1
    block_rows = num_queries if in_place else min(num_queries, _BLOCK_COPY_BYTES // (num_gallery * dtype_bytes) or 1)
    buffer = None if in_place else torch.empty(block_rows, num_gallery, dtype=dtype, device=similarity.device)
    for block_start in range(0, num_queries, block_rows):
        # natural-order row block, contiguous in the compute dtype (a view when already so)
        block = similarity[block_start : block_start + block_rows]
        if buffer is not None:
            block = _copy_in_tiles(block, buffer[: block.shape[0]])
        # visit queries by ascending positive count: padding is tight and heavy queries come last
        counts_sorted, local_order = torch.sort(count[block_start : block_start + block_rows], stable=True)
        skip = int((counts_sorted == 0).sum())
        local_order, counts_sorted = local_order[skip:], counts_sorted[skip:]
        chunks = _SharedChunks(_row_chunks(counts_sorted.tolist(), num_gallery, chunk_size))
        rows = local_order + block_start  # (R,) query of each visited block row
        _in_workers(lambda: _rank_chunks(chunks, block, local_order, rows, counts_sorted, gallery_order, start,
                                         results), workers)


@dataclass
class _SharedChunks:
    """(lo, hi) slices of one block's visiting order, handed out one at a time to whichever thread asks."""

    slices: Iterator[tuple[int, int]]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[int, int] | None:
        with self.lock:
            return next(self.slices, None)


def _rank_chunks(
    chunks: _SharedChunks,
    block: torch.Tensor,
    local_order: torch.Tensor,
    rows: torch.Tensor,
    counts_sorted: torch.Tensor,
    gallery_order: torch.Tensor,
    start: torch.Tensor,
    results: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    """Rank chunks taken from ``chunks`` until none is left, writing their rows of ``results``.

    ``block`` (R, G) scores; ``local_order`` (V,) its rows to visit, ``rows`` (V,) their queries, ``counts_sorted``
    (V,) their positive counts (ascending). The candidate shortcut is tried while it works and retried every
    ``_CANDIDATE_RETRY``-th chunk after a failure (this thread's chunks only).
    """
    chunks_since_failure = _CANDIDATE_RETRY
    while (chunk := chunks.take()) is not None:
        lo, hi = chunk
        chunk_rows, n = rows[lo:hi], counts_sorted[lo:hi]
        positive_index, valid = padded_positives(gallery_order, start[chunk_rows], n)
        scores = block.index_select(0, local_order[lo:hi])
        try_candidates = chunks_since_failure >= _CANDIDATE_RETRY - 1
        ranks, served = _positive_ranks(scores, positive_index, valid, try_candidates)
        chunks_since_failure = _CANDIDATE_RETRY if served else (0 if try_candidates else chunks_since_failure + 1)
        for result, value in zip(results, summarize_ranks(ranks, valid, n)):  # first, last, AP, INP
            result[chunk_rows] = value


def _in_workers(function: Callable[[], None], workers: int) -> None:
    """Run ``function`` in ``workers`` threads at once (in this one when 1) and re-raise the first error.

    Inference and grad mode are per thread: each worker enters the caller's inference mode (``Trainer.test`` hands
    over inference tensors) and no-grad.
    """
    if workers == 1:
        function()
        return
    inference = torch.is_inference_mode_enabled()

    def worker() -> None:
        with torch.inference_mode(inference), torch.no_grad():
            function()

    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(worker) for _ in range(workers)]:
            done.result()


def summarize_per_query(
    per_query: PerQueryMetrics, ks: Sequence[int] = (1, 5, 10), on_missing: str = "error"
) -> dict[str, float]:
    """Average per-query results into ``{"R1", ..., "mAP", "mINP"}`` percentages (see retrieval_metrics)."""
    ks = check_ks(ks)
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    has_positive = per_query.has_positive
    num_queries = has_positive.numel()
    num_missing = num_queries - int(has_positive.sum())
    if num_missing and (on_missing == "error" or num_missing == num_queries):
        hint = "pass on_missing='skip' to leave them out" if on_missing == "error" else "nothing to average"
        raise ValueError(
            f"{num_missing} of {num_queries} queries have no positive in the gallery; {hint}"
        )
    first = per_query.first_positive_rank[has_positive]
    metrics = {f"R{k}": 100.0 * float((first <= k).to(torch.float64).mean()) for k in ks}
    metrics["mAP"] = 100.0 * float(per_query.average_precision[has_positive].mean())
    metrics["mINP"] = 100.0 * float(per_query.inverse_negative_penalty[has_positive].mean())
    return metrics


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """The R@K cut-offs as a tuple of ints; ``ValueError`` unless every one is a positive integer."""
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    on_missing: str = "error",
) -> dict[str, float]:
    """Text-based person search metrics, exact, in percent.

    Per query, the gallery is ordered by descending score and **equal scores are ordered by
    ascending gallery index** (stable descending sort). Every gallery item with the query's pid is a
    positive. ``R{k}``: share of queries with a positive in the first ``k`` positions (hit rate; ``k``
    may exceed G). ``mAP``: mean of non-interpolated AP over all positives. ``mINP``: mean of
    ``n / position of the last positive``.

    Image-to-text: ``retrieval_metrics(similarity.T, gallery_pids, query_pids)``.

    Args:
        similarity: (Q, G) scores, higher = more similar (compared in fp32, float64 kept).
        query_pids: (Q,) int identities.
        gallery_pids: (G,) int identities.
        ks: cut-offs for ``R{k}``.
        chunk_size: queries per chunk; ``None``: automatic (a few MB of working memory).
        on_missing: queries without any positive: ``"error"`` raises ValueError with their count;
            ``"skip"`` leaves them out of every mean (an error if no query is left).

    Returns:
        ``{"R1": .., "R5": .., "R10": .., "mAP": .., "mINP": ..}`` as python floats in [0, 100].
    """
    ks = check_ks(ks)
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    per_query = retrieval_metrics_per_query(similarity, query_pids, gallery_pids, chunk_size)
    return summarize_per_query(per_query, ks, on_missing)


def bidirectional_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    on_missing: str = "error",
    i2t_on_missing: str = "skip",
) -> dict[str, float]:
    """Text-to-image metrics plus image-to-text ones (prefixed ``i2t_``) from one (Q, G) matrix.

    Image-to-text treats gallery items as queries and ``similarity.T`` as their scores against the
    captions. ``i2t_on_missing`` defaults to ``"skip"`` so that an image without any caption of its
    pid (possible on subsets) does not abort the evaluation.
    """
    metrics = retrieval_metrics(similarity, query_pids, gallery_pids, ks, chunk_size, on_missing)
    reverse = retrieval_metrics(similarity.T, gallery_pids, query_pids, ks, chunk_size, i2t_on_missing)
    metrics.update({f"i2t_{name}": value for name, value in reverse.items()})
    return metrics
