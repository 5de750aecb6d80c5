"""Ranking heads that link two tokens: every layer and head scored in one vectorised pass.

A word is matched in the word-level view (case-free, whatever the tokenizer's subword marks), then
scored on the token-level tensor as that view merges pieces: the mean over the query word's pieces
of the summed weight on the key word's pieces. A `@N` query is token N exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from attnviz.attention import Attention
from attnviz.errors import InputError, TokenNotFoundError, param
from attnviz.generation.run import Generation
from attnviz.heads.patterns import PATTERNS, pattern_scores, role_of
from attnviz.tokens import display, locate, normalise, span_tokens

if TYPE_CHECKING:
    from attnviz.attention import Attention

Direction = Literal["both", "a2b", "b2a"]
DIRECTIONS: tuple[str, ...] = ("both", "a2b", "b2a")


def check_direction(direction: str) -> None:
    """InputError unless `direction` is one of DIRECTIONS: the one copy of this rule (CLI, server, API)."""
    if direction not in DIRECTIONS:
        raise InputError(f"unknown {param('direction')} '{direction}': use {', '.join(DIRECTIONS)}")


EACH_OCCURRENCE = param("occurrence", "N,M")  # which occurrence of A and of B, separately
Occurrence = int | Literal["all"] | None


@dataclass(frozen=True)
class HeadScore:
    """One row of the ranking: how strongly A and B attend to each other in one head."""

    rank: int
    layer: int
    head: int
    score: float  # what the ranking sorts on (see `direction`)
    a2b: float  # A as query, B as key: how much A looks at B
    b2a: float
    role: str  # the head's dominant pattern (see attnviz.heads.patterns)

    def as_dict(self) -> dict[str, int | float | str]:
        """Exactly the fields the JSON output promises."""
        return {
            "rank": self.rank,
            "layer": self.layer,
            "head": self.head,
            "score": self.score,
            "a2b": self.a2b,
            "b2a": self.b2a,
            "role": self.role,
        }


@dataclass(frozen=True)
class Unit:
    """A query resolved in a text: the word (or token) found and the token positions it covers."""

    query: str
    label: str  # the word or token as found in the text
    tokens: tuple[int, ...]  # token positions that were used
    occurrence: int  # which occurrence (1-based; 0: all of them)
    occurrences: int  # how many times it occurs in the text

    def describe(self) -> str:
        """'paris' = token 6 (occurrence 1 of 2), for the line saying which positions were used."""
        where = ", ".join(str(t) for t in self.tokens)
        noun = "token" if len(self.tokens) == 1 else "tokens"
        if self.occurrences <= 1:
            which = ""
        elif self.occurrence == 0:
            which = f" (all {self.occurrences} occurrences)"
        else:
            which = f" (occurrence {self.occurrence} of {self.occurrences})"
        return f"'{self.label}' = {noun} {where}{which}"


@dataclass(frozen=True)
class HeadSearch:
    """The ranking for a pair of words, with what was matched and over how many texts."""

    a: str
    b: str
    direction: str
    ranking: tuple[HeadScore, ...]
    units: tuple[tuple[Unit, Unit], ...]  # (A, B) as found in each text used
    used: tuple[int, ...]  # index of each text used (those containing both words)
    texts_used: int
    texts_total: int
    model: str = ""
    causal: bool = False

    @property
    def best(self) -> HeadScore:
        return self.ranking[0]

    def _repr_html_(self) -> str:
        from attnviz.views.notebook import ranking_html

        return ranking_html(self)


def pair_scores(attn: np.ndarray, a: Sequence[int], b: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A->B and B->A for every head at once: attn [layers, heads, q, k] -> two [layers, heads].

    A unit of several tokens is merged as the word view does: mean over query pieces, sum over keys.
    """
    ia = np.asarray(a, dtype=int)
    ib = np.asarray(b, dtype=int)
    a2b = attn[:, :, ia][:, :, :, ib].sum(-1).mean(-1)
    b2a = attn[:, :, ib][:, :, :, ia].sum(-1).mean(-1)
    return a2b.astype(np.float64), b2a.astype(np.float64)


