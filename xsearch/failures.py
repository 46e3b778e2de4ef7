"""``xsearch inspect``: an HTML failure browser of a test run.

Reads the run's ``test_rankings.npz`` (:mod:`xsearch.rankings`) and writes one self-contained page (the leaderboard
page's inline style and sort script, :mod:`xsearch.html_page`): a table with one row per query (its caption, pid, AP,
rank of the first correct gallery image, number of positives, the top-10 gallery thumbnails outlined green when
correct and red when not, and its best-ranked correct image), worst AP first; a click on a column header sorts by
it. Each gallery image used is embedded once, as a small JPEG data URI in a CSS class.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import math
from pathlib import Path

import numpy as np
from PIL import ImageOps

from xsearch import html_page
from xsearch.atomic import write_text_atomic
from xsearch.image_io import UnreadableImage, read_rgb
from xsearch.rankings import RANKINGS_FILE, QueryRankings

log = logging.getLogger(__name__)

_PAGE_STYLE = (
    ".t{display:inline-block;box-sizing:content-box;border:3px solid;margin:1px;vertical-align:top;"
    "background:#ccc center/cover no-repeat;font-size:10px;line-height:1;color:#fff;text-shadow:0 0 2px #000}"
    ".t.ok{border-color:#0a0}.t.no{border-color:#d00}.t.missing{background:#888}"
    "td.caption{max-width:28em}td.top{white-space:nowrap}"
)


def find_rankings(run_or_file: str | Path) -> Path:
    """The rankings file of a run folder (searched below it when not at its top), or the file itself.

    Raises:
        FileNotFoundError: nothing there, or a folder without a rankings file.
        ValueError: a folder holding several rankings files (pass one of them).
    """
    path = Path(run_or_file)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder or rankings file")
    if (path / RANKINGS_FILE).is_file():
        return path / RANKINGS_FILE
    found = sorted(path.rglob(RANKINGS_FILE))
    if not found:
        raise FileNotFoundError(f"{path}: no {RANKINGS_FILE} in this run folder; `xsearch test` (or `xsearch fit "
                                "--test_after_fit true`) writes it into the run's log folder")
    if len(found) > 1:
        raise ValueError(f"{path}: {len(found)} {RANKINGS_FILE} files below it ({', '.join(map(str, found[:4]))}"
                         f"{', ...' if len(found) > 4 else ''}); pass one of them")
    return found[0]


def _thumbnail_css(position: int, image_path: str, height: int) -> tuple[str, bool]:
    """CSS rule ``.g<position>`` drawing the image as a ``height``-pixel-high JPEG data URI; False when unreadable."""
    try:
        image = read_rgb(image_path)
    except UnreadableImage:
        return f".g{position}{{width:{height // 2}px;height:{height}px}}", False
    width = max(1, round(image.width * height / max(1, image.height)))
    image = ImageOps.fit(image, (min(width, 2 * height), height))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f".g{position}{{width:{image.width}px;height:{image.height}px;"
            f"background-image:url(data:image/jpeg;base64,{data})}}"), True


def _thumb(rankings: QueryRankings, position: int, label: str, correct: bool, readable: set[int],
           score: float | None = None) -> str:
    """One outlined thumbnail: a span of class ``t g<position> ok|no`` with the details in its title."""
    details = [label] + ([f"score {score:.4f}"] if score is not None else [])
    details += [f"pid {int(rankings.gallery_pids[position])}", str(rankings.gallery_paths[position])]
    state = ("ok" if correct else "no") + ("" if position in readable else " missing")
    return (f'<span class="t g{position} {state}" title="{html.escape(" · ".join(details))}">'
            f"{html.escape(label)}</span>")


def _row(rankings: QueryRankings, q: int, readable: set[int]) -> str:
    ap, first, count = float(rankings.average_precision[q]), int(rankings.first_positive_rank[q]), int(rankings.num_positives[q])
    top = "".join(_thumb(rankings, int(j), f"#{r + 1}", bool(rankings.topk_correct[q, r]), readable,
                         float(rankings.topk_scores[q, r])) for r, j in enumerate(rankings.topk[q]))
    best = int(rankings.best_positive[q])
    expected = _thumb(rankings, best, f"#{first}", True, readable) if best >= 0 else ""
    hits = int(rankings.topk_correct[q].sum())
    return (f'<tr><td class="num" data-v="{q}">{q}</td>'
            f'<td class="caption">{html.escape(str(rankings.query_texts[q]))}</td>'
            f'<td class="num" data-v="{int(rankings.query_pids[q])}">{int(rankings.query_pids[q])}</td>'
            f'<td class="num" data-v="{"" if math.isnan(ap) else repr(ap)}">{"–" if math.isnan(ap) else f"{100 * ap:.1f}"}</td>'
            f'<td class="num" data-v="{first if first else ""}">{first if first else "–"}</td>'
            f'<td class="num" data-v="{count}">{count}</td>'
            f'<td class="top" data-v="{hits}">{top}</td><td>{expected}</td></tr>')


def _summary(rankings: QueryRankings) -> str:
    """Header lines: what was tested, and the per-query numbers averaged next to the logged ones."""
    meta = rankings.meta
    has = rankings.num_positives > 0
    first = rankings.first_positive_rank[has]
    measured = {f"R{k}": 100.0 * float(np.mean((first >= 1) & (first <= k))) for k in (1, 5, 10)} if has.any() else {}
    if has.any():
        measured["mAP"] = 100.0 * float(np.mean(rankings.average_precision[has]))
    logged = meta.get("metrics", {})
    numbers = ", ".join(f"{k} {v:.2f}" + (f" (logged {logged[k]:.2f})" if k in logged else "") for k, v in measured.items())
    lines = [f"{html.escape(str(meta.get('method', '?')))} on {html.escape(str(meta.get('dataset', '?')))}: "
             f"{len(rankings)} queries, {len(rankings.gallery_indexes)} gallery images; {numbers}",
             f"checkpoint {html.escape(str(meta.get('checkpoint') or '(not recorded)'))}; correct = "
             + ("same identity (pid)" if meta.get("protocol") == "pid" else "a positive of the query (the protocol's own)"),
             "Rows start with the worst AP; click a column header to sort. Thumbnails: green = correct, red = wrong "
             "(hover for score, pid and path); the last column is the best-ranked correct image."]
    return "".join(f'<p class="note">{line}</p>' for line in lines)


def render_page(rankings: QueryRankings, thumb_height: int = 64, worst: int | None = None, source: str = "") -> str:
    """The self-contained HTML page of ``rankings``: one table row per query (the ``worst`` lowest-AP ones only when
    given), worst AP first."""
    ap = np.nan_to_num(rankings.average_precision, nan=np.inf)  # queries without positive after the rest
    order = np.argsort(ap, kind="stable")[: worst if worst is not None else None]
    used = sorted({int(j) for q in order for j in rankings.topk[q]} | {int(rankings.best_positive[q]) for q in order} - {-1})
    rules, readable = [], set()
    for position in used:
        rule, ok = _thumbnail_css(position, str(rankings.gallery_paths[position]), thumb_height)
        rules.append(rule)
        if ok:
            readable.add(position)
    if len(readable) < len(used):
        log.warning("%d of %d gallery images could not be read (grey boxes), e.g. %s", len(used) - len(readable),
                    len(used), next(str(rankings.gallery_paths[p]) for p in used if p not in readable))
    header = ["query", "caption", "pid", "AP", "first correct", "positives", f"top-{rankings.topk.shape[1]}",
              "best correct"]
    table = html_page.table(header, [_row(rankings, int(q), readable) for q in order], "sortable queries")
    title = f"xsearch inspect: {rankings.meta.get('method', '')} on {rankings.meta.get('dataset', '')}"
    shown = f" ({len(order)} lowest-AP shown)" if len(order) < len(rankings) else ""
    note = f'<p class="note">from {html.escape(source)}{shown}</p>' if source else ""
    body = f"<h1>{html.escape(title)}</h1>" + note + _summary(rankings) + "\n" + table
    return html_page.page(title, body, _PAGE_STYLE + "".join(rules))


def write_page(run_or_file: str | Path, out: str | Path, thumb_height: int = 64, worst: int | None = None) -> Path:
    """Read the rankings of a run folder (or the file) and write the page to ``out`` atomically."""
    if thumb_height < 8:
        raise ValueError(f"--thumb-height {thumb_height}: expected at least 8 pixels")
    if worst is not None and worst < 1:
        raise ValueError(f"--worst {worst}: expected a positive number of queries")
    path = find_rankings(run_or_file)
    rankings = QueryRankings.load(path)
    write_text_atomic(out, render_page(rankings, thumb_height, worst, str(path)))
    return Path(out)
