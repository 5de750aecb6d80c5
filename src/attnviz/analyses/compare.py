"""Minimal pairs: which heads change between two texts that differ in a word or two?

The two token sequences are aligned position by position when they match one to one (same length,
differing only by in-place substitutions: "too big" / "too small"), else on the tokens they share
(difflib's matching blocks, case-free). Per head, the change is the mean over aligned query tokens
of the Jensen-Shannon divergence (base 2, in [0, 1]) between the two rows, each restricted to the
aligned keys and renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attnviz.analyses.aggregate import renormalise
from attnviz.attention import Attention
from attnviz.errors import InputError
from attnviz.heads.search import check_top
from attnviz.tokens import display, normalise


@dataclass(frozen=True)
class Alignment:
    """Which token of text A stands for which token of text B."""

    mode: str  # "positional" (same length) or "shared" (tokens both texts have)
    pairs: tuple[tuple[int, int], ...]  # (position in A, position in B)
    tokens_a: tuple[str, ...]
    tokens_b: tuple[str, ...]

    @property
    def a(self) -> list[int]:
        return [i for i, _ in self.pairs]

    @property
    def b(self) -> list[int]:
        return [j for _, j in self.pairs]

    @property
    def differing(self) -> list[tuple[int, int]]:
        """Aligned pairs whose tokens differ (the substituted words of a same-length pair)."""
        return [(i, j) for i, j in self.pairs if self.tokens_a[i] != self.tokens_b[j]]

    def describe(self) -> str:
        """One line for the user: how the texts were aligned and what differs."""
        if self.mode == "positional":
            diff = ", ".join(
                f"{display(self.tokens_a[i])}/{display(self.tokens_b[j])}" for i, j in self.differing
            )
            return f"aligned position by position ({len(self.pairs)} tokens); differing: {diff or 'none'}"
        shared = " ".join(display(self.tokens_a[i]) for i in self.a)
        return f"aligned on {len(self.pairs)} shared tokens: {shared}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "pairs": [list(p) for p in self.pairs],
            "tokens": [[self.tokens_a[i], self.tokens_b[j]] for i, j in self.pairs],
        }


def align(tokens_a: tuple[str, ...], tokens_b: tuple[str, ...]) -> Alignment:
    """Position by position when the texts match one to one (same length, differing only by
    same-size substitutions in place); otherwise the longest matching blocks of equal tokens."""
    from difflib import SequenceMatcher

    a = [normalise(t) or t for t in tokens_a]
    b = [normalise(t) or t for t in tokens_b]
    matcher = SequenceMatcher(a=a, b=b, autojunk=False)
    in_place = all(
        op == "equal" or (op == "replace" and i1 == j1 and i2 == j2)
        for op, i1, i2, j1, j2 in matcher.get_opcodes()
    )
    if len(tokens_a) == len(tokens_b) and in_place:
        pairs = tuple((i, i) for i in range(len(tokens_a)))
        return Alignment("positional", pairs, tuple(tokens_a), tuple(tokens_b))
    pairs = tuple(
        (block.a + k, block.b + k) for block in matcher.get_matching_blocks() for k in range(block.size)
    )
    if len(pairs) < 2:
        raise InputError("the two texts share fewer than two tokens: there is nothing to compare")
    return Alignment("shared", pairs, tuple(tokens_a), tuple(tokens_b))


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits along the last axis (distributions summing to 1): [...]."""
    m = (p + q) / 2

    def kl(x: np.ndarray) -> np.ndarray:
        ratio = np.divide(x, m, out=np.ones_like(x), where=x > 0)
        return (x * np.log2(ratio)).sum(axis=-1)

    return np.clip((kl(p) + kl(q)) / 2, 0.0, 1.0)


@dataclass(frozen=True)
class Comparison:
    """How much every head's attention changed between two texts."""

    model: str
    text_a: str
    text_b: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    alignment: Alignment
    change: np.ndarray  # [layers, heads] mean JS divergence in bits, in [0, 1]
    rows_a: np.ndarray  # [layers, heads, aligned q, aligned k]: A restricted and renormalised
    rows_b: np.ndarray  # same for B
    labels_a: tuple[str, ...]  # aligned tokens of A, as read
    labels_b: tuple[str, ...]
    causal: bool = False

    def ranked(self, top: int | None = None) -> list[dict[str, Any]]:
        """The `--json` rows, largest change first: rank, layer, head, change (`top` 0 or None: all)."""
        check_top(top)
        order = np.argsort(-self.change, axis=None, kind="stable")
        rows = []
        for rank, flat in enumerate(order[: top if top else None], start=1):
            li, hi = np.unravel_index(flat, self.change.shape)
            rows.append(
                {
                    "rank": rank,
                    "layer": self.layers[li],
                    "head": self.heads[hi],
                    "change": float(self.change[li, hi]),
                }
            )
        return rows

    def pair(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """One head's aligned rows in A and B ([q, k] each)."""
        if layer not in self.layers:
            raise InputError(f"layer {layer} was not compared")
        if head not in self.heads:
            raise InputError(f"head {head} was not compared")
        li, hi = self.layers.index(layer), self.heads.index(head)
        return self.rows_a[li, hi], self.rows_b[li, hi]

    def visible(self) -> np.ndarray | None:
        """[q, k] bool over aligned tokens for causal models (keys after the query are masked)."""
        if not self.causal:
            return None
        a = np.array(self.alignment.a)
        return a[None, :] <= a[:, None]


def compare(att_a: Attention, att_b: Attention) -> Comparison:
    """Per-head change between two extractions of the same model, layers and heads."""
    if att_a.model != att_b.model:
        raise InputError(f"the texts were run through different models ({att_a.model}, {att_b.model})")
    if att_a.layers != att_b.layers or att_a.heads != att_b.heads:
        raise InputError("both texts must be extracted with the same layers and heads")
    if att_a.level != att_b.level:
        raise InputError("both texts must be extracted at the same level (tokens or words)")
    alignment = align(att_a.tokens, att_b.tokens)
    ia, ib = alignment.a, alignment.b
    pa = renormalise(att_a.attn[:, :, ia][:, :, :, ia].astype(np.float64))
    pb = renormalise(att_b.attn[:, :, ib][:, :, :, ib].astype(np.float64))
    js = js_divergence(pa, pb)  # [layers, heads, q]
    both = (pa.sum(axis=-1) > 0) & (pb.sum(axis=-1) > 0)  # rows with weight left on aligned keys
    counts = both.sum(axis=-1)
    change = np.divide((js * both).sum(axis=-1), counts, out=np.zeros(js.shape[:2]), where=counts > 0)
    return Comparison(
        model=att_a.model,
        text_a=att_a.text,
        text_b=att_b.text,
        layers=tuple(att_a.layers),
        heads=tuple(att_a.heads),
        alignment=alignment,
        change=change,
        rows_a=pa.astype(np.float32),
        rows_b=pb.astype(np.float32),
        labels_a=tuple(display(att_a.tokens[i]) for i in ia),
        labels_b=tuple(display(att_b.tokens[j]) for j in ib),
        causal=att_a.causal,
    )
