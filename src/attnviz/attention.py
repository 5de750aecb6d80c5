"""The result types every command passes around: Attention, QKV and Encoded.

A leaf module: at import time it needs only numpy, never another attnviz module, so any module
can import these types without a cycle (errors, labels and file writing are imported where used).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

FORMAT_VERSION = 1
Kind = Literal["encoder", "decoder", "encoder-decoder"]
Level = Literal["token", "word"]
Weighting = Literal["attention", "norm"]  # "norm": Kobayashi et al. 2020 value-norm weighting
LABEL_RULE = 2  # tokens are tokens.readable labels; older files hold 'ĠParis', read with display()


def _input_error(message: str) -> Exception:
    from attnviz.errors import InputError

    return InputError(message)


@dataclass(frozen=True, kw_only=True)
class HeadResult:
    """What every per-head result shares: the model, the layers and heads its arrays are indexed
    by (model indices, in order), and notes on how an analysis changed it.

    `Attention` and `Generation` are HeadResults; so is any new result with a layers x heads axis.
    """

    model: str
    layers: tuple[int, ...]  # model layer index of each row
    heads: tuple[int, ...]  # model head index of each column
    notes: tuple[str, ...] = ()  # how an analysis changed it, e.g. 'mean of heads 0-11'

    @property
    def note(self) -> str:
        """The notes joined for a figure title: 'mean of heads 0-11; special tokens hidden'."""
        return "; ".join(self.notes)

    def layer_pos(self, layer: int) -> int:
        """Row holding model layer `layer` (an InputError naming the layers there are, if none)."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise _input_error(f"layer {layer} was not {self._verb} (have {_ranges(self.layers)})") from None

    def head_pos(self, head: int) -> int:
        """Column holding model head `head`."""
        try:
            return self.heads.index(head)
        except ValueError:
            raise _input_error(f"head {head} was not {self._verb} (have {_ranges(self.heads)})") from None

    _verb = "extracted"  # how the message says a layer is missing: "extracted", "recorded"


@dataclass(frozen=True)
class QKV:
    """One layer's per-head vectors, as the model used them (after rotary embeddings)."""

    q: np.ndarray  # [heads, q, d]
    k: np.ndarray  # [heads, k, d] (grouped-query keys repeated per head)
    v: np.ndarray  # [heads, k, d]
    scaling: float  # what scores are multiplied by (usually 1/sqrt(d))
    bias: np.ndarray  # [heads or 1, q, k] additive: 0 visible, -inf masked, plus any position bias