def combine(a2b: np.ndarray, b2a: np.ndarray, direction: str) -> np.ndarray:
    """The score ranked on: the larger of both directions, or one of them."""
    if direction == "both":
        return np.maximum(a2b, b2a)
    if direction == "a2b":
        return a2b
    if direction == "b2a":
        return b2a
    check_direction(direction)
    raise AssertionError("unreachable")


def check_top(top: int | None) -> None:
    """InputError for a negative `top` (it would silently rank no head, or drop the last)."""
    if top is not None and top < 0:
        raise InputError(f"bad {param('top')} {top}: use 0 (all heads) or more")


def ranked_positions(score: np.ndarray, top: int | None = None) -> list[tuple[int, int]]:
    """(layer row, head column) pairs of a [layers, heads] score, best first; ties in layer-head order."""
    order = np.argsort(-score.ravel(), kind="stable")
    if top is not None:
        order = order[: max(top, 0)]
    return [divmod(int(idx), score.shape[1]) for idx in order]


def rank(
    score: np.ndarray,
    a2b: np.ndarray,
    b2a: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    roles: np.ndarray | None = None,
    top: int | None = None,
) -> tuple[HeadScore, ...]:
    """Heads by descending score; ties keep layer-then-head order, as a brute-force loop would."""
    flat = score.ravel()
    out = []
    for r, (li, hi) in enumerate(ranked_positions(score, top), start=1):
        out.append(
            HeadScore(
                rank=r,
                layer=int(layers[li]),
                head=int(heads[hi]),
                score=float(flat[li * score.shape[1] + hi]),
                a2b=float(a2b[li, hi]),
                b2a=float(b2a[li, hi]),
                role=str(roles[li, hi]) if roles is not None else "",
            )
        )
    return tuple(out)


def _unit_tokens(att: Attention, view: Attention, index: int) -> tuple[int, ...]:
    """Token positions behind unit `index` of the word view (a word's pieces, or one special)."""
    wid = view.word_ids[index]
    if wid is not None:
        return tuple(i for i, w in enumerate(att.word_ids) if w == wid)
    # units without a word keep token order: the k-th such unit is the k-th such token
    k = sum(1 for w in view.word_ids[:index] if w is None)
    loose = [i for i, w in enumerate(att.word_ids) if w is None]
    return (loose[k],)


