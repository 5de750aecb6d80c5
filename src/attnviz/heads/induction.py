"""The standard induction-head test for causal models: random tokens, repeated twice.

On `[prefix] t1 ... tT t1 ... tT`, an induction head attends from each token of the second half to
the token right after that token's earlier copy (it predicts the repeat); a duplicate-token head
attends to the earlier copy itself. Scores are mean attention weights over the second half's
queries and the batch, so uniform attention would score `chance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.attention import Encoded
from attnviz.errors import InputError, check_seed, param
from attnviz.extraction import run_batch
from attnviz.heads.search import ranked_positions
from attnviz.models.loading import as_loaded
from attnviz.selection import resolve_indices
from attnviz.tokens import token_labels

if TYPE_CHECKING:
    from attnviz.attention import Encoded
    from attnviz.models.loading import LoadedModel

SCORES = ("induction", "duplicate")


@dataclass(frozen=True)
class InductionScore:
    """One head of the ranking."""

    rank: int
    layer: int
    head: int
    induction: float  # mean weight on the token after the earlier copy
    duplicate: float  # mean weight on the earlier copy itself

    def as_dict(self) -> dict[str, int | float]:
        return {
            "rank": self.rank,
            "layer": self.layer,
            "head": self.head,
            "induction": self.induction,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True)
class InductionResult:
    """Induction and duplicate-token scores of every extracted head, with the test's settings."""

    model: str
    seq_len: int
    batch: int
    seed: int
    prefix: int  # tokens before the first copy (the tokenizer's own BOS, if it adds one)
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    induction: np.ndarray  # [layers, heads]
    duplicate: np.ndarray  # [layers, heads]
    chance: float  # what a head spreading attention evenly over what it can see would score

    def ranking(self, by: str = "induction", top: int | None = None) -> tuple[InductionScore, ...]:
        """Heads by descending score; ties keep layer-then-head order."""
        if by not in SCORES:
            raise InputError(f"unknown score '{by}': use {' or '.join(SCORES)}")
        key = self.induction if by == "induction" else self.duplicate

        out = []
        for r, (li, hi) in enumerate(ranked_positions(key, top), start=1):
            out.append(
                InductionScore(
                    rank=r,
                    layer=self.layers[li],
                    head=self.heads[hi],
                    induction=float(self.induction[li, hi]),
                    duplicate=float(self.duplicate[li, hi]),
                )
            )
        return tuple(out)


