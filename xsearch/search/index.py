"""Search indexes of image folders: build, update and load.

An index folder holds (``<g>`` = a generation number, bumped by every write)::

    index.json            header: images folder, checkpoint (path, sha256, size, mtime), method, preprocessing,
                          embedding size, how it is searched, the skipped files, and the names of the files below
    items.<g>.jsonl       the metadata table: one row per embedding, {"path" (relative to the images folder),
                          "size", "mtime_ns"}, sorted by path
    embeddings.<g>.npy    (N, D) float32: the method's gallery embeddings as ``encode_gallery`` returns them
    faiss.<g>.index       FAISS inner-product index over the L2-normalised rows (cosine methods only)
    .writer.lock          held by the ``xsearch index`` run writing the folder (a second one fails at once)

Every file is written atomically under a new generation and ``index.json`` last, so a reader (or a run killed
half way) sees the previous index or the new one, never a mix; files of older generations are removed after. A run
killed mid-write leaves the hidden temporary file of that write (``.embeddings.<g>.npy.<random>.npy``...): the next
``xsearch index`` run into the folder removes it once it holds the writer lock.

Methods that rank by the cosine of one vector per item (the base class's ``similarity``) get a FAISS index
(``IndexFlatIP`` = exact by default; any ``index_factory`` string, e.g. ``IVF4096,Flat`` or ``HNSW32``, for millions of
images). Methods with their own ``similarity`` (``partlevel``: global + part cosines) are searched exactly through
it, over the stored embeddings in chunks; an approximate ``--factory`` is refused for them.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from xsearch.atomic import atomic_path, temporary_target, write_text_atomic
from xsearch.search.images import IMAGE_EXTENSIONS, ImageFile, embed_paths, scan_images
from xsearch.models.checkpoint import check_class_paths, read_checkpoint
from xsearch.search.model_io import CheckpointInfo, checkpoint_info, load_model, method_name, similarity_kind

log = logging.getLogger(__name__)

FORMAT = "xsearch-index"
VERSION = 1
HEADER = "index.json"
LOCK = ".writer.lock"  # held by the xsearch index run writing the folder
INDEX_FILE = re.compile(r"index\.json|items\.\d+\.jsonl|embeddings\.\d+\.npy|faiss\.\d+\.index")
"""The names of the files an index folder holds (besides :data:`LOCK`)."""
DEFAULT_FACTORY = "Flat"
DEFAULT_NPROBE = 16
"""Inverted lists visited per query by an IVF index unless ``--nprobe`` says otherwise (at most ``nlist``)."""
EXACT_CHUNK = 65536
"""Gallery rows scored at once by an exact search through a method's own similarity."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def faiss_module() -> Any:
    """``import faiss``, without its loader's INFO lines about which CPU build it picked."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """``(N, D)`` rows scaled to unit L2 norm (zero rows stay zero), float32 C-contiguous."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def make_faiss_index(vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> Any:
    """A FAISS inner-product index over ``(N, D)`` unit rows: ``IndexFlatIP`` for ``Flat``, else
    ``index_factory(D, factory, METRIC_INNER_PRODUCT)``, trained on the rows when it needs training (IVF), with
    ``nprobe`` set to :data:`DEFAULT_NPROBE`. Raises :class:`ValueError` naming ``factory`` when FAISS cannot build
    or train it."""
    faiss = faiss_module()
    dim = vectors.shape[1]
    if factory == "Flat":
        index = faiss.IndexFlatIP(dim)
    else:
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ValueError(f"--factory {factory!r}: FAISS cannot build it ({_faiss_reason(error)}); e.g. Flat, "
                             "IVF1024,Flat, HNSW32") from None
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as error:
            raise ValueError(f"--factory {factory!r}: training it on the {len(vectors)} embeddings failed "
                             f"({_faiss_reason(error)}); use fewer lists or Flat for a folder this small") from None
    index.add(vectors)
    ivf = _ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, DEFAULT_NPROBE)
    return index


def _ivf(index: Any) -> Any:
    faiss = faiss_module()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _faiss_reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return text.split(": ", 1)[-1] if " at " in text else text


