"""Speed and exactness of ``xsearch.evaluation.retrieval_metrics`` against a full-argsort evaluator.

Usage: ``python benchmarks/eval_speed.py [--repeats N] [--no-large] [--seed S] [--threads T] [--only NAME ...]``

CUHK-PEDES-sized synthetic problems, 6,156 captions x 3,074 images, 1,000 ids (about 3 images per id, 2 captions
per image plus 8 images with a third), each with a different score distribution (see :func:`problems`): a
well-trained model (cosines of noisy identity embeddings), forced ties (duplicated images, rounded scores), the
image-to-text direction (transposed view), an untrained model (random embeddings), Gaussian scores with a weak
planted signal (positives deep in the ranking), every positive ranked last, coarse rounding (heavy ties), constant
scores (a collapsed model: every item ties), positives tied with many negatives, bf16-rounded scores, outliers
(one huge and one tiny score per row), and many positives per query (60 ids, about 51 images each). Then
20,000 x 100,000 (20,000 ids, 5 images each), chunked evaluator only, with the peak RSS increase.

The baseline is the usual evaluator (IRRA style): stable descending argsort of the whole matrix, gathered pids,
cumsum-based R@K / AP / INP, float64 accumulation. Prints each problem's speed-up and the worst one. Exits 1 if any
metric differs by more than 1e-9 (percentage points) or any query's first/last positive position, AP or INP
(:func:`xsearch.evaluation.retrieval_metrics_per_query`, what ``RetrievalMetric.per_query`` serves) differs from
the argsort ranking's.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsearch.evaluation import full_precision_matmul, retrieval_metrics, retrieval_metrics_per_query  # noqa: E402

TOLERANCE = 1e-9


def argsort_baseline(
    similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor, ks: tuple[int, ...]
) -> dict[str, float]:
    """Full-matrix evaluator: (Q, G) stable argsort, (Q, G) matches, cumsums. Returns percentages."""
    num_gallery = similarity.shape[1]
    indices = torch.argsort(similarity, dim=1, descending=True, stable=True)  # (Q, G) int64
    matches = gallery_pids[indices] == query_pids[:, None]  # (Q, G) bool
    hits = matches.cumsum(dim=1)  # (Q, G) int64
    metrics = {f"R{k}": 100.0 * float((hits[:, min(k, num_gallery) - 1] > 0).double().mean()) for k in ks}
    num_positives = hits[:, -1].double()
    positions = torch.arange(1, num_gallery + 1, dtype=torch.float64)
    precision_at_hits = torch.where(matches, hits.double() / positions, 0.0)
    metrics["mAP"] = 100.0 * float((precision_at_hits.sum(dim=1) / num_positives).mean())
    last_position = num_gallery - matches.flip(dims=[1]).to(torch.uint8).argmax(dim=1)  # 1-based
    metrics["mINP"] = 100.0 * float((num_positives / last_position.double()).mean())
    return metrics


def cuhk_like_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Caption/image embeddings and pids: (6156, D), (6156,), (3074, D), (3074,); R1 around 64%."""
    generator = torch.Generator().manual_seed(seed)
    num_ids, num_images, dim = 1000, 3074, 256
    gallery_pids = torch.arange(num_images) % num_ids  # 74 ids with 4 images, the rest with 3
    captions_per_image = torch.full((num_images,), 2)
    captions_per_image[torch.randperm(num_images, generator=generator)[:8]] = 3  # 6,156 captions
    image_of_caption = torch.repeat_interleave(torch.arange(num_images), captions_per_image)
    identity = torch.randn(num_ids, dim, generator=generator)
    image_noise = 0.7 * torch.randn(num_images, dim, generator=generator)
    image_embeddings = identity[gallery_pids] + image_noise
    caption_pids = gallery_pids[image_of_caption]
    caption_noise = 4.3 * torch.randn(len(image_of_caption), dim, generator=generator)
    caption_embeddings = identity[caption_pids] + 0.5 * image_noise[image_of_caption] + caption_noise
    return caption_embeddings, caption_pids, image_embeddings, gallery_pids


