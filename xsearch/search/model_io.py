"""Rebuild a trained method from its checkpoint, with the image preprocessing it was trained with.

Every checkpoint ``xsearch fit`` writes holds ``hyper_parameters`` (the model's config, with ``_class_path`` and
``_instantiator`` added by LightningCLI) and ``datamodule_hyper_parameters`` (``image_size``, ``crop``). The model is
rebuilt through Lightning's ``load_from_checkpoint`` on the class named by ``_class_path`` (an already imported
:class:`~xsearch.models.RetrievalModule` subclass: nothing the file names gets imported), loaded with
``weights_only=True`` (no code in the file runs), its tensors strictly checked, and put in eval mode.

Pretrained weights the config names (``pretrained: true``, ``weights: FILE`` of an encoder) are not loaded again: the
checkpoint holds every tensor, so search needs neither a download nor those files.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

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
    resized to; ``crop``: the training crop (``None``, ``"center"`` or ``(top, left, bottom, right)`` fractions).
    ``similarity``: :data:`SimilarityKind`. ``composed``: whether queries may carry a reference image.
    """

    model: Any
    method: str
    class_path: str
    image_size: tuple[int, int]
    crop: tuple[float, float, float, float] | Literal["center"] | None
    similarity: SimilarityKind
    composed: bool
    checkpoint: CheckpointInfo
    device: torch.device

    def preprocessing(self) -> dict[str, Any]:
        crop = list(self.crop) if isinstance(self.crop, tuple) else self.crop
        return {"image_size": list(self.image_size), "crop": crop}


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary, tensors memory-mapped (not read): ``hyper_parameters`` and
    ``datamodule_hyper_parameters`` are what this module needs. Raises :class:`ValueError` naming the file when it is
    not a readable PyTorch checkpoint."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (not the zip archive torch.save writes)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: refusing a checkpoint that holds more than tensors and plain values (weights_only: no "
                         f"code in a checkpoint runs): {str(error).splitlines()[0]}") from None
    except Exception as error:  # noqa: BLE001  torch raises many types for a damaged archive
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def model_class(class_path: Any, source: str | Path) -> type:
    """The :class:`~xsearch.models.RetrievalModule` subclass named ``class_path`` among the modules already imported
    (``xsearch.models`` is imported first, so every registered method resolves)."""
    importlib.import_module("xsearch.models")  # registers every method
    from xsearch.models import RetrievalModule
    from xsearch.registry import METHODS

    module_name, _, name = str(class_path).rpartition(".")
    candidate = getattr(sys.modules.get(module_name), name, None) if module_name else None
    if not (isinstance(candidate, type) and issubclass(candidate, RetrievalModule)):
        known = ", ".join(f"{n} ({METHODS.get(n).__module__}.{METHODS.get(n).__name__})" for n in METHODS.names())
        raise ValueError(f"{source}: hyper_parameters._class_path {class_path!r} is not an xsearch method; known: {known}")
    return candidate


def method_name(cls: type) -> str:
    """The registered name of a method class (``dual_encoder``...), else its class name."""
    from xsearch.registry import METHODS

    return next((n for n in METHODS.names() if METHODS.get(n) is cls), cls.__name__)


def similarity_kind(cls: type) -> SimilarityKind:
    """``cosine`` when the class keeps the base class's ``similarity``, else ``model``."""
    from xsearch.models import RetrievalModule

    return "cosine" if cls.similarity is RetrievalModule.similarity else "model"


def _without_pretrained(value: Any) -> Any:
    """A copy of a nested ``{"class_path", "init_args"}`` config with ``pretrained: False`` and ``weights: None``
    wherever an ``init_args`` has those keys (the checkpoint overwrites those tensors anyway)."""
    if isinstance(value, dict):
        out = {k: _without_pretrained(v) for k, v in value.items()}
        if "class_path" in value and isinstance(value.get("init_args"), dict):
            args = out["init_args"]
            if args.get("pretrained"):
                args["pretrained"] = False
            if args.get("weights") is not None:
                args["weights"] = None
        return out
    if isinstance(value, list):
        return [_without_pretrained(v) for v in value]
    return value


def _parse_preprocessing(data: Any, source: str | Path) -> tuple[tuple[int, int], Any]:
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
    return (int(size[0]), int(size[1])), crop


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
    header = read_checkpoint_header(info.path)
    hparams = header.get("hyper_parameters")
    if not isinstance(hparams, dict) or "_class_path" not in hparams:
        raise ValueError(f"{info.path}: no hyper_parameters._class_path: not a checkpoint written by `xsearch fit`")
    cls = model_class(hparams["_class_path"], info.path)
    image_size, crop = _parse_preprocessing(header.get("datamodule_hyper_parameters"), info.path)
    overrides = {k: v for k, v in ((k, _without_pretrained(v)) for k, v in hparams.items() if not k.startswith("_"))
                 if v != hparams[k]}
    del header
    with warnings.catch_warnings():  # towers passed as modules are the method's design, not a mistake
        warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
        model = cls.load_from_checkpoint(info.path, map_location="cpu", weights_only=True, **overrides)
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device).eval()
    return LoadedModel(
        model=model, method=method_name(cls), class_path=str(hparams["_class_path"]), image_size=image_size, crop=crop,
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
