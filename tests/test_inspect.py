"""Per-query test rankings (``test_rankings.npz``) and the ``xsearch inspect`` failure browser.

The rankings' AP and first-correct ranks are the metric's own; they are checked against a brute-force ranking
here, on random scores with ties (and with explicit positives and excluded items), and end to end: a tiny fit +
test writes the file, its APs average to the logged test mAP, and ``inspect`` turns it into one row per query.
"""
from __future__ import annotations

import json
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from xsearch.cli import main
from xsearch.datamodules.transforms import load_image
from xsearch.evaluation import QueryRelevance, RetrievalMetric
from xsearch.onnx_export import load_checkpoint
from xsearch.failures import find_rankings, render_page
from xsearch.rankings import RANKINGS_FILE, QueryRankings, query_rankings

ROOT = Path(__file__).parents[1]


def _brute_force(scores: torch.Tensor, positive: torch.Tensor) -> tuple[list[list[int]], list[float], list[int]]:
    """Per query: the full ranking (stable descending sort: ties to the lower index), AP over all positives (NaN
    without one) and the 1-based rank of the first positive (0 without one), by the textbook definition."""
    rankings, aps, firsts = [], [], []
    for row, wanted in zip(scores.tolist(), positive.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        hits = [rank for rank, j in enumerate(order, 1) if wanted[j]]
        rankings.append(order)
        aps.append(sum(i / r for i, r in enumerate(hits, 1)) / len(hits) if hits else float("nan"))
        firsts.append(hits[0] if hits else 0)
    return rankings, aps, firsts


def _metric(query_pids: list[int], gallery_pids: list[int], seed: int = 0, top_k: int = 10) -> tuple[RetrievalMetric, torch.Tensor]:
    """A computed metric over random integer-valued embeddings (many exact score ties) and its (Q, G) scores."""
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (len(query_pids), 4), generator=generator).float()
    gallery = torch.randint(-2, 3, (len(gallery_pids), 4), generator=generator).float()
    dot = lambda q, g: q @ g.T  # noqa: E731  integer dot products: ties are frequent and exact
    metric = RetrievalMetric(ks=(1, 5, 10), similarity_fn=dot, image_to_text=False, on_missing="skip", top_k=top_k)
    metric.update_queries(queries, torch.tensor(query_pids), torch.arange(len(query_pids)) + 100)
    metric.update_gallery(gallery, torch.tensor(gallery_pids), torch.arange(len(gallery_pids)) + 500)
    return metric, dot(queries, gallery)


def _rankings(metric: RetrievalMetric) -> QueryRankings:
    gathered = metric.gathered()
    texts = {int(i): f"caption {int(i)}" for i in gathered.query_indexes}
    paths = {int(i): f"/images/{int(i)}.jpg" for i in gathered.gallery_indexes}
    return query_rankings(metric.top(), gathered, metric.per_query(), metric.relevance, texts, paths,
                          {"method": "m", "dataset": "d", "metrics": {"mAP": 1.0}})


def _check_against_brute_force(rankings: QueryRankings, scores: torch.Tensor, positive: torch.Tensor,
                               atol: float = 0.0) -> None:
    full, aps, firsts = _brute_force(scores, positive)
    k = rankings.topk.shape[1]
    assert rankings.topk.tolist() == [order[:k] for order in full]
    np.testing.assert_allclose(rankings.average_precision, aps, rtol=0, atol=1e-12)  # NaN where no positive
    assert rankings.first_positive_rank.tolist() == firsts
    assert rankings.topk_correct.tolist() == [[bool(positive[q, j]) for j in order[:k]] for q, order in enumerate(full)]
    assert rankings.best_positive.tolist() == [order[f - 1] if f else -1 for order, f in zip(full, firsts)]
    assert rankings.num_positives.tolist() == positive.sum(1).tolist()
    np.testing.assert_allclose(rankings.topk_scores, np.take_along_axis(scores.numpy(), rankings.topk, 1), rtol=0, atol=atol)


def test_rankings_are_the_metrics_per_query_numbers_and_match_a_brute_force_ranking():
    query_pids = [q % 7 for q in range(40)] + [99]  # pid 99: no positive in the gallery
    gallery_pids = [g % 6 for g in range(30)]
    metric, scores = _metric(query_pids, gallery_pids)
    logged = metric.compute()
    rankings = _rankings(metric)
    positive = torch.tensor(query_pids)[:, None] == torch.tensor(gallery_pids)[None, :]
    _check_against_brute_force(rankings, scores, positive)
    assert 100 * np.nanmean(rankings.average_precision) == pytest.approx(logged["mAP"], abs=1e-9)
    first = rankings.first_positive_rank[rankings.num_positives > 0]
    assert 100 * np.mean((first >= 1) & (first <= 5)) == pytest.approx(logged["R5"], abs=1e-9)
    assert rankings.meta["protocol"] == "pid" and rankings.query_texts[3] == "caption 103"
    assert rankings.gallery_paths[2] == "/images/502.jpg" and rankings.topk.shape == (41, 10)


