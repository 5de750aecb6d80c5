"""Pool heads or layers (mean or max) and hide special tokens with row renormalisation.

The results are plain `Attention`s whose `notes` (and `weighting`, `pooled_layers`, `pooled_heads`)
say how they were made, so a figure's title and a saved file's metadata can say it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from attnviz.attention import Attention
from attnviz.errors import InputError
from attnviz.selection import format_indices

HOW = ("mean", "max")
OVER = ("heads", "layers", "both")


def derive(att: Attention, note: str | Sequence[str] = (), **changes: Any) -> Attention:
    """A copy of `att` with `changes` and `note` added to its notes (earlier notes and weighting kept)."""
    notes = (*att.notes, *([note] if isinstance(note, str) else note))
    return replace(att, **changes, notes=notes)


def pool(arr: np.ndarray, axis: int | tuple[int, ...], how: str) -> np.ndarray:
    """`arr` pooled over `axis` by its mean or maximum, the axis kept (size 1), as float32."""
    pooled = arr.mean(axis=axis, keepdims=True) if how == "mean" else arr.max(axis=axis, keepdims=True)
    return pooled.astype(np.float32)


def aggregate(
    att: Attention,
    over: str = "heads",
    how: str = "mean",
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Attention:
    """Pool the selected heads (per layer), layers (per head), or both into one matrix.

    `layers`/`heads` pick model indices among those extracted (default: all). The pooled row or
    column keeps the first index it covers; `pooled_layers`/`pooled_heads` list all of them. A mean
    of rows summing to 1 still sums to 1; a max does not (it is an envelope, not a distribution).
    """
    if how not in HOW:
        raise InputError(f"unknown aggregation '{how}': use mean or max")
    if over not in OVER:
        raise InputError(f"unknown aggregation axis '{over}': use heads, layers or both")
    li = [att.layer_pos(x) for x in layers] if layers is not None else list(range(len(att.layers)))
    hi = [att.head_pos(x) for x in heads] if heads is not None else list(range(len(att.heads)))
    if not li or not hi:
        raise InputError("nothing to aggregate: the layer or head selection is empty")
    arr = att.attn[np.ix_(li, hi)]  # [layers, heads, q, k]
    sel_layers = tuple(att.layers[i] for i in li)
    sel_heads = tuple(att.heads[i] for i in hi)
    notes = []
    pooled_layers = att.pooled_layers
    pooled_heads = att.pooled_heads
    if over in ("heads", "both"):
        arr = pool(arr, 1, how)
        notes.append(f"{how} of heads {format_indices(sel_heads)}")
        pooled_heads, sel_heads = sel_heads, sel_heads[:1]
    if over in ("layers", "both"):
        arr = pool(arr, 0, how)
        notes.append(f"{how} of layers {format_indices(sel_layers)}")
        pooled_layers, sel_layers = sel_layers, sel_layers[:1]
    return derive(
        att,
        notes,
        attn=np.ascontiguousarray(arr),
        layers=sel_layers,
        heads=sel_heads,
        pooled_layers=pooled_layers,
        pooled_heads=pooled_heads,
        qkv=None,
        decoder=None,
        cross=None,
    )


def renormalise(rows: np.ndarray) -> np.ndarray:
    """Scale each row (last axis) to sum to 1; all-zero rows stay zero."""
    total = rows.sum(axis=-1, keepdims=True)
    return np.divide(rows, total, out=np.zeros_like(rows), where=total > 0)


def without_special(att: Attention) -> Attention:
    """Drop special tokens ([CLS], [SEP], BOS, EOS) as queries and keys; rows renormalised to sum to 1.

    A head that only looks at [SEP] then shows what it does with the rest of its weight, so it no
    longer wins a ranking because of [SEP]. Rows whose whole weight was on special tokens become 0.
    """
    keep = [i for i, s in enumerate(att.special) if not s]
    if len(keep) == len(att.special):
        return derive(att, "no special tokens to hide")
    if not keep:
        raise InputError("the text has only special tokens: nothing is left once they are hidden")
    sub = att.attn[:, :, keep][:, :, :, keep].astype(np.float64)  # [layers, heads, q, k]
    pick = lambda seq: tuple(seq[i] for i in keep)  # noqa: E731
    return derive(
        att,
        "special tokens hidden, rows renormalised",
        tokens=pick(att.tokens),
        spans=pick(att.spans),
        word_ids=pick(att.word_ids),
        special=tuple(False for _ in keep),
        attn=renormalise(sub).astype(np.float32),
        qkv=None,
        decoder=None,
        cross=None,
    )
