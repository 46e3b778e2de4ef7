"""Speed and exactness of ``xsearch.evaluation.retrieval_metrics`` against a full-argsort evaluator.

Usage: ``python benchmarks/eval_speed.py [--repeats N] [--no-large] [--seed S] [--threads T]``

* CUHK-PEDES-sized synthetic problem: 6,156 captions x 3,074 images, 1,000 ids (about 3 images per
  id, 2 captions per image plus 8 images with a third), cosine scores of noisy identity embeddings.
* The same problem with forced ties: 10% of the gallery duplicates another image's embedding and the
  scores are rounded to 2 decimals.
* Image-to-text on the transposed matrix.
* 20,000 x 100,000 (20,000 ids, 5 images each), chunked evaluator only, with the peak RSS increase.

The baseline is the usual evaluator (IRRA style): stable descending argsort of the whole matrix,
gathered pids, cumsum-based R@K / AP / INP, float64 accumulation. Exits 1 if any metric differs by
more than 1e-9 (percentage points).
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsearch.evaluation import full_precision_matmul, retrieval_metrics  # noqa: E402

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


def best_time(function: Callable[[], dict[str, float]], repeats: int) -> tuple[float, dict[str, float]]:
    """Best wall time over ``repeats`` calls and the last result."""
    best, result = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def compare(name: str, similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor,
            repeats: int) -> tuple[list[str], bool]:
    """Time both evaluators on one problem; table rows and whether all metrics agree."""
    ks = (1, 5, 10)
    fast_time, fast = best_time(lambda: retrieval_metrics(similarity, query_pids, gallery_pids, ks), repeats)
    base_time, base = best_time(lambda: argsort_baseline(similarity, query_pids, gallery_pids, ks), repeats)
    worst = max(abs(fast[key] - base[key]) for key in base)
    same = set(fast) == set(base) and worst <= TOLERANCE
    shape = "x".join(str(size) for size in similarity.shape)
    values = " / ".join(f"{fast[key]:.3f}" for key in ("R1", "R5", "R10", "mAP", "mINP"))
    row = (f"| {name} | {shape} | {base_time:.3f} | {fast_time:.3f} | {base_time / fast_time:.1f}x "
           f"| {worst:.1e} | {values} |")
    return [row], same


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-large", action="store_true", help="skip the 20,000 x 100,000 run (8 GB matrix)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    captions, caption_pids, images, image_pids = cuhk_like_problem(args.seed)
    similarity = cosine(captions, images)
    tied = with_forced_ties(captions, images, args.seed)
    print("| problem | Q x G | full argsort (s) | chunked count (s) | speed-up | max abs diff | R1 / R5 / R10 / mAP / mINP |")
    print("|---|---|---|---|---|---|---|")
    all_same = True
    for name, scores, query_pids, gallery_pids in (
        ("text-to-image", similarity, caption_pids, image_pids),
        ("text-to-image, forced ties", tied, caption_pids, image_pids),
        ("image-to-text (transposed view)", similarity.T, image_pids, caption_pids),
    ):
        rows, same = compare(name, scores, query_pids, gallery_pids, args.repeats)
        all_same &= same
        print("\n".join(rows), flush=True)
    if not args.no_large:
        print("\n| large problem | chunked count | peak RSS increase | R1 / R5 / R10 / mAP / mINP |")
        print("|---|---|---|---|")
        print(large_problem(args.seed), flush=True)
    if not all_same:
        print("MISMATCH: the chunked evaluator disagrees with the argsort baseline", file=sys.stderr)
        return 1
    print("all metrics identical within 1e-9")
    return 0


if __name__ == "__main__":
    sys.exit(main())