def repeat_scores(attn: np.ndarray, seq_len: int, prefix: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Induction and duplicate scores of one repeated sequence: [layers, heads, n, n] -> 2 x [layers, heads].

    Query prefix+T+i (token i of the second copy) is scored on key prefix+i+1 (induction) and key
    prefix+i (duplicate), averaged over i = 0..T-1.
    """
    t = seq_len
    n = attn.shape[-1]
    if n != prefix + 2 * t:
        raise ValueError(f"attn has {n} tokens, expected prefix {prefix} + 2 x {t}")
    i = np.arange(t)
    q = prefix + t + i
    induction = attn[:, :, q, prefix + i + 1].mean(-1)
    duplicate = attn[:, :, q, prefix + i].mean(-1)
    return induction, duplicate


def chance_level(seq_len: int, prefix: int = 0) -> float:
    """The score of uniform causal attention: mean over second-half queries of 1 / visible keys."""
    q = prefix + seq_len + np.arange(seq_len)
    return float(np.mean(1.0 / (q + 1)))


def random_repeats(loaded: LoadedModel, seq_len: int, batch: int, seed: int) -> tuple[Encoded, int]:
    """`batch` sequences of `seq_len` distinct random ordinary tokens, each repeated twice."""
    import torch

    tok = loaded.tokenizer
    vocab = int(getattr(loaded.model.config, "vocab_size", 0) or len(tok))
    vocab = min(vocab, len(tok))
    banned = set(tok.all_special_ids or [])
    candidates = np.array([i for i in range(vocab) if i not in banned])
    if len(candidates) < seq_len:
        raise InputError(
            f"the vocabulary has only {len(candidates)} ordinary tokens; use {param('seq_len')} <= that"
        )
    prefix_ids = list(tok("")["input_ids"])  # the BOS the model always sees, if its tokenizer adds one
    p = len(prefix_ids)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        body = rng.choice(candidates, size=seq_len, replace=False).tolist()
        rows.append(prefix_ids + body + body)
    n = p + 2 * seq_len
    ids = torch.tensor(rows, dtype=torch.long)  # [batch, prefix + 2T]
    special = [[j < p for j in range(n)] for _ in rows]
    labels = [token_labels(tok, r) for r in rows]  # readable for byte-level BPE (SmolLM2, GPT-2)
    enc = Encoded(
        texts=["" for _ in rows],
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        lengths=[n] * batch,
        offsets=[[(0, 0)] * n for _ in rows],
        special=special,
        tokens=[readable for readable, _ in labels],
        truncated=[0] * batch,
        pieces=[raw for _, raw in labels],
    )
    return enc, p


@dataclass(frozen=True)
class InductionSettings:
    """What one induction test runs: checked before a model loads, so bad values fail fast."""

    seq_len: int = 50
    batch: int = 4
    seed: int = 0
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    sort: str = "induction"

    def check(self) -> InductionSettings:
        if self.seq_len < 2 or self.batch < 1:
            raise InputError(f"use {param('seq_len')} of at least 2 and {param('batch')} of at least 1")
        check_seed(self.seed)  # the same range as toy's and generate's
        if self.sort not in SCORES:
            raise InputError(
                f"unknown {param('sort')} '{self.sort}' for the induction test: use {' or '.join(SCORES)}"
            )
        return self

    def run(self, loaded: LoadedModel) -> InductionResult:
        """The test on `loaded` with these settings."""
        return induction_scores(
            loaded,
            seq_len=self.seq_len,
            batch=self.batch,
            seed=self.seed,
            layers=self.layers,
            heads=self.heads,
        )


def induction_scores(
    loaded: LoadedModel | str,
    *,
    seq_len: int = 50,
    batch: int = 4,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    chunk: int = 8,
) -> InductionResult:
    """Run the repeated-random-tokens test; causal models only. `loaded`: a model name, a path or
    a LoadedModel."""

    loaded = as_loaded(loaded, "loaded")
    if not loaded.causal:
        raise InputError(
            f"the induction test applies to causal (decoder) models; {loaded.name} is an {loaded.kind}"
            f" that sees the whole sequence at once (try {param('model', 'smollm2')})"
        )
    if seq_len < 2 or batch < 1:
        raise InputError(f"use {param('seq_len')} of at least 2 and {param('batch')} of at least 1")
    enc, prefix = random_repeats(loaded, seq_len, batch, seed)
    n = prefix + 2 * seq_len
    if loaded.max_length and n > loaded.max_length:
        raise InputError(
            f"{n} tokens exceed {loaded.name}'s limit of {loaded.max_length}: lower {param('seq_len')}"
        )
    layer_list = resolve_indices(layers, loaded.num_layers, "layer", loaded.name)
    head_list = resolve_indices(heads, loaded.capture.num_heads, "head", loaded.name)
    ind_sum: Any = 0.0
    dup_sum: Any = 0.0
    kept: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    for start in range(0, batch, max(1, chunk)):
        part = _slice(enc, start, start + chunk)
        for att in run_batch(loaded, part, layer_list, head_list):
            ind, dup = repeat_scores(att.attn, seq_len, prefix)
            ind_sum = ind_sum + ind.astype(np.float64)
            dup_sum = dup_sum + dup.astype(np.float64)
            kept = (att.layers, att.heads)
    return InductionResult(
        model=loaded.name,
        seq_len=seq_len,
        batch=batch,
        seed=seed,
        prefix=prefix,
        layers=tuple(kept[0]),
        heads=tuple(kept[1]),
        induction=ind_sum / batch,
        duplicate=dup_sum / batch,
        chance=chance_level(seq_len, prefix),
    )


def _slice(enc: Encoded, start: int, stop: int) -> Encoded:
    from dataclasses import replace

    return replace(
        enc,
        texts=enc.texts[start:stop],
        input_ids=enc.input_ids[start:stop],
        attention_mask=enc.attention_mask[start:stop],
        lengths=enc.lengths[start:stop],
        offsets=enc.offsets[start:stop],
        special=enc.special[start:stop],
        tokens=enc.tokens[start:stop],
        truncated=enc.truncated[start:stop],
    )