@dataclass(frozen=True)
class Attention(HeadResult):
    """The attention of one text: what every command draws, ranks or summarises."""

    kind: Kind
    text: str
    tokens: tuple[str, ...]  # readable pieces (byte-level BPE decoded to text; see tokens.readable)
    spans: tuple[tuple[int, int], ...]  # character span of each token in `text` ((0, 0): special)
    word_ids: tuple[int | None, ...]  # index into `words`; None for special tokens
    words: tuple[str, ...]
    special: tuple[bool, ...]
    attn: np.ndarray  # [layers, heads, q, k] float32
    causal: bool = False
    level: Level = "token"
    truncated: int = 0  # tokens cut by --truncate
    decoder: Attention | None = None  # encoder-decoder: decoder self-attention
    cross: np.ndarray | None = None  # encoder-decoder: [layers, heads, decoder q, encoder k]
    qkv: dict[int, QKV] | None = field(default=None, repr=False)
    token_ids: tuple[int, ...] = ()  # the tokenizer's ids (token level only; () for words/old files)
    pieces: tuple[str, ...] = ()  # the tokenizer's raw pieces, e.g. 'ĠParis' or 'ðŁĺ' (token level)
    weighting: Weighting = "attention"
    pooled_layers: tuple[int, ...] | None = None  # the model layers behind a pooled layer row
    pooled_heads: tuple[int, ...] | None = None  # the model heads behind a pooled head column

    def __repr__(self) -> str:
        """One short line at a prompt: what was extracted and the arrays' shapes, never their values."""
        text = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        shapes = ", ".join(f"{name}={a.dtype}{list(a.shape)}" for name, a in self.streams.items())
        extra = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("causal", self.causal, False),
                ("weighting", self.weighting, "attention"),
                ("truncated", self.truncated, 0),
                ("notes", self.note, ""),
            )
            if value != default
        )
        return (
            f"Attention(model={self.model!r}, kind={self.kind!r}, text={text!r}, level={self.level!r}, "
            f"tokens={self.n_tokens}, layers=[{_ranges(self.layers)}], heads=[{_ranges(self.heads)}], "
            f"{shapes}{extra})"
        )

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def labels(self) -> list[str]:
        """Tokens as people read them (for axes and tables): the tokens themselves (tokens.readable)."""
        return list(self.tokens)

    @property
    def streams(self) -> dict[str, np.ndarray]:
        """Every attention array by name: `self` (or `encoder`), `decoder`, `cross`."""
        if self.kind != "encoder-decoder":
            return {"self": self.attn}
        out = {"encoder": self.attn}
        if self.decoder is not None:
            out["decoder"] = self.decoder.attn
        if self.cross is not None:
            out["cross"] = self.cross
        return out

    def stream(self, name: str) -> Attention:
        """The square self-attention stream `name` as an Attention: `self`/`encoder` or `decoder`."""
        if name in ("self", "encoder"):
            return self
        if name == "decoder":
            if self.decoder is None:
                raise _input_error(f"{self.model} is not an encoder-decoder model: it has no decoder stream")
            return self.decoder
        raise _input_error(f"unknown attention stream '{name}': use self, decoder or cross")

    def head(self, layer: int, head: int) -> np.ndarray:
        """One head's [q, k] matrix, by model layer and head index."""
        return self.attn[self.layer_pos(layer), self.head_pos(head)]

    def visible(self) -> np.ndarray:
        """[q, k] bool: which keys each query may see (the causal mask, or all)."""
        n = self.n_tokens
        if self.causal and self.level == "token":
            return np.tril(np.ones((n, n), dtype=bool))
        if self.causal:
            return self.attn.max(axis=(0, 1)) > 0
        return np.ones((n, n), dtype=bool)

    def _repr_html_(self) -> str:
        """Jupyter shows the interactive explorer (the same page as `attnviz view`)."""
        from attnviz.views.notebook import attention_html

        return attention_html(self)

    def to_words(self) -> Attention:
        """Merge subword pieces into words: sum over key pieces, mean over query pieces.

        Special tokens stay units of their own; every row still sums to 1.
        """
        from attnviz.tokens import word_units

        if self.level == "word":
            return self
        labels, unit_of = word_units(self.tokens, self.word_ids, self.words)
        unit_word: list[int | None] = [None] * len(labels)
        for u, wid in zip(unit_of, self.word_ids, strict=True):
            unit_word[u] = wid
        units = list(zip(labels, unit_word, strict=True))  # (label, word id) per unit
        assign = np.zeros((len(units), self.n_tokens), dtype=np.float32)  # [units, tokens]
        assign[unit_of, np.arange(self.n_tokens)] = 1.0
        mean_q = assign / assign.sum(axis=1, keepdims=True)

        def merge(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            return np.einsum("uq,lhqk,vk->lhuv", mean_q, a, assign, optimize=True).astype(np.float32)

        spans = []
        for u, (_label, wid) in enumerate(units):
            members = [i for i, x in enumerate(unit_of) if x == u]
            spans.append(
                (self.spans[members[0]][0], self.spans[members[-1]][1]) if wid is not None else (0, 0)
            )
        return replace(
            self,
            tokens=tuple(label for label, _ in units),
            spans=tuple(spans),
            word_ids=tuple(wid for _, wid in units),
            special=tuple(wid is None for _, wid in units),
            attn=merge(self.attn),
            level="word",
            cross=None,
            decoder=None,
            qkv=None,
            token_ids=(),
            pieces=(),
        )

    # -- files --------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready values."""
        return {
            "format": FORMAT_VERSION,
            "labels": LABEL_RULE,
            "model": self.model,
            "kind": self.kind,
            "text": self.text,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "pieces": list(self.pieces),
            "spans": [list(s) for s in self.spans],
            "word_ids": list(self.word_ids),
            "words": list(self.words),
            "special": list(self.special),
            "layers": list(self.layers),
            "heads": list(self.heads),
            "causal": self.causal,
            "level": self.level,
            "truncated": self.truncated,
            "shape": list(self.attn.shape),
            "decoder_tokens": list(self.decoder.tokens) if self.decoder is not None else None,
            "weighting": self.weighting,
            "notes": list(self.notes),
            "pooled_layers": list(self.pooled_layers) if self.pooled_layers is not None else None,
            "pooled_heads": list(self.pooled_heads) if self.pooled_heads is not None else None,
        }

    def save(self, path: str | Path) -> Path:
        """Write the arrays and metadata to .safetensors or .npz (never pickle)."""
        from attnviz.outputs import write_arrays

        arrays = {  # float16 stays float16 (`store="float16"`); anything else is written as float32
            name: np.ascontiguousarray(a, dtype=np.float16 if a.dtype == np.float16 else np.float32)
            for name, a in self.streams.items()
        }
        return write_arrays(Path(path), arrays, json.dumps(self.metadata()))

    @classmethod
    def load(cls, path: str | Path) -> Attention:
        """Read a file written by `save`; a file whose fields or shapes do not fit is an InputError
        naming it (never a KeyError or an einsum error later)."""
        from attnviz.outputs import read_arrays

        what = "attention file from `attnviz extract -o`"
        meta, arrays = read_arrays(Path(path), what)
        r = FileFields(meta, arrays, Path(path), what)
        tokens = r.texts("tokens")
        decoder_tokens = r.texts("decoder_tokens", ())
        if meta.get("labels") != LABEL_RULE:  # written before the one labelling rule
            from attnviz.tokens import display

            tokens = tuple(display(t) for t in tokens)
            decoder_tokens = tuple(display(t) for t in decoder_tokens)
        model, n, layers, heads = r.text("model"), len(tokens), r.counts("layers"), r.counts("heads")
        lh = (len(layers), len(heads))
        kind = r.choice("kind", ("encoder", "decoder", "encoder-decoder"))
        main = r.array("encoder" if kind == "encoder-decoder" else "self", (*lh, n, n))
        words = r.texts("words")
        decoder = None
        if "decoder" in arrays and decoder_tokens:
            dn = len(decoder_tokens)
            decoder = _plain(meta, decoder_tokens, r.array("decoder", (*lh, dn, dn)), causal=True)
        cross = r.array("cross", (*lh, None, n), required=False)
        return cls(
            model=model,
            kind=kind,
            text=r.text("text"),
            tokens=tokens,
            token_ids=r.counts("token_ids", ()),  # kept whole when special tokens are hidden
            pieces=r.texts("pieces", ()),
            spans=r.spans("spans", n),
            word_ids=r.counts("word_ids", length=(n,), none=True, below=len(words)),
            words=words,
            special=r.flags("special", length=(n,)),
            layers=layers,
            heads=heads,
            attn=main,
            causal=r.flag("causal"),
            level=r.choice("level", ("token", "word")),
            truncated=r.count("truncated", 0),
            decoder=decoder,
            cross=cross,
            weighting=r.choice("weighting", ("attention", "norm"), "attention"),
            notes=r.texts("notes", ()),
            pooled_layers=r.counts("pooled_layers", None),
            pooled_heads=r.counts("pooled_heads", None),
        )


_MISSING: Any = object()


class FileFields:
    """The metadata and arrays of a saved file, read field by field with their types and shapes
    checked: anything else is one InputError naming the file and the field."""

    def __init__(self, meta: Any, arrays: dict[str, np.ndarray], path: Path, what: str) -> None:
        self.path, self.what = path, what
        if not isinstance(meta, dict):
            raise self.fail("its metadata is not a JSON object")
        self.meta, self.arrays = meta, arrays

    def fail(self, detail: str) -> Exception:
        return _input_error(f"{self.path} is not a readable {self.what}: {detail}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.meta and not (self.meta[key] is None and default is not _MISSING):
            return self.meta[key]
        if default is _MISSING:
            raise self.fail(f"'{key}' is missing")
        return default

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"'{key}' is not a string")
        return value

    def choice(self, key: str, choices: Sequence[str], default: Any = _MISSING) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.fail(f"'{key}' is {value!r}, not one of {', '.join(choices)}")
        return value

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"'{key}' is not true or false")
        return value

    def count(self, key: str, default: Any = _MISSING) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"'{key}' is not a whole number of at least 0")
        return value

    def _list(self, key: str, default: Any, length: Sequence[int] | None) -> Any:
        value = self._get(key, default)
        if value is None or value == ():
            return value
        if not isinstance(value, list):
            raise self.fail(f"'{key}' is not a list")
        if length is not None and len(value) not in length:
            raise self.fail(f"'{key}' has {len(value)} entries, not {' or '.join(map(str, length))}")
        return value

    def texts(self, key: str, default: Any = _MISSING, length: Sequence[int] | None = None) -> Any:
        value = self._list(key, default, length)
        if value and not all(isinstance(v, str) for v in value):
            raise self.fail(f"'{key}' holds something other than strings")
        return tuple(value) if value is not None else None

    def flags(self, key: str, default: Any = _MISSING, length: Sequence[int] | None = None) -> Any:
        value = self._list(key, default, length)
        if value and not all(isinstance(v, bool) for v in value):
            raise self.fail(f"'{key}' holds something other than true or false")
        return tuple(value) if value is not None else None

    def counts(
        self,
        key: str,
        default: Any = _MISSING,
        length: Sequence[int] | None = None,
        none: bool = False,
        below: int | None = None,
    ) -> Any:
        """Whole numbers of at least 0 (and below `below`); `none`: null entries allowed."""
        value = self._list(key, default, length)
        for v in value or ():
            if v is None and none:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (below is not None and v >= below):
                raise self.fail(f"'{key}' holds {v!r}, not a whole number in range")
        return tuple(value) if value is not None else None

    def spans(self, key: str, n: int) -> tuple[tuple[int, int], ...]:
        value = self._list(key, _MISSING, (n,))
        ok = all(
            isinstance(s, list)
            and len(s) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in s)
            for s in value
        )
        if not ok:
            raise self.fail(f"'{key}' holds something other than [start, end] pairs")
        return tuple((int(a), int(b)) for a, b in value)

    def array(self, key: str, shape: Sequence[int | None], required: bool = True) -> Any:
        """A float array of this shape (None: any size on that axis)."""
        a = self.arrays.get(key)
        if a is None:
            if required:
                raise self.fail(f"it holds no '{key}' array")
            return None
        fits = a.ndim == len(shape) and all(
            want is None or got == want for got, want in zip(a.shape, shape, strict=True)
        )
        if not fits or a.dtype.kind != "f":
            want = "x".join("N" if x is None else str(x) for x in shape)
            raise self.fail(f"its '{key}' array is {a.dtype}{list(a.shape)}, not float {want}")
        return a


