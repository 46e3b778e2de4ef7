"""Methods vs their ablations on the synthetic sets, several seeds.

Usage: ``python benchmarks/ablation.py --grid cmsn|partlevel|xmodal [--seeds 0 1 2] [--results
results/ablations.sqlite] [--only irra cmsn ...] [--dry-run] [-- extra xsearch overrides]``

Grids (synth_pedes): ``cmsn`` = IRRA, CMSN with all parts, CMSN without each part; ``partlevel`` = IRRA
(= part-level without parts), part-level, part-level with a plain margin instead of the commonality margin.
Grid ``xmodal`` (synth_faces): X-Modal trained on text + composed queries with the difficulty-aware MNRL, and
the same with sentence-transformers' plain MNRL; each checkpoint is tested on text queries, and on the composed
protocol with three query encodings: ``composed`` (reference + modification fused), ``reference`` (the
reference image alone) and ``modification`` (the sentence alone).

Each cell (variant x seed) is one ``xsearch fit --test_after_fit true`` in its own process, tagged with the
variant name in the results store, then one ``xsearch test`` of the best-on-val checkpoint per extra
evaluation (tag ``variant/evaluation``); cells already in the store are skipped, so an interrupted grid
resumes. Checkpoint selection is on the val split; the numbers are the test split (held-out identities).
Prints a table of mean +/- std over seeds per variant (and evaluation), and R1 gaps to the first variants.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataclasses import dataclass, field  # noqa: E402

from xsearch.results import ResultsStore  # noqa: E402

IRRA = ["--config", "configs/irra/synth_pedes_scratch.yaml"]
CMSN = ["--config", "configs/cmsn/synth_pedes_scratch.yaml"]
PARTS = ["--config", "configs/partlevel/synth_pedes_scratch.yaml"]
XMODAL = ["--config", "configs/xmodal/synth_faces.yaml"]
COMPOSED = ["--data.query_mode", "composed"]


@dataclass(frozen=True)
class Grid:
    """Variants (name -> ``xsearch fit`` arguments) on one dataset, and extra test-time evaluations of each
    checkpoint (name -> ``xsearch test`` arguments), stored under the tag ``variant/name``."""

    variants: dict[str, list[str]]
    evaluations: dict[str, list[str]] = field(default_factory=dict)


GRIDS: dict[str, Grid] = {
    "cmsn": Grid({
        "irra": IRRA,
        "cmsn": CMSN,
        "cmsn-imfi": [*CMSN, "--model.init_args.imfi", "false"],
        "cmsn-crl-cria": [*CMSN, "--model.init_args.crl", "false", "--model.init_args.cria_weight", "0"],
        "cmsn-spt": [*CMSN, "--model.init_args.spt_weight", "0"],
    }),
    "partlevel": Grid({
        "irra": IRRA,  # part-level without parts (no part losses, global ranking) is exactly IRRA
        "partlevel": PARTS,
        "partlevel-plain-margin": [*PARTS, "--model.init_args.commonality", "false"],
    }),
    "xmodal": Grid(
        {
            "xmodal": XMODAL,
            "xmodal-plain-mnrl": [*XMODAL, "--model.init_args.level_weights", "[1, 1, 1]",
                                  "--model.init_args.same_identity", "none"],
        },
        {
            "composed": [*COMPOSED, "--model.init_args.composed_query", "fused"],
            "reference": [*COMPOSED, "--model.init_args.composed_query", "reference"],
            "modification": [*COMPOSED, "--model.init_args.composed_query", "text"],
        },
    ),
}
"""Grid name -> :class:`Grid`. ``cmsn-x`` = full CMSN without part x."""
VARIANTS = {name: args for grid in GRIDS.values() for name, args in grid.variants.items()}
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def finished(store: ResultsStore) -> dict[tuple[str, int], dict[str, float]]:
    """(tag, seed) -> test metrics of the runs already in the store (tag = variant or variant/evaluation)."""
    done = {}
    for row in store.rows():
        tag = (row.extra or {}).get("tag")
        if tag and tag.split("/")[0] in VARIANTS and row.seed is not None:
            done[(tag, row.seed)] = row.metrics
    return done


def run_cell(variant: str, seed: int, results: Path, extra: list[str], evaluations: dict[str, list[str]],
             done: dict[tuple[str, int], dict[str, float]]) -> float:
    """Fit + test one cell (unless stored), then each extra evaluation of its best checkpoint (unless stored)."""
    out = ROOT / "runs" / "ablation" / f"{variant}-seed{seed}"
    common = [*VARIANTS[variant], "--seed_everything", str(seed), "--results", str(results),
              "--trainer.logger", "false", "--trainer.default_root_dir", str(out)]
    started = time.perf_counter()
    if (variant, seed) not in done:
        command = [sys.executable, "-m", "xsearch.cli", "fit", *common, "--tag", variant, "--test_after_fit", "true",
                   "--checkpoint.dirpath", str(out / "checkpoints"), *extra]
        subprocess.run(command, cwd=ROOT, check=True)
    for name, arguments in evaluations.items():
        if (f"{variant}/{name}", seed) in done:
            continue
        best = sorted((out / "checkpoints").glob("best-*.ckpt"))
        if not best:
            raise FileNotFoundError(f"{out / 'checkpoints'}: no best-*.ckpt to evaluate")
        command = [sys.executable, "-m", "xsearch.cli", "test", *common, "--ckpt_path", str(best[-1]),
                   "--tag", f"{variant}/{name}", *arguments, *extra]
        subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def table(done: dict[tuple[str, int], dict[str, float]], variants: list[str], evaluations: list[str]) -> str:
    lines = ["| variant | seeds | " + " | ".join(METRICS) + " |", "|---|---:|" + "---:|" * len(METRICS)]
    means = {}
    for variant in [f"{v}/{e}" if e else v for v in variants for e in ["", *evaluations]]:
        runs = [metrics for (name, _), metrics in sorted(done.items()) if name == variant]
        if not runs:
            continue
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.2f} ± {std:.2f}")
        means[variant] = {m: statistics.fmean(r[m] for r in runs) for m in METRICS}
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    for reference in dict.fromkeys(["irra", variants[0], variants[1]]):
        if reference in means:
            gaps = ", ".join(f"{v} {means[v]['R1'] - means[reference]['R1']:+.2f}" for v in means if v != reference)
            lines.append(f"\nR1 vs {reference}: {gaps}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", choices=list(GRIDS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "ablations.sqlite")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=None, help="a subset of the grid's variants")
    parser.add_argument("--dry-run", action="store_true", help="print the table of what is stored and stop")
    args, extra = parser.parse_known_args()
    grid = GRIDS[args.grid]
    variants = args.only or list(grid.variants)
    store = ResultsStore(args.results)
    done = finished(store) if args.results.exists() else {}
    if not args.dry_run:
        for seed in args.seeds:  # seed-major: every variant gets seed 0 before any gets seed 1
            for variant in variants:
                if all((tag, seed) in done for tag in [variant, *(f"{variant}/{e}" for e in grid.evaluations)]):
                    print(f"[ablation] {variant} seed {seed}: in the store, skipped")
                    continue
                seconds = run_cell(variant, seed, args.results, [a for a in extra if a != "--"], grid.evaluations, done)
                print(f"[ablation] {variant} seed {seed}: {seconds / 60:.1f} min")
                done = finished(store)
    print(table(done, variants, list(grid.evaluations)))


if __name__ == "__main__":
    main()
