"""The one checkpoint loader: every command that rebuilds a method from a file (test, export, index, search, serve,
encode) reads it here.

A checkpoint written by ``xsearch fit`` holds ``hyper_parameters`` (the model's config: ``_class_path``, nested
``{"class_path", "init_args"}`` towers, ``_instantiator``) and ``datamodule_hyper_parameters``. Loading one:

1. :func:`read_checkpoint` reads it with ``torch.load(weights_only=True)`` (no code in the file runs; tensors are
   memory-mapped, not read) after checking it is the zip archive ``torch.save`` writes; an empty, truncated or
   foreign file is one :class:`ValueError` naming it.
2. :func:`check_class_paths` refuses, before anything is imported, every ``class_path`` that is not a registered
   xsearch class (:data:`~xsearch.registry.METHODS`, :data:`~xsearch.registry.TOWERS`) and any ``_instantiator`` but
   Lightning's: Lightning and jsonargparse import whatever module those strings name.
3. :func:`load_method` rebuilds the method with ``load_from_checkpoint`` (``weights_only``, tensors strictly
   checked) with pretrained weights switched off (``pretrained: false``, ``weights: null``): the checkpoint holds
   every tensor, so nothing is downloaded or read besides the file.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from xsearch.registry import METHODS, TOWERS

INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
"""The only ``_instantiator`` a checkpoint may name (LightningCLI's; Lightning imports the named function)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary, tensors memory-mapped (not read).

    :class:`FileNotFoundError` when ``path`` is not a file; :class:`ValueError` naming it when it is not a readable
    Lightning checkpoint (empty, truncated, text, pickles that would run code, no ``state_dict``).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (the file is empty)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (not the zip archive torch.save writes: "
                         "truncated, or another kind of file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        reason = f"it names {named.group(1)}" if named else str(error).strip().splitlines()[-1]
        raise ValueError(f"{path}: refusing a checkpoint that holds more than tensors and plain values (weights_only: no "
                         f"code in a checkpoint runs; {reason})") from None
    except Exception as error:  # noqa: BLE001  torch raises many types for a damaged archive
        reason = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _public_paths(cls: type) -> set[str]:
    """The class paths a config may use for ``cls``: where it is defined, and ``xsearch.models.<Name>`` when the
    package exports it under that name."""
    import xsearch.models

    paths = {f"{cls.__module__}.{cls.__qualname__}"}
    if getattr(xsearch.models, cls.__name__, None) is cls:
        paths.add(f"xsearch.models.{cls.__name__}")
    return paths


def registered_class(class_path: str) -> type | None:
    """The registered method or tower whose class path is ``class_path``, or ``None``. Compares strings only:
    nothing is imported on behalf of the caller."""
    import xsearch.models  # noqa: F401  registers every method and tower

    for registry in (METHODS, TOWERS):
        for _, cls in registry.items():
            if class_path in _public_paths(cls):
                return cls
    return None


def _registered_list() -> str:
    return "; ".join(f"{registry.kind}s: " + ", ".join(sorted(f"xsearch.models.{cls.__name__}" for _, cls in registry.items()))
                     for registry in (METHODS, TOWERS))


def _walk(value: Any, where: str) -> list[tuple[str, str]]:
    """Every ``(location, class path)`` under ``value``: ``class_path`` keys of nested dicts, at any depth."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        if "class_path" in value:
            found.append((f"{where}.class_path", value["class_path"]))
        for key, item in value.items():
            found += _walk(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            found += _walk(item, f"{where}[{position}]")
    return found


def check_class_paths(checkpoint: dict[str, Any], source: str | Path) -> type:
    """The method class of ``checkpoint`` after checking every class it names; imports nothing.

    ``hyper_parameters._class_path`` must be a registered method, every nested ``class_path`` (in
    ``hyper_parameters`` and ``datamodule_hyper_parameters``) a registered method or tower, and ``_instantiator``
    absent or :data:`INSTANTIATOR`. Anything else is a :class:`ValueError` naming the file, the key and the value.
    """
    from xsearch.models.base import RetrievalModule

    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise ValueError(f"{source}: no hyper_parameters; not a checkpoint written by xsearch fit")
    class_path = hparams.get("_class_path")
    if not isinstance(class_path, str):
        raise ValueError(f"{source}: hyper_parameters._class_path is missing; not a checkpoint written by xsearch fit "
                         "(LightningCLI records the model class there)")
    method = registered_class(class_path)
    if not (isinstance(method, type) and issubclass(method, RetrievalModule)):
        known = ", ".join(f"{name} ({cls.__module__}.{cls.__name__})" for name, cls in METHODS.items())
        raise ValueError(f"{source}: hyper_parameters._class_path {class_path!r} is not an xsearch method; known: {known}")
    for section in ("hyper_parameters", "datamodule_hyper_parameters"):
        content = checkpoint.get(section)
        if not isinstance(content, dict):
            continue
        instantiator = content.get("_instantiator")
        if instantiator is not None and instantiator != INSTANTIATOR:
            raise ValueError(f"{source}: {section}._instantiator {instantiator!r} is not {INSTANTIATOR}: refused before "
                             "importing anything")
        for where, nested in _walk(content, section):
            if not isinstance(nested, str) or registered_class(nested) is None:
                raise ValueError(f"{source}: {where} {nested!r} is not a registered xsearch class: refused before "
                                 f"importing anything ({_registered_list()})")
    return method


def without_pretrained(value: Any) -> Any:
    """A copy of a nested ``{"class_path", "init_args"}`` config with ``pretrained: False`` and ``weights: None``
    wherever an ``init_args`` has those keys (the checkpoint overwrites those tensors anyway)."""
    if isinstance(value, dict):
        out = {k: without_pretrained(v) for k, v in value.items()}
        if "class_path" in value and isinstance(value.get("init_args"), dict):
            args = out["init_args"]
            if args.get("pretrained"):
                args["pretrained"] = False
            if args.get("weights") is not None:
                args["weights"] = None
        return out
    if isinstance(value, list):
        return [without_pretrained(v) for v in value]
    return value


def load_method(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the method of checkpoint ``path`` on the CPU in eval mode.

    Returns ``(model, checkpoint)``: the :class:`~xsearch.models.RetrievalModule` and the checkpoint's dictionary
    without its tensors (``hyper_parameters``, ``datamodule_hyper_parameters``, ``epoch``, ``global_step``...).
    Raises :class:`FileNotFoundError` / :class:`ValueError` naming the file and what is wrong.
    """
    checkpoint = read_checkpoint(path)
    cls = check_class_paths(checkpoint, path)
    hparams = checkpoint["hyper_parameters"]
    overrides = {key: without_pretrained(value) for key, value in hparams.items() if not key.startswith("_")}
    overrides = {key: value for key, value in overrides.items() if value != hparams[key]}
    header = {key: value for key, value in checkpoint.items()
              if key not in ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks")}
    del checkpoint
    with warnings.catch_warnings():  # towers passed as modules are the method's design, not a mistake
        warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
        warnings.filterwarnings("ignore", message=r"(?s).*instantiate_classes.*deprecated")
        model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
    return model.eval(), header
