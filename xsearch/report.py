"""Leaderboard reports: the self-contained sortable HTML page, a PNG bar chart per dataset, and the README block.

``write_report`` writes ``<name>.{md,csv,json,html}`` and ``<name>-<dataset>.png`` into a folder and, given a README,
replaces the text between ``<!-- leaderboard:<name> begin -->`` and ``<!-- leaderboard:<name> end -->`` with the
Markdown tables and charts; every file is written atomically.
"""
from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xsearch import html_page
from xsearch.atomic import atomic_path, write_text_atomic
from xsearch.comparison import COMPARED_METRICS, PAIRED_TITLE, compare_cells, render_comparisons_md
from xsearch.leaderboard import by_dataset, leaderboard_table, metric_names, render, reported_table
from xsearch.leaderboard import render_html as leaderboard_html
from xsearch.results import ResultsStore


def _differences_html(differences: list[dict[str, Any]]) -> list[str]:
    """The paired-differences title and table of one dataset (:func:`~xsearch.comparison.compare_cells` rows)."""
    lines = [f"<tr><td>{html.escape(d['cell'])} − {html.escape(d['against'])}</td><td class=\"num\">{d['n']}</td>"
             + "".join(f'<td class="num">{html.escape(d[m].format())}</td>' for m in COMPARED_METRICS) + "</tr>"
             for d in differences]
    return [f"<h3>{html.escape(PAIRED_TITLE[0].upper() + PAIRED_TITLE[1:])}</h3>",
            html_page.table(["difference", "seeds", *(f"Δ{m} [95% interval]" for m in COMPARED_METRICS)], lines,
                            "paired")]


def render_html(
    rows: list[dict[str, Any]],
    metrics: Sequence[str] | None = None,
    source: str | Path | None = None,
    references: list[dict[str, Any]] | None = None,
    images: dict[str, bytes] | None = None,
    differences: Mapping[str, list[dict[str, Any]]] | None = None,
) -> str:
    """One self-contained page (inline CSS/JS, charts as data URIs): per dataset a sortable table of the measured rows
    (and its PNG chart from ``images``, dataset -> PNG bytes; its paired differences from ``differences``, dataset ->
    :func:`~xsearch.comparison.compare_cells` rows), then the reported rows in their own tables
    (:func:`xsearch.leaderboard.render_html` with the differences added)."""
    sections = {dataset: _differences_html(group) for dataset, group in (differences or {}).items()}
    return leaderboard_html(rows, metrics, source, references, images, sections)


def plot_dataset(group: list[dict[str, Any]], dataset: str, path: str | Path, metrics: Sequence[str] | None = None,
                 max_metrics: int = 4) -> Path:
    """Grouped bar chart of one dataset's measured rows: the first ``max_metrics`` metric means (R1, R5, R10, mAP
    by default) per method, sample std as error bars; written atomically as PNG to ``path``."""
    from matplotlib.figure import Figure

    names = (list(metrics) if metrics is not None else metric_names(group))[:max_metrics]
    labels = [f'{r["cell"] if r.get("cell") else r["method"]} (n={r["n"]})' for r in group]
    figure = Figure(figsize=(max(5.0, 1.1 * len(group) * max(1, len(names)) / 2 + 2), 3.6), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        means = [r.get(f"{name}_mean") for r in group]
        stds = [r.get(f"{name}_std") or 0.0 for r in group]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(group))]
        axes.bar(xs, [m if m is not None else 0.0 for m in means], width, yerr=stds, capsize=2, label=name)
    axes.set_xticks(range(len(group)), labels, rotation=20, ha="right", fontsize=8)
    axes.set_title(f"{dataset}: mean ± std over n seeds", fontsize=10)
    tops = [(r.get(f"{n}_mean") or 0.0) + (r.get(f"{n}_std") or 0.0) for r in group for n in names]
    axes.set_ylim(0, 1.2 * max(tops + [1.0]))  # room for the legend
    axes.set_ylabel("%")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, ncols=len(names), loc="upper right")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return Path(path)


def _slug(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset)


def begin_marker(name: str) -> str:
    return f"<!-- leaderboard:{name} begin -->"


def end_marker(name: str) -> str:
    return f"<!-- leaderboard:{name} end -->"


