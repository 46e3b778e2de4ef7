"""Reported numbers: what the papers say, read from the versioned ``reference_results.yaml`` shipped with xsearch.

They are a separate kind of row (``kind: reported``), never averaged with measured runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REFERENCES = Path(__file__).with_name("reference_results.yaml")
FIELDS = {"method": str, "dataset": str, "metrics": dict, "source": str, "note": str}


def reference_rows(dataset: str | None = None, path: str | Path = REFERENCES) -> list[dict[str, Any]]:
    """Entries of the reference file (only ``dataset``'s when given), each ``{method, dataset, metrics, source, note,
    kind: "reported"}``; a malformed file raises ``ValueError`` naming the entry and the field."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("entries"), list):
        raise ValueError(f"{path}: expected a mapping with 'version: 1' and a list 'entries'")
    rows = []
    for i, entry in enumerate(raw["entries"]):
        for name, kind in FIELDS.items():
            if not isinstance(entry, dict) or not isinstance(entry.get(name), kind):
                raise ValueError(f"{path}: entry {i}: field {name!r} should be a {kind.__name__}, got "
                                 f"{type(entry.get(name)).__name__ if isinstance(entry, dict) else type(entry).__name__}")
        bad = [k for k, v in entry["metrics"].items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if bad:
            raise ValueError(f"{path}: entry {i}: metrics {bad} should be numbers")
        if dataset is None or entry["dataset"] == dataset:
            rows.append({**entry, "metrics": {k: float(v) for k, v in entry["metrics"].items()}, "kind": "reported"})
    return rows