def test_rankings_come_from_the_metric_s_one_score_matrix():
    metric, _ = _metric([0, 1, 2, 0], [0, 1, 2, 0, 1])
    with pytest.raises(RuntimeError, match=r"call compute\(\) before top\(\)"):
        metric.top()
    calls = []
    scored = metric.similarity_fn
    metric.similarity_fn = lambda q, g: calls.append(1) or scored(q, g)
    metric.compute()
    rankings = _rankings(metric)
    assert len(calls) == 1 and rankings.topk.shape == (4, 5)  # the rankings scored nothing again
    plain = RetrievalMetric(ks=(1,))
    plain.update_queries(torch.ones(1, 2), torch.tensor([0]), torch.tensor([0]))
    plain.update_gallery(torch.ones(1, 2), torch.tensor([0]), torch.tensor([0]))
    plain.compute()
    with pytest.raises(RuntimeError, match=r"RetrievalMetric\(top_k=0\) keeps no top-k"):
        plain.top()


def test_rankings_follow_explicit_positives_and_leave_excluded_items_out():
    query_pids, gallery_pids = [0] * 12, [0] * 16
    metric, scores = _metric(query_pids, gallery_pids, seed=1, top_k=16)
    positives = {100 + q: [500 + (q + 1) % 16, 500 + (q + 5) % 16] for q in range(12)}
    excluded = {100 + q: [500 + q] for q in range(12)}  # e.g. a composed query's reference image
    metric.relevance = QueryRelevance(positives, excluded)
    logged = metric.compute()
    rankings = _rankings(metric)
    positive = torch.zeros(12, 16, dtype=torch.bool)
    for q, wanted in enumerate(positives.values()):
        positive[q, [g - 500 for g in wanted]] = True
    removed = scores.clone()
    removed[torch.arange(12), torch.arange(12)] = float("-inf")
    _check_against_brute_force(rankings, removed, positive)
    assert all(rankings.topk[q, -1] == q for q in range(12))  # the excluded item last: ranked after every other
    assert 100 * np.mean(rankings.average_precision) == pytest.approx(logged["mAP"], abs=1e-9)
    assert rankings.meta["protocol"] == "relevance"


def test_rankings_file_round_trip_and_one_line_errors(tmp_path):
    metric, _ = _metric([0, 1, 2], [0, 1, 2, 0])
    metric.compute()
    rankings = _rankings(metric)
    path = rankings.save(tmp_path / "run" / RANKINGS_FILE)
    assert [p.name for p in path.parent.iterdir()] == [RANKINGS_FILE]  # no temporary file left
    loaded = QueryRankings.load(path)
    assert loaded.meta == rankings.meta and loaded.topk.tolist() == rankings.topk.tolist()
    assert loaded.query_texts.tolist() == ["caption 100", "caption 101", "caption 102"]
    assert find_rankings(tmp_path / "run") == path and find_rankings(tmp_path) == path  # searched below the folder
    with pytest.raises(FileNotFoundError, match="nowhere: no such run folder or rankings file"):
        find_rankings(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"empty: no {RANKINGS_FILE} in this run folder"):
        find_rankings(tmp_path / "empty")
    (tmp_path / "config.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match=r"config.yaml: not a test rankings file .*: not an .npz archive"):
        QueryRankings.load(tmp_path / "config.yaml")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a test rankings file .*no 'meta' entry"):
        QueryRankings.load(tmp_path / "other.npz")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "version": 99}))
    np.savez(tmp_path / "newer.npz", **arrays)
    with pytest.raises(ValueError, match="newer.npz: rankings format version 99; this xsearch reads version 1"):
        QueryRankings.load(tmp_path / "newer.npz")
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "version": 1}))
    arrays["topk_scores"] = arrays["topk_scores"][:, :3]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ValueError, match=r"cut.npz: topk_scores has shape \(3, 3\), expected \(3, 4\) like topk"):
        QueryRankings.load(tmp_path / "cut.npz")


