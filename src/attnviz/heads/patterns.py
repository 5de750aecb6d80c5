"""Per-head statistics: row entropy, classic pattern scores (self, previous, sinks...), roles.

Every score is a number in [0, 1] per layer and head, averaged over the queries that had a choice
(in a causal model the first token can only see itself, so its row says nothing about the head):

- self:        mean over queries of the weight on the query's own position (the diagonal).
- previous:    mean over queries i >= 1 of the weight on position i-1.
- next:        mean over queries i < n-1 of the weight on position i+1 (0 in causal models: masked).
- first:       mean over queries i >= 1 of the weight on position 0 ([CLS] / BOS / first token).
- last_sep:    mean over queries of the weight on the separator tokens ([SEP], </s>, EOS: special
               tokens after position 0; without any, the last token of an encoder's text).
- punctuation: mean over queries of the weight on punctuation tokens (e.g. "," "." "?").
- broad:       mean over queries of the row's entropy divided by its largest possible entropy
               (1.0: spread evenly over every visible key; 0.0: all on one key).

A head's role is its strongest position pattern when that score reaches `threshold`, else "broad"
when its broad score reaches `broad_threshold`, else "mixed".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.attention import Attention
from attnviz.errors import InputError, param
from attnviz.generation.run import Generation
from attnviz.tokens import display

if TYPE_CHECKING:
    from attnviz.attention import Attention

PATTERNS: tuple[str, ...] = ("self", "previous", "next", "first", "last_sep", "punctuation", "broad")
# Patterns measuring attention mass on some positions (comparable with each other); `broad` is not.
MASS_PATTERNS: tuple[str, ...] = PATTERNS[:-1]
ROLE_NAMES: tuple[str, ...] = (*PATTERNS, "mixed")
SORTS: tuple[str, ...] = (*PATTERNS, "role")  # what `PatternTable.rows` and `heads --sort` take
DEFINITIONS: dict[str, str] = {
    "self": "mean over queries of the weight on the query's own position (the diagonal)",
    "previous": "mean over queries i >= 1 of the weight on position i-1",
    "next": "mean over queries i < n-1 of the weight on position i+1 (0 for causal models)",
    "first": "mean over queries i >= 1 of the weight on position 0 ([CLS] / BOS / first token)",
    "last_sep": "mean over queries of the weight on [SEP] / </s> / EOS (special tokens after position 0;"
    " without any, an encoder text's last token)",
    "punctuation": "mean over queries of the weight on punctuation tokens",
    "broad": "mean over queries of the row entropy divided by log2(number of visible keys)",
}
THRESHOLD = 0.5
BROAD_THRESHOLD = 0.8


def check_sort(sort: str | None) -> None:
    """InputError for a `sort` that `PatternTable.rows` (and `heads --sort`) does not take."""
    if sort is not None and sort not in SORTS:
        raise InputError(f"unknown {param('sort')} '{sort}': use one of {', '.join(SORTS)}")


def row_entropy(attn: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Entropy in bits of each attention row: [..., q, k] -> [..., q].

    0 log 0 counts as 0, so masked (exactly zero) keys add nothing. Each row must be a
    distribution (weights from 0 to 1 summing to 1; an all-zero row, padding, gives 0): anything
    else has no entropy, and is an InputError rather than a number (`[[1, 2]]` is not -2 bits).
    """
    p = np.asarray(attn, dtype=np.float64)
    if visible is not None:
        p = np.where(visible, p, 0.0)
    _check_rows(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=-1)


ROW_TOLERANCE = 1e-2  # float16 rows (store="float16") sum to 1 within a few thousandths


def _check_rows(p: np.ndarray) -> None:
    """InputError unless every row of `p` [..., k] is a distribution (or all zero)."""
    if p.ndim == 0 or p.size == 0:
        if p.ndim == 0:
            raise InputError("row_entropy needs rows of attention weights [..., q, k], not one number")
        return
    if not np.isfinite(p).all():
        raise InputError("row_entropy needs attention weights, not NaN or infinite values")
    low, high = float(p.min()), float(p.max())
    sums = p.sum(axis=-1)
    off = np.abs(sums - 1.0) > ROW_TOLERANCE
    off &= sums != 0.0
    if low < -1e-6 or high > 1.0 + ROW_TOLERANCE or off.any():
        worst = float(sums[off].flat[0]) if off.any() else (low if low < 0 else high)
        what = "sums to" if off.any() else "holds"
        raise InputError(
            f"row_entropy needs attention rows (weights from 0 to 1 that sum to 1); a row {what} {worst:.4g}"
        )


