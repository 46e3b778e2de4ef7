"""Leaderboard: group test runs by (dataset, method, config) and render mean ± std tables.

``leaderboard_table`` turns :class:`~xsearch.results.RunRecord` objects into flat row dicts
(``R1_mean``, ``R1_std``, ...); ``render`` writes them as Markdown, CSV, JSON or HTML.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from xsearch.results import ResultsStore, RunRecord

DEFAULT_METRICS: tuple[str, ...] = ("R1", "R5", "R10", "mAP", "mINP")
PROTOCOL_METRICS: tuple[str, ...] = ("R50", "i2t_R1", "entity_R@1", "entity_R@10", "kmin_R@10", "mAP@10")
"""Shown after the defaults when the selected runs have them (Id-CLIP's general and entity retrieval)."""
FORMATS: tuple[str, ...] = ("md", "csv", "json", "html")
MISSING = "-"
_KEY_COLUMNS = ("dataset", "method", "config_hash", "n")
_TAIL_COLUMNS = ("seeds", "latest_run", "checkpoint", "git_commit")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std is 0.0 for one value, both None for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _group_row(key: tuple[str, str, str], runs: list[RunRecord], metrics: Sequence[str]) -> dict[str, Any]:
    latest = max(runs, key=lambda run: (run.created_at, run.id or 0))
    row: dict[str, Any] = {"dataset": key[0], "method": key[1], "config_hash": key[2], "n": len(runs)}
    for name in metrics:
        values = [float(run.metrics[name]) for run in runs if run.metrics.get(name) is not None]
        row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values)
    row["seeds"] = [run.seed for run in runs if run.seed is not None]
    row["latest_run"] = latest.created_at
    row["checkpoint"] = latest.checkpoint
    row["git_commit"] = latest.git_commit
    row["tag"] = (latest.extra or {}).get("tag")
    row["cell"] = (latest.extra or {}).get("cell")
    return row


def _sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    r1 = row.get("R1_mean")
    return (row["dataset"], r1 is None, -(r1 or 0.0), row["method"], row["config_hash"])


def leaderboard_table(
    records: Iterable[RunRecord],
    dataset: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, Any]]:
    """One row per (dataset, method, config_hash) with ``<metric>_mean``/``<metric>_std``, ``n``,
    seeds and the latest run's time/checkpoint; sorted by dataset, then R1 mean descending. ``dataset`` also
    keeps that dataset's other protocols (``celeba`` shows ``celeba:composed`` too, as its own table)."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in records:
        if dataset is not None and dataset not in (record.dataset, record.dataset.split(":")[0]):
            continue
        cell = (record.extra or {}).get("cell")  # a grid cell: its seeds aggregate even when their configs differ
        groups.setdefault((record.dataset, record.method, cell or record.config_hash), []).append(record)
    rows = [_group_row(key, runs, metrics) for key, runs in groups.items()]
    return sorted(rows, key=_sort_key)


def _metric_names(rows: list[dict[str, Any]], metrics: Sequence[str] | None) -> list[str]:
    if metrics is not None:
        return list(metrics)
    names = [key[: -len("_mean")] for key in rows[0] if key.endswith("_mean")] if rows else []
    return names or list(DEFAULT_METRICS)


def _cell(row: dict[str, Any], name: str) -> str:
    """``mean ± std`` with 2 decimals (``mean`` when n == 1), ``-`` when missing."""
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None:
        return MISSING
    if row.get("n", 1) > 1 and std is not None:
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.2f}"


def _by_dataset(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["dataset"], []).append(row)
    return grouped


def _display_cells(row: dict[str, Any], names: list[str]) -> list[str]:
    config = row["cell"] if row.get("cell") else (f'{row["tag"]} ({row["config_hash"]})' if row.get("tag") else str(row["config_hash"]))
    return [str(row["method"]), config, str(row["n"])] + [_cell(row, n) for n in names]


def _empty_message(source: str | Path | None) -> str:
    return f"no results in {source if source is not None else 'the results store'}"


def _render_md(rows: list[dict[str, Any]], names: list[str], source: str | Path | None) -> str:
    if not rows:
        return _empty_message(source) + "\n"
    header = ["method", "config", "n", *names]
    parts: list[str] = []
    for dataset, group in _by_dataset(rows).items():
        lines = [f"### {dataset}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] * 3 + ["---:"] * len(names)) + "|"]
        for row in group:
            cells = [cell.replace("|", "\\|") for cell in _display_cells(row, names)]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _csv_value(value: Any) -> Any:
    if value is None:
        return MISSING
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return value


def _render_csv(rows: list[dict[str, Any]], names: list[str]) -> str:
    columns = [*_KEY_COLUMNS]
    for name in names:
        columns += [f"{name}_mean", f"{name}_std"]
    columns += _TAIL_COLUMNS
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(column)) for column in columns])
    return buffer.getvalue()


def _render_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


_HTML_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:2em}"
    "th,td{border:1px solid #ccc;padding:4px 10px}td.num{text-align:right}"
    "th{background:#f0f0f0}"
)


def _render_html(rows: list[dict[str, Any]], names: list[str], source: str | Path | None) -> str:
    body: list[str] = ["<h1>xsearch leaderboard</h1>"]
    if not rows:
        body.append(f"<p>{html.escape(_empty_message(source))}</p>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", "config", "n", *names])
    for dataset, group in _by_dataset(rows).items():
        body.append(f"<h3>{html.escape(str(dataset))}</h3>")
        body.append(f"<table><thead><tr>{header}</tr></thead><tbody>")
        for row in group:
            cells = _display_cells(row, names)
            tds = [f"<td>{html.escape(c)}</td>" for c in cells[:2]]
            tds += [f'<td class="num">{html.escape(c)}</td>' for c in cells[2:]]
            body.append("<tr>" + "".join(tds) + "</tr>")
        body.append("</tbody></table>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>xsearch leaderboard</title><style>{_HTML_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def render(
    rows: list[dict[str, Any]],
    fmt: str = "md",
    metrics: Sequence[str] | None = None,
    source: str | Path | None = None,
) -> str:
    """Render ``leaderboard_table`` rows as ``md``, ``csv``, ``json`` or ``html``.

    ``metrics`` defaults to those present in the rows; ``source`` names the store in the
    "no results in <source>" message shown for an empty table (md/html).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown leaderboard format {fmt!r}; expected one of {', '.join(FORMATS)}")
    names = _metric_names(rows, metrics)
    if fmt == "md":
        return _render_md(rows, names, source)
    if fmt == "csv":
        return _render_csv(rows, names)
    if fmt == "json":
        return _render_json(rows)
    return _render_html(rows, names, source)


def render_store(
    store: ResultsStore | str | Path,
    dataset: str | None = None,
    fmt: str = "md",
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> str:
    """Leaderboard of a results store (object or path) in one call, as used by the CLI."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown leaderboard format {fmt!r}; expected one of {', '.join(FORMATS)}")
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    if not store.path.exists():
        return render([], fmt, metrics, source=store.path)
    records = store.rows()
    if tuple(metrics) == DEFAULT_METRICS:
        present = {name for r in records if dataset in (None, r.dataset, r.dataset.split(":")[0]) for name in r.metrics}
        metrics = [*DEFAULT_METRICS, *(name for name in PROTOCOL_METRICS if name in present)]
    rows = leaderboard_table(records, dataset=dataset, metrics=metrics)
    return render(rows, fmt, metrics, source=store.path)
