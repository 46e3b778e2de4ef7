"""The papers' reported numbers: the shipped file loads, carries its sources, and bad files are named."""
from __future__ import annotations

import pytest

from xsearch.references import reference_rows


def test_the_shipped_reference_file_has_the_papers_numbers_with_sources():
    rows = reference_rows()
    irra = next(r for r in rows if r["method"] == "IRRA" and r["dataset"] == "cuhk_pedes")
    assert irra["metrics"] == {"R1": 73.38, "R5": 89.93, "R10": 93.71, "mAP": 66.13, "mINP": 50.24}
    assert "anosorae/IRRA" in irra["source"] and irra["kind"] == "reported"
    assert {r["dataset"] for r in rows} >= {"cuhk_pedes", "icfg_pedes", "rstpreid", "celeba", "lfw", "mm_celeba_hq:roc-nearest",
                                             "face2text:roc-nearest", "celeba_dialog:roc-nearest", "coco_pfs:instance"}
    assert all(r["source"] for r in rows)
    unverified = [r for r in rows if "[unverified]" in r["note"]]
    assert {r["method"] for r in unverified} == {"TBPS-CLIP", "RDE", "APTM"}
    assert [r["method"] for r in reference_rows("lfw")] == ["X-Modal"]


@pytest.mark.parametrize("text, message", [
    ("entries: []\n", "expected a mapping with 'version: 1'"),
    ("version: 1\nentries:\n  - {method: A, dataset: d, metrics: {R1: 1}, source: s}\n", "entry 0: field 'note' should be a str"),
    ("version: 1\nentries:\n  - {method: A, dataset: d, metrics: {R1: x}, source: s, note: n}\n", r"entry 0: metrics \['R1'\] should be numbers"),
])
def test_a_malformed_reference_file_names_the_entry_and_field(tmp_path, text, message):
    path = tmp_path / "refs.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        reference_rows(path=path)


def test_leaderboard_show_prints_reported_numbers_in_their_own_block(tmp_path, capsys):
    from xsearch.cli import main
    from xsearch.results import ResultsStore, RunRecord

    ResultsStore(tmp_path / "r.sqlite").append(RunRecord(method="irra", dataset="cuhk_pedes", metrics={"R1": 70.0},
                                                         config={}, checkpoint="c", seed=0, wall_time_s=1.0))
    assert main(["leaderboard", "show", "--results", str(tmp_path / "r.sqlite"), "--dataset", "cuhk_pedes",
                 "--references"]) == 0
    out = capsys.readouterr().out
    measured, reported = out.split("### cuhk_pedes: reported by the papers (not measured by xsearch)")
    assert "| irra |" in measured and "73.38" not in measured and "| IRRA | 73.38 |" in reported
    assert "icfg_pedes" not in out  # only the requested dataset