def parse_occurrence(value: str | int | None) -> tuple[Occurrence, Occurrence]:
    """'2' (both words), '1,3' (A then B), 'all' -> occurrences for A and B."""
    if value is None:
        return None, None
    if isinstance(value, int):
        return value, value
    if not str(value).strip():  # `--occurrence ''` is not "the first"
        raise InputError(f"{param('occurrence')} is empty: use N, N,M or all")
    parts = [p.strip().lower() for p in str(value).split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise InputError(f"bad occurrence '{value}': use N, N,M or all")
    out: list[Occurrence] = []
    for p in parts:
        if p == "all":
            out.append("all")
        elif p in ("", "first"):
            out.append(None)
        elif re.fullmatch(r"\d+", p) and int(p) >= 1:
            out.append(int(p))
        else:
            raise InputError(f"bad occurrence '{value}': use a number from 1, N,M or all")
    return out[0], out[1]


def resolve(att: Attention, query: str, occurrence: Occurrence = None, view: Attention | None = None) -> Unit:
    """Find a word, a phrase of several words, a subword piece or an `@N` position in one text.

    Matching is case-free and ignores subword marks. A word is looked up among the text's words
    first, then among its tokens (so a piece such as `##s` or `s` of "lesson ##s" is found by its
    string). A phrase ("new york") is its words in a row; it covers all their pieces.
    """
    q = query.strip()
    if re.fullmatch(r"@-?\d+", q):
        m = locate(q, att.tokens)
        return Unit(
            query=q, label=display(att.tokens[m.index]), tokens=(m.index,), occurrence=1, occurrences=1
        )
    view = view if view is not None else att.to_words()
    if len(q.split()) > 1:
        return _resolve_phrase(att, view, q, occurrence)
    try:
        if occurrence == "all":
            m = locate(q, view.tokens, what="words")
            toks = tuple(sorted(t for i in m.occurrences for t in _unit_tokens(att, view, i)))
            label = display(view.tokens[m.index])
            return Unit(query=q, label=label, tokens=toks, occurrence=0, occurrences=len(m.occurrences))
        m = locate(q, view.tokens, occurrence, what="words")
    except TokenNotFoundError as exc:
        if "is not in the text" not in str(exc):
            raise
        try:
            return _resolve_piece(att, q, occurrence, exc)
        except TokenNotFoundError:
            if (span := _resolve_span(att, q, occurrence)) is None:
                raise
            return span
    return Unit(
        query=q,
        label=display(view.tokens[m.index]),
        tokens=_unit_tokens(att, view, m.index),
        occurrence=m.occurrence,
        occurrences=len(m.occurrences),
    )


def _resolve_piece(att: Attention, q: str, occurrence: Occurrence, missing: TokenNotFoundError) -> Unit:
    """A subword piece by its string, when no whole word matches; else the word-level error."""
    try:
        m = locate(q, att.tokens, None if occurrence == "all" else occurrence)
    except TokenNotFoundError:
        raise missing from None
    if occurrence == "all":
        return Unit(query=q, label=display(att.tokens[m.index]), tokens=m.occurrences, occurrence=0,
                    occurrences=len(m.occurrences))  # fmt: skip
    return Unit(
        query=q,
        label=display(att.tokens[m.index]),
        tokens=(m.index,),
        occurrence=m.occurrence,
        occurrences=len(m.occurrences),
    )


def _resolve_span(att: Attention, q: str, occurrence: Occurrence) -> Unit | None:
    """A query in a script written without spaces (巴黎 in 我喜欢在巴黎学习法语), as the tokens
    covering its characters; None when it is not such a query or does not occur."""
    found = span_tokens(att, q) if att.level == "token" else []
    if not found:
        return None
    if occurrence == "all":
        toks = tuple(sorted({t for covering in found for t in covering}))
        chosen, which = found[0], 0
    else:
        which = 1 if occurrence is None else occurrence
        if not 1 <= which <= len(found):
            raise TokenNotFoundError(
                f"'{q}' occurs {len(found)} time(s); occurrence {which} does not exist (1-{len(found)})"
            )
        chosen = toks = found[which - 1]
    spans = [att.spans[i] for i in chosen]
    label = att.text[min(a for a, _ in spans) : max(b for _, b in spans)]  # the characters they cover
    return Unit(query=q, label=label, tokens=toks, occurrence=which, occurrences=len(found))


def _resolve_phrase(att: Attention, view: Attention, q: str, occurrence: Occurrence) -> Unit:
    """Several words in a row ("new york"): the tokens of all of them, as one unit."""
    wanted = [normalise(w) for w in q.split()]
    units = [normalise(t) for t in view.tokens]
    n = len(wanted)
    starts = [i for i in range(len(units) - n + 1) if units[i : i + n] == wanted]
    if not starts:
        shown = " ".join(display(u) for u in view.tokens)
        raise TokenNotFoundError(f"'{q}' is not in the text as words in a row; its words are: {shown}")
    if occurrence == "all":
        chosen, which = starts, 0
    else:
        which = 1 if occurrence is None else occurrence
        if not 1 <= which <= len(starts):
            raise TokenNotFoundError(
                f"'{q}' occurs {len(starts)} time(s); occurrence {which} does not exist (1-{len(starts)})"
            )
        chosen = [starts[which - 1]]
    toks = tuple(sorted({t for s in chosen for i in range(s, s + n) for t in _unit_tokens(att, view, i)}))
    label = " ".join(display(view.tokens[i]) for i in range(chosen[0], chosen[0] + n))
    return Unit(query=q, label=label, tokens=toks, occurrence=which, occurrences=len(starts))


def _loose(text: str) -> str:
    """Case-folded, accents removed, runs of spaces as one: for the cheap check before loading."""
    import unicodedata

    folded = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in folded if not unicodedata.combining(c)).split())


