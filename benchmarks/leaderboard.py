"""Regenerate the README leaderboard: run the synthetic grid (resumable) and write its report and README block.

Usage::

    python benchmarks/leaderboard.py                # fill what the store of record lacks, then rewrite the report
    python benchmarks/leaderboard.py --fresh        # everything again, into a new store
    python benchmarks/leaderboard.py --report-only  # rewrite the report and README block from the store, run nothing

It runs ``xsearch leaderboard run --grid configs/leaderboard/synthetic.yaml --jobs 2 --report docs/leaderboard
--readme README.md`` on the store of record ``docs/leaderboard/synthetic.sqlite`` (committed: every number of the
README table is a row there, with its config, commit, seed, wall time and peak memory); cells already stored are
skipped, so an interrupted run continues where it stopped. ``--fresh`` uses ``results/leaderboard-fresh.sqlite``
instead (removed first). Other arguments are passed to ``xsearch leaderboard run`` after these.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsearch.cli import main  # noqa: E402

STORE, FRESH = "docs/leaderboard/synthetic.sqlite", "results/leaderboard-fresh.sqlite"
GRID, REPORT, README = "configs/leaderboard/synthetic.yaml", "docs/leaderboard", "README.md"


def report_only(store: str) -> int:
    """The report, chart and README block of ``store`` with the grid's paired comparisons; nothing is run."""
    from xsearch.grid import load_grid
    from xsearch.report import write_report

    grid = load_grid(GRID)
    command = f"xsearch leaderboard run --grid {GRID} --results {store} --report {REPORT} --readme {README}"
    for path in write_report(store, REPORT, grid.name, README, command, compare=grid.compare):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)  # the grid's paths (configs/, data/, runs/, docs/) are relative to the repository
    argv = sys.argv[1:]
    if "--report-only" in argv:
        raise SystemExit(report_only(STORE))
    store = STORE
    if "--fresh" in argv:
        argv.remove("--fresh")
        store = FRESH
        for suffix in ("", "-wal", "-shm"):
            Path(FRESH + suffix).unlink(missing_ok=True)
    raise SystemExit(main(["leaderboard", "run", "--grid", GRID, "--jobs", "2", "--results", store, "--report", REPORT,
                           "--readme", README, *argv]))
