"""Regenerate the README leaderboard: run the synthetic grid (resumable) and write its report and README block.

Usage::

    python benchmarks/leaderboard.py            # fill what the store of record lacks, then rewrite the report
    python benchmarks/leaderboard.py --fresh    # everything again, into a new store (about 4 h on 2 CPU cores)

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

if __name__ == "__main__":
    os.chdir(ROOT)  # the grid's paths (configs/, data/, runs/, docs/) are relative to the repository
    argv = sys.argv[1:]
    store = STORE
    if "--fresh" in argv:
        argv.remove("--fresh")
        store = FRESH
        for suffix in ("", "-wal", "-shm"):
            Path(FRESH + suffix).unlink(missing_ok=True)
    raise SystemExit(main(["leaderboard", "run", "--grid", "configs/leaderboard/synthetic.yaml", "--jobs", "2",
                           "--results", store, "--report", "docs/leaderboard", "--readme", "README.md", *argv]))