def check_factory(factory: str, similarity: str, method: str, count: int | None = None) -> None:
    """Refuse what cannot work before anything is embedded: an unparsable factory string, an IVF index with more
    lists than the ``count`` images to train it on, or an approximate FAISS index for a method that ranks with its
    own similarity."""
    faiss = faiss_module()
    if similarity != "cosine" and factory != DEFAULT_FACTORY:
        raise ValueError(f"--factory {factory!r}: method {method} ranks with its own similarity (not the cosine of one "
                         "vector), so its index is searched exactly through the model; leave --factory at Flat")
    try:
        probe = faiss.index_factory(8, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"--factory {factory!r}: FAISS cannot parse it ({_faiss_reason(error)}); e.g. Flat, "
                         "IVF1024,Flat, HNSW32") from None
    ivf = _ivf(probe)
    if ivf is not None and count is not None and count < ivf.nlist:
        raise ValueError(f"--factory {factory!r}: {ivf.nlist} inverted lists need at least {ivf.nlist} images to train "
                         f"(about 40 per list to train well); the folder has {count}: use fewer lists, or Flat")


@dataclass
class SearchIndex:
    """A loaded index. ``items[i]`` is the image of row ``i`` of ``embeddings`` ``(N, D)`` float32 (memory-mapped);
    ``faiss``: the FAISS index over the normalised rows, or ``None`` when searched through the model's similarity."""

    folder: Path
    header: dict[str, Any]
    items: list[ImageFile]
    embeddings: np.ndarray
    faiss: Any = None

    @property
    def images_root(self) -> Path:
        return Path(self.header["images_root"])

    @property
    def checkpoint(self) -> CheckpointInfo:
        recorded = self.header["checkpoint"]
        return CheckpointInfo(recorded["path"], recorded["sha256"], recorded["size"], recorded["mtime_ns"])

    def __len__(self) -> int:
        return len(self.items)

    def search(self, queries: torch.Tensor, k: int,
               similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               nprobe: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top ``k`` rows of each of the ``(Q, D)`` query embeddings, best first: ``(scores, rows)``, each
        ``(Q, min(k, N))``; a row of ``-1`` (score ``-inf``) where an approximate index found fewer. Scores are
        cosines (FAISS over unit rows) or the method's ``similarity`` (exact, required then; ties: lower row first)."""
        k = min(int(k), len(self))
        queries = queries.detach().float().cpu()
        if k <= 0:
            return torch.zeros(len(queries), 0), torch.zeros(len(queries), 0, dtype=torch.long)
        if self.faiss is not None:
            if nprobe is not None:
                ivf = _ivf(self.faiss)
                if ivf is None:
                    raise ValueError(f"--nprobe applies to IVF indexes; {self.folder} is {self.header['search']['factory']}")
                ivf.nprobe = max(1, min(int(nprobe), ivf.nlist))
            scores, rows = self.faiss.search(_normalised(queries.numpy()), k)
            scores, rows = torch.from_numpy(scores), torch.from_numpy(rows).long()
            return scores.masked_fill(rows < 0, float("-inf")), rows
        if similarity is None:
            raise ValueError(f"{self.folder} is searched through the method's own similarity: pass it")
        best_scores = torch.zeros(len(queries), 0)
        best_rows = torch.zeros(len(queries), 0, dtype=torch.long)
        for start in range(0, len(self), EXACT_CHUNK):
            gallery = torch.from_numpy(np.array(self.embeddings[start : start + EXACT_CHUNK], dtype=np.float32))
            with torch.inference_mode():
                scores = similarity(queries, gallery).float().cpu()
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            best_scores = torch.cat([best_scores, scores.gather(1, order)], dim=1)
            best_rows = torch.cat([best_rows, order + start], dim=1)
            keep = torch.sort(best_scores, dim=1, descending=True, stable=True).indices[:, :k]
            best_scores, best_rows = best_scores.gather(1, keep), best_rows.gather(1, keep)
        return best_scores, best_rows


def _count(low: int) -> Callable[[Any], bool]:
    """Whether a value is an integer (not a boolean) of at least ``low``."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _text(value: Any) -> bool:
    """Whether a value is a non-empty string."""
    return isinstance(value, str) and value != ""


def _file_name(value: Any) -> bool:
    """Whether a value is a plain file name inside the index folder (no folder part)."""
    return _text(value) and "/" not in value and "\\" not in value and value not in (".", "..")


def _crop(value: Any) -> bool:
    """Whether a value is a training crop as the header records it: null, ``center`` or four fractions."""
    return value is None or value == "center" or (isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in value))


def _skipped(value: Any) -> bool:
    """Whether a value is the header's list of skipped files, each with its ``path`` and ``reason``."""
    return isinstance(value, list) and all(
        isinstance(s, dict) and _text(s.get("path")) and isinstance(s.get("reason"), str) for s in value)


HEADER_FIELDS: tuple[tuple[str, Callable[[Any], bool], str, bool], ...] = (
    ("files", lambda v: isinstance(v, dict), "an object naming the index files", True),
    ("files.items", _file_name, "a file name", True),
    ("files.embeddings", _file_name, "a file name", True),
    ("files.faiss", lambda v: v is None or _file_name(v), "a file name or null", False),
    ("count", _count(0), "an integer >= 0", True),
    ("dim", _count(1), "an integer >= 1", True),
    ("images_root", _text, "the indexed folder's path (text)", True),
    ("checkpoint", lambda v: isinstance(v, dict), "an object", True),
    ("checkpoint.path", _text, "a file path (text)", True),
    ("checkpoint.sha256", lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
     "64 lowercase hex digits", True),
    ("checkpoint.size", _count(0), "an integer >= 0", True),
    ("checkpoint.mtime_ns", _count(-(2**63)), "an integer", True),
    ("search", lambda v: isinstance(v, dict), "an object", True),
    ("search.kind", lambda v: v in ("faiss", "exact"), "'faiss' or 'exact'", True),
    ("search.factory", _text, "a FAISS factory string (text)", True),
    ("model", lambda v: isinstance(v, dict), "an object", True),
    ("model.method", _text, "a method name (text)", True),
    ("model.composed_queries", lambda v: isinstance(v, bool), "true or false", False),
    ("preprocessing", lambda v: isinstance(v, dict), "an object", True),
    ("preprocessing.image_size", lambda v: isinstance(v, list) and len(v) == 2 and all(_count(1)(x) for x in v),
     "[height, width] in pixels (integers >= 1)", True),
    ("preprocessing.crop", _crop, "null, 'center' or [top, left, bottom, right] fractions", False),
    ("preprocessing.interpolation", lambda v: v in ("bicubic", "bilinear"), "'bicubic' or 'bilinear'", False),
    ("skipped", _skipped, "a list of {\"path\", \"reason\", ...} objects", False),
    ("generation", _count(0), "an integer >= 0", False),
    ("created", lambda v: isinstance(v, str), "a time (text)", False),
    ("updated", lambda v: isinstance(v, str), "a time (text)", False),
)
"""Every header field read when an index is searched, served or updated: dotted name, check, what it must be (in
words), and whether it is required (an optional one may be absent, not wrong)."""

_ABSENT = object()


def _header_field(header: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b`` in ``header``, or :data:`_ABSENT`."""
    value: Any = header
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _shown(value: Any, limit: int = 60) -> str:
    """A field's value for an error message: its JSON (one line, at most ``limit`` characters)."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_header(header: dict[str, Any], header_path: Path) -> None:
    """:class:`ValueError` naming ``header_path``, the first field of :data:`HEADER_FIELDS` that is missing or of the
    wrong type, what was expected and what it holds (a hand-edited ``index.json``); a FAISS-searched index must name
    its ``files.faiss``."""
    for dotted, valid, expected, required in HEADER_FIELDS:
        value = _header_field(header, dotted)
        if (value is _ABSENT and not required) or (value is not _ABSENT and valid(value)):
            continue
        got = "nothing (the field is missing)" if value is _ABSENT else _shown(value)
        raise ValueError(f"{header_path}: field {dotted}: expected {expected}, got {got}; fix it, or rebuild the index "
                         "with xsearch index ... --rebuild")
    if header["search"]["kind"] == "faiss" and not _file_name(header["files"].get("faiss")):
        raise ValueError(f"{header_path}: field files.faiss: expected a file name (search.kind is 'faiss'), got "
                         f"{_shown(header['files'].get('faiss'))}; fix it, or rebuild the index with xsearch index ... "
                         "--rebuild")


def load_index(folder: str | Path, with_faiss: bool = True) -> SearchIndex:
    """Read an index folder, checking its header's fields (:func:`check_header`) and that its files exist and agree
    (counts, sizes). Raises :class:`FileNotFoundError` naming the folder or file that is missing, :class:`ValueError`
    naming the file (and for the header the field) that is corrupt or inconsistent."""
    folder = Path(folder)
    header_path = folder / HEADER
    if not folder.is_dir():
        raise FileNotFoundError(f"index folder {folder} does not exist; build one with "
                                f"xsearch index --ckpt CKPT --images DIR --out {folder}")
    if not header_path.is_file():
        raise FileNotFoundError(f"{folder} is not an xsearch index (no {HEADER}); build one with "
                                f"xsearch index --ckpt CKPT --images DIR --out {folder}")
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{header_path}: corrupt index header ({error}); rebuild it with xsearch index ... --rebuild") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{header_path}: not an xsearch index header (format {header.get('format') if isinstance(header, dict) else None!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{header_path}: index format version {header.get('version')!r}; this xsearch reads {VERSION}: "
                         "rebuild it with xsearch index ... --rebuild")
    check_header(header, header_path)
    files, count, dim = header["files"], header["count"], header["dim"]

    def member(key: str) -> Path:
        path = folder / files[key]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the index (named by {header_path}); rebuild it with "
                                    "xsearch index ... --rebuild")
        return path

    items = _read_items(member("items"))
    embeddings_path = member("embeddings")
    try:
        embeddings = np.load(embeddings_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{embeddings_path}: corrupt embeddings ({error})") from None
    problems = []
    if len(items) != count:
        problems.append(f"{len(items)} items for {count} images")
    if embeddings.ndim != 2 or embeddings.shape != (count, dim):
        problems.append(f"embeddings {embeddings.shape} for ({count}, {dim})")
    index = None
    if header["search"]["kind"] == "faiss" and with_faiss:
        faiss = faiss_module()
        path = member("faiss")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise ValueError(f"{path}: corrupt FAISS index ({_faiss_reason(error)})") from None
        if index.ntotal != count or index.d != dim:
            problems.append(f"FAISS index of {index.ntotal} x {index.d} for ({count}, {dim})")
    if problems:
        raise ValueError(f"{folder}: inconsistent index ({'; '.join(problems)}); rebuild it with xsearch index ... --rebuild")
    return SearchIndex(folder, header, items, embeddings, index)


def _read_items(path: Path) -> list[ImageFile]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
                items.append(ImageFile(str(row["path"]), int(row["size"]), int(row["mtime_ns"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: corrupt item row ({error})") from None
    return items


@dataclass
class BuildReport:
    """What :func:`build_index` did: counts of images ``embedded`` (new or changed), ``kept`` (unchanged, not
    embedded again), ``removed`` (deleted from the folder), ``skipped`` (unreadable: ``(path, reason)``), and
    ``total`` images in the index; ``written``: whether the index files were (re)written."""

    folder: Path
    embedded: int = 0
    kept: int = 0
    removed: int = 0
    total: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    written: bool = True


def build_index(checkpoint: str | Path, images: str | Path, out: str | Path, batch_size: int = 64,
                factory: str | None = None, rebuild: bool = False, workers: int = 0,
                device: str | torch.device | None = None, progress: bool = True) -> BuildReport:
    """Index every image under ``images`` with the method of ``checkpoint`` into the folder ``out``.

    An existing index of the same folder and checkpoint is updated: only new and changed images (size or mtime) are
    embedded, deleted ones dropped, unchanged unreadable ones stay skipped. Another checkpoint (by content) or another
    images folder is refused unless ``rebuild``. ``factory`` (default: the existing index's, else ``Flat``) is the
    FAISS ``index_factory`` string; changing it rebuilds the FAISS index from the stored embeddings.
    """
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size must be at least 1 and --workers at least 0, got {batch_size} and {workers}")
    images, out = Path(images).absolute(), Path(out).absolute()
    info = checkpoint_info(checkpoint)
    with _sole_writer(out):
        return _build(info, images, out, batch_size, factory, rebuild, workers, device, progress)


@contextmanager
def _sole_writer(out: Path) -> Iterator[None]:
    """Hold the writer lock of the index folder ``out`` (created if missing; removed again if this run leaves it with
    nothing but the lock): a second ``xsearch index`` into the same folder fails at once instead of mixing its files
    with the first one's. Refuses a file, or a folder with files that is not an index (files named like an index's,
    left by a first run killed before it wrote ``index.json``, do not count). Holding the lock, it removes the temporary
    files that runs killed mid-write left (:func:`_remove_temporaries`)."""
    from filelock import FileLock, Timeout

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; an index is a folder")
    if out.is_dir() and not (out / HEADER).is_file() and not all(_own_file(p.name) for p in out.iterdir()):
        raise FileExistsError(f"--out {out} is a folder with files but no {HEADER}: not an xsearch index; choose a new "
                              "or empty folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BlockingIOError(f"{out} is being written by another xsearch index run (it holds {out / LOCK}): wait for "
                              "it to finish, or index into another --out") from None
    try:
        _remove_temporaries(out)
        yield
    finally:
        lock.release()
        if created and [p.name for p in out.iterdir()] == [LOCK]:  # failed before writing anything: leave no folder
            shutil.rmtree(out, ignore_errors=True)


def _own_file(name: str) -> bool:
    """Whether ``name`` is one of an index folder's files: the lock, an :data:`INDEX_FILE`, or the temporary of one."""
    target = temporary_target(name)
    return name == LOCK or INDEX_FILE.fullmatch(name) is not None or (
        target is not None and INDEX_FILE.fullmatch(target) is not None)


def _remove_temporaries(out: Path) -> list[str]:
    """Remove the temporaries of :data:`INDEX_FILE` files in ``out`` (named like :func:`xsearch.atomic.atomic_path`
    names them) and return their names. Called with the writer lock held, so no live run is writing them: each is what
    a run killed mid-write left."""
    removed = []
    for path in out.iterdir():
        target = temporary_target(path.name)
        if target is not None and INDEX_FILE.fullmatch(target) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        log.info("removed %d temporary files left in %s by an interrupted xsearch index run", len(removed), out)
    return sorted(removed)


def _build(info: CheckpointInfo, images: Path, out: Path, batch_size: int, factory: str | None, rebuild: bool,
           workers: int, device: str | torch.device | None, progress: bool) -> BuildReport:
    """:func:`build_index` under the folder's writer lock."""
    existing = _existing(out, info, images, rebuild)
    factory = factory or (existing.header["search"]["factory"] if existing is not None else DEFAULT_FACTORY)
    cls = check_class_paths(read_checkpoint(info.path), info.path)
    kind = similarity_kind(cls)
    check_factory(factory, kind, method_name(cls))
    files = scan_images(images, exclude=[out])
    check_factory(factory, kind, method_name(cls), len(files))
    old = {item.path: (row, item) for row, item in enumerate(existing.items)} if existing is not None else {}
    old_skipped = {s["path"]: s for s in existing.header.get("skipped", [])} if existing is not None else {}
    todo, kept, still_skipped = [], {}, []
    for file in files:
        if file.path in old and old[file.path][1] == file:
            kept[file.path] = old[file.path][0]
        elif file.path in old_skipped and (old_skipped[file.path].get("size"), old_skipped[file.path].get("mtime_ns")) == (file.size, file.mtime_ns):
            still_skipped.append((file, old_skipped[file.path]["reason"]))
        else:
            todo.append(file)
    present = {f.path for f in files}
    removed = sum(1 for p in old if p not in present)
    same_factory = existing is not None and existing.header["search"]["factory"] == factory
    if existing is not None and not todo and not removed and same_factory and \
            [s["path"] for s in existing.header.get("skipped", [])] == [f.path for f, _ in still_skipped]:
        return BuildReport(out, kept=len(kept), total=len(kept), written=False,
                           skipped=[(f.path, r) for f, r in still_skipped])

    new_rows: dict[str, int] = {}
    embedded = torch.zeros(0, 0)
    skipped = list(still_skipped)
    loaded = None
    if todo:
        loaded = load_model(info.path, device, info)
        embedded, rows, failed = embed_paths(loaded, [images / f.path for f in todo], batch_size, workers,
                                             "embedding images" if progress else None)
        new_rows = {todo[r].path: j for j, r in enumerate(rows)}
        skipped += [(todo[r], reason) for r, reason in failed]
    dim = int(existing.header["dim"]) if existing is not None else (embedded.shape[1] if new_rows else 0)
    if new_rows and embedded.shape[1] != dim:
        raise ValueError(f"{out}: the index holds {dim}-d embeddings, the model gives {embedded.shape[1]}-d; use --rebuild")
    final = [f for f in files if f.path in kept or f.path in new_rows]  # sorted by path, like files
    matrix = np.empty((len(final), dim), dtype=np.float32)
    from_old = [(i, kept[f.path]) for i, f in enumerate(final) if f.path in kept]
    from_new = [(i, new_rows[f.path]) for i, f in enumerate(final) if f.path in new_rows]
    if from_old:
        matrix[[i for i, _ in from_old]] = existing.embeddings[[r for _, r in from_old]]
    if from_new:
        matrix[[i for i, _ in from_new]] = embedded.numpy()[[r for _, r in from_new]]
    if not final:
        raise ValueError(f"no readable image under {images} (looked for {', '.join(IMAGE_EXTENSIONS)}; "
                         f"{len(skipped)} unreadable)")
    skipped.sort(key=lambda s: s[0].path)
    search = {"kind": "faiss" if kind == "cosine" else "exact", "factory": factory,
              "metric": "inner_product of L2-normalised embeddings (cosine)" if kind == "cosine" else "the method's similarity"}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "generation": _last_generation(out) + 1,
        "images_root": str(images),
        "checkpoint": info.to_json(),
        "model": _model_json(loaded, existing),
        "preprocessing": loaded.preprocessing() if loaded is not None else existing.header["preprocessing"],
        "dim": dim,
        "count": len(final),
        "search": search,
        "skipped": [{**f.to_json(), "reason": reason} for f, reason in skipped],
        "created": existing.header.get("created", _now()) if existing is not None else _now(),
        "updated": _now(),
    }
    _write(out, header, final, matrix, factory if kind == "cosine" else None)
    return BuildReport(out, embedded=len(new_rows), kept=len(kept), removed=removed, total=len(final),
                       skipped=[(f.path, r) for f, r in skipped])


def _model_json(loaded: Any, existing: SearchIndex | None) -> dict[str, Any]:
    """The header's ``model``: the method just loaded, else (nothing embedded) what the index already says."""
    if loaded is None:
        return dict(existing.header["model"])
    return {"method": loaded.method, "class_path": loaded.class_path, "similarity": loaded.similarity,
            "composed_queries": loaded.composed}


def _existing(out: Path, info: CheckpointInfo, images: Path, rebuild: bool) -> SearchIndex | None:
    """The index already in the folder ``out`` (checked by :func:`_sole_writer`) to update, ``None`` to start afresh;
    refuses (unless ``rebuild``) an index of another checkpoint or images folder."""
    if rebuild or not (out / HEADER).is_file():
        return None
    existing = load_index(out)
    recorded = existing.checkpoint
    if recorded.sha256 != info.sha256:
        raise ValueError(f"{out} was built with another checkpoint ({recorded.path}, sha256 {recorded.sha256[:12]}...) "
                         f"than {info.path} (sha256 {info.sha256[:12]}...): use a new --out, or --rebuild to replace it")
    if Path(existing.header["images_root"]) != images:
        raise ValueError(f"{out} indexes {existing.header['images_root']}, not {images}: use a new --out, or --rebuild "
                         "to replace it")
    return existing


def _last_generation(out: Path) -> int:
    """The generation of the index in ``out`` (0 when none, or its header does not say): a new write takes the next
    one, so it never overwrites a file the current header names (``--rebuild`` included)."""
    try:
        return int(json.loads((out / HEADER).read_text(encoding="utf-8")).get("generation", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def _write(out: Path, header: dict[str, Any], items: list[ImageFile], embeddings: np.ndarray, factory: str | None) -> None:
    """Write the generation's files, then ``index.json``; remove older generations' files."""
    generation = header["generation"]
    files = {"items": f"items.{generation}.jsonl", "embeddings": f"embeddings.{generation}.npy",
             "faiss": f"faiss.{generation}.index" if factory is not None else None}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / files["items"], "".join(json.dumps(item.to_json()) + "\n" for item in items))
    with atomic_path(out / files["embeddings"]) as tmp, open(tmp, "wb") as handle:
        np.save(handle, embeddings, allow_pickle=False)
    if factory is not None:
        faiss = faiss_module()
        index = make_faiss_index(_normalised(embeddings), factory)
        with atomic_path(out / files["faiss"]) as tmp:
            faiss.write_index(index, str(tmp))
    header["files"] = files
    write_text_atomic(out / HEADER, json.dumps(header, indent=1) + "\n")
    current = {name for name in files.values() if name}
    for pattern in ("items.*.jsonl", "embeddings.*.npy", "faiss.*.index"):
        for path in out.glob(pattern):
            if path.name not in current:
                path.unlink(missing_ok=True)
