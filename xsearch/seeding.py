"""Seeds derived from integer keys, shared by the training samplers and the methods (a leaf module: it imports
nothing from xsearch)."""
from __future__ import annotations

import numpy as np


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (``(seed, epoch)`` and ``(seed, epoch + 1)`` or ``(seed + 1,
    epoch)`` give unrelated streams, unlike ``seed + epoch``)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(1, np.uint64)[0] >> 1)
