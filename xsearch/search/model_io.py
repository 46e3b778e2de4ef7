"""Rebuild a trained method from its checkpoint, with the image preprocessing it was trained with.

Every checkpoint ``xsearch fit`` writes holds ``hyper_parameters`` (the model's config, with ``_class_path`` and
``_instantiator`` added by LightningCLI) and ``datamodule_hyper_parameters`` (``image_size``, ``crop``). The model is
rebuilt by the one checkpoint loader, :func:`xsearch.models.checkpoint.load_method` (registered classes only, nothing
the file names gets imported, ``weights_only=True``, tensors strictly checked, pretrained weights not fetched again),
then moved to the search device.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from xsearch.datamodules.transforms import INTERPOLATIONS
from xsearch.models.checkpoint import load_method, read_checkpoint
from xsearch.registry import METHODS

read_checkpoint_header = read_checkpoint
"""The checkpoint's dictionary, tensors memory-mapped (:func:`xsearch.models.checkpoint.read_checkpoint`)."""

log = logging.getLogger(__name__)

SimilarityKind = Literal["cosine", "model"]
"""``cosine``: the method ranks by the cosine of one vector per item (the base class's ``similarity``), so a FAISS
inner-product index over L2-normalised embeddings ranks exactly like it. ``model``: the method defines its own
``similarity`` (e.g. ``partlevel``: global + part cosines), searched exactly through it."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Identity of a checkpoint file: absolute ``path``, content ``sha256``, ``size`` in bytes, ``mtime_ns``."""

    path: str
    sha256: str
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "mtime_ns": self.mtime_ns}


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Stat and hash ``path``; :class:`FileNotFoundError` naming it when it is not a file."""
    path = Path(path).absolute()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    stat = path.stat()
    return CheckpointInfo(str(path), file_sha256(path), stat.st_size, stat.st_mtime_ns)


@dataclass
class LoadedModel:
    """A method ready to embed, and how to feed it.

    ``model``: the :class:`~xsearch.models.RetrievalModule` in eval mode on ``device``. ``method``: its registered
    name (or class name). ``class_path``: ``_class_path`` from the checkpoint. ``image_size``: ``(H, W)`` images are
    resized to; ``crop``: the training crop (``None``, ``"center"`` or ``(top, left, bottom, right)`` fractions);
    ``interpolation``: the training resize filter (``bicubic`` or ``bilinear``).
    ``similarity``: :data:`SimilarityKind`. ``composed``: whether queries may carry a reference image.
    """

    model: Any
    method: str
    class_path: str
    image_size: tuple[int, int]
    crop: tuple[float, float, float, float] | Literal["center"] | None
    interpolation: str
    similarity: SimilarityKind
    composed: bool
    checkpoint: CheckpointInfo
    device: torch.device

    def preprocessing(self) -> dict[str, Any]:
        crop = list(self.crop) if isinstance(self.crop, tuple) else self.crop
        return {"image_size": list(self.image_size), "crop": crop, "interpolation": self.interpolation}


def method_name(cls: type) -> str:
    """The registered name of a method class (``dual_encoder``...), else its class name."""
    return METHODS.name_of(cls) or cls.__name__


def similarity_kind(cls: type) -> SimilarityKind:
    """``cosine`` when the class keeps the base class's ``similarity``, else ``model``."""
    from xsearch.models import RetrievalModule

    return "cosine" if cls.similarity is RetrievalModule.similarity else "model"


def _parse_preprocessing(data: Any, source: str | Path) -> tuple[tuple[int, int], Any, str]:
    if not isinstance(data, dict) or data.get("image_size") is None:
        raise ValueError(f"{source}: no datamodule_hyper_parameters.image_size (not written by `xsearch fit`?): cannot "
                         "preprocess images the way the model was trained")
    size = data["image_size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{source}: datamodule_hyper_parameters.image_size {size!r}: expected [H, W]")
    crop = data.get("crop")
    if isinstance(crop, (list, tuple)) and len(crop) == 4 and all(isinstance(v, (int, float)) for v in crop):
        crop = tuple(float(v) for v in crop)
    elif crop not in (None, "center"):
        raise ValueError(f"{source}: datamodule_hyper_parameters.crop {crop!r}: expected null, 'center' or 4 fractions")
    interpolation = data.get("interpolation") or "bicubic"  # checkpoints from before the filter was a choice: bicubic
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{source}: datamodule_hyper_parameters.interpolation {interpolation!r}: expected one of "
                         f"{', '.join(INTERPOLATIONS)}")
    return (int(size[0]), int(size[1])), crop, interpolation


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, device: str | torch.device | None = None,
               info: CheckpointInfo | None = None) -> LoadedModel:
    """Rebuild the method of checkpoint ``path`` in eval mode on ``device`` (default: CUDA when available).

    ``info`` (from :func:`checkpoint_info`) saves hashing the file again. Raises :class:`FileNotFoundError` /
    :class:`ValueError` naming the file and what is missing or wrong.
    """
    info = info or checkpoint_info(path)
    model, header = load_method(info.path)
    cls = type(model)
    image_size, crop, interpolation = _parse_preprocessing(header.get("datamodule_hyper_parameters"), info.path)
    class_path = header["hyper_parameters"]["_class_path"]
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    return LoadedModel(
        model=model, method=method_name(cls), class_path=class_path, image_size=image_size, crop=crop, interpolation=interpolation,
        similarity=similarity_kind(cls), composed=bool(cls.composed_queries), checkpoint=info, device=device,
    )


def _check_embeddings(output: Any, rows: int, what: str, method: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != rows:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"method {method}: {what} gave {shape}, not one vector per item ({rows}, D): not supported here")
    return output.detach().float().cpu()


def embed_images(loaded: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 images, preprocessed with :func:`xsearch.datamodules.transforms.load_image` at
    ``loaded.image_size`` / ``crop`` -> ``(B, D)`` fp32 CPU gallery embeddings, as ``encode_gallery`` returns them
    (not normalised). A method whose gallery embedding needs more than the image is refused, naming it and the key."""
    try:
        with torch.inference_mode():
            output = loaded.model.encode_gallery({"image": images.to(loaded.device)})
    except KeyError as error:
        raise ValueError(f"method {loaded.method}: its gallery embedding needs {error.args[0] if error.args else error} "
                         "besides the image; only methods that embed an image alone can index a folder") from None
    return _check_embeddings(output, len(images), "encode_gallery", loaded.method)


def embed_queries(loaded: LoadedModel, texts: list[str], reference_images: torch.Tensor | None = None) -> torch.Tensor:
    """``B`` query texts (and, for composed queries, ``(B, 3, H, W)`` uint8 reference images) -> ``(B, D)`` fp32 CPU
    query embeddings from ``encode_queries``. Raises :class:`ValueError` naming the method when it cannot take a
    reference image, or needs more than the text."""
    batch: dict[str, Any] = {"text": list(texts)}
    if reference_images is not None:
        if not loaded.composed:
            raise ValueError(f"method {loaded.method} does not take a reference image (no composed queries); search "
                             "with text alone, or use a method with composed queries (e.g. xmodal)")
        batch["reference_image"] = reference_images.to(loaded.device)
    try:
        with torch.inference_mode():
            output = loaded.model.encode_queries(batch)
    except KeyError as error:
        raise ValueError(f"method {loaded.method} cannot embed a text-only query: "
                         f"{error.args[0] if error.args else error}") from None
    return _check_embeddings(output, len(texts), "encode_queries", loaded.method)
