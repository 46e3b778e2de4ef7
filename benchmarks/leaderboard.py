"""Regenerate the README leaderboard: run the synthetic grid (resumable) and write its report and README block.

Usage: ``python benchmarks/leaderboard.py`` runs
``xsearch leaderboard run --grid configs/leaderboard/synthetic.yaml --jobs 2 --report docs/leaderboard --readme README.md``
(about 2 h on 2 CPU cores; stored cells are skipped, so an interrupted run continues where it stopped). Any
arguments replace these defaults and are passed to ``xsearch leaderboard run`` as they are.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsearch.cli import main  # noqa: E402

DEFAULTS = ["--grid", "configs/leaderboard/synthetic.yaml", "--jobs", "2", "--report", "docs/leaderboard",
            "--readme", "README.md"]

if __name__ == "__main__":
    import os

    os.chdir(ROOT)  # the grid's paths (configs/, data/, runs/, results/) are relative to the repository
    raise SystemExit(main(["leaderboard", "run", *(sys.argv[1:] or DEFAULTS)]))
