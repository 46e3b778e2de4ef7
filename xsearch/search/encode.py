"""``xsearch encode``: a method's embeddings of an image folder or a caption file, written with their ids.

Embeddings are what the method returns (``encode_gallery`` for images, ``encode_queries`` for captions), not
normalised: cosine methods compare them by cosine, others (``partlevel``) through their own ``similarity``; the file's
metadata says which (``similarity``).

* ``.safetensors``: tensor ``embeddings`` ``(N, D)`` float32; the metadata entry ``xsearch`` is a JSON string with
  ``kind`` (``images`` / ``captions``), ``ids``, ``paths`` or ``texts`` (row order), ``skipped``, the method,
  checkpoint and preprocessing.
* ``.parquet`` (needs ``pyarrow``): one row per item, columns ``id``, ``path`` or ``text``, ``embedding``
  (fixed-size list of float32); the same JSON under the schema metadata key ``xsearch``.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xsearch.atomic import atomic_path
from xsearch.search.images import embed_paths, scan_images
from xsearch.search.model_io import LoadedModel, checkpoint_info, embed_queries, load_model

FORMATS = (".safetensors", ".parquet")


@dataclass
class Captions:
    """Captions read from a file: ``ids[i]`` (a JSONL ``id``, else the 1-based line number, as a string) and
    ``texts[i]``."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def read_captions(path: str | Path) -> Captions:
    """A ``.txt`` file (one caption per line; blank lines skipped, ids = line numbers) or ``.jsonl`` file (one object
    per line with a non-empty ``text`` and an optional ``id``; blank lines skipped). Raises
    :class:`FileNotFoundError` / :class:`ValueError` naming the file (and line)."""
    path = Path(path)
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise ValueError(f"--captions {path}: expected a .txt (one caption per line) or .jsonl file ({{\"id\", \"text\"}} per line)")
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} does not exist")
    captions = Captions()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix.lower() == ".txt":
            captions.ids.append(str(number))
            captions.texts.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{number}: expected an object with a non-empty \"text\" string")
        captions.ids.append(str(row.get("id", number)))
        captions.texts.append(text.strip())
    if len(set(captions.ids)) != len(captions.ids):
        duplicate = next(i for i in captions.ids if captions.ids.count(i) > 1)
        raise ValueError(f"{path}: id {duplicate!r} appears more than once")
    if not captions.texts:
        raise ValueError(f"{path}: no captions in it")
    return captions


def _metadata(loaded: LoadedModel, kind: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "method": loaded.method, "class_path": loaded.class_path, "similarity": loaded.similarity,
            "checkpoint": loaded.checkpoint.to_json(), "preprocessing": loaded.preprocessing(), **extra}


def encode_images(loaded: LoadedModel, folder: str | Path, batch_size: int = 64, workers: int = 0,
                  progress: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """Every image under ``folder`` -> ``(N, D)`` gallery embeddings and metadata (``ids`` = ``paths`` relative to
    the folder, row order; ``skipped``: unreadable files and why)."""
    folder = Path(folder).absolute()
    files = scan_images(folder)
    if not files:
        raise ValueError(f"no image under {folder}")
    embeddings, rows, skipped = embed_paths(loaded, [folder / f.path for f in files], batch_size, workers,
                                            "embedding images" if progress else None)
    paths = [files[r].path for r in rows]
    return embeddings, _metadata(loaded, "images", root=str(folder), ids=paths, paths=paths,
                                 skipped=[{"path": files[r].path, "reason": reason} for r, reason in skipped])


def encode_captions(loaded: LoadedModel, path: str | Path, batch_size: int = 64,
                    progress: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """Every caption of ``path`` (:func:`read_captions`) -> ``(N, D)`` query embeddings and metadata (``ids``,
    ``texts``)."""
    from tqdm.auto import tqdm

    captions = read_captions(path)
    chunks = [embed_queries(loaded, captions.texts[start : start + batch_size])
              for start in tqdm(range(0, len(captions.texts), batch_size), desc="embedding captions", disable=not progress)]
    return torch.cat(chunks), _metadata(loaded, "captions", source=str(Path(path).absolute()), ids=captions.ids,
                                        texts=captions.texts)


def check_output(out: str | Path) -> Path:
    """``out`` if it ends in a supported format (and ``pyarrow`` is installed for ``.parquet``), else :class:`ValueError`."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"--out {out}: expected a .safetensors or .parquet file")
    if out.suffix.lower() == ".parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise ValueError(f"--out {out}: writing parquet needs pyarrow (pip install pyarrow); or write .safetensors")
    return out


def write_embeddings(out: str | Path, embeddings: torch.Tensor, metadata: dict[str, Any]) -> Path:
    """Write ``(N, D)`` ``embeddings`` and ``metadata`` (with ``ids`` and ``paths`` or ``texts`` per row) atomically,
    as safetensors or parquet by ``out``'s suffix."""
    out = check_output(out)
    embeddings = embeddings.detach().float().cpu().contiguous()
    metadata = {**metadata, "shape": list(embeddings.shape)}
    if out.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(out) as tmp:
            save_file({"embeddings": embeddings}, str(tmp), metadata={"xsearch": json.dumps(metadata)})
        return out
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = embeddings.shape[1]
    values = pa.array(embeddings.numpy().reshape(-1), type=pa.float32())
    columns = {"id": pa.array(metadata["ids"], type=pa.string())}
    column, texts = ("path", metadata["paths"]) if metadata["kind"] == "images" else ("text", metadata["texts"])
    columns[column] = pa.array(texts, type=pa.string())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(values, dim)
    table = pa.table(columns).replace_schema_metadata({"xsearch": json.dumps(metadata)})
    with atomic_path(out) as tmp:
        pq.write_table(table, str(tmp))
    return out


def encode_to_file(checkpoint: str | Path, out: str | Path, images: str | Path | None = None,
                   captions: str | Path | None = None, batch_size: int = 64, workers: int = 0,
                   device: str | None = None, progress: bool = True) -> tuple[Path, torch.Tensor, dict[str, Any]]:
    """Load the method of ``checkpoint`` and write the embeddings of ``images`` (a folder) or ``captions`` (a file)
    to ``out``. Returns ``(out, embeddings (N, D), metadata)``."""
    if (images is None) == (captions is None):
        raise ValueError("give either --images DIR or --captions FILE")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size must be at least 1 and --workers at least 0, got {batch_size} and {workers}")
    check_output(out)
    if captions is not None:
        read_captions(captions)  # a bad caption file fails before the model loads
    elif not Path(images).is_dir():
        scan_images(images)  # names the missing folder
    info = checkpoint_info(checkpoint)
    loaded = load_model(info.path, device, info)
    if images is not None:
        embeddings, metadata = encode_images(loaded, images, batch_size, workers, progress)
    else:
        embeddings, metadata = encode_captions(loaded, captions, batch_size, progress)
    return write_embeddings(out, embeddings, metadata), embeddings, metadata
