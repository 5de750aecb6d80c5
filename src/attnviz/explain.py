"""What one real head does with a text: the five steps of attention from the query, key and value
vectors captured in the forward pass, and the row entropy of its attention (seed 000).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError
from attnviz.toy import Steps, five_steps

if TYPE_CHECKING:
    from attnviz.extract import Attention
    from attnviz.models import LoadedModel


@dataclass(frozen=True)
class Explained:
    """The five steps of one head on one text, next to the attention the model itself produced."""

    model: str
    layer: int
    head: int
    labels: tuple[str, ...]
    steps: Steps
    attention: np.ndarray  # [q, k] float32, as extracted

    @property
    def max_difference(self) -> float:
        """Largest gap between our softmax step and the model's weights (float32 noise: ~1e-7)."""
        return float(np.abs(self.steps.weights - self.attention).max())

    @property
    def title(self) -> str:
        return f"{self.model} · layer {self.layer} · head {self.head}: the five steps of attention"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "head": self.head,
            "max_difference_from_model": self.max_difference,
            **self.steps.to_dict(self.labels),
        }


def explain_head(att: Attention, layer: int, head: int) -> Explained:
    """The five steps for one head of an Attention extracted with `qkv=True`."""
    if att.qkv is None:
        raise InputError("this attention has no query/key/value vectors: extract it with qkv=True")
    pos = att.head_pos(head)
    att.layer_pos(layer)
    vectors = att.qkv.get(layer)
    if vectors is None:
        raise InputError(f"layer {layer} has no captured query/key/value vectors")
    bias = vectors.bias[pos if vectors.bias.shape[0] > 1 else 0]  # [q, k]
    steps = five_steps(vectors.q[pos], vectors.k[pos], vectors.v[pos], scale=vectors.scaling, bias=bias)
    return Explained(
        model=att.model,
        layer=layer,
        head=head,
        labels=tuple(att.labels),
        steps=steps,
        attention=att.head(layer, head),
    )


def explain(
    text: str,
    model: str | LoadedModel | None = None,
    *,
    layer: int,
    head: int,
    truncate: bool = False,
    device: str | None = "auto",
    dtype: str | None = "float32",
) -> Explained:
    """Run the model on `text`, capturing one head's vectors, and return its five steps."""
    from attnviz.extract import extract

    att = extract(
        text, model, layers=[layer], heads=[head], qkv=True, truncate=truncate, device=device, dtype=dtype
    )
    return explain_head(att, att.layers[0], att.heads[0])


def positions(att: Attention, word: str) -> list[int]:
    """Every position of `word` in the view: by `@N`, by token text, else every piece of that word.

    "lessons" finds "lesson" "##s" at token level; raises TokenNotFoundError listing the tokens.
    """
    from attnviz.tokens import locate, normalise

    q = word.strip()
    if re.fullmatch(r"@-?\d+", q):
        return [locate(q, att.tokens).index]
    target = normalise(q)
    hits = [i for i, t in enumerate(att.tokens) if target and normalise(t) == target]
    if not hits and att.level == "token" and att.words:
        hits = [
            i
            for i, w in enumerate(att.word_ids)
            if w is not None and w < len(att.words) and normalise(att.words[w]) == target
        ]
    if not hits:
        locate(q, att.tokens)  # raises, listing the tokens the text has
    return hits


def positions_of(att: Attention, words: Sequence[str]) -> list[int]:
    """Positions of several words (a comma-separated --highlight), in order, without repeats."""
    out: list[int] = []
    for w in words:
        for p in positions(att, w):
            if p not in out:
                out.append(p)
    return out


@dataclass(frozen=True)
class RowEntropy:
    """Row entropy (bits) of every extracted head, and the uniform bound it is measured against."""

    model: str
    kind: str
    level: str
    labels: tuple[str, ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    entropy: np.ndarray  # [layers, heads, q] bits
    bound: np.ndarray  # [q] log2 of each row's visible keys

    @property
    def mean(self) -> np.ndarray:
        """[layers, heads] mean over query rows."""
        return self.entropy.mean(axis=-1)

    def head(self, layer: int, head: int) -> np.ndarray:
        return self.entropy[self.layers.index(layer), self.heads.index(head)]

    def to_dict(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "model": self.model,
            "kind": self.kind,
            "level": self.level,
            "tokens": list(self.labels),
            "uniform_bound": np.round(self.bound, 4).tolist(),
        }
        if len(self.layers) == 1 and len(self.heads) == 1:
            return {
                **base,
                "layer": self.layers[0],
                "head": self.heads[0],
                "entropy": np.round(self.entropy[0, 0], 4).tolist(),
                "mean_entropy": round(float(self.mean[0, 0]), 4),
            }
        return {
            **base,
            "layers": list(self.layers),
            "heads": list(self.heads),
            "mean_entropy": np.round(self.mean, 4).tolist(),
            "uniform_bound_mean": round(float(self.bound.mean()), 4),
        }


def row_entropy_of(att: Attention) -> RowEntropy:
    """Row entropy of every head in `att`, masked keys excluded."""
    from attnviz.patterns import row_entropy, uniform_bound

    visible = att.visible()  # [q, k]
    return RowEntropy(
        model=att.model,
        kind=att.kind,
        level=att.level,
        labels=tuple(att.labels),
        layers=tuple(att.layers),
        heads=tuple(att.heads),
        entropy=row_entropy(att.attn, visible),
        bound=uniform_bound(visible),
    )
