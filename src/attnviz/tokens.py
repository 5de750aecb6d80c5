"""Token <-> word alignment, display labels, and finding a word's pieces in a text.

Words are defined on the text itself (runs of word characters, or one punctuation mark), not by
the tokenizer, so "transformers" -> "transform" "##ers", GPT-2's "Ġcat" and SentencePiece's "▁cat"
all map back to the same word whatever the tokenizer family.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from attnviz.errors import TokenNotFoundError

if TYPE_CHECKING:
    from attnviz.attention import Attention

# combining marks (Python's \w leaves them out): a decomposed "cafe\u0301" stays one word
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
WORD_RE = re.compile(rf"\w[\w{_MARKS}]*(?:['’][\w{_MARKS}]+)*|[^\w\s]")
_PIECE_MARKS = ("Ġ", "▁", "Ċ", "##")


def words_of(text: str) -> list[tuple[str, int, int]]:
    """The words of a text as (word, start, end) character spans."""
    return [(m.group(), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def align_words(
    text: str, spans: Sequence[tuple[int, int]], special: Sequence[bool]
) -> tuple[list[int | None], list[str]]:
    """Map each token to the index of the word its first visible character falls in."""
    words = words_of(text)
    starts = [w[1] for w in words]
    ends = [w[2] for w in words]
    word_ids: list[int | None] = []
    j = 0
    for (start, end), is_special in zip(spans, special, strict=True):
        while start < end and text[start].isspace():
            start += 1
        if is_special or start >= end:
            word_ids.append(None)
            continue
        j = _find_word(starts, ends, start)
        word_ids.append(j)
    return word_ids, [w[0] for w in words]


def word_units(
    tokens: Sequence[str], word_ids: Sequence[int | None], words: Sequence[str]
) -> tuple[list[str], list[int]]:
    """The word-level view's unit labels, and each token's unit index.

    A word's pieces share one unit labelled with the word; special tokens (word id None) stay
    units of their own. The one builder behind `Attention.to_words` and batch statistics.
    """
    labels: list[str] = []
    unit_of: list[int] = []
    seen: dict[int, int] = {}
    for tok, wid in zip(tokens, word_ids, strict=True):
        if wid is None:
            labels.append(tok)
            unit_of.append(len(labels) - 1)
        elif wid in seen:
            unit_of.append(seen[wid])
        else:
            seen[wid] = len(labels)
            labels.append(words[wid])
            unit_of.append(len(labels) - 1)
    return labels, unit_of


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, reversed: the printable stand-in character -> its byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def is_byte_level(tokenizer: Any) -> bool:
    """True for byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2), whose pieces spell bytes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and "ByteLevel" in repr(getattr(backend, "decoder", None)):
        return True
    return hasattr(tokenizer, "byte_decoder")


FAMILIES = ("byte-level", "wordpiece", "sentencepiece")


def family(tokenizer: Any) -> str:
    """How a tokenizer spells its pieces, which decides how they are read back as text.

    'byte-level' (GPT-2, Llama 3, SmolLM2: a stand-in character per byte), 'wordpiece' (BERT:
    `##` continues a word) or 'sentencepiece' (`▁` marks a space, `<0xE4>` a byte fallback; BPE
    and Unigram alike, and the default for anything else).
    """
    if is_byte_level(tokenizer):
        return "byte-level"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = getattr(backend, "model", None)
    if type(model).__name__ == "WordPiece" or "WordPiece" in repr(getattr(backend, "decoder", None)):
        return "wordpiece"
    return "sentencepiece"


SPLIT = "…"  # a character split over pieces: 北 over three pieces reads 北… …北… …北
_VISIBLE = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}  # whitespace a label must show
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _piece_bytes(piece: str, kind: str) -> bytes | None:
    """The bytes a piece stands for; None when it is not a spelling of text (kept as it is)."""
    if kind == "byte-level":
        table = _byte_decoder()
        if any(c not in table for c in piece):
            return None
        return bytes(table[c] for c in piece)
    if kind == "sentencepiece":
        if m := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(m.group(1), 16)])
        piece = piece.replace("▁", " ")
    return piece.encode("utf-8", "surrogatepass")