def replace_block(text: str, name: str, block: str, where: str = "README") -> str:
    """``text`` with what lies between the leaderboard ``name`` markers replaced by ``block``; ``ValueError`` naming
    ``where`` and the expected markers when they are missing or out of order."""
    begin, end = begin_marker(name), end_marker(name)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{where}: expected the lines {begin!r} and then {end!r} around the leaderboard block")
    return text[: i + len(begin)] + "\n" + block.rstrip("\n") + "\n" + text[j:]


def write_charts(store: ResultsStore | str | Path, out_dir: str | Path, name: str = "leaderboard",
                 dataset: str | None = None) -> list[Path]:
    """One ``out_dir/<name>-<dataset>.png`` chart per dataset of the store (only ``dataset``'s when given)."""
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    rows = leaderboard_table(store.rows() if store.path.exists() else [], dataset=dataset)
    return [plot_dataset(group, ds, Path(out_dir) / f"{name}-{_slug(ds)}.png") for ds, group in by_dataset(rows).items()]


def write_report(store: ResultsStore | str | Path, out_dir: str | Path, name: str, readme: str | Path | None = None,
                 command: str | None = None, references: bool = False,
                 compare: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """Write the leaderboard of ``store`` as ``out_dir/<name>.{md,csv,json,html}`` plus one ``<name>-<dataset>.png``
    per dataset, and refresh the ``name`` block of ``readme`` (tables, charts and ``command``); returns the paths.
    ``compare`` (row name -> row names): each dataset's table is followed by the paired per-seed differences
    (:func:`~xsearch.comparison.compare_cells`) in the Markdown, HTML and README."""
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    out_dir = Path(out_dir)
    records = store.rows() if store.path.exists() else []
    rows = leaderboard_table(records)
    differences = by_dataset(compare_cells(records, compare)) if compare else {}
    refs = reported_table() if references else None
    written: list[Path] = []
    charts: dict[str, Path] = {}
    for dataset, group in by_dataset(rows).items():
        charts[dataset] = plot_dataset(group, dataset, out_dir / f"{name}-{_slug(dataset)}.png")
    written += charts.values()
    for fmt in ("md", "csv", "json"):
        text = render(rows, fmt, source=store.path, references=refs)
        if fmt == "md" and differences:
            text += "".join(f"\n### {dataset}: {PAIRED_TITLE}\n\n{render_comparisons_md(group)}\n"
                            for dataset, group in differences.items())
        write_text_atomic(out_dir / f"{name}.{fmt}", text)
        written.append(out_dir / f"{name}.{fmt}")
    images = {dataset: path.read_bytes() for dataset, path in charts.items()}
    write_text_atomic(out_dir / f"{name}.html", render_html(rows, None, store.path, refs, images, differences))
    written.append(out_dir / f"{name}.html")
    if readme is not None:
        readme = Path(readme)
        block = readme_block(rows, charts, readme.parent, command, differences)
        write_text_atomic(readme, replace_block(readme.read_text(encoding="utf-8"), name, block, str(readme)))
        written.append(readme)
    return written


def readme_block(rows: list[dict[str, Any]], charts: dict[str, Path], base: Path, command: str | None,
                 differences: Mapping[str, list[dict[str, Any]]] | None = None) -> str:
    """Markdown for the README: how it was made, then per dataset its chart, its table and its paired
    differences (``differences``: dataset -> :func:`~xsearch.comparison.compare_cells` rows)."""
    if not rows:
        return "_no results yet_"
    commits = sorted({str(r["git_commit"])[:7] for r in rows if r.get("git_commit")})
    runs = sum(r["n"] for r in rows)
    lines = [f"{runs} runs, {len(rows)} rows, commit {', '.join(commits) or 'unknown'}, latest "
             f"{max(str(r['latest_run']) for r in rows)[:10]}" + (f"; regenerate with `{command}`" if command else "") + "."]
    for dataset, group in by_dataset(rows).items():
        lines += ["", f"#### {dataset}"]
        if dataset in charts:
            lines += ["", f"![{dataset}]({_relative(charts[dataset], base)})"]
        lines += ["", *render(group, "md").strip().splitlines()[2:]]  # the table, without its "### dataset" title
        if differences and dataset in differences:
            lines += ["", f"{PAIRED_TITLE}:", "", render_comparisons_md(differences[dataset])]
    return "\n".join(lines)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()
