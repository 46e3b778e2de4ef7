"""Replacing submodules of a model in place by others built from them."""
from __future__ import annotations

from typing import Callable

from torch import nn


def replace_modules(model: nn.Module, replaceable: Callable[[nn.Module], bool],
                    build: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule of ``model`` that ``replaceable`` accepts by ``build(submodule)``; returns how many were
    replaced."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if replaceable(child)]
    for parent, name, child in targets:
        setattr(parent, name, build(child))
    return len(targets)
