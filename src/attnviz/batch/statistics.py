"""Per-head statistics: each long-table column declared once, computed over a whole padded batch.

A column is a `Statistic`: its name, the `keep` entry that asks for it, and how a batch computes
it, either a per-query quantity (`row`) or the weight on a set of keys (`keys`), averaged over the
queries it concerns (`queries`). `statistics_of` is the per-text numpy reference that the batched
values must equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.batch.config import BatchConfig
from attnviz.errors import InputError, TokenNotFoundError
from attnviz.heads.patterns import PATTERNS, pattern_scores, row_entropy
from attnviz.tokens import align_words, locate, word_units

if TYPE_CHECKING:
    from attnviz.attention import Attention, Encoded


class Masks:
    """One batch's query weights [B, L] and key masks [B, L]; padding is zero / False everywhere."""

    def __init__(self, enc: Encoded, causal: bool, device: Any, is_punct: Callable[[str], bool]) -> None:
        import torch

        self.enc = enc
        self.causal = causal
        self.is_punct = is_punct
        self.B, self.L = enc.input_ids.shape
        self.lengths = torch.tensor(enc.lengths, device=device)
        self.pos = torch.arange(self.L, device=device)
        self.valid = self.pos[None, :] < self.lengths[:, None]  # [B, L]
        self.device = device

    @staticmethod
    def norm(mask: Any) -> Any:
        """A query mask -> averaging weights summing to 1 per text (or all 0)."""
        m = mask.float()
        return m / m.sum(-1, keepdim=True).clamp_min(1.0)

    @cached_property
    def all(self) -> Any:  # every real query row
        return self.norm(self.valid)

    @cached_property
    def nonspecial(self) -> Any:  # real queries that are not special tokens (norm weighting's share)
        return self.norm(self.valid & ~self.special)

    @cached_property
    def _chooses(self) -> Any:  # queries that have a choice of keys (as patterns.pattern_scores)
        if self.causal:
            return self.valid & (self.pos[None, :] >= 1)
        return self.valid & (self.lengths[:, None] > 1)

    @cached_property
    def choose(self) -> Any:
        return self.norm(self._chooses)

    @cached_property
    def prev(self) -> Any:  # queries 1..n-1 (previous, first)
        import torch.nn.functional as F

        return F.pad(self.norm(self._chooses[:, 1:]), (1, 0))

    @cached_property
    def next(self) -> Any:  # queries 0..n-2; a causal model's next token is masked: 0 by definition
        import torch
        import torch.nn.functional as F

        w = F.pad(self.norm(self._chooses[:, :-1] & self.valid[:, 1:]), (0, 1))
        return torch.zeros_like(w) if self.causal else w

    @cached_property
    def bound(self) -> Any:  # [B, 1, L] log2 of the keys each query can see: broad's scale
        import torch

        if self.causal:
            visible = (self.pos + 1).float()[None, :].expand(self.B, self.L)
        else:
            visible = self.lengths[:, None].float().expand(self.B, self.L)
        return torch.log2(visible.clamp_min(2.0))[:, None]

    @cached_property
    def special(self) -> Any:
        import torch

        spec = torch.zeros((self.B, self.L), dtype=torch.bool, device=self.device)
        for b, row in enumerate(self.enc.special):
            spec[b, : len(row)] = torch.tensor(row, dtype=torch.bool)
        return spec

    @cached_property
    def seps(self) -> Any:  # special tokens after the first; an encoder's last token when none
        seps = self.special & (self.pos[None, :] >= 1)
        if not self.causal:
            none = ~seps.any(-1)
            seps[none, (self.lengths - 1).clamp_min(0)[none]] = True
        return seps

    @cached_property
    def punct(self) -> Any:
        import torch

        punct = torch.zeros((self.B, self.L), dtype=torch.bool, device=self.device)
        for b, toks in enumerate(self.enc.tokens):
            flags = [self.is_punct(t) for t in toks]
            if any(flags):
                punct[b, : len(flags)] = torch.tensor(flags, dtype=torch.bool)
        return punct & ~self.special & self.valid