def _ints(values: list[int] | None) -> tuple[int, ...] | None:
    return tuple(values) if values is not None else None


def _plain(meta: dict[str, Any], tokens: tuple[str, ...], attn: np.ndarray, causal: bool) -> Attention:
    return Attention(
        model=meta["model"],
        kind="decoder",
        text=meta["text"],
        tokens=tokens,
        spans=tuple((0, 0) for _ in tokens),
        word_ids=tuple(None for _ in tokens),
        words=(),
        special=tuple(False for _ in tokens),
        layers=tuple(meta["layers"]),
        heads=tuple(meta["heads"]),
        attn=attn,
        causal=causal,
    )


def _ranges(values: Sequence[int]) -> str:
    from attnviz.selection import format_indices  # here, not at the top: this module stays a leaf

    return format_indices(values)


@dataclass
class Encoded:
    """Tokenised texts, right-padded, with what is needed to cut results back per text."""

    texts: list[str]
    input_ids: Any  # [batch, seq] tensor
    attention_mask: Any
    lengths: list[int]
    offsets: list[list[tuple[int, int]]]
    special: list[list[bool]]
    tokens: list[list[str]]  # readable labels (tokens.readable)
    truncated: list[int]
    pieces: list[list[str]] | None = None  # the tokenizer's raw pieces, when they differ from `tokens`