def _utf8_size(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4


def _characters(chunks: Sequence[bytes]) -> list[list[tuple[str, str, str]]]:
    """Each piece's characters as (before, char, after): a character whose bytes span pieces is
    given to each of them, with SPLIT on the side where it goes on; a byte that starts no
    character is `\\xNN` on its own piece."""
    data = b"".join(chunks)
    owner = [i for i, chunk in enumerate(chunks) for _ in chunk]  # piece index of each byte
    parts: list[list[tuple[str, str, str]]] = [[] for _ in chunks]
    p = 0
    while p < len(data):
        lead = data[p]
        size = _utf8_size(lead)
        try:
            char = data[p : p + size].decode("utf-8") if lead < 0x80 or lead >= 0xC0 else None
        except UnicodeDecodeError:
            char = None
        if char is None:
            parts[owner[p]].append(("", f"\\x{lead:02x}", ""))
            p += 1
            continue
        first, last = owner[p], owner[p + size - 1]
        for i in range(first, last + 1):
            parts[i].append((SPLIT if i > first else "", char, SPLIT if i < last else ""))
        p += size
    return parts


def _show(char: str) -> str:
    if char in _VISIBLE and char != " ":
        return _VISIBLE[char]
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


def _label(parts: list[tuple[str, str, str]]) -> str:
    """One piece's label: its text without the space that starts a word; only-whitespace shown."""
    if parts and all(c.isspace() and not (b or a) for b, c, a in parts):
        return "".join(_VISIBLE.get(c) or _show(c) for _, c, _ in parts)
    while parts and parts[0][1] == " " and not parts[0][2]:
        parts = parts[1:]
    return "".join(b + _show(c) + a for b, c, a in parts)


def readable(pieces: Sequence[str], special: Sequence[str] = (), kind: str = "byte-level") -> list[str]:
    """Pieces as the text they stand for, one rule for every tokenizer family (see `family`).

    'ĠParis' and '▁Paris' read 'Paris', 'ä' '¸' 'Ń' (byte-level) and '<0xE4>' '<0xB8>' '<0xAD>'
    (byte fallback) read '中…' '…中…' '…中', a piece of only spaces reads '␣', a newline '\\n';
    WordPiece's '##ers' stays. Special tokens and pieces that spell no text are kept as they are.
    """
    specials = set(special)
    labels = list(pieces)
    run: list[int] = []  # indices of consecutive text pieces, decoded together
    chunks: list[bytes] = []

    def flush() -> None:
        for i, parts in zip(run, _characters(chunks), strict=True):
            labels[i] = _label(parts) or pieces[i]
        run.clear()
        chunks.clear()

    for i, piece in enumerate(pieces):
        data = None if piece in specials or not piece else _piece_bytes(piece, kind)
        if data is None:
            flush()
            continue
        run.append(i)
        chunks.append(data)
    flush()
    return labels


def token_labels(tokenizer: Any, ids: Sequence[int]) -> tuple[list[str], list[str]]:
    """(readable labels, raw pieces) of a row of token ids, for any tokenizer family."""
    pieces = list(tokenizer.convert_ids_to_tokens(list(ids)))
    specials = getattr(tokenizer, "all_special_tokens", ()) or ()
    return readable(pieces, specials, family(tokenizer)), pieces


def _find_word(starts: list[int], ends: list[int], pos: int) -> int | None:
    from bisect import bisect_right

    i = bisect_right(starts, pos) - 1
    if i >= 0 and pos < ends[i]:
        return i
    return None


def display(token: str) -> str:
    """A raw piece roughly as people read it: Ġ and ▁ become nothing, Ċ a newline.

    For queries and files saved before `readable` made the labels; labels need nothing more.
    """
    out = token.replace("Ġ", "").replace("▁", "").replace("Ċ", "\\n")
    return out if out else token


def normalise(word: str) -> str:
    """Case-folded, in one Unicode form (NFKC: a decomposed "cafe\u0301" is "café"), with subword
    marks removed: how user queries and tokens are compared."""
    out = word
    for mark in _PIECE_MARKS:
        out = out.replace(mark, "")
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", out).casefold()).strip()


@dataclass(frozen=True)
class Match:
    """Where a queried word sits: its unit index in the view, and every occurrence found."""

    query: str
    index: int  # index in the (token- or word-level) sequence that was searched
    occurrences: tuple[int, ...]  # all indices where the query occurs
    occurrence: int  # which occurrence was used (1-based)


def locate(query: str, units: Sequence[str], occurrence: int | None = None, what: str = "tokens") -> Match:
    """Find `query` in a sequence of tokens or words: by `@N` position, else by case-free text.

    Raises TokenNotFoundError listing the units the text does have (`what` they are: tokens, words).
    """
    q = query.strip()
    if re.fullmatch(r"@-?\d+", q):
        pos = int(q[1:])
        if not -len(units) <= pos < len(units):
            raise TokenNotFoundError(
                f"position {q} is out of range: the text has {len(units)} {what} (@0-@{len(units) - 1})"
            )
        pos %= len(units)
        return Match(query=q, index=pos, occurrences=(pos,), occurrence=1)
    target = normalise(q)
    found = tuple(i for i, u in enumerate(units) if target and normalise(u) == target)
    if not found:
        shown = " ".join(display(u) for u in units)
        raise TokenNotFoundError(f"'{query}' is not in the text; its {what} are: {shown}")
    n = 1 if occurrence is None else occurrence
    if not 1 <= n <= len(found):
        raise TokenNotFoundError(
            f"'{query}' occurs {len(found)} time(s); occurrence {n} does not exist (1-{len(found)})"
        )
    return Match(query=q, index=found[n - 1], occurrences=found, occurrence=n)


# scripts written without spaces between words: a query in them is looked for as a run of
# characters inside a word (CJK ideographs, kana, Thai, Lao, Khmer, Myanmar)
UNSEGMENTED = re.compile(
    "^[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f"
    "\u1780-\u17ff\U00020000-\U0003134f]+$"
)


def span_tokens(att: Attention, query: str) -> list[tuple[int, ...]]:
    """For a query in a script written without spaces: the tokens covering each place it occurs
    in the text (every token whose characters overlap it), in order; [] when it does not occur."""
    q = unicodedata.normalize("NFKC", query.strip())
    if not UNSEGMENTED.match(q):
        return []
    text = unicodedata.normalize("NFKC", att.text)
    if len(text) != len(att.text):  # spans count the text as given; a changed length would shift them
        text = att.text
    out = []
    start = text.find(q)
    while start >= 0:
        end = start + len(q)
        covering = tuple(i for i, (a, b) in enumerate(att.spans) if a < end and b > start and b > a)
        if covering:
            out.append(covering)
        start = text.find(q, end)
    return out


def positions(att: Attention, word: str) -> list[int]:
    """Every position of `word` in the view: by `@N`, by token text, else every piece of that word.

    "lessons" finds "lesson" "##s" at token level; raises TokenNotFoundError listing the tokens.
    """
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
    if not hits and att.level == "token":  # 巴黎 inside 我喜欢在巴黎学习法语: the tokens covering it
        hits = sorted({i for covering in span_tokens(att, q) for i in covering})
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
