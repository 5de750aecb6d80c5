"""Attention rollout (Abnar & Zuidema 2020): how much each input token reaches each output position.

Per layer: fuse the heads (mean, max or min), add the residual stream as `r*A + (1-r)*I`, renormalise
the rows to sum to 1, and multiply the layers from the last down: `R = A'_last @ ... @ A'_0`. A
product of lower-triangular matrices stays lower-triangular, so decoder models keep their causal
structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attnviz.analyses.aggregate import renormalise
from attnviz.attention import Attention
from attnviz.errors import InputError, param

FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class Rollout:
    """The rollout matrix of one text: rows are output positions, columns input tokens."""

    model: str
    tokens: tuple[str, ...]
    labels: tuple[str, ...]
    layers: tuple[int, ...]  # the model layers multiplied, first to last
    head_fusion: str
    residual: float
    causal: bool
    matrix: np.ndarray  # [q, k] float64; every row sums to 1
    text: str = ""  # the text rolled out (figures quote it)

    def row(self, index: int) -> np.ndarray:
        """How much each input token reaches output position `index`."""
        return self.matrix[index]

    @property
    def title(self) -> str:
        span = f"{self.layers[0]}-{self.layers[-1]}" if len(self.layers) > 1 else str(self.layers[0])
        return (
            f"{self.model} · attention rollout over layers {span} · "
            f"{self.head_fusion} of heads · residual {self.residual:g}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The `--json` record: model, tokens and the full rollout matrix."""
        return {
            "model": self.model,
            "tokens": list(self.tokens),
            "layers": list(self.layers),
            "head_fusion": self.head_fusion,
            "residual": self.residual,
            "rollout": self.matrix.tolist(),
        }


def check_options(head_fusion: str, residual: float) -> None:
    """Fail on a bad option before any model loads."""
    if head_fusion not in FUSIONS:
        raise InputError(f"unknown {param('head_fusion')} '{head_fusion}': use mean, max or min")
    if not 0.0 <= residual <= 1.0 or residual != residual:
        raise InputError(f"bad {param('residual')} {residual}: use a weight between 0 and 1 (0.5 by default)")


def fuse(attn: np.ndarray, how: str) -> np.ndarray:
    """[heads, q, k] -> [q, k] by mean, max or min over heads."""
    return {"mean": np.mean, "max": np.max, "min": np.min}[how](attn, axis=0)


def rollout(att: Attention, head_fusion: str = "mean", residual: float = 0.5) -> Rollout:
    """Roll attention out through the extracted layers (extract a range of layers to limit it).

    `residual` is r in `A' = r*A + (1-r)*I`. The extracted layers must be consecutive and cover
    every head, as rollout follows the residual stream through each layer in turn.
    """
    check_options(head_fusion, residual)
    layers = list(att.layers)
    if layers != list(range(layers[0], layers[0] + len(layers))):
        raise InputError(f"rollout needs consecutive layers, got {', '.join(map(str, layers))}")
    n = att.n_tokens
    eye = np.eye(n)
    result = eye.copy()
    for li in range(len(layers)):
        fused = fuse(att.attn[li].astype(np.float64), head_fusion)  # [q, k]
        mixed = residual * fused + (1.0 - residual) * eye
        mixed = renormalise(mixed)
        result = mixed @ result
    return Rollout(
        model=att.model,
        tokens=att.tokens,
        labels=tuple(att.labels),
        layers=tuple(layers),
        head_fusion=head_fusion,
        residual=float(residual),
        causal=att.causal,
        matrix=result,
        text=att.text,
    )