class Layer:
    """One layer's recorded weights w [B, H, L, L] and the per-query quantities read off them."""

    def __init__(self, w: Any, masks: Masks, norms: Any | None = None) -> None:
        self.w = w  # padded keys are exact zeros
        self.masks = masks
        self.norms = norms  # [B, H, L] value-vector norms ||f(x_j)|| (only when `norm` is kept)

    @cached_property
    def special_norm(self) -> Any:  # [B, H, L] share of a norm-weighted row's total on special keys
        import torch

        if self.norms is None:
            raise InputError("the norm statistic needs the value norms (analyses.norms.batch_value_norms)")
        wn = self.w * self.norms[:, :, None, :]  # [B, H, L, L]
        total = wn.sum(-1)
        on_special = (wn * self.masks.special[:, None, None, :]).sum(-1)
        return torch.where(total > 0, on_special / total.clamp_min(1e-30), torch.zeros_like(total))

    @cached_property
    def entropy(self) -> Any:  # [B, H, L] bits; 0 log 0 = 0
        return -self.w.clamp_min(1e-30).log2_().mul_(self.w).sum(-1)

    @cached_property
    def row_max(self) -> Any:  # [B, H, L]; padded rows 0
        return self.w.amax(-1).masked_fill_(~self.masks.valid[:, None, :], 0.0)

    def diagonal(self, offset: int) -> Any:
        """w[i, i + offset] at query i, zero where that key does not exist."""
        import torch
        import torch.nn.functional as F

        d = torch.diagonal(self.w, offset, -2, -1)
        if offset == 0:
            return d
        return F.pad(d, (-offset, 0) if offset < 0 else (0, offset))


@dataclass(frozen=True)
class Statistic:
    """One long-table column, declared once: name, what keeps it, and how a batch computes it."""

    column: str
    keep: str  # the `statistics` entry that records it
    queries: str  # the Masks attribute of its query weights: all, choose, prev, next
    row: Callable[[Layer], Any] | None = None  # a per-query quantity [B, H, L]...
    keys: str | None = None  # ...or the summed weight on these keys (a Masks attribute)
    reduce: str = "mean"  # over queries: weighted "mean", or "max"
    clip: bool = False  # a fraction: clip float error into [0, 1]


def _pattern(name: str, queries: str, **how: Any) -> Statistic:
    return Statistic(f"pattern_{name}", "patterns", queries, clip=True, **how)


_PATTERN_STATS = {
    "self": _pattern("self", "choose", row=lambda v: v.diagonal(0)),
    "previous": _pattern("previous", "prev", row=lambda v: v.diagonal(-1)),
    "next": _pattern("next", "next", row=lambda v: v.diagonal(1)),
    "first": _pattern("first", "prev", row=lambda v: v.w[..., 0]),
    "last_sep": _pattern("last_sep", "choose", keys="seps"),
    "punctuation": _pattern("punctuation", "choose", keys="punct"),
    "broad": _pattern("broad", "choose", row=lambda v: v.entropy / v.masks.bound),
}
STATISTICS: tuple[Statistic, ...] = (
    Statistic("entropy", "entropy", "all", row=lambda v: v.entropy),
    Statistic("max_weight", "max_weight", "all", row=lambda v: v.row_max, reduce="max"),
    Statistic("mean_row_max", "max_weight", "all", row=lambda v: v.row_max),
    Statistic("special", "special", "all", keys="special"),
    *(_PATTERN_STATS[p] for p in PATTERNS),
    # Kobayashi et al. 2020: how much of a head's focus on special tokens survives value norms
    # (analyses.norms.weighting_statistics); off by default, it needs the value vectors
    Statistic("special_attention", "norm", "nonspecial", keys="special", clip=True),
    Statistic("special_norm", "norm", "nonspecial", row=lambda v: v.special_norm, clip=True),
)


def kept(config: BatchConfig) -> list[Statistic]:
    """The declared statistics a config keeps, in column order."""
    return [s for s in STATISTICS if s.keep in config.statistics]


def stat_columns(config: BatchConfig) -> list[str]:
    """The long table's statistic columns, in order."""
    dla = ["dla"] if "dla" in config.statistics else []  # computed by the analyser (attribution)
    return [s.column for s in kept(config)] + [c for p in config.probes for c in p.columns] + dla


