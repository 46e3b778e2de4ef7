"""``load_dataset``: parse a registered dataset (cached), check its images, audit it.

The one entry point used by the datamodule and by ``xsearch data check``:

1. the root is resolved (relative roots live under ``$XSEARCH_DATA``, default ``./data``);
2. the registered parser runs, or its result is read back from the parse cache, keyed by the
   dataset name, root, options and the size + mtime of every annotation file it read;
3. image existence is checked with one directory listing per folder (never one ``stat`` per
   file, never a decode: decoding errors surface lazily, naming the file);
4. generic warnings are added: missing images, empty captions, caption texts shared by several
   identities, single-image identities, images without captions, counts vs the published ones.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any

from xsearch.atomic import atomic_path
from xsearch.datamodules.files import DatasetFormatError, FolderListing, examples
from xsearch.datamodules.records import SPLITS, DatasetIndex
from xsearch.registry import DATASETS

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the pickled ``DatasetIndex`` layout changes."""

def data_dir() -> Path:
    """Folder that relative dataset roots live in: ``$XSEARCH_DATA``, default ``./data``."""
    return Path(os.environ.get("XSEARCH_DATA", "data"))


def resolve_root(root: str | Path) -> Path:
    """Absolute roots as given; relative roots under :func:`data_dir`."""
    root = Path(root).expanduser()
    return root if root.is_absolute() else data_dir() / root


def cache_dir() -> Path:
    """Parse cache folder: ``$XSEARCH_CACHE``, default ``~/.cache/xsearch/index``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xsearch" / "index"
    return Path(os.environ.get("XSEARCH_CACHE", default))


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns


def _code_stamp() -> list:
    """Size + mtime of the parser code: an edited parser never reads an old cache entry."""
    return [_stamp(p) for p in sorted(Path(__file__).parent.glob("*.py"))]


def _cache_file(name: str, root: Path, options: dict[str, Any]) -> Path:
    key = json.dumps([CACHE_VERSION, name, str(root.resolve()), options, _code_stamp()], sort_keys=True, default=str)
    return cache_dir() / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pkl"


def _read_cache(path: Path) -> DatasetIndex | None:
    try:
        with open(path, "rb") as handle:
            stamps, index = pickle.load(handle)
    except FileNotFoundError:
        return None
    except Exception as error:  # a corrupt or incompatible cache entry is simply rebuilt
        log.debug("ignoring parse cache %s (%s)", path, error)
        return None
    if not stamps or any(_stamp(Path(p)) != (p, size, mtime) for p, size, mtime in stamps):
        return None
    return index


def _write_cache(path: Path, index: DatasetIndex) -> None:
    stamps = [_stamp(p) for p in index.sources]
    if not stamps or None in stamps:
        return
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            pickle.dump((stamps, index), handle, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as error:  # read-only home etc.: caching is an optimisation only
        log.debug("cannot write parse cache %s (%s)", path, error)


def parse_dataset(name: str, root: Path, options: dict[str, Any] | None = None, cache: bool = True) -> tuple[DatasetIndex, bool]:
    """Run (or read back from the cache) the parser of ``name``; returns ``(index, cache_hit)``."""
    options = dict(options or {})
    parser = DATASETS.get(name)
    path = _cache_file(name, root, options)
    if cache and (index := _read_cache(path)) is not None:
        return index, True
    try:
        index = parser(root, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            accepted = ", ".join(p for p in inspect.signature(parser).parameters if p != "root")
            raise DatasetFormatError(f"dataset {name!r}: {error.args[0].split(') ', 1)[-1]}; options: {accepted}") from None
        raise
    if cache:
        _write_cache(path, index)
    return index, False


def load_dataset(name: str, root: str | Path, options: dict[str, Any] | None = None, cache: bool = True) -> DatasetIndex:
    """Parse, check and audit a dataset (see the module docstring). Bad input -> ``DatasetFormatError``."""
    root = resolve_root(root)
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "not found"
        raise DatasetFormatError(f"{root}: dataset folder for {name!r} {state}")
    index, hit = parse_dataset(name, root, options, cache)
    index.extras["cache_hit"] = hit
    index.missing_images = FolderListing().missing(r.file for r in index.images)
    index.warnings = [*index.warnings, *audit(index)]
    return index


# --------------------------------------------------------------------------------------
# generic audit
# --------------------------------------------------------------------------------------
def audit(index: DatasetIndex) -> list[str]:
    """Warnings every dataset gets (see the module docstring). One pass over captions and images."""
    warnings = []
    if index.missing_images:
        rel = [_relative(p, index.root) for p in index.missing_images]
        warnings.append(
            f"{len(index.missing_images)} of {len(index.images)} images are missing, e.g. {examples(rel)} "
            "(training refuses to start unless data.drop_missing_images is true)"
        )
    empty: list[int] = []
    first_owner: dict[str, int] = {}
    shared: dict[str, None] = {}  # ordered set
    captioned = set()
    for caption in index.captions:
        captioned.add(caption.image_index)
        if not caption.text.strip():
            empty.append(caption.image_index)
        elif first_owner.setdefault(caption.text, caption.pid) != caption.pid:
            shared[caption.text] = None
    if empty:
        paths = [_relative(index.images[i].file, index.root) for i in empty]
        warnings.append(f"{len(empty)} empty captions, e.g. on {examples(paths)}")
    if shared:
        quoted = [repr(t[:60] + ("..." if len(t) > 60 else "")) for t in shared]
        warnings.append(
            f"{len(shared)} caption texts appear on images of different identities, e.g. {examples(quoted)} "
            "(kept: never deduplicated across identities)"
        )
    per_split: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    uncaptioned: dict[str, int] = defaultdict(int)
    for image in index.images:
        per_split[image.split][image.pid] += 1
        uncaptioned[image.split] += image.index not in captioned
    for split in SPLITS:
        if split not in per_split:
            continue
        counts = per_split[split]
        if single := sum(1 for n in counts.values() if n == 1):
            warnings.append(f"{split}: {single} of {len(counts)} identities have a single image")
        if uncaptioned[split]:
            total = sum(counts.values())
            warnings.append(f"{split}: {uncaptioned[split]} of {total} images have no caption (gallery only)")
    return warnings


def _relative(path: str | os.PathLike, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (for short messages)."""
    path, prefix = os.fspath(path), os.fspath(root) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else path


def compare_published(index: DatasetIndex, published: dict[str, tuple[int, int, int]], hint: str = "") -> list[str]:
    """Warnings for splits whose (identities, images, captions) differ from the published counts."""
    summary = index.summary()
    warnings = []
    for split, expected in published.items():
        got = summary[split]
        counts = (got["identities"], got["images"], got["captions"])
        if counts != tuple(expected):
            warnings.append(
                f"{split}: {counts[0]} identities / {counts[1]} images / {counts[2]} captions differ from the "
                f"published {expected[0]} / {expected[1]} / {expected[2]}{hint}"
            )
    return warnings
