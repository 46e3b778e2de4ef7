"""Results store: one SQLite row per test run (method, dataset, config, checkpoint, metrics, ...).

The store is safe for several processes appending at once (WAL journal, busy timeout, one short
transaction per append). Readers get plain :class:`RunRecord` objects back.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

SCHEMA_VERSION = 1
DEFAULT_PATH = Path("results/xsearch.sqlite")
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    method TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    seed INTEGER NULL,
    metrics TEXT NOT NULL,
    wall_time_s REAL NOT NULL,
    git_commit TEXT NULL,
    extra TEXT NULL
);
CREATE INDEX IF NOT EXISTS runs_dataset_method ON runs (dataset, method);
"""

_COLUMNS = (
    "id", "created_at", "method", "dataset", "split", "config_hash", "config", "checkpoint",
    "seed", "metrics", "wall_time_s", "git_commit", "extra",
)


class ResultsStoreError(RuntimeError):
    """The results database cannot be used (corrupt, not SQLite, or written by a newer xsearch)."""


@dataclass
class RunRecord:
    """One test run. ``config`` is the resolved config as text (dicts are dumped to JSON on append).

    ``id`` and ``created_at`` are filled by the store; ``config_hash`` is computed from ``config``
    when left empty.
    """

    method: str
    dataset: str
    metrics: dict[str, float]
    config: str | dict[str, Any] = ""
    checkpoint: str = ""
    split: str = "test"
    config_hash: str = ""
    seed: int | None = None
    wall_time_s: float = 0.0
    git_commit: str | None = None
    extra: dict[str, Any] | None = None
    created_at: str = ""
    id: int | None = field(default=None, compare=False)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def config_hash(config: dict[str, Any] | str) -> str:
    """First 12 hex digits of the sha256 of a canonical JSON dump (key order does not matter).

    A string is parsed as JSON when possible so that a dict and its JSON text hash alike;
    any other text (e.g. YAML) is hashed as is.
    """
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return hashlib.sha256(config.encode("utf-8")).hexdigest()[:12]
    return hashlib.sha256(_canonical_json(config).encode("utf-8")).hexdigest()[:12]


def _run_git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit(cwd: str | Path | None = None, ignore: Sequence[str | Path] = ()) -> str | None:
    """Short commit of the repo containing ``cwd`` (default: this package), ``+dirty`` if tracked files other than
    ``ignore`` (e.g. the committed results store a run appends to) changed. ``None`` outside a git repo, without git,
    or on any error; never raises."""
    try:
        where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
        if not where.is_dir():
            where = where.parent
        commit = _run_git(["rev-parse", "--short", "HEAD"], where)
        top = _run_git(["rev-parse", "--show-toplevel"], where)
        if not commit or not top:
            return None
        changed = (_run_git(["diff", "--name-only", "HEAD"], where) or "").splitlines()  # repo-relative paths
        skipped = {Path(path).resolve() for path in ignore}
        changed = [name for name in changed if (Path(top) / name).resolve() not in skipped]
        return f"{commit}+dirty" if changed else commit
    except Exception:  # noqa: BLE001 - provenance must never break a run
        return None


def _is_locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Put the store in WAL mode (kept in the file). SQLite answers a switch that meets another connection's lock
    with "locked" at once, without waiting the busy timeout, so the switch is retried until that timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


