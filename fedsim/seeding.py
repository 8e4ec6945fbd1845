"""Deterministic seeds derived from the run seed and other integers."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """Return a 31-bit seed that depends only on ``parts`` (e.g. run seed, partition, round)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFF_FFFF)


def model_seed(seed: int, index: int = 0) -> int:
    """Seed of initial model ``index`` of a run: FedAvg's model and a clustered strategy's model 0 coincide."""
    return derive_seed(seed, 1000 + index)