def cosine(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """(Q, D), (G, D) -> (Q, G) fp32 cosine similarity."""
    with full_precision_matmul():
        return F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T


def with_forced_ties(
    caption_embeddings: torch.Tensor, image_embeddings: torch.Tensor, seed: int
) -> torch.Tensor:
    """Similarity where 10% of the images duplicate another image and scores are rounded to 0.01."""
    generator = torch.Generator().manual_seed(seed + 1)
    images = image_embeddings.clone()
    num_images = len(images)
    copies = torch.randperm(num_images, generator=generator)[: num_images // 5]
    images[copies[: len(copies) // 2]] = images[copies[len(copies) // 2 :]]
    return torch.round(cosine(caption_embeddings, images) * 100) / 100


def argsort_per_query(
    similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query, from the full stable argsort: (Q,) first and last positive position, AP and INP (float64)."""
    num_gallery = similarity.shape[1]
    indices = torch.argsort(similarity, dim=1, descending=True, stable=True)
    matches = gallery_pids[indices] == query_pids[:, None]
    hits = matches.cumsum(dim=1)
    positions = torch.arange(1, num_gallery + 1, dtype=torch.float64)
    num_positives = hits[:, -1].double()
    average_precision = torch.where(matches, hits.double() / positions, 0.0).sum(dim=1) / num_positives
    first = matches.to(torch.uint8).argmax(dim=1) + 1
    last = num_gallery - matches.flip(dims=[1]).to(torch.uint8).argmax(dim=1)
    return first, last, average_precision, num_positives / last.double()


def per_query_identical(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> bool:
    """The evaluator's per-query positions equal the argsort ranking's, AP and INP within 1e-12."""
    first, last, average_precision, inverse_negative_penalty = argsort_per_query(similarity, query_pids, gallery_pids)
    fast = retrieval_metrics_per_query(similarity, query_pids, gallery_pids)
    return (torch.equal(fast.first_positive_rank, first) and torch.equal(fast.last_positive_rank, last)
            and bool(torch.allclose(fast.average_precision, average_precision, rtol=0, atol=1e-12))
            and bool(torch.allclose(fast.inverse_negative_penalty, inverse_negative_penalty, rtol=0, atol=1e-12)))


def problems(seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(name, (Q, G) fp32 scores, (Q,) query pids, (G,) gallery pids) of every timed problem."""
    captions, caption_pids, images, image_pids = cuhk_like_problem(seed)
    trained = cosine(captions, images)
    generator = torch.Generator().manual_seed(seed + 3)
    positive = caption_pids[:, None] == image_pids[None, :]
    untrained = cosine(torch.randn(len(caption_pids), 256, generator=generator),
                       torch.randn(len(image_pids), 256, generator=generator))
    gaussian = torch.randn(trained.shape, generator=generator) + 0.5 * positive
    last = torch.rand(trained.shape, generator=generator).masked_fill_(positive, -1.0)  # below every negative
    last[positive] -= torch.rand(int(positive.sum()), generator=generator)
    tied_with_negatives = torch.round(untrained * 20) / 20
    tied_with_negatives[positive] = 0.0  # every positive ties with the many negatives scoring 0.0 (~20%)
    outliers = torch.randn(trained.shape, generator=generator) + 0.5 * positive
    outliers[:, 0], outliers[:, 1] = 1e30, -1e30  # one huge-norm and one opposite gallery embedding
    many_image_pids = torch.arange(len(image_pids)) % 60  # 60 ids, 51-52 images each
    many_caption_pids = many_image_pids[torch.randint(0, len(image_pids), (len(caption_pids),), generator=generator)]
    many = torch.randn(trained.shape, generator=generator) + 0.3 * (many_caption_pids[:, None] == many_image_pids)
    return [
        ("well-trained (text-to-image)", trained, caption_pids, image_pids),
        ("forced ties (duplicated images, scores rounded to 0.01)", with_forced_ties(captions, images, seed),
         caption_pids, image_pids),
        ("image-to-text (transposed view)", trained.T, image_pids, caption_pids),
        ("untrained (random embeddings)", untrained, caption_pids, image_pids),
        ("Gaussian scores, weak signal (deep positives)", gaussian, caption_pids, image_pids),
        ("image-to-text, Gaussian (transposed view)", gaussian.T, image_pids, caption_pids),
        ("every positive ranked last", last, caption_pids, image_pids),
        ("heavy ties (untrained, scores rounded to 0.1)", torch.round(untrained * 10) / 10, caption_pids, image_pids),
        ("constant scores (collapsed model, all tied)", torch.zeros(trained.shape), caption_pids, image_pids),
        ("positives tied with many negatives", tied_with_negatives, caption_pids, image_pids),
        ("bf16-rounded scores (well-trained)", trained.bfloat16().float(), caption_pids, image_pids),
        ("outliers (+-1e30 column), Gaussian", outliers, caption_pids, image_pids),
        ("many positives (60 ids, ~51 per query), Gaussian", many, many_caption_pids, many_image_pids),
    ]


def best_time(function: Callable[[], dict[str, float]], repeats: int) -> tuple[float, dict[str, float]]:
    """Best wall time over ``repeats`` calls and the last result."""
    best, result = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def compare(name: str, similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor,
            repeats: int) -> tuple[str, float, bool]:
    """Time both evaluators on one problem; its table row, the speed-up and whether all numbers agree."""
    ks = (1, 5, 10)
    fast_time, fast = best_time(lambda: retrieval_metrics(similarity, query_pids, gallery_pids, ks), repeats)
    base_time, base = best_time(lambda: argsort_baseline(similarity, query_pids, gallery_pids, ks), repeats)
    worst = max(abs(fast[key] - base[key]) for key in base)
    same = set(fast) == set(base) and worst <= TOLERANCE
    same_per_query = per_query_identical(similarity, query_pids, gallery_pids)
    shape = "x".join(str(size) for size in similarity.shape)
    values = " / ".join(f"{fast[key]:.3f}" for key in ("R1", "R5", "R10", "mAP", "mINP"))
    ratio = base_time / fast_time
    row = (f"| {name} | {shape} | {base_time:.3f} | {fast_time:.3f} | {ratio:.1f}x | {worst:.1e} "
           f"| {'yes' if same and same_per_query else 'NO'} | {values} |")
    return row, ratio, same and same_per_query


def peak_rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak_rss() -> bool:
    """Return free heap pages to the OS, then reset VmHWM to the current RSS (Linux >= 4.0).

    Without the trim, the evaluator's chunk buffers are served from already-resident free heap memory and
    the peak does not move at all. Returns False if the peak cannot be reset.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def large_problem(seed: int, num_queries: int = 20_000, num_gallery: int = 100_000) -> str:
    """Chunked evaluator on a 20,000 x 100,000 fp32 matrix: time and peak RSS increase."""
    generator = torch.Generator().manual_seed(seed + 2)
    num_ids, dim = num_gallery // 5, 64
    gallery_pids = torch.arange(num_gallery) % num_ids
    query_pids = torch.randint(0, num_ids, (num_queries,), generator=generator)
    identity = torch.randn(num_ids, dim, generator=generator)
    gallery = F.normalize(identity[gallery_pids] + 1.2 * torch.randn(num_gallery, dim, generator=generator), dim=1)
    queries = F.normalize(identity[query_pids] + 1.2 * torch.randn(num_queries, dim, generator=generator), dim=1)
    similarity = torch.empty(num_queries, num_gallery)
    with full_precision_matmul():
        for lo in range(0, num_queries, 1024):
            torch.matmul(queries[lo : lo + 1024], gallery.T, out=similarity[lo : lo + 1024])
    exact_peak = reset_peak_rss()
    rss_before, peak_before = peak_rss_bytes()
    start = time.perf_counter()
    metrics = retrieval_metrics(similarity, query_pids, gallery_pids)
    elapsed = time.perf_counter() - start
    _, peak_after = peak_rss_bytes()
    increase = peak_after - (rss_before if exact_peak else max(rss_before, peak_before))
    note = "" if exact_peak else " (VmHWM not resettable: lower bound)"
    values = " / ".join(f"{metrics[key]:.3f}" for key in ("R1", "R5", "R10", "mAP", "mINP"))
    return (f"| {num_queries}x{num_gallery} (matrix {similarity.numel() * 4 / 2**30:.1f} GiB) | {elapsed:.1f} s "
            f"| {increase / 2**20:.0f} MiB{note} | {values} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N timed runs per evaluator and problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-large", action="store_true", help="skip the 20,000 x 100,000 run (8 GB matrix)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", nargs="+", default=None, help="problems whose name contains one of these words")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{' / '.join(f'{load:.1f}' for load in os.getloadavg())}")
    print("| problem | Q x G | full argsort (s) | chunked count (s) | speed-up | max abs diff | identical | "
          "R1 / R5 / R10 / mAP / mINP |")
    print("|---|---|---|---|---|---|---|---|")
    all_same, ratios = True, {}
    for name, scores, query_pids, gallery_pids in problems(args.seed):
        if args.only and not any(word in name for word in args.only):
            continue
        row, ratio, same = compare(name, scores, query_pids, gallery_pids, args.repeats)
        all_same &= same
        ratios[name] = ratio
        print(row, flush=True)
    if ratios:
        worst = min(ratios, key=ratios.get)
        print(f"\nworst speed-up: {ratios[worst]:.1f}x ({worst}); load average now "
              f"{' / '.join(f'{load:.1f}' for load in os.getloadavg())}")
    if not args.no_large:
        print("\n| large problem | chunked count | peak RSS increase | R1 / R5 / R10 / mAP / mINP |")
        print("|---|---|---|---|")
        print(large_problem(args.seed), flush=True)
    if not all_same:
        print("MISMATCH: the chunked evaluator disagrees with the argsort baseline", file=sys.stderr)
        return 1
    print("all metrics identical within 1e-9, per-query positions identical, AP / INP within 1e-12")
    return 0


if __name__ == "__main__":
    sys.exit(main())