def check_queries(texts: Sequence[str], a: str, b: str) -> None:
    """Fail before a model loads when A or B cannot be in any text (checked case-free as plain text).

    A word that passes may still be missing as a token (the tokenizer decides); `@N` is not checked.
    """
    wanted = [q for q in (a, b) if not re.fullmatch(r"\s*@-?\d+\s*", q)]
    if not wanted:
        return
    for q in wanted:
        if not _loose(q):
            raise InputError("an empty word was given: pass a word, a phrase or @N")
    loose = [_loose(t) for t in texts]
    for q in wanted:
        if not any(_loose(q) in t for t in loose):
            where = "the text" if len(texts) == 1 else f"any of the {len(texts)} texts"
            raise TokenNotFoundError(
                f"'{q.strip()}' does not occur in {where}: check its spelling, or use @N for a token position"
            )
    if len(texts) > 1 and len(wanted) == 2 and not any(all(_loose(q) in t for q in wanted) for t in loose):
        raise TokenNotFoundError(f"none of the {len(texts)} texts contains both '{a}' and '{b}'")


def resolve_pair(
    att: Attention, a: str, b: str, occurrence: tuple[Occurrence, Occurrence] = (None, None)
) -> tuple[Unit, Unit]:
    """Both queries; the same word twice means its first and second occurrences by default."""
    view = att.to_words()
    occ_a, occ_b = occurrence
    same = not a.strip().startswith("@") and normalise(a) == normalise(b)
    if same and occ_a is None and occ_b is None:
        occ_a, occ_b = 1, 2
    try:
        ua = resolve(att, a, occ_a, view)
        ub = resolve(att, b, occ_b, view)
    except TokenNotFoundError as exc:
        if "occurrence" in str(exc) and occ_a == occ_b:
            raise TokenNotFoundError(
                f"{exc.message}; {EACH_OCCURRENCE} picks A's and B's separately"
            ) from None
        raise
    if set(ua.tokens) & set(ub.tokens):
        raise InputError(
            f"{ua.describe()} and {ub.describe()} overlap: pick other occurrences with {EACH_OCCURRENCE}"
        )
    return ua, ub


def _positions(att: Attention, layers: Sequence[int] | None) -> list[int]:
    """Rows of `attn` for model layers (negative: counted from the last extracted layer)."""
    if layers is None:
        return list(range(len(att.layers)))
    out = []
    for layer in layers:
        if layer < 0 and -len(att.layers) <= layer:
            out.append(len(att.layers) + layer)
        else:
            out.append(att.layer_pos(layer))
    return sorted(set(out))


def _checked_arguments(att: Any, a: Any, b: Any) -> Any:
    """find_heads' arguments of the wrong type are TypeErrors naming them (a Generation becomes
    its Attention)."""

    for name, query in (("a", a), ("b", b)):
        if not isinstance(query, str):
            raise TypeError(f"{name} must be a word, a phrase or '@N' (a string), not {type(query).__name__}")
    if isinstance(att, Generation):  # its steps' rows on the context
        att = att.as_attention()
    if isinstance(att, (str, bytes)) or not (isinstance(att, Attention) or hasattr(att, "__iter__")):
        raise TypeError(
            "att must be an Attention (from extract), a Generation or an iterable of them, "
            f"not {type(att).__name__}"
        )
    return att


