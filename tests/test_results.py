"""Results store (SQLite) and leaderboard rendering."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing
import re
import shutil
import sqlite3
import statistics
import subprocess
import threading
from pathlib import Path

import pytest

from xsearch.leaderboard import leaderboard_table, render, render_store
from xsearch.results import ResultsStore, ResultsStoreError, RunRecord, config_hash, git_commit

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def _record(method: str = "cmsn", dataset: str = "synth_pedes", seed: int | None = 0, **kw) -> RunRecord:
    metrics = kw.pop("metrics", {"R1": 50.0, "R5": 70.0, "R10": 80.0, "mAP": 45.0, "mINP": 20.0})
    return RunRecord(
        method=method, dataset=dataset, metrics=metrics, config=kw.pop("config", {"lr": 0.001}),
        checkpoint=kw.pop("checkpoint", "ckpt/last.ckpt"), seed=seed, wall_time_s=1.5, **kw,
    )


# -- store ---------------------------------------------------------------------------------
def test_round_trip_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "runs.sqlite"
    store = ResultsStore(path)
    record = _record(git_commit="abc1234", extra={"note": "x"})
    row_id = store.append(record)
    assert path.exists() and row_id == 1 and record.id == 1
    (back,) = store.rows()
    assert back.id == row_id
    assert back.method == "cmsn" and back.dataset == "synth_pedes" and back.split == "test"
    assert back.metrics == record.metrics and back.seed == 0 and back.wall_time_s == 1.5
    assert back.config_hash == config_hash({"lr": 0.001}) and json.loads(back.config) == {"lr": 0.001}
    assert back.git_commit == "abc1234" and back.extra == {"note": "x"}
    assert back.checkpoint == "ckpt/last.ckpt"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00$", back.created_at)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    assert columns == ["id", "created_at", "method", "dataset", "split", "config_hash", "config",
                       "checkpoint", "seed", "metrics", "wall_time_s", "git_commit", "extra"]


def test_null_seed_and_yaml_config(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.append(_record(seed=None, config="model:\n  lr: 0.1\n"))
    (back,) = store.rows()
    assert back.seed is None and back.extra is None and back.git_commit is None
    assert back.config == "model:\n  lr: 0.1\n" and len(back.config_hash) == 12


def test_filters(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    for method in ("a", "b"):
        for dataset in ("cuhk_pedes", "rstpreid"):
            store.append(_record(method=method, dataset=dataset))
    assert len(store.rows()) == 4
    assert {r.method for r in store.rows(dataset="rstpreid")} == {"a", "b"}
    assert {r.dataset for r in store.rows(method="a")} == {"cuhk_pedes", "rstpreid"}
    assert len(store.rows(dataset="rstpreid", method="b")) == 1
    assert store.rows(dataset="lfw") == []


def _append_many(path: str, worker: int, count: int) -> None:
    store = ResultsStore(path)
    for index in range(count):
        store.append(_record(method=f"w{worker}", seed=index))


def test_concurrent_appends(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn" if "fork" not in multiprocessing.get_all_start_methods() else "fork")
    workers = [ctx.Process(target=_append_many, args=(path, w, 15)) for w in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    rows = ResultsStore(path).rows()
    assert len(rows) == 60 and len({r.id for r in rows}) == 60
    for worker in range(4):
        assert sorted(r.seed for r in rows if r.method == f"w{worker}") == list(range(15))


def test_config_hash_stable() -> None:
    first = config_hash({"b": 1, "a": {"y": [1, 2], "x": "s"}})
    second = config_hash({"a": {"x": "s", "y": [1, 2]}, "b": 1})
    assert first == second and re.fullmatch(r"[0-9a-f]{12}", first)
    assert config_hash('{"a": {"x": "s", "y": [1, 2]}, "b": 1}') == first
    assert config_hash({"b": 2, "a": {"y": [1, 2], "x": "s"}}) != first


def test_git_commit_outside_repo(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "does-not-exist") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_inside_repo(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false",
                        *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("one\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    clean = git_commit(tmp_path)
    assert clean is not None and re.fullmatch(r"[0-9a-f]{4,40}", clean)
    (tmp_path / "store.sqlite").write_text("rows\n")
    git("add", "store.sqlite")
    git("commit", "-q", "-m", "the store of record")
    clean = git_commit(tmp_path)
    (tmp_path / "store.sqlite").write_text("rows\nand one more\n")  # a run appends to the committed store
    assert git_commit(tmp_path, ignore=[tmp_path / "store.sqlite"]) == clean
    assert git_commit(tmp_path) == f"{clean}+dirty"
    (tmp_path / "f.txt").write_text("two\n")
    assert git_commit(tmp_path, ignore=[tmp_path / "store.sqlite"]) == f"{clean}+dirty"


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ResultsStoreError, match=re.escape(str(path))):
        ResultsStore(path).rows()
    with pytest.raises(ResultsStoreError, match="newer"):
        ResultsStore(path).append(_record())


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database at all, just some text padding" * 40)
    with pytest.raises(ResultsStoreError, match=re.escape(str(path))):
        ResultsStore(path).rows()


def test_check_refuses_what_cannot_be_a_store_and_writes_nothing(tmp_path: Path) -> None:
    ResultsStore(tmp_path / "new" / "runs.sqlite").check()  # to be created by the first append: fine, not created now
    assert not (tmp_path / "new").exists()
    good = tmp_path / "good.sqlite"
    ResultsStore(good).append(_record())
    before = good.read_bytes()
    ResultsStore(good).check()
    assert good.read_bytes() == before
    notes = tmp_path / "notes.sqlite"
    notes.write_text("my notes\n")
    with pytest.raises(ResultsStoreError, match=rf"^results store {re.escape(str(notes))} is not a usable SQLite database "
                                                r"\(file is not a database\); move it away or pass another path$"):
        ResultsStore(notes).check()
    assert notes.read_text() == "my notes\n"
    with pytest.raises(ResultsStoreError, match=rf"^results store {re.escape(str(tmp_path))} is a folder; expected an SQLite"):
        ResultsStore(tmp_path).check()
    with pytest.raises(ResultsStoreError, match=rf"^cannot create results store .*: {re.escape(str(notes))} is a file"):
        ResultsStore(notes / "runs.sqlite").check()
    future = tmp_path / "future.sqlite"
    with sqlite3.connect(future) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ResultsStoreError, match="schema version 99, newer"):
        ResultsStore(future).check()


def test_leaderboard_of_a_file_that_is_not_sqlite_is_one_line(tmp_path: Path, capsys) -> None:
    from xsearch.cli import main

    notes = tmp_path / "notes.sqlite"
    notes.write_text("my notes\n")
    for args in (["leaderboard"], ["leaderboard", "show", "--format", "csv"]):
        assert main([*args, "--results", str(notes)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (f"xsearch: error: results store {notes} is not a usable SQLite database (file is not a "
                                "database); move it away or pass another path\n")
    assert main(["leaderboard", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"xsearch: error: results store {tmp_path} is a folder; expected an SQLite")


def test_leaderboard_run_checks_the_store_before_running_any_cell(tmp_path: Path, monkeypatch, capsys) -> None:
    import xsearch.grid
    from xsearch.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(xsearch.grid, "run_grid", lambda *a, **k: pytest.fail("the grid ran"))
    Path("grid.yaml").write_text("name: g\nseeds: [0]\ncells:\n  a:\n    - fit: [--config, missing.yaml]\n")
    Path("notes.sqlite").write_text("my notes\n")
    assert main(["leaderboard", "run", "--grid", "grid.yaml", "--results", "notes.sqlite"]) == 2
    assert capsys.readouterr().err == ("xsearch: error: results store notes.sqlite is not a usable SQLite database (file "
                                       "is not a database); move it away or pass another path\n")
    assert not Path("runs").exists()


def test_a_store_locked_by_another_process_gives_a_clear_error_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    import xsearch.results as results

    path = tmp_path / "busy.sqlite"
    ResultsStore(path).append(_record(seed=0))
    monkeypatch.setattr(results, "BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write, for longer than the busy timeout
    try:
        with pytest.raises(ResultsStoreError, match=re.escape(f"results store {path} is locked: another process held "
                                                              "it for more than 0.2 s")):
            ResultsStore(path).append(_record(seed=1))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ResultsStore(path).append(_record(seed=2))
    assert [r.seed for r in ResultsStore(path).rows()] == [0, 2]


def test_a_store_switching_to_wal_while_another_connection_writes_waits_for_it(tmp_path: Path) -> None:
    """Two grid jobs opening a new store at once: SQLite refuses the WAL switch at once, without the busy timeout,
    while another connection is mid-write; the store waits (up to the busy timeout) instead of failing."""
    path = tmp_path / "new.sqlite"
    ResultsStore(path).append(_record(seed=0))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("PRAGMA journal_mode=DELETE").fetchone()  # not switched yet
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # e.g. the other job creating the schema
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        ResultsStore(path).append(_record(seed=1))
    finally:
        release.join()
        writer.close()
    assert [r.seed for r in ResultsStore(path).rows()] == [0, 1]
    with contextlib.closing(sqlite3.connect(path)) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- leaderboard ---------------------------------------------------------------------------
def _three_seed_store(tmp_path: Path) -> tuple[ResultsStore, list[dict[str, float]]]:
    store = ResultsStore(tmp_path / "lb.sqlite")
    runs = [
        {"R1": 61.25, "R5": 80.0, "R10": 86.5, "mAP": 55.0, "mINP": 40.0},
        {"R1": 62.75, "R5": 81.5, "R10": 87.0, "mAP": 56.5, "mINP": 41.0},
        {"R1": 60.5, "R5": 79.0, "R10": 85.25, "mAP": 54.0, "mINP": 38.5},
    ]
    for seed, metrics in enumerate(runs):
        store.append(_record(method="irra", dataset="cuhk_pedes", seed=seed, metrics=metrics))
    store.append(_record(method="cmsn", dataset="cuhk_pedes", seed=0,
                         metrics={"R1": 70.0, "R5": 85.0, "R10": 90.0, "mAP": 60.0}))
    store.append(_record(method="<script>alert(1)</script>", dataset="rstpreid", seed=0,
                         metrics={"R1": 10.0, "R5": 20.0, "R10": 30.0, "mAP": 5.0, "mINP": 1.0}))
    return store, runs


def test_leaderboard_mean_std(tmp_path: Path) -> None:
    store, runs = _three_seed_store(tmp_path)
    rows = leaderboard_table(store.rows())
    assert [(r["dataset"], r["method"]) for r in rows] == [
        ("cuhk_pedes", "cmsn"), ("cuhk_pedes", "irra"), ("rstpreid", "<script>alert(1)</script>")]
    irra = rows[1]
    assert irra["n"] == 3 and irra["seeds"] == [0, 1, 2]
    for name in METRICS:
        values = [run[name] for run in runs]
        assert irra[f"{name}_mean"] == pytest.approx(statistics.mean(values))
        assert irra[f"{name}_std"] == pytest.approx(statistics.stdev(values))
    cmsn = rows[0]
    assert cmsn["n"] == 1 and cmsn["R1_std"] == 0.0 and cmsn["mINP_mean"] is None
    assert [r["method"] for r in leaderboard_table(store.rows(), dataset="rstpreid")] == [
        "<script>alert(1)</script>"]


def test_leaderboard_groups_by_config(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "g.sqlite")
    store.append(_record(config={"lr": 1}))
    store.append(_record(config={"lr": 2}))
    store.append(_record(config={"lr": 2}, seed=1, checkpoint="late.ckpt"))
    rows = leaderboard_table(store.rows())
    assert sorted(r["n"] for r in rows) == [1, 2]
    assert next(r for r in rows if r["n"] == 2)["checkpoint"] == "late.ckpt"


def test_render_markdown(tmp_path: Path) -> None:
    store, runs = _three_seed_store(tmp_path)
    text = render(leaderboard_table(store.rows()), "md")
    assert "### cuhk_pedes" in text and "### rstpreid" in text
    assert "| method | config | towers | n | R1 | R5 | R10 | mAP | mINP |" in text
    r1 = [run["R1"] for run in runs]
    assert f"{statistics.mean(r1):.2f} ± {statistics.stdev(r1):.2f}" in text
    cmsn_line = next(line for line in text.splitlines() if line.startswith("| cmsn"))
    assert "| 70.00 |" in cmsn_line and cmsn_line.rstrip().endswith("| n/a |") and "±" not in cmsn_line
    assert text.index("| cmsn") < text.index("| irra")


def test_render_csv_parses(tmp_path: Path) -> None:
    store, runs = _three_seed_store(tmp_path)
    text = render(leaderboard_table(store.rows()), "csv")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 3
    irra = next(row for row in parsed if row["method"] == "irra")
    assert irra["n"] == "3" and irra["dataset"] == "cuhk_pedes"
    assert float(irra["mAP_mean"]) == pytest.approx(statistics.mean(run["mAP"] for run in runs))
    assert float(irra["mAP_std"]) == pytest.approx(statistics.stdev(run["mAP"] for run in runs))
    assert next(row for row in parsed if row["method"] == "cmsn")["mINP_mean"] == "-"


def test_render_json_and_html(tmp_path: Path) -> None:
    store, _ = _three_seed_store(tmp_path)
    rows = leaderboard_table(store.rows())
    loaded = json.loads(render(rows, "json"))
    assert [r["method"] for r in loaded] == [r["method"] for r in rows] and loaded[1]["n"] == 3
    page = render(rows, "html")
    assert page.startswith("<!DOCTYPE html>") and page.count("<table ") == 2
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h2>cuhk_pedes</h2>" in page and '<td class="num" data-v="70.0">70.00</td>' in page


def test_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    assert render_store(path, fmt="md").strip() == f"no results in {path}"
    assert f"no results in {path}" in render_store(path, fmt="html")
    assert render_store(path, fmt="json").strip() == "[]"
    header_only = render_store(path, fmt="csv").strip().splitlines()
    assert len(header_only) == 1 and header_only[0].startswith("kind,dataset,method,config_hash,towers,n,R1_mean")
    ResultsStore(path).rows()  # creates the schema: still empty
    assert render_store(ResultsStore(path)).strip() == f"no results in {path}"
    assert render([], "md").startswith("no results in")


def test_render_store_filters_dataset(tmp_path: Path) -> None:
    store, _ = _three_seed_store(tmp_path)
    text = render_store(store, dataset="rstpreid")
    assert "### rstpreid" in text and "cuhk_pedes" not in text


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="md, csv, json, html"):
        render([], "xlsx")
    with pytest.raises(ValueError, match="xlsx"):
        render_store(tmp_path / "x.sqlite", fmt="xlsx")


def test_tagged_runs_are_labelled_in_the_table(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.append(_record(extra={"tag": "cmsn-spt"}))
    store.append(_record(method="irra"))
    text = render(leaderboard_table(store.rows()), "md")
    tagged = next(line for line in text.splitlines() if line.startswith("| cmsn"))
    plain = next(line for line in text.splitlines() if line.startswith("| irra"))
    assert re.match(r"\| cmsn \| cmsn-spt \([0-9a-f]+\) \|", tagged) and "(" not in plain.split("|")[2]


def test_dataset_filter_keeps_the_dataset_protocols_as_their_own_tables(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "p.sqlite")
    store.append(_record(method="xmodal", dataset="celeba"))
    store.append(_record(method="xmodal", dataset="celeba:composed", metrics={"R1": 60.0}))
    store.append(_record(method="xmodal", dataset="celebahq"))  # a prefix, not a protocol: left out
    rows = leaderboard_table(store.rows(), dataset="celeba")
    assert [r["dataset"] for r in rows] == ["celeba", "celeba:composed"]
    assert [r["dataset"] for r in leaderboard_table(store.rows(), dataset="celeba:composed")] == ["celeba:composed"]
    text = render_store(store, dataset="celeba", fmt="md")
    assert "### celeba\n" in text and "### celeba:composed\n" in text and "celebahq" not in text


def test_a_grid_cell_seed_run_again_counts_once_with_its_latest_row(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    cell = {"grid": "synthetic", "cell": "irra"}
    for seed, r1 in ((0, 10.0), (1, 20.0), (0, 30.0)):  # seed 0 rerun (--force) after a code change
        store.append(_record("irra", seed=seed, metrics={"R1": r1}, config={"lr": seed}, extra=cell))
    store.append(_record("irra", seed=0, metrics={"R1": 5.0}, config={"outside": True}))  # not a grid row: kept
    rows = {(r["n"], r["R1_mean"]) for r in leaderboard_table(store.rows())}
    assert rows == {(2, 25.0), (1, 5.0)}  # (30 + 20) / 2: the first seed-0 row is superseded, kept in the store
    assert len(store.rows()) == 4
