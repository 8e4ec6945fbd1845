"""Deterministic seeds derived from the run seed and other integers."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """Return a 31-bit seed that depends only on ``parts`` (e.g. run seed, partition, round)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFF_FFFF)
