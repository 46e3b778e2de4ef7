"""Name -> object registries (timm style): ``@METHODS.register("dual_encoder")``.

A registry maps the names used in configs, the CLI and the results store to the
class or function that implements them, so shared code never branches on a name.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects with a decorator to add to it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (names are unique)."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def name_of(self, obj: object) -> str | None:
        """The name ``obj`` is registered under (reverse lookup), or ``None``."""
        return next((name for name, item in self._items.items() if item is obj), None)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs, sorted by name."""
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS: Registry[type] = Registry("method")
"""Method LightningModules by name (``dual_encoder``, later ``irra``, ``cmsn``...)."""

TOWERS: Registry[type] = Registry("tower")
"""Towers and encoders that method configs name by ``class_path`` (``image_encoder``, ``clip_towers``...): with
:data:`METHODS`, the only classes a checkpoint may name (:mod:`xsearch.models.checkpoint`)."""

DATASETS: Registry[Callable] = Registry("dataset")
"""Dataset parsers by name: ``parse(root, **options) -> DatasetIndex``."""

OPTIMIZERS: Registry[Callable] = Registry("optimizer")
"""Optimiser builders by name: ``build(param_groups, **args) -> torch.optim.Optimizer`` (:mod:`xsearch.optim`)."""

SCHEDULES: Registry[Callable] = Registry("schedule")
"""Learning-rate schedules by name: ``schedule(horizon, **args) -> factor(count)`` (:mod:`xsearch.optim`)."""

PROTOCOLS: Registry[type] = Registry("evaluation protocol")
"""Evaluation protocols by name (:class:`~xsearch.evaluation.protocol.EvaluationProtocol` subclasses:
``identity_retrieval``, ``entity_retrieval``, ``face_verification``); each carries the
:data:`~xsearch.headlines.HEADLINES` entry of its name."""
