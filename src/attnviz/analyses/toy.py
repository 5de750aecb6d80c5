"""The from-scratch toy self-attention of seeds 000 and 002: random embeddings and projections
over made-up tokens, no model. Each head's numbers come from `steps.five_steps`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attnviz.analyses.steps import Steps, five_steps
from attnviz.errors import InputError, check_seed, param
from attnviz.heads.patterns import row_entropy, uniform_bound

MAX_TOKENS = 512
HEADS = param("heads", flag="--num-heads")  # `attnviz toy --head` picks one head's steps


# -- the toy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Toy:
    """A randomly initialised multi-head self-attention layer over made-up tokens (no model)."""

    labels: tuple[str, ...]
    dim: int
    num_heads: int
    seed: int
    causal: bool
    temperature: float
    x: np.ndarray  # [tokens, dim] token embedding + position embedding
    steps: tuple[Steps, ...]  # one per head

    @property
    def d_k(self) -> int:
        return self.dim // self.num_heads

    @property
    def n_tokens(self) -> int:
        return len(self.labels)

    @property
    def weights(self) -> np.ndarray:
        """[heads, q, k] attention weights."""
        return np.stack([s.weights for s in self.steps])

    def visible(self) -> np.ndarray:
        return self.steps[0].visible()

    def entropy(self) -> np.ndarray:
        """[heads, q] row entropy in bits (seed 000)."""

        return row_entropy(self.weights, self.visible())

    def bound(self) -> np.ndarray:
        """[q] the entropy of uniform attention over each row's visible keys."""

        return uniform_bound(self.visible())

    def head_steps(self, head: int) -> Steps:
        """One head's five steps; InputError naming the toy's heads for one it does not have."""
        if not 0 <= head < self.num_heads:
            raise InputError(f"head {head} is out of range: the toy has heads 0-{self.num_heads - 1}")
        return self.steps[head]

    def describe(self) -> str:
        mask = ", causal" if self.causal else ""
        temp = f", temperature {self.temperature:g}" if self.temperature != 1.0 else ""
        return (
            f"toy attention: {self.n_tokens} tokens, d_model {self.dim}, {self.num_heads} heads "
            f"(d_k {self.d_k}), seed {self.seed}{mask}{temp}"
        )


def parse_tokens(value: str | int | Sequence[str]) -> list[str]:
    """'12' -> t0..t11; 'I like transformers' or 'a,b,c' -> those tokens."""
    if isinstance(value, str) and re.fullmatch(r"\s*-\d+\s*", value):  # a count, not a token "-3"
        raise InputError(
            f"{param('tokens')} {value.strip()}: give a count of 1 or more, or the tokens themselves"
        )
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        n = int(value)
        if not 1 <= n <= MAX_TOKENS:
            raise InputError(f"{param('tokens')} {n}: use between 1 and {MAX_TOKENS} tokens")
        return [f"t{i}" for i in range(n)]
    words = [w for w in re.split(r"[\s,]+", value.strip())] if isinstance(value, str) else list(value)
    words = [w for w in words if w]
    if not words:
        raise InputError(
            f"{param('tokens')} is empty: give a count like 12 or words like 'I like transformers'"
        )
    if len(words) > MAX_TOKENS:
        raise InputError(f"{param('tokens')} has {len(words)} tokens; the toy takes at most {MAX_TOKENS}")
    return words


def build_toy(
    tokens: int | str | Sequence[str] = 12,
    *,
    dim: int = 16,
    heads: int = 2,
    seed: int = 0,
    causal: bool = False,
    temperature: float = 1.0,
) -> Toy:
    """Random token and position embeddings, random Q/K/V projections per head, then attention.

    The same seed gives the same numbers; a repeated token shares its token embedding (not its
    position). Scores are divided by sqrt(d_k) * temperature: below 1 sharpens, above 1 flattens.
    """
    import torch

    labels = parse_tokens(tokens)
    if heads < 1:
        raise InputError(f"{HEADS} {heads}: use at least 1 head")
    if dim < 1 or dim > 4096:
        raise InputError(f"{param('dim')} {dim}: use a size between 1 and 4096")
    if dim % heads:
        raise InputError(
            f"{param('dim')} {dim} is not divisible by {HEADS} {heads}; each head gets dim/heads"
        )
    if not math.isfinite(temperature) or temperature <= 0:
        raise InputError(f"{param('temperature')} {temperature}: use a number above 0")
    check_seed(seed)  # torch's generator takes a 64-bit seed
    d_k = dim // heads
    g = torch.Generator().manual_seed(seed)
    vocab = list(dict.fromkeys(labels))
    ids = torch.tensor([vocab.index(t) for t in labels])
    e_tok = torch.randn(len(vocab), dim, generator=g, dtype=torch.float64)  # [vocab, dim]
    e_pos = 0.5 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)  # [tokens, dim]
    x = e_tok[ids] + e_pos  # [tokens, dim]
    w = torch.randn(3, heads, dim, d_k, generator=g, dtype=torch.float64) / math.sqrt(dim)
    qkv = torch.einsum("td,chde->chte", x, w)  # [3, heads, tokens, d_k]
    scale = 1.0 / (math.sqrt(d_k) * temperature)
    steps = tuple(
        five_steps(qkv[0, h].numpy(), qkv[1, h].numpy(), qkv[2, h].numpy(), scale=scale, causal=causal)
        for h in range(heads)
    )
    return Toy(
        labels=tuple(labels),
        dim=dim,
        num_heads=heads,
        seed=seed,
        causal=causal,
        temperature=temperature,
        x=x.numpy(),
        steps=steps,
    )
