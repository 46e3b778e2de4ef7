"""Method vs IRRA vs its ablations on the synthetic pedestrian set, several seeds.

Usage: ``python benchmarks/ablation.py --grid cmsn|partlevel [--seeds 0 1 2] [--results results/ablations.sqlite]
[--only irra cmsn ...] [--dry-run] [-- extra xsearch overrides]``

Grids: ``cmsn`` = IRRA, CMSN with all parts, CMSN without each part; ``partlevel`` = IRRA (= part-level
without parts), part-level, part-level with a plain margin instead of the commonality margin.

Each cell (variant x seed) is one ``xsearch fit --test_after_fit true`` in its own process, tagged with the
variant name in the results store; cells already in the store are skipped, so an interrupted grid resumes.
Checkpoint selection is on the val split; the numbers are the test split (held-out identities). Prints a
table of mean +/- std over seeds per variant, and the gap of each variant to IRRA and to full CMSN.
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

from xsearch.results import ResultsStore  # noqa: E402

IRRA = ["--config", "configs/irra/synth_pedes.yaml"]
CMSN = ["--config", "configs/cmsn/synth_pedes.yaml"]
PARTS = ["--config", "configs/partlevel/synth_pedes.yaml"]
GRIDS: dict[str, dict[str, list[str]]] = {
    "cmsn": {
        "irra": IRRA,
        "cmsn": CMSN,
        "cmsn-imfi": [*CMSN, "--model.init_args.imfi", "false"],
        "cmsn-crl-cria": [*CMSN, "--model.init_args.crl", "false", "--model.init_args.cria_weight", "0"],
        "cmsn-spt": [*CMSN, "--model.init_args.spt_weight", "0"],
    },
    "partlevel": {
        "irra": IRRA,  # part-level without parts (no part losses, global ranking) is exactly IRRA
        "partlevel": PARTS,
        "partlevel-plain-margin": [*PARTS, "--model.init_args.commonality", "false"],
    },
}
"""Grid -> variant name -> xsearch arguments. ``cmsn-x`` = full CMSN without part x."""
VARIANTS = {name: args for grid in GRIDS.values() for name, args in grid.items()}
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def finished(store: ResultsStore) -> dict[tuple[str, int], dict[str, float]]:
    """(variant, seed) -> test metrics of the cells already in the store."""
    done = {}
    for row in store.rows(dataset="synth_pedes"):
        tag = (row.extra or {}).get("tag")
        if tag in VARIANTS and row.seed is not None:
            done[(tag, row.seed)] = row.metrics
    return done


def run_cell(variant: str, seed: int, results: Path, extra: list[str]) -> float:
    out = ROOT / "runs" / "ablation" / f"{variant}-seed{seed}"
    command = [
        sys.executable, "-m", "xsearch.cli", "fit", *VARIANTS[variant], "--seed_everything", str(seed),
        "--tag", variant, "--results", str(results), "--test_after_fit", "true", "--trainer.logger", "false",
        "--trainer.default_root_dir", str(out), "--checkpoint.dirpath", str(out / "checkpoints"), *extra,
    ]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def table(done: dict[tuple[str, int], dict[str, float]], variants: list[str]) -> str:
    lines = ["| variant | seeds | " + " | ".join(METRICS) + " |", "|---|---:|" + "---:|" * len(METRICS)]
    means = {}
    for variant in variants:
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
    for reference in dict.fromkeys(["irra", variants[1]]):
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
    variants = args.only or list(GRIDS[args.grid])
    store = ResultsStore(args.results)
    done = finished(store) if args.results.exists() else {}
    if not args.dry_run:
        for seed in args.seeds:  # seed-major: every variant gets seed 0 before any gets seed 1
            for variant in variants:
                if (variant, seed) in done:
                    print(f"[ablation] {variant} seed {seed}: in the store, skipped")
                    continue
                seconds = run_cell(variant, seed, args.results, [a for a in extra if a != "--"])
                print(f"[ablation] {variant} seed {seed}: {seconds / 60:.1f} min")
                done = finished(store)
    print(table(done, variants))


if __name__ == "__main__":
    main()
