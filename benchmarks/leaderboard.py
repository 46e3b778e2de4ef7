"""Run a leaderboard grid: the same as ``xsearch leaderboard run`` (see :mod:`xsearch.grid` and the README).

Usage: ``python benchmarks/leaderboard.py --grid configs/leaderboard/synthetic.yaml [--seeds 0 1 2] [--jobs 1]``
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsearch.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["leaderboard", "run", *sys.argv[1:]]))
