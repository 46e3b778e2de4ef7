"""Tiny datasets written by the tests in each dataset's official layout.

Every module here registers, per dataset, a builder that writes a small copy of the official
layout (with the dataset's quirks) into a folder and returns a :class:`Layout` with the exact
per-split counts the parser must find, plus a list of :class:`BadInput` cases (a change to the
copy and the one-line error it must produce). ``tests/test_dataset_layouts.py`` runs the shared
checks over all of them: counts, bad inputs through ``xsearch data check``, and a few training
steps of the ``dual_encoder`` baseline.
"""
from __future__ import annotations

import importlib
import pkgutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image


@dataclass
class Layout:
    """A written fixture: dataset name, root, parser options and the expected ``DatasetIndex.summary()``."""

    dataset: str
    root: Path
    expected: dict[str, dict[str, int]]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BadInput:
    """``mutate(root)`` breaks the copy; the error line must match ``message`` (a regex)."""

    name: str
    mutate: Callable[[Path], None]
    message: str
    options: dict[str, Any] = field(default_factory=dict)


BUILDERS: dict[str, Callable[[Path], Layout]] = {}
BAD_INPUTS: dict[str, list[BadInput]] = {}


def layout(name: str, bad_inputs: list[BadInput] | None = None) -> Callable:
    """Register ``builder(tmp_dir) -> Layout`` for dataset ``name`` (and its bad-input cases)."""

    def decorator(builder: Callable[[Path], Layout]) -> Callable[[Path], Layout]:
        BUILDERS[name] = builder
        BAD_INPUTS[name] = list(bad_inputs or [])
        return builder

    return decorator


def write_image(path: Path, key: str | int, size: tuple[int, int] = (48, 24), grey: bool = False) -> Path:
    """Write a small deterministic image (format from the extension: .jpg/.png/.bmp).

    ``key`` (e.g. the identity) picks the base colour so images of one identity look alike.
    ``size`` is ``(H, W)``.
    """
    seed = zlib.crc32(str(key).encode())
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    noise = np.random.default_rng(zlib.crc32(str(path.name).encode())).integers(-20, 20, size=(*size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if grey:
        image = image.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
