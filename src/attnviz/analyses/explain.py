"""What one real head does with a text: the five steps of attention from the query, key and value
vectors captured in the forward pass, and the row entropy of its attention (seed 000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.analyses.steps import Steps, five_steps
from attnviz.errors import InputError, param
from attnviz.extraction import extract
from attnviz.tokens import positions

if TYPE_CHECKING:
    from attnviz.attention import Attention
    from attnviz.models.loading import LoadedModel


@dataclass(frozen=True)
class Explained:
    """The five steps of one head on one text, next to the attention the model itself produced."""

    model: str
    layer: int
    head: int
    labels: tuple[str, ...]
    steps: Steps
    attention: np.ndarray  # [q, k] float32, as extracted
    query: int | None = None  # the followed query token (--query), if any
    key: int | None = None  # the key worked out by hand (--key), if any
    query_matches: tuple[int, ...] = ()  # every position the --query word has (the first is used)
    truncated: int = 0  # tokens cut by truncate=True

    @property
    def max_difference(self) -> float:
        """Largest gap between our softmax step and the model's weights (float32 noise: ~1e-7)."""
        return float(np.abs(self.steps.weights - self.attention).max())

    @property
    def title(self) -> str:
        return f"{self.model} · layer {self.layer} · head {self.head}: the five steps of attention"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "head": self.head,
            "max_difference_from_model": self.max_difference,
            **self.steps.to_dict(self.labels),
            "query": self.query,
            "key": self.key,
        }


def check_focus(query: str | None, key: str | None) -> None:
    """A key is worked out against one query's row, so it needs one (checked before extraction)."""
    if key is not None and query is None:
        raise InputError(f"{param('key')} needs {param('query')} (the token whose row is followed)")


def explain_head(
    att: Attention, layer: int, head: int, query: str | None = None, key: str | None = None
) -> Explained:
    """The five steps for one head of an Attention extracted with `qkv=True`.

    `query` (a word or `@N`) picks the token whose row is followed, `key` the key worked out by hand.
    """

    check_focus(query, key)
    if att.qkv is None:
        raise InputError("this attention has no query/key/value vectors: extract it with qkv=True")
    pos = att.head_pos(head)
    att.layer_pos(layer)
    vectors = att.qkv.get(layer)
    if vectors is None:
        raise InputError(f"layer {layer} has no captured query/key/value vectors")
    bias = vectors.bias[pos if vectors.bias.shape[0] > 1 else 0]  # [q, k]
    steps = five_steps(vectors.q[pos], vectors.k[pos], vectors.v[pos], scale=vectors.scaling, bias=bias)
    matches = tuple(positions(att, query)) if query is not None else ()
    return Explained(
        model=att.model,
        layer=layer,
        head=head,
        labels=tuple(att.labels),
        steps=steps,
        attention=att.head(layer, head),
        query=matches[0] if matches else None,
        key=positions(att, key)[0] if key is not None else None,
        query_matches=matches,
        truncated=att.truncated,
    )


def explain(
    text: str,
    model: str | LoadedModel | None = None,
    *,
    layer: int,
    head: int,
    query: str | None = None,
    key: str | None = None,
    special_tokens: bool = True,
    truncate: bool = False,
    device: str | None = "auto",
    dtype: str | None = "float32",
) -> Explained:
    """Run the model on `text`, capturing one head's vectors, and return its five steps."""

    check_focus(query, key)
    att = extract(
        text,
        model,
        layers=[layer],
        heads=[head],
        qkv=True,
        special_tokens=special_tokens,
        truncate=truncate,
        device=device,
        dtype=dtype,
    )
    return explain_head(att, att.layers[0], att.heads[0], query=query, key=key)