def uniform_bound(visible: np.ndarray) -> np.ndarray:
    """The largest possible entropy of each row: log2 of its number of visible keys. [q, k] -> [q]."""
    return np.log2(np.maximum(np.asarray(visible).sum(axis=-1), 1))


def is_punctuation(token: str) -> bool:
    """True for a token made only of punctuation marks once subword marks are dropped."""
    text = display(token).replace("##", "").strip()
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def _weights(mask: np.ndarray) -> np.ndarray:
    """A query mask -> averaging weights that sum to 1 (all zero when no query qualifies)."""
    m = mask.astype(np.float32)
    total = m.sum()
    return m / total if total > 0 else m


def pattern_scores(
    attn: np.ndarray, special: Sequence[bool], tokens: Sequence[str], causal: bool
) -> dict[str, np.ndarray]:
    """Every classic pattern's score for one text: name -> [layers, heads] float32 in [0, 1].

    `attn` is [layers, heads, n, n] for one text at token level (rows sum to 1).
    """
    a = np.asarray(attn, dtype=np.float32)  # [layers, heads, q, k]
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"attn must be [layers, heads, n, n], got shape {a.shape}")
    n = a.shape[-1]
    if len(special) != n or len(tokens) != n:
        raise ValueError(f"attn has {n} tokens but special/tokens have {len(special)}/{len(tokens)}")
    zeros = np.zeros(a.shape[:2], dtype=np.float32)
    if n < 2:
        return {name: zeros.copy() for name in PATTERNS}
    pos = np.arange(n)
    n_visible = pos + 1 if causal else np.full(n, n)  # [q] keys each query may see
    chooses = n_visible > 1  # [q] queries whose row says something about the head
    out: dict[str, np.ndarray] = {}

    out["self"] = np.diagonal(a, axis1=2, axis2=3) @ _weights(chooses)
    out["previous"] = np.diagonal(a, offset=-1, axis1=2, axis2=3) @ _weights(chooses[1:])
    if causal:
        out["next"] = zeros.copy()
    else:
        out["next"] = np.diagonal(a, offset=1, axis1=2, axis2=3) @ _weights(chooses[:-1])
    out["first"] = a[:, :, 1:, 0] @ _weights(chooses[1:])

    spec = np.asarray(special, dtype=bool)
    seps = spec & (pos > 0)
    if not seps.any() and not causal:
        seps = pos == n - 1
    out["last_sep"] = a[..., seps].sum(-1) @ _weights(chooses) if seps.any() else zeros.copy()

    punct = np.array([is_punctuation(t) for t in tokens], dtype=bool) & ~spec
    out["punctuation"] = a[..., punct].sum(-1) @ _weights(chooses) if punct.any() else zeros.copy()

    # normalised entropy; masked keys are exact zeros and add nothing (0 * log 0 -> 0)
    plogp = a * np.log2(np.maximum(a, np.float32(1e-30)))
    bound = np.log2(np.maximum(n_visible, 2)).astype(np.float32)  # [q]
    out["broad"] = (-plogp.sum(-1) / bound) @ _weights(chooses)
    return {name: np.clip(out[name], 0.0, 1.0).astype(np.float32) for name in PATTERNS}


def role_of(
    scores: Mapping[str, np.ndarray],
    threshold: float = THRESHOLD,
    broad_threshold: float = BROAD_THRESHOLD,
) -> np.ndarray:
    """Each head's role: its strongest position pattern past `threshold`, else broad, else mixed.

    Returns a [layers, heads] array of names from ROLE_NAMES.
    """
    names = [p for p in MASS_PATTERNS if p in scores]
    if not names:
        raise ValueError(f"scores has none of the patterns {', '.join(MASS_PATTERNS)}")
    stack = np.stack([np.asarray(scores[p], dtype=np.float64) for p in names])  # [patterns, L, H]
    best = stack.argmax(axis=0)
    top = np.take_along_axis(stack, best[None], axis=0)[0]
    role = np.asarray(names, dtype=object)[best]
    fallback: np.ndarray | str = "mixed"
    if "broad" in scores:
        fallback = np.where(np.asarray(scores["broad"]) >= broad_threshold, "broad", "mixed")
    role = np.where(top >= threshold, role, fallback)
    return role.astype(f"<U{max(len(r) for r in ROLE_NAMES)}")


