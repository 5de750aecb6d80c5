"""What `Generation.transformed` applies: special tokens hidden and heads or layers pooled; the streams.

Kept apart from run.py (the result type and the API) so each stays small; the same operations as
analyses/aggregate.py performs on an Attention (with its `pool`), on [layers, heads, new, context] rows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from attnviz.analyses.aggregate import pool
from attnviz.errors import InputError, param
from attnviz.selection import format_indices

if TYPE_CHECKING:  # run.py imports this module
    from attnviz.generation.run import Generation


STREAMS = ("self", "cross")  # a Generation's rows: decoder self-attention, or cross over the source


def check_stream(stream: str) -> str:
    """InputError for a stream a Generation does not record; returns it."""
    if stream not in STREAMS:
        raise InputError(f"unknown {param('stream')} '{stream}': use self or cross")
    return stream


def without_special(gen: Generation) -> Generation:
    """Drop special-token columns (rows renormalised to 1) and the rows of new special tokens."""
    keep = [i for i, s in enumerate(gen.special) if not s]
    rows = [t for t in range(gen.n_new) if not gen.special[gen.prompt_length + t]]
    attn = gen.attn[:, :, rows][..., keep]
    total = attn.sum(axis=-1, keepdims=True)
    attn = np.divide(attn, total, out=np.zeros_like(attn), where=total > 0).astype(np.float32)
    cross = gen.cross
    if cross is not None:
        src = [i for i, s in enumerate(gen.source_special) if not s] or list(range(cross.shape[-1]))
        cross = cross[:, :, rows][..., src]
        ctot = cross.sum(axis=-1, keepdims=True)
        cross = np.divide(cross, ctot, out=np.zeros_like(cross), where=ctot > 0).astype(np.float32)
    prompt_kept = sum(1 for i in keep if i < gen.prompt_length)
    prompt_attn = gen.prompt_attn
    if prompt_attn is not None:
        kp = keep[:prompt_kept]
        prompt_attn = prompt_attn[:, :, kp][..., kp]
        ptot = prompt_attn.sum(axis=-1, keepdims=True)
        prompt_attn = np.divide(prompt_attn, ptot, out=np.zeros_like(prompt_attn), where=ptot > 0)
    return replace(
        gen,
        tokens=tuple(gen.tokens[i] for i in keep),
        token_ids=tuple(gen.token_ids[i] for i in keep),
        special=tuple(False for _ in keep),
        prompt_length=prompt_kept,
        attn=attn,
        cross=cross,
        prompt_attn=prompt_attn,
        source_tokens=tuple(t for t, s in zip(gen.source_tokens, gen.source_special, strict=True) if not s),
        source_special=tuple(False for s in gen.source_special if not s),
        notes=(*gen.notes, "special tokens hidden"),
    )


def pooled(gen: Generation, how: str, over: str) -> Generation:
    """Heads (or layers, or both) pooled into one by their mean or maximum."""
    axes = {"heads": (1,), "layers": (0,), "both": (0, 1)}[over]

    def pooled_or_none(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else pool(a, axes, how)

    layers = (gen.layers[0],) if 0 in axes else gen.layers
    heads = (gen.heads[0],) if 1 in axes else gen.heads
    what = " and ".join(
        f"{name} {format_indices(v)}"
        for name, v, ax in (("layers", gen.layers, 0), ("heads", gen.heads, 1))
        if ax in axes
    )
    return replace(
        gen,
        attn=pooled_or_none(gen.attn),
        cross=pooled_or_none(gen.cross),
        prompt_attn=pooled_or_none(gen.prompt_attn),
        layers=layers,
        heads=heads,
        notes=(*gen.notes, f"{how} of {what}"),
    )