def test_inspect_errors_are_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 2
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RANKINGS_FILE).write_text("not an archive")
    assert main(["inspect", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [f"xsearch: error: {tmp_path / 'missing'}: no such run folder or rankings file",
                      f"xsearch: error: {tmp_path / 'run' / RANKINGS_FILE}: not a test rankings file ({RANKINGS_FILE}, "
                      "written into the run folder by xsearch test): not an .npz archive"]
    assert not (tmp_path / "r.html").exists()


class _Page(HTMLParser):
    """The query table (rows of cells: text, data-v, thumbnail spans), the style and script, external references."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[list[dict]] = []
        self.style = self.script = ""
        self.external: list[str] = []
        self._in: str | None = None
        self._body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.external += [attrs[a] for a in ("src", "href") if a in attrs]
        if tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.rows.append([])
        elif tag == "td":
            self.rows[-1].append({"text": "", "v": attrs.get("data-v"), "spans": []})
        elif tag == "span" and self.rows:
            self.rows[-1][-1]["spans"].append(attrs)
        if tag in ("th", "td", "style", "script"):
            self._in = tag
        if tag == "th":
            self.header.append("")

    def handle_endtag(self, tag):
        if tag in ("th", "style", "script"):
            self._in = None

    def handle_data(self, data):
        if self._in == "th":
            self.header[-1] += data
        elif self._in == "td" and self.rows and not self.rows[-1][-1]["spans"]:
            self.rows[-1][-1]["text"] += data
        elif self._in in ("style", "script"):
            setattr(self, self._in, getattr(self, self._in) + data)


@pytest.mark.slow
def test_a_test_run_writes_its_rankings_and_inspect_shows_one_row_per_query(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "--config", str(ROOT / "configs" / "tiny" / "dual_encoder.yaml"), "--trainer.logger", "false",
                 "--trainer.default_root_dir", str(run), "--checkpoint.dirpath", str(run / "checkpoints"),
                 "--trainer.limit_train_batches", "4", "--data.root", str(tmp_path / "data"), "--test_after_fit", "true",
                 "--results", str(tmp_path / "r.sqlite")]) == 0
    rankings = QueryRankings.load(tmp_path / "run" / RANKINGS_FILE)
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        (metrics,) = db.execute("select metrics from runs").fetchone()
    logged = json.loads(metrics)
    mean_ap, first = 100 * float(np.mean(rankings.average_precision)), rankings.first_positive_rank
    assert mean_ap == pytest.approx(rankings.meta["metrics"]["mAP"], abs=1e-9)  # the metric's own value (float64)
    assert mean_ap == pytest.approx(logged["mAP"], rel=1e-6)  # the store's, logged through Lightning as float32
    assert 100 * float(np.mean(first == 1)) == pytest.approx(logged["R1"], rel=1e-6)
    assert rankings.meta["method"] == "dual_encoder"
    assert rankings.meta["checkpoint"].endswith(".ckpt") and rankings.meta["protocol"] == "pid"
    assert len(rankings) >= 20 and rankings.topk.shape == (len(rankings), 10) and len(rankings.gallery_paths) > 10
    # brute force: the tested checkpoint scores the test captions against the gallery images, sorted by hand
    model, data = load_checkpoint(rankings.meta["checkpoint"])
    images = torch.stack([load_image(p, tuple(data["image_size"]), data["crop"]) for p in rankings.gallery_paths])
    with torch.no_grad():
        scores = model.similarity(model.encode_queries({"text": rankings.query_texts.tolist()}),
                                  model.encode_gallery({"image": images}))
    positive = torch.from_numpy(rankings.query_pids[:, None] == rankings.gallery_pids[None, :])
    _check_against_brute_force(rankings, scores, positive, atol=1e-5)
    assert all(Path(p).is_file() for p in rankings.gallery_paths)

    out = tmp_path / "report.html"
    assert main(["inspect", str(tmp_path / "run"), "--out", str(out)]) == 0
    page = _Page(out.read_text(encoding="utf-8"))
    assert page.header == ["query", "caption", "pid", "AP", "first correct", "positives", "top-10", "best correct"]
    assert len(page.rows) == len(rankings) and all(len(row) == 8 for row in page.rows)
    shown_aps = [float(row[3]["v"]) for row in page.rows]
    assert shown_aps == sorted(shown_aps)  # worst first
    for row in page.rows:
        q = int(row[0]["v"])
        assert row[1]["text"] == rankings.query_texts[q] and float(row[3]["v"]) == rankings.average_precision[q]
        assert int(row[4]["v"]) == first[q]
        spans = row[6]["spans"]
        assert len(spans) == 10
        assert [s["class"].split()[2] == "ok" for s in spans] == rankings.topk_correct[q].tolist()
        assert [int(s["class"].split()[1][1:]) for s in spans] == rankings.topk[q].tolist()
        assert row[7]["spans"][0]["class"].startswith(f"t g{rankings.best_positive[q]} ok")
    used = {int(j) for j in rankings.topk.ravel()} | {int(j) for j in rankings.best_positive}
    embedded = set(int(g) for g in re.findall(r"\.g(\d+)\{[^}]*url\(data:image/jpeg;base64,", page.style))
    assert embedded == used  # every thumbnail inline, each image once
    assert page.external == [] and "addEventListener('click'" in page.script

    assert main(["inspect", str(tmp_path / "run" / RANKINGS_FILE), "--out", str(out), "--worst", "5"]) == 0
    worst = _Page(out.read_text(encoding="utf-8"))
    assert [float(r[3]["v"]) for r in worst.rows] == sorted(rankings.average_precision.tolist())[:5]


def test_render_page_marks_unreadable_images_and_keeps_queries_without_positive_last(tmp_path):
    metric, _ = _metric([0, 1, 7], [0, 1, 1, 0], seed=2)
    metric.compute()
    rankings = _rankings(metric)
    page = _Page(render_page(rankings))  # the paths /images/*.jpg do not exist
    assert [r[0]["v"] for r in page.rows][-1] == "2" and page.rows[-1][3]["v"] == "" and page.rows[-1][3]["text"] == "–"
    assert all("missing" in s["class"] for r in page.rows for s in r[6]["spans"])
    assert "data:image" not in page.style