# -- the per-text reference ----------------------------------------------------------------------
def find_unit(alternatives: Sequence[str], labels: Sequence[str]) -> int | None:
    """The earliest unit matching any alternative (`locate` rules: case-free, `@N`); None if none."""

    best: int | None = None
    for alt in alternatives:
        try:
            idx = locate(alt, labels).index
        except TokenNotFoundError:
            continue
        best = idx if best is None else min(best, idx)
    return best


def statistics_of(
    att: Attention, config: BatchConfig, weighted: Attention | None = None
) -> dict[str, np.ndarray]:
    """One text's statistics, per text in numpy: the reference the batched path must equal.

    Returns column -> [layers, heads] float32, with the columns of `stat_columns(config)`.
    `weighted` (analyses.norms.norm_weighted of `att`) is needed when `norm` is kept.
    """

    if att.level != "token":
        raise InputError("batch statistics need token-level attention (extract without words=True)")
    a = np.asarray(att.attn, dtype=np.float32)  # [layers, heads, n, n]
    out: dict[str, np.ndarray] = {}
    if "entropy" in config.statistics:
        out["entropy"] = row_entropy(a).mean(-1).astype(np.float32)
    if "max_weight" in config.statistics:
        out["max_weight"] = a.max(axis=(-1, -2))
        out["mean_row_max"] = a.max(-1).mean(-1)
    if "special" in config.statistics:
        spec = np.asarray(att.special, dtype=bool)
        out["special"] = a[..., spec].sum(-1).mean(-1) if spec.any() else np.zeros(a.shape[:2], np.float32)
    if "patterns" in config.statistics:
        scores = pattern_scores(a, att.special, att.tokens, att.causal)
        out.update({f"pattern_{k}": scores[k] for k in PATTERNS})
    if "norm" in config.statistics:
        from attnviz.analyses.norms import weighting_statistics

        if weighted is None:
            raise InputError("the norm statistic needs the norm-weighted attention (norm_weighted)")
        out.update(weighting_statistics(att, weighted))
    if config.probes:
        words = att.to_words()
        for p in config.probes:
            ia, ib = find_unit(p.a, words.tokens), find_unit(p.b, words.tokens)
            ab, ba = p.columns
            if ia is None or ib is None:
                out[ab] = out[ba] = np.full(a.shape[:2], np.nan, np.float32)
            else:
                out[ab] = words.attn[:, :, ia, ib]
                out[ba] = words.attn[:, :, ib, ia]
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


# -- the batched computation ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Planned:
    """A column as one batch computes it: its query weights and its row quantity or key mask."""

    column: str
    queries: Any  # [B, L]
    row: Callable[[Layer], Any] | None
    keys: Any | None  # [B, L] bool
    reduce: str = "mean"
    clip: bool = False
    found: Any | None = None  # [B] bool: texts holding both probe words (others get NaN)


def _plan(config: BatchConfig, masks: Masks, probe_masks: list[tuple[Any, Any, Any]]) -> list[_Planned]:
    plan = [
        _Planned(
            s.column,
            getattr(masks, s.queries),
            s.row,
            getattr(masks, s.keys) if s.keys is not None else None,
            s.reduce,
            s.clip,
        )
        for s in kept(config)
    ]
    for p, (a_mask, b_mask, hit) in zip(config.probes, probe_masks, strict=True):
        ab, ba = p.columns  # A->B sums over B's pieces, averaged over A's; B->A the other way
        plan.append(_Planned(ab, masks.norm(a_mask), None, b_mask, found=hit))
        plan.append(_Planned(ba, masks.norm(b_mask), None, a_mask, found=hit))
    return plan


