"""glibc malloc thresholds (``xsearch.allocator.keep_freed_memory``, what the ``xsearch`` command sets) vs the C
library's defaults: training steps of the quickstart model, each setting in its own child process (mallopt cannot be
undone in a process), alternated over ``--pairs`` pairs.

Usage::

    python benchmarks/allocator.py [--pairs 3] [--steps 30] [--batch-size 64]

Prints, per setting, the median step time (forward, backward, AdamW on random 96x48 images and cached captions) and the
page faults per step, then the ratio default / kept. The model computes the same numbers either way (the child prints
its last loss to show it).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(keep: bool, steps: int, batch_size: int) -> dict[str, float]:
    """Time ``steps`` training steps (after 3 untimed ones) in this process."""
    import torch

    from quickstart_levers import build_model, captions, train_step
    from xsearch.allocator import keep_freed_memory

    kept = keep_freed_memory() if keep else False
    torch.manual_seed(0)
    model = build_model()
    model.train()
    batch = {"image": torch.randint(0, 256, (batch_size, 3, 96, 48), dtype=torch.uint8),
             "text": captions(batch_size, seed=1), "pid": torch.arange(batch_size) // 2}
    model.text_encoder.precompute(batch["text"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step() -> float:
        return train_step(model, optimizer, batch)

    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - started)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    return {"kept": kept, "ms": statistics.median(times) * 1000, "faults": faults, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", choices=("keep", "default"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "keep", args.steps, args.batch_size)))
        return
    from quickstart_levers import cpu_bf16_support

    print(cpu_bf16_support())
    print(f"{args.pairs} pairs of child processes, {args.steps} steps each, batch {args.batch_size}")
    runs: dict[str, list[dict[str, float]]] = {"default": [], "keep": []}
    for _ in range(args.pairs):
        for setting in ("default", "keep"):
            out = subprocess.run([sys.executable, __file__, "--child", setting, "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for setting, label in (("default", "C library defaults"), ("keep", "keep_freed_memory()")):
        rows = runs[setting]
        steps = " / ".join(f"{r['ms']:.1f}" for r in rows)
        print(f"  {label:<22} step {steps} ms, "
              f"page faults per step {statistics.mean(r['faults'] for r in rows):8.0f}, last loss {rows[-1]['loss']:.6f}")
    ratios = [d["ms"] / k["ms"] for d, k in zip(runs["default"], runs["keep"])]
    print(f"  speed-up per pair: {' '.join(f'x{r:.2f}' for r in ratios)}; median x{statistics.median(ratios):.2f}"
          f"{'' if runs['keep'][0]['kept'] else ' (this C library is not glibc: nothing was set)'}")


if __name__ == "__main__":
    main()