class ResultsStore:
    """SQLite results store at ``path`` (parent dirs and schema are created on first use)."""

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self._initialised = False

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # -- connection and schema -------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`ResultsStoreError` naming the path when the store cannot be used: a folder, a file that is not
        an SQLite database or has a newer schema, or a path below a file. A store that does not exist yet is fine (the
        first append creates it). Reads only: nothing is created or changed."""
        self._refuse_folder()
        if not self.path.exists():
            parent = next(p for p in self.path.absolute().parents if p.exists())
            if not parent.is_dir():
                raise ResultsStoreError(f"cannot create results store {self.path}: {parent} is a file, not a folder")
            return
        try:
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise ResultsStoreError(f"cannot open results store {self.path}: {exc}") from exc
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if _is_locked(exc):
                raise self._locked(exc) from exc
            raise self._unusable(exc) from exc
        finally:
            conn.close()
        self._check_version(version)

    def _refuse_folder(self) -> None:
        if self.path.is_dir():
            raise ResultsStoreError(f"results store {self.path} is a folder; expected an SQLite file (or a path to "
                                    "create one)")

    def _unusable(self, exc: sqlite3.Error) -> ResultsStoreError:
        return ResultsStoreError(f"results store {self.path} is not a usable SQLite database ({exc}); move it away or "
                                 "pass another path")

    def _connect(self) -> sqlite3.Connection:
        self._refuse_folder()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise ResultsStoreError(f"cannot open results store {self.path}: {exc}") from exc
        try:
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        if self._initialised:
            return
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            if version < SCHEMA_VERSION:
                self._create_schema(conn)
            _switch_to_wal(conn)
        except sqlite3.DatabaseError as exc:
            if _is_locked(exc):
                raise self._locked(exc) from exc
            raise self._unusable(exc) from exc
        self._initialised = True

    def _locked(self, exc: sqlite3.Error) -> ResultsStoreError:
        return ResultsStoreError(f"results store {self.path} is locked: another process held it for more than "
                                 f"{BUSY_TIMEOUT_S:g} s ({exc}); retry when it is done, or pass another path")

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ResultsStoreError(
                f"results store {self.path} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this xsearch understands; upgrade xsearch or use another file"
            )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            if version < SCHEMA_VERSION:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- public API -----------------------------------------------------------------------
    def append(self, record: RunRecord) -> int:
        """Insert ``record`` in one short transaction; returns the new row id (also set on it)."""
        values = _record_to_row(record)
        conn = self._connect()
        try:
            with conn:  # isolation_level=None: explicit transaction below
                conn.execute("BEGIN IMMEDIATE")
                cursor = conn.execute(
                    f"INSERT INTO runs ({', '.join(_COLUMNS[1:])}) "
                    f"VALUES ({', '.join('?' * (len(_COLUMNS) - 1))})",
                    values,
                )
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if _is_locked(exc):
                raise self._locked(exc) from exc
            raise ResultsStoreError(f"cannot append to results store {self.path}: {exc}") from exc
        finally:
            conn.close()
        record.id = int(cursor.lastrowid)
        record.created_at = values[0]
        return record.id

    def rows(self, dataset: str | None = None, method: str | None = None) -> list[RunRecord]:
        """All runs (oldest first), optionally only those of ``dataset`` and/or ``method``."""
        where, params = [], []
        if dataset is not None:
            where.append("dataset = ?")
            params.append(dataset)
        if method is not None:
            where.append("method = ?")
            params.append(method)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        conn = self._connect()
        try:
            fetched = conn.execute(sql + " ORDER BY id", params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ResultsStoreError(f"cannot read results store {self.path}: {exc}") from exc
        finally:
            conn.close()
        return [_row_to_record(row) for row in fetched]


def _record_to_row(record: RunRecord) -> tuple[Any, ...]:
    config_text = record.config if isinstance(record.config, str) else _canonical_json(record.config)
    digest = record.config_hash or config_hash(record.config)
    metrics = {str(k): float(v) for k, v in record.metrics.items()}
    return (
        record.created_at or _utc_now(),
        record.method,
        record.dataset,
        record.split,
        digest,
        config_text,
        str(record.checkpoint),
        None if record.seed is None else int(record.seed),
        json.dumps(metrics, sort_keys=True),
        float(record.wall_time_s),
        record.git_commit,
        None if record.extra is None else json.dumps(record.extra, sort_keys=True, default=str),
    )


def _row_to_record(row: tuple[Any, ...]) -> RunRecord:
    values = dict(zip(_COLUMNS, row))
    values["metrics"] = json.loads(values["metrics"])
    values["extra"] = None if values["extra"] is None else json.loads(values["extra"])
    return RunRecord(**values)