class _KeyGather:
    """Key sets are a few positions per text: gather those columns ([B, M] indices, padded with
    position 0 at coefficient 0) instead of multiplying the whole [L, L] matrix."""

    def __init__(self, key_masks: list[Any]) -> None:
        import torch

        kmask = torch.stack(key_masks, -1)  # [B, L, K]
        any_key = kmask.any(-1)  # [B, L]
        m = max(1, int(any_key.sum(-1).max()))
        self.idx = torch.argsort((~any_key).to(torch.int8), dim=-1, stable=True)[:, :m]  # [B, M]
        in_set = torch.gather(any_key, 1, self.idx)  # [B, M]: a real key, not padding
        coef = torch.gather(kmask, 1, self.idx[..., None].expand(-1, -1, kmask.shape[-1]))
        self.coef = (coef & in_set[..., None]).float()  # [B, M, K]
        self.batch = torch.arange(kmask.shape[0], device=kmask.device)[:, None]

    def mass(self, w: Any) -> Any:
        """[B, H, L, K]: each query's summed weight on each key set."""
        import torch

        picked = w[self.batch, :, :, self.idx]  # [B, M, H, L]
        return torch.einsum("bmhl,bmk->bhlk", picked, self.coef)


def batch_statistics(
    weights: Sequence[Any],
    masks: Masks,
    config: BatchConfig,
    probe_masks: list[tuple[Any, Any, Any]],
    norms: Sequence[Any] | None = None,
) -> dict[str, np.ndarray]:
    """Every kept column over the padded batch: column -> [B, layers, heads] float32.

    `weights`: per recorded layer [B, H, L, L]; `norms`: per layer [B, H, L] value norms (needed by
    `norm`). Padded query rows are zeroed before averaging, so padding never enters a number.
    """
    import torch

    plan = _plan(config, masks, probe_masks)
    rows = [p for p in plan if p.row is not None]
    keyed = [p for p in plan if p.keys is not None]
    order = rows + keyed  # the quantities' last axis, in this order
    qmat = torch.stack([p.queries for p in order], -1)[:, None]  # [B, 1, L, R]
    gather = _KeyGather([p.keys for p in keyed]) if keyed else None
    pad_rows = ~masks.valid[:, None, :, None]  # [B, 1, L, 1]: padded query rows hold the model's noise
    maxed = [i for i, p in enumerate(order) if p.reduce == "max"]
    n_heads = weights[0].shape[1]
    values = torch.empty((masks.B, len(weights), n_heads, len(order)), device=masks.device)
    for li, w in enumerate(weights):
        layer = Layer(w.float(), masks, norms[li].float() if norms is not None else None)
        parts = [torch.stack([p.row(layer) for p in rows], -1)] if rows else []  # type: ignore[misc]
        if gather is not None:
            parts.append(gather.mass(layer.w))
        quantities = torch.cat(parts, -1).masked_fill_(pad_rows, 0.0)  # [B, H, L, R]
        values[:, li] = (quantities * qmat).sum(2)  # [B, H, R]
        if maxed:
            values[:, li, :, maxed] = quantities[..., maxed].amax(2)
    host = values.cpu().numpy()
    out: dict[str, np.ndarray] = {}
    for i, p in enumerate(order):
        col = np.ascontiguousarray(host[..., i])
        if p.clip:
            np.clip(col, 0.0, 1.0, out=col)
        if p.found is not None:
            col[~p.found.cpu().numpy()] = np.nan
        out[p.column] = col
    return {p.column: out[p.column] for p in plan}  # declared order


def probe_masks(enc: Encoded, config: BatchConfig, device: Any) -> list[tuple[Any, Any, Any]]:
    """Per probe: A's and B's piece masks [B, L] (word-level view) and found [B]."""
    import torch

    probes = config.probes
    B, L = enc.input_ids.shape
    a_masks = torch.zeros((len(probes), B, L), dtype=torch.bool)
    b_masks = torch.zeros((len(probes), B, L), dtype=torch.bool)
    found = torch.zeros((len(probes), B), dtype=torch.bool)
    for b, text in enumerate(enc.texts):
        n = enc.lengths[b]
        word_ids, words = align_words(text, enc.offsets[b][:n], enc.special[b][:n])
        labels, unit_of = word_units(enc.tokens[b][:n], word_ids, words)
        units = np.asarray(unit_of)
        for i, p in enumerate(probes):
            ua, ub = find_unit(p.a, labels), find_unit(p.b, labels)
            if ua is None or ub is None:
                continue
            a_masks[i, b, :n] = torch.from_numpy(units == ua)
            b_masks[i, b, :n] = torch.from_numpy(units == ub)
            found[i, b] = True
    return [(a_masks[i].to(device), b_masks[i].to(device), found[i].to(device)) for i in range(len(probes))]
