"""Restricted numbers for config signatures: ``batch_size: PositiveInt``, ``dropout: ClosedUnitInterval``...

These are ``jsonargparse.typing``'s types: a config value outside them fails when the config is read, before any model
or data is built, with a message naming the key (``xsearch fit`` prints it as one line). Importing this module
registers them again so that a parsed value reaches the classes as a plain ``int`` / ``float`` rather than an instance
of the restricted subclass: nothing a class keeps from its arguments (an optimizer's learning rate, a checkpoint's
contents) then names a jsonargparse type, which a ``weights_only`` checkpoint load would refuse.
"""
from __future__ import annotations

from typing import Any, Callable

from jsonargparse.typing import (ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveFloat,
                                 PositiveInt, register_type)

__all__ = ["ClosedUnitInterval", "NonNegativeFloat", "NonNegativeInt", "OpenUnitInterval", "PositiveFloat",
           "PositiveInt", "RESTRICTED"]

RESTRICTED: tuple[type, ...] = (PositiveInt, NonNegativeInt, PositiveFloat, NonNegativeFloat, ClosedUnitInterval,
                                OpenUnitInterval)


def _plain(restricted: type) -> Callable[[Any], Any]:
    """A deserializer that checks a value against ``restricted`` (its own error when outside) and returns it as the
    plain base type (``int`` or ``float``)."""
    base = restricted._type  # type: ignore[attr-defined]

    def deserialize(value: Any) -> Any:
        return base(restricted(value))

    return deserialize


for _restricted in RESTRICTED:
    register_type(_restricted, _restricted._type, _plain(_restricted))  # type: ignore[attr-defined]