def _each_attention(items: Iterable[Any]) -> Iterator[Attention]:
    """The items of `att`, each an Attention, or a TypeError naming the first that is not."""

    for index, one in enumerate(items):
        if not isinstance(one, Attention):
            raise TypeError(
                f"att's item {index} must be an Attention (from extract), not {type(one).__name__}"
            )
        yield one


def find_heads(
    att: Attention | Iterable[Attention],
    a: str,
    b: str,
    *,
    occurrence: str | int | tuple[Occurrence, Occurrence] | None = None,
    direction: str = "both",
    top: int | None = 5,
    layers: Sequence[int] | None = None,
    roles_from: Attention | Iterable[Attention] | None = None,
) -> HeadSearch:
    """Rank every head by how strongly A and B attend to each other (mean over texts with both).

    One text: a missing word raises TokenNotFoundError listing the text's words. Several (any
    iterable, consumed once, so a corpus can stream): texts lacking either word are skipped, and
    none having both is an error. `roles_from`: the same texts' plain attention, in step with
    `att`, when `att` is norm-weighted: a head's role is what `head_patterns` says of its weights.
    """

    att = _checked_arguments(att, a, b)
    check_direction(direction)
    check_top(top)
    occ = occurrence if isinstance(occurrence, tuple) else parse_occurrence(occurrence)
    items = _each_attention([att] if isinstance(att, Attention) else att)
    role_items = None
    if roles_from is not None:
        role_items = iter([roles_from] if isinstance(roles_from, Attention) else roles_from)
    first: Attention | None = None
    pos: list[int] = []
    sums: dict[str, np.ndarray] = {}  # a2b, b2a, score and each pattern, summed over texts used
    used: list[tuple[Unit, Unit]] = []
    used_index: list[int] = []
    missing: InputError | None = None
    total = 0
    for index, one in enumerate(items):
        total += 1
        plain = one if role_items is None else next(role_items, None)
        if plain is None or plain.attn.shape != one.attn.shape:
            raise InputError("roles_from must hold the same texts, layers and heads as the attention ranked")
        if one.level != "token":
            raise InputError("find_heads needs token-level attention (extract without words=True)")
        if first is None:
            first, pos = one, _positions(one, layers)
        elif one.layers != first.layers or one.heads != first.heads:
            raise InputError("all texts must be extracted with the same layers and heads")
        try:
            units = resolve_pair(one, a, b, occ)
        except InputError as exc:  # missing word, or A and B on the same tokens: skip this text
            missing = missing or exc
            continue
        attn = one.attn[pos]  # [layers, heads, q, k]
        a2b, b2a = pair_scores(attn, units[0].tokens, units[1].tokens)
        per_text = {"a2b": a2b, "b2a": b2a, "score": combine(a2b, b2a, direction)}
        per_text.update(pattern_scores(plain.attn[pos], plain.special, plain.tokens, plain.causal))
        for name, value in per_text.items():
            sums[name] = sums[name] + value if name in sums else value.astype(np.float64)
        used.append(units)
        used_index.append(index)
    if first is None:
        raise InputError("no texts given")
    if not used:
        if total == 1 and missing is not None:
            raise missing
        raise TokenNotFoundError(f"none of the {total} texts contains both '{a}' and '{b}'")
    n = len(used)
    mean = {name: value / n for name, value in sums.items()}
    ranking = rank(
        mean["score"],
        mean["a2b"],
        mean["b2a"],
        [first.layers[p] for p in pos],
        first.heads,
        role_of({name: mean[name] for name in PATTERNS}),
        top,
    )
    return HeadSearch(
        a=a,
        b=b,
        direction=direction,
        ranking=ranking,
        units=tuple(used),
        used=tuple(used_index),
        texts_used=n,
        texts_total=total,
        model=first.model,
        causal=first.causal,
    )