@dataclass(frozen=True)
class HeadPattern:
    """One head's pattern scores (mean over texts), their spread, and its role."""

    layer: int
    head: int
    role: str
    scores: dict[str, float]
    spread: dict[str, float] | None = None  # standard deviation over texts; None for one text

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-ready record: layer, head, role, each score, and `<score>_std` over texts."""
        out: dict[str, Any] = {"layer": self.layer, "head": self.head, "role": self.role}
        out.update(self.scores)
        if self.spread is not None:
            out.update({f"{k}_std": v for k, v in self.spread.items()})
        return out


@dataclass(frozen=True)
class PatternTable:
    """Pattern scores of every extracted head, over one text or the mean of many."""

    model: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    mean: dict[str, np.ndarray]  # name -> [layers, heads]
    std: dict[str, np.ndarray] | None  # name -> [layers, heads]; None for one text
    roles: np.ndarray  # [layers, heads] of ROLE_NAMES
    texts: int
    threshold: float = THRESHOLD
    broad_threshold: float = BROAD_THRESHOLD

    def rows(self, sort: str | None = None) -> list[HeadPattern]:
        """One record per head, in layer-then-head order or by descending `sort` score.

        `sort="role"` ranks the heads by the score of their own role, the heads with a role first
        (what "the N best heads" means when no pattern is named).
        """
        check_sort(sort)
        out = []
        std = self.std
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(self.heads):
                out.append(
                    HeadPattern(
                        layer=layer,
                        head=head,
                        role=str(self.roles[li, hi]),
                        scores={k: float(v[li, hi]) for k, v in self.mean.items()},
                        spread=None if std is None else {k: float(v[li, hi]) for k, v in std.items()},
                    )
                )
        if sort == "role":
            out.sort(key=lambda r: (r.role == "mixed", -r.scores.get(r.role, max(r.scores.values()))))
        elif sort is not None:
            out.sort(key=lambda r: -r.scores[sort])
        return out

    def counts(self) -> dict[str, int]:
        """How many heads have each role."""
        return {name: int((self.roles == name).sum()) for name in ROLE_NAMES}

    def role_scores(self) -> np.ndarray:
        """[layers, heads]: each head's score on its own role (NaN for mixed), to label a role map."""
        out = np.full(self.roles.shape, np.nan)
        for name, values in self.mean.items():
            out = np.where(self.roles == name, values, out)
        return out


def check_thresholds(threshold: float, broad_threshold: float) -> None:
    """Both thresholds are fractions of a row's attention: 0-1 (checked before a model loads)."""
    for name, value in (("threshold", threshold), ("broad_threshold", broad_threshold)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"bad {param(name)} {value:g}: pattern scores are fractions, use a value in 0-1")


def head_patterns(
    atts: Attention | Iterable[Attention],
    threshold: float = THRESHOLD,
    broad_threshold: float = BROAD_THRESHOLD,
) -> PatternTable:
    """Score every head on one text, or on many (mean and standard deviation; streams, one pass)."""

    check_thresholds(threshold, broad_threshold)
    if isinstance(atts, Generation):  # its steps' rows on the context
        atts = atts.as_attention()  # type: ignore[union-attr]
    first: Attention | None = None
    total: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    n = 0
    for att in [atts] if isinstance(atts, Attention) else atts:
        if att.level != "token":
            raise InputError("pattern scores need token-level attention (extract without words=True)")
        if first is None:
            first = att
        elif att.layers != first.layers or att.heads != first.heads:
            raise InputError("all texts must be extracted with the same layers and heads")
        for name, value in pattern_scores(att.attn, att.special, att.tokens, att.causal).items():
            v = value.astype(np.float64)
            total[name] = total[name] + v if name in total else v
            squares[name] = squares[name] + v * v if name in squares else v * v
        n += 1
    if first is None:
        raise InputError("no texts given")
    mean = {name: total[name] / n for name in PATTERNS}
    std = (
        {name: np.sqrt(np.maximum(squares[name] / n - mean[name] ** 2, 0.0)) for name in PATTERNS}
        if n > 1
        else None
    )
    return PatternTable(
        model=first.model,
        layers=tuple(first.layers),
        heads=tuple(first.heads),
        mean=mean,
        std=std,
        roles=role_of(mean, threshold, broad_threshold),
        texts=n,
        threshold=threshold,
        broad_threshold=broad_threshold,
    )


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

    def as_dict(self) -> dict[str, Any]:
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
