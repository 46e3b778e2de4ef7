"""Paired per-seed differences of grid rows: the Student-t interval by hand, pairing by seed, the report tables."""
from __future__ import annotations

import math

import pytest

from xsearch.comparison import compare_cells, paired_difference
from xsearch.report import write_report
from xsearch.results import ResultsStore, RunRecord


def test_the_interval_is_the_student_t_interval_of_the_per_seed_differences():
    difference = paired_difference({0: 10.0, 1: 12.0, 2: 14.0, 7: 99.0}, {0: 9.0, 1: 10.0, 2: 10.0, 5: 0.0})
    # differences 1, 2, 4 on the common seeds 0-2: mean 7/3, sd sqrt(7/3), t(0.975, 2) = 4.302652729911275
    half = 4.302652729911275 * math.sqrt(7 / 3) / math.sqrt(3)
    assert difference.n == 3 and difference.mean == pytest.approx(7 / 3)
    assert (difference.low, difference.high) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert not difference.excludes_zero and difference.format() == "+2.33 [-1.46, +6.13]"
    consistent = paired_difference({0: 5.0, 1: 6.0, 2: 7.0}, {0: 1.0, 1: 2.5, 2: 3.0})
    assert consistent.excludes_zero and consistent.format().endswith(" *")
    assert paired_difference({0: 5.0}, {0: 2.0}).format() == "+3.00 (n=1)"
    assert paired_difference({0: 5.0}, {1: 2.0}).format() == "-"


def _record(cell: str, seed: int, r1: float, dataset: str = "pedes", record_id: int | None = None) -> RunRecord:
    return RunRecord(method=cell.split("/")[0], dataset=dataset, metrics={"R1": r1, "mAP": r1 / 2}, config={"c": cell},
                     checkpoint="x.ckpt", seed=seed, wall_time_s=1.0, extra={"grid": "g", "cell": cell})


def test_cells_are_paired_by_seed_per_dataset_with_the_latest_rerun(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    for seed, (a, b) in enumerate([(40.0, 30.0), (44.0, 31.0), (42.0, 35.0)]):
        store.append(_record("irra", seed, a))
        store.append(_record("base", seed, b))
    store.append(_record("irra", 2, 48.0))  # seed 2 run again: only this row counts
    store.append(_record("irra", 0, 1.0, dataset="faces"))  # no "base" row on faces: no comparison there
    rows = compare_cells(store.rows(), {"irra": ["base"]})
    assert [(r["dataset"], r["cell"], r["against"], r["n"]) for r in rows] == [("pedes", "irra", "base", 3)]
    assert rows[0]["R1"].mean == pytest.approx((10 + 13 + 13) / 3)
    assert rows[0]["mAP"].mean == pytest.approx((10 + 13 + 13) / 6)
    written = write_report(store, tmp_path / "report", "g", compare={"irra": ["base"]})
    markdown = next(p for p in written if p.suffix == ".md").read_text()
    assert "### pedes: paired per-seed differences" in markdown and "| irra − base | 3 | +12.00 [" in markdown
    html = next(p for p in written if p.suffix == ".html").read_text()
    assert "irra − base</td><td class=\"num\">3</td>" in html
