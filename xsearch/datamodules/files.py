"""Reading dataset files with errors that name the file, the line or record, and what was expected.

Every parser goes through these helpers so that a user's broken copy produces one line such as
``/data/RSTPReid/data_captions.json: record 17: field 'captions' should be list, got str``
instead of a traceback, and so that image existence is checked with one directory listing per
folder instead of one ``stat`` per file.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence


class DatasetFormatError(ValueError):
    """A dataset file is missing or does not have the expected format (message names file + place)."""


def examples(items: Sequence[Any], shown: int = 3) -> str:
    """The first ``shown`` items joined by commas, ``, ...`` when there are more (for one-line messages)."""
    return ", ".join(str(i) for i in items[:shown]) + (", ..." if len(items) > shown else "")


def type_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)


def expect_field(record: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``record[key]`` checked to be an instance of ``kind`` (bools are never ints)."""
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise DatasetFormatError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))):
        raise DatasetFormatError(f"{where}: field {key!r} should be {type_name(kind)}, got {type(value).__name__}")
    return value


def expect_str_list(record: dict, key: str, where: str, allow_empty: bool = False) -> list[str]:
    """``record[key]`` checked to be a (non-empty unless allowed) list of strings."""
    values = expect_field(record, key, list, where)
    if (not values and not allow_empty) or not all(isinstance(v, str) for v in values):
        raise DatasetFormatError(f"{where}: field {key!r} should be a non-empty list of strings")
    return values


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a one-line error saying what it should hold."""
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "not found"
        raise DatasetFormatError(f"{path}: {what} {state}")
    return path


def find_existing(folder: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``folder/<name>`` that exists (official spellings and known aliases)."""
    for name in names:
        if (folder / name).exists():
            return folder / name
    tried = ", ".join(names)
    raise DatasetFormatError(f"{folder}: {what} not found (expected one of: {tried})")


def read_text(path: Path) -> str:
    """File text as UTF-8 (Latin-1 fallback for old mirrors); missing file -> one-line error."""
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def load_json(path: Path, kind: type | tuple[type, ...] = (list, dict)) -> Any:
    """Parse a JSON file whose top level must be ``kind``; errors give line and column."""
    text = read_text(path)
    if not text.strip():
        raise DatasetFormatError(f"{path}: empty file, expected a JSON {type_name(kind).replace('dict', 'object')}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        at_end = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
        truncated = " (the file looks truncated)" if at_end else ""
        raise DatasetFormatError(
            f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}{truncated}"
        ) from None
    if not isinstance(value, kind):
        wanted = type_name(kind).replace("dict", "object")
        got = type(value).__name__.replace("dict", "object")
        raise DatasetFormatError(f"{path}: expected a JSON {wanted} at the top level, got {got}")
    return value


def load_json_list(path: Path) -> list:
    """A JSON file whose top level is a list of records."""
    return load_json(path, list)


def load_jsonl(path: Path) -> list[tuple[int, Any]]:
    """JSON Lines: ``(line number, value)`` per non-blank line; a bad line is named."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{path}: line {number}: invalid JSON at column {error.colno}: {error.msg}") from None
    return rows


def read_table(path: Path, skip: int = 0, sep: str | None = None) -> list[tuple[int, list[str]]]:
    """Whitespace- (or ``sep``-) separated text: ``(1-based line number, fields)`` per non-blank line.

    Handles CRLF and runs of spaces (CelebA mirrors); ``skip`` drops header lines first.
    """
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if number <= skip or not line.strip():
            continue
        fields = line.split(sep) if sep else line.split()
        rows.append((number, [f.strip() for f in fields] if sep else fields))
    return rows


def read_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """CSV with a header row: ``(line number, {column: stripped value})``; quoted commas are kept."""
    lines = read_text(path).splitlines()
    reader = csv.reader(lines, skipinitialspace=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetFormatError(f"{path}: empty file, expected a CSV header row") from None
    rows = []
    for fields in reader:
        number = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        rows.append((number, {h: (fields[i].strip() if i < len(fields) else "") for i, h in enumerate(header)}))
    return rows


def parse_int(value: str, path: Path, line: int, what: str) -> int:
    """``int(value)`` with an error naming the file, line and field."""
    try:
        return int(value)
    except ValueError:
        raise DatasetFormatError(f"{path}: line {line}: {what} should be an integer, got {value!r}") from None


def parse_float(value: str, path: Path, line: int, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DatasetFormatError(f"{path}: line {line}: {what} should be a number, got {value!r}") from None


class FolderListing:
    """Existence checks by listing each folder once (``os.scandir``), not one ``stat`` per file."""

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}

    def names(self, folder: str | os.PathLike) -> set[str]:
        """File names in ``folder`` (empty if it does not exist), listed once."""
        key = os.fspath(folder)
        if key not in self._names:
            try:
                with os.scandir(key) as entries:
                    self._names[key] = {entry.name for entry in entries}
            except (FileNotFoundError, NotADirectoryError):
                self._names[key] = set()
        return self._names[key]

    def exists(self, path: str | os.PathLike) -> bool:
        return not self.missing([path])

    def missing(self, paths: Iterable[str | os.PathLike]) -> list[Path]:
        """Paths (in order) whose file is absent."""
        out = []
        for path in paths:
            folder, name = os.path.split(os.fspath(path))
            if name not in self.names(folder):
                out.append(Path(path))
        return out
