"""The one way gem3d derives a seed: from the parts that name a random draw, never from global state."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from its parts (unlike `hash`, the same in every process and on every machine)."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def derived_rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded by `derive_seed(*parts)`."""
    return np.random.default_rng(derive_seed(*parts))
