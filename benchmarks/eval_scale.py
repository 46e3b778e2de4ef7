"""Evaluation at scale: time and memory of the streaming evaluator vs gallery size, against the full-matrix one.

Usage: ``python benchmarks/eval_scale.py [--sizes 10000 100000 1000000] [--queries 10000] [--dim 512]
[--memory-mb 256] [--plot benchmarks/eval_scale.png]``

Each (evaluator, gallery size) runs in its own process so that its peak RSS is its own. Embeddings are
identity centres + noise (2 gallery images per identity, queries of gallery identities), L2-normalised, fp32.
Baseline: the (Q, G) similarity matrix in one fp32 matmul + ``retrieval_metrics`` (skipped when the matrix
would not fit in RAM). Prints a Markdown table with the streaming/baseline ratios and whether the metrics agree.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_speed import peak_rss_bytes, reset_peak_rss  # noqa: E402  (VmHWM reset + read, Linux)


def _worker(kind: str, gallery_size: int, queries: int, dim: int, memory_mb: float) -> dict:
    import torch

    from xsearch.evaluation.retrieval import full_precision_matmul, retrieval_metrics
    from xsearch.evaluation.streaming import streaming_retrieval_metrics

    generator = torch.Generator().manual_seed(0)
    identities = gallery_size // 2
    gallery_pids = torch.arange(gallery_size) // 2
    query_pids = torch.randint(identities, (queries,), generator=generator)
    centres = torch.randn(identities, dim, generator=generator)
    gallery = torch.nn.functional.normalize(centres[gallery_pids] + 2.0 * torch.randn(gallery_size, dim, generator=generator), dim=1)
    query = torch.nn.functional.normalize(centres[query_pids] + 2.0 * torch.randn(queries, dim, generator=generator), dim=1)
    del centres
    reset_peak_rss()  # the inputs' generation temporaries would otherwise hide the evaluator's own peak
    before = peak_rss_bytes()[0]
    start = time.perf_counter()
    if kind == "streaming":
        metrics = streaming_retrieval_metrics(query, gallery, query_pids, gallery_pids, memory_mb=memory_mb)
    else:
        with full_precision_matmul():
            similarity = query @ gallery.T
        metrics = retrieval_metrics(similarity, query_pids, gallery_pids)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra_mb": (peak_rss_bytes()[1] - before) / 2**20, "embeddings_mb": before / 2**20,
            "metrics": metrics}


def _run(kind: str, size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--sizes", str(size), "--queries", str(args.queries),
               "--dim", str(args.dim), "--memory-mb", str(args.memory_mb)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--memory-mb", type=float, default=256.0)
    parser.add_argument("--ram-gb", type=float, default=None, help="skip the baseline above this matrix size "
                        "(default: half of the machine's memory)")
    parser.add_argument("--plot", default=None, help="write a PNG of time and memory vs gallery size")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.sizes[0], args.queries, args.dim, args.memory_mb)))
        return
    ram_gb = args.ram_gb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 / 2
    print(f"queries {args.queries}, dim {args.dim}, streaming budget {args.memory_mb:g} MiB, cpus {os.cpu_count()}")
    print("| gallery | matrix (GiB) | streaming s | streaming extra MiB | full-matrix s | full-matrix extra MiB | "
          "time ratio (full / streaming) | same metrics |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    table = []
    for size in args.sizes:
        matrix_gb = size * args.queries * 4 / 2**30
        stream = _run("streaming", size, args)
        full = _run("full", size, args) if matrix_gb * 1.3 < ram_gb else None
        same = "-" if full is None else str(stream["metrics"] == full["metrics"])
        ratio = "-" if full is None else f"{full['seconds'] / stream['seconds']:.2f}x"
        full_s = "not run (matrix > RAM)" if full is None else f"{full['seconds']:.1f}"
        full_mb = "-" if full is None else f"{full['extra_mb']:.0f}"
        print(f"| {size:,} | {matrix_gb:.1f} | {stream['seconds']:.1f} | {stream['extra_mb']:.0f} | {full_s} | {full_mb} | "
              f"{ratio} | {same} |", flush=True)
        table.append((size, stream, full))
    print("streaming metrics:", {size: {k: round(v, 2) for k, v in s["metrics"].items()} for size, s, _ in table})
    if args.plot:
        _plot(table, args.plot)


def _plot(table: list, path: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.2), layout="constrained")
    time_axes, memory_axes = figure.subplots(1, 2)
    sizes = [size for size, _, _ in table]
    for axes, key, label in ((time_axes, "seconds", "seconds"), (memory_axes, "extra_mb", "extra peak RSS (MiB)")):
        axes.plot(sizes, [s[key] for _, s, _ in table], "o-", label="streaming")
        done = [(size, f[key]) for size, _, f in table if f is not None]
        if done:
            axes.plot(*zip(*done), "s--", label="full matrix")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("gallery size")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    from xsearch.atomic import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
