"""Paired comparisons of leaderboard rows: per-seed differences and their 95% interval.

Two grid cells run with the same seeds share everything the seed draws (data order, initialisation of the shared
towers' new modules...), so the honest question "is A better than B?" is asked of the per-seed differences
``d_s = A_s - B_s`` on the seeds both have: their mean and the Student-t 95% interval
``mean ± t(0.975, n-1) * sd / sqrt(n)``. An interval that excludes 0 is a difference the seeds agree on; with
n = 3 seeds ``t = 4.30``, so only large, consistent differences qualify.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import t as student_t

from xsearch.leaderboard import latest_per_cell_seed
from xsearch.results import RunRecord

COMPARED_METRICS: tuple[str, ...] = ("R1", "mAP")
PAIRED_TITLE = "paired per-seed differences (mean and 95% interval; * = the interval excludes 0)"


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` of the per-seed differences over ``n`` common seeds and its 95% interval (``None`` when n < 2)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def format(self) -> str:
        """``+3.21 [+1.02, +5.40]`` (``*`` when the interval excludes 0); ``-`` without common seeds."""
        if self.mean is None:
            return "-"
        if self.low is None:
            return f"{self.mean:+.2f} (n=1)"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]" + (" *" if self.excludes_zero else "")


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> PairedDifference:
    """Per-seed ``a[s] - b[s]`` on the seeds both have (seed -> metric) -> mean and Student-t interval."""
    differences = [a[seed] - b[seed] for seed in sorted(set(a) & set(b))]
    if not differences:
        return PairedDifference(0, None, None, None)
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return PairedDifference(1, mean, None, None)
    half = student_t.ppf(0.5 + confidence / 2, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return PairedDifference(len(differences), mean, mean - half, mean + half)


def per_seed(records: Iterable[RunRecord], metric: str) -> dict[tuple[str, str], dict[int, float]]:
    """(dataset, grid cell) -> seed -> ``metric`` of the latest row of each cell's seed (rows outside a grid: none)."""
    values: dict[tuple[str, str], dict[int, float]] = {}
    for record in latest_per_cell_seed(records):
        cell = (record.extra or {}).get("cell")
        if cell and record.seed is not None and record.metrics.get(metric) is not None:
            values.setdefault((record.dataset, cell), {})[record.seed] = float(record.metrics[metric])
    return values


def compare_cells(records: Sequence[RunRecord], pairs: Mapping[str, Sequence[str]],
                  metrics: Sequence[str] = COMPARED_METRICS) -> list[dict[str, Any]]:
    """One row per dataset and (cell, against) pair of ``pairs`` (cell -> the cells it is compared with) where both
    have rows on that dataset: ``dataset``, ``cell``, ``against``, ``n`` and a :class:`PairedDifference` per metric."""
    tables = {metric: per_seed(records, metric) for metric in metrics}
    first = tables[metrics[0]]
    rows = []
    for dataset in sorted({dataset for dataset, _ in first}):
        for cell, others in pairs.items():
            for other in others:
                if (dataset, cell) not in first or (dataset, other) not in first:
                    continue
                differences = {m: paired_difference(tables[m].get((dataset, cell), {}), tables[m].get((dataset, other), {}))
                               for m in metrics}
                rows.append({"dataset": dataset, "cell": cell, "against": other,
                             "n": differences[metrics[0]].n, **differences})
    return rows


def render_comparisons_md(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = COMPARED_METRICS) -> str:
    """The rows of one dataset as a Markdown table: ``cell - against`` with each metric's mean and 95% interval."""
    header = ["difference", "seeds", *(f"Δ{m} [95% interval]" for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for row in rows:
        lines.append(f"| {row['cell']} − {row['against']} | {row['n']} | "
                     + " | ".join(row[m].format() for m in metrics) + " |")
    return "\n".join(lines)
