"""Per-head statistics: row entropy, classic pattern scores (self, previous, sinks...), roles."""

from __future__ import annotations

import numpy as np


def row_entropy(attn: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Entropy in bits of each attention row: [..., q, k] -> [..., q].

    0 log 0 counts as 0, so masked (exactly zero) keys add nothing.
    """
    p = np.asarray(attn, dtype=np.float64)
    if visible is not None:
        p = np.where(visible, p, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=-1)


def uniform_bound(visible: np.ndarray) -> np.ndarray:
    """The largest possible entropy of each row: log2 of its number of visible keys. [q, k] -> [q]."""
    return np.log2(np.maximum(np.asarray(visible).sum(axis=-1), 1))
