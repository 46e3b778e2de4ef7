"""Test-end cost: the metric's numbers plus every query's top-10 (``test_rankings.npz``) from one score matrix,
against the previous path that scored the test set a second time for the rankings.

Usage: ``python benchmarks/rankings_cost.py [--repeats N] [--dim D]``

Problems: CUHK-PEDES test size (6,156 captions x 3,074 images, 1,000 ids) and 20,000 x 20,000 (10,000 ids), noisy
identity embeddings, L2-normalised, fp32, cosine similarity. Baseline, in the same process: ``RetrievalMetric``
without ``top_k``, then ``rank_queries`` over ``similarity_fn(queries, gallery)`` computed again (what
``xsearch.rankings.query_rankings`` did before). New: ``RetrievalMetric(top_k=10)``, whose ``compute`` ranks the
top-10 from the matrix it scores anyway. Best of ``--repeats`` runs each; exits 1 if the two top-10s differ.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsearch.evaluation import PositiveLists, RetrievalMetric  # noqa: E402
from xsearch.evaluation.topk import rank_queries  # noqa: E402


def _problem(queries: int, gallery: int, identities: int, dim: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    gallery_pids = torch.arange(gallery) % identities
    query_pids = gallery_pids[torch.randint(gallery, (queries,), generator=generator)]
    centres = torch.randn(identities, dim, generator=generator)
    q = torch.nn.functional.normalize(centres[query_pids] + 1.5 * torch.randn(queries, dim, generator=generator), dim=1)
    g = torch.nn.functional.normalize(centres[gallery_pids] + 1.5 * torch.randn(gallery, dim, generator=generator), dim=1)
    return q, query_pids, g, gallery_pids


def _metric(q, query_pids, g, gallery_pids, top_k: int) -> RetrievalMetric:
    metric = RetrievalMetric(ks=(1, 5, 10), image_to_text=False, top_k=top_k)
    metric.update_queries(q, query_pids, torch.arange(len(q)))
    metric.update_gallery(g, gallery_pids, torch.arange(len(g)))
    return metric


def _before(q, query_pids, g, gallery_pids) -> torch.Tensor:
    metric = _metric(q, query_pids, g, gallery_pids, 0)
    metric.compute()
    gathered = metric.gathered()
    scores = metric.similarity_fn(gathered.query_embeddings, gathered.gallery_embeddings)  # scored a second time
    return rank_queries(scores, PositiveLists.from_pids(gathered.query_pids, gathered.gallery_pids), None, 10).indices


def _after(q, query_pids, g, gallery_pids) -> torch.Tensor:
    metric = _metric(q, query_pids, g, gallery_pids, 10)
    metric.compute()
    return metric.top().indices


def _best(fn, args, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| problem | Q x G | before: metric + scored again (s) | after: one matrix (s) | speed-up | same top-10 |")
    print("|---|---|---|---|---|---|")
    failed = False
    for name, (queries, gallery, identities) in {"CUHK-PEDES test size": (6156, 3074, 1000),
                                                 "20k x 20k": (20000, 20000, 10000)}.items():
        problem = _problem(queries, gallery, identities, args.dim)
        before, top_before = _best(_before, problem, args.repeats)
        after, top_after = _best(_after, problem, args.repeats)
        same = bool(torch.equal(top_before, top_after))
        failed |= not same
        print(f"| {name} | {queries}x{gallery} | {before:.3f} | {after:.3f} | {before / after:.2f}x | {same} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
