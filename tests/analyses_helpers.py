"""Shared by the analyses tests: scalar brute-force formulas (plain loops), and `synthetic`."""

from __future__ import annotations

import math

from helpers import synthetic  # the one model-free Attention of the tests (re-exported here)


def js_scalar(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence in bits, one term at a time."""
    total = 0.0
    for x, y in zip(p, q, strict=True):
        m = (x + y) / 2
        if x > 0:
            total += 0.5 * x * math.log2(x / m)
        if y > 0:
            total += 0.5 * y * math.log2(y / m)
    return total


__all__ = ["js_scalar", "renorm", "synthetic"]


def renorm(row: list[float]) -> list[float]:
    s = sum(row)
    return [x / s for x in row] if s > 0 else [0.0 for _ in row]
