"""Shared by the analyses tests: synthetic Attentions and scalar brute-force formulas (plain loops)."""

from __future__ import annotations

import math

import numpy as np

from attnviz.attention import Attention


def synthetic(
    tokens: tuple[str, ...],
    special: tuple[bool, ...] | None = None,
    layers: int = 2,
    heads: int = 3,
    causal: bool = False,
    seed: int = 0,
    text: str = "synthetic",
) -> Attention:
    """Random row-stochastic attention over `tokens` (no model)."""
    rng = np.random.default_rng(seed)
    n = len(tokens)
    raw = rng.random((layers, heads, n, n)) ** 3
    if causal:
        raw *= np.tril(np.ones((n, n)))
    attn = (raw / raw.sum(-1, keepdims=True)).astype(np.float32)
    return Attention(
        model="synthetic",
        kind="decoder" if causal else "encoder",
        text=text,
        tokens=tokens,
        spans=tuple((0, 0) for _ in tokens),
        word_ids=tuple(None for _ in tokens),
        words=(),
        special=special or tuple(False for _ in tokens),
        layers=tuple(range(layers)),
        heads=tuple(range(heads)),
        attn=attn,
        causal=causal,
    )


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


def renorm(row: list[float]) -> list[float]:
    s = sum(row)
    return [x / s for x in row] if s > 0 else [0.0 for _ in row]
