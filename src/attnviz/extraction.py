"""Text(s) -> Attention: tokens, character spans, word ids and a [layers, heads, q, k] float32 array.

Padding-safe: texts are batched right-padded and each result is cut back to its own tokens, so a
text's attention is the same alone or in a batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError, TextTooLongError
from attnviz.selection import resolve_indices
from attnviz.tokens import align_words, display

if TYPE_CHECKING:
    from attnviz.models import LoadedModel

FORMAT_VERSION = 1


@dataclass(frozen=True)
class QKV:
    """One layer's per-head vectors, as the model used them (after rotary embeddings)."""

    q: np.ndarray  # [heads, q, d]
    k: np.ndarray  # [heads, k, d] (grouped-query keys repeated per head)
    v: np.ndarray  # [heads, k, d]
    scaling: float  # what scores are multiplied by (usually 1/sqrt(d))
    bias: np.ndarray  # [heads or 1, q, k] additive: 0 visible, -inf masked, plus any position bias


@dataclass(frozen=True)
class Attention:
    """The attention of one text: what every command draws, ranks or summarises."""

    model: str
    kind: str  # "encoder", "decoder" or "encoder-decoder"
    text: str
    tokens: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # character span of each token in `text` ((0, 0): special)
    word_ids: tuple[int | None, ...]  # index into `words`; None for special tokens
    words: tuple[str, ...]
    special: tuple[bool, ...]
    layers: tuple[int, ...]  # model layer index of each row of `attn`
    heads: tuple[int, ...]  # model head index of each column of `attn`
    attn: np.ndarray  # [layers, heads, q, k] float32
    causal: bool = False
    level: str = "token"  # "token" or "word"
    truncated: int = 0  # tokens cut by --truncate
    decoder: Attention | None = None  # encoder-decoder: decoder self-attention
    cross: np.ndarray | None = None  # encoder-decoder: [layers, heads, decoder q, encoder k]
    qkv: dict[int, QKV] | None = field(default=None, repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def labels(self) -> list[str]:
        """Tokens as people read them (for axes and tables)."""
        return [display(t) for t in self.tokens]

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
                raise InputError(f"{self.model} is not an encoder-decoder model: it has no decoder stream")
            return self.decoder
        raise InputError(f"unknown attention stream '{name}': use self, decoder or cross")

    def layer_pos(self, layer: int) -> int:
        """Row of `attn` holding model layer `layer`."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise InputError(f"layer {layer} was not extracted (have {_ranges(self.layers)})") from None

    def head_pos(self, head: int) -> int:
        try:
            return self.heads.index(head)
        except ValueError:
            raise InputError(f"head {head} was not extracted (have {_ranges(self.heads)})") from None

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

    def to_words(self) -> Attention:
        """Merge subword pieces into words: sum over key pieces, mean over query pieces.

        Special tokens stay units of their own; every row still sums to 1.
        """
        if self.level == "word":
            return self
        units: list[tuple[str, int | None]] = []  # (label, word id) per unit
        unit_of: list[int] = []
        seen: dict[int, int] = {}
        for tok, wid in zip(self.tokens, self.word_ids, strict=True):
            if wid is None:
                units.append((tok, None))
                unit_of.append(len(units) - 1)
            elif wid in seen:
                unit_of.append(seen[wid])
            else:
                seen[wid] = len(units)
                units.append((self.words[wid], wid))
                unit_of.append(len(units) - 1)
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
        )

    # -- files --------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready values."""
        return {
            "format": FORMAT_VERSION,
            "model": self.model,
            "kind": self.kind,
            "text": self.text,
            "tokens": list(self.tokens),
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
        }

    def save(self, path: str | Path) -> Path:
        """Write the arrays and metadata to .safetensors or .npz (never pickle)."""
        path = Path(path)
        arrays = {  # float16 stays float16 (`store="float16"`); anything else is written as float32
            name: np.ascontiguousarray(a, dtype=np.float16 if a.dtype == np.float16 else np.float32)
            for name, a in self.streams.items()
        }
        meta = json.dumps(self.metadata())
        suffix = path.suffix.lower()
        try:
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".safetensors":
                from safetensors.numpy import save_file

                save_file(arrays, str(path), metadata={"attnviz": meta})
            elif suffix == ".npz":
                np.savez_compressed(path, **arrays, metadata=np.array(meta))
            else:
                raise InputError(f"unknown output format '{path.suffix}'; use .safetensors or .npz")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> Attention:
        """Read a file written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no such file: {path}")
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = json.loads((f.metadata() or {})["attnviz"])
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        else:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["metadata"]))
                arrays = {k: data[k] for k in data.files if k != "metadata"}
        main = arrays.get("self", arrays.get("encoder"))
        decoder = None
        if "decoder" in arrays and meta.get("decoder_tokens"):
            dt = tuple(meta["decoder_tokens"])
            decoder = _plain(meta, dt, arrays["decoder"], causal=True)
        return cls(
            model=meta["model"],
            kind=meta["kind"],
            text=meta["text"],
            tokens=tuple(meta["tokens"]),
            spans=tuple(tuple(s) for s in meta["spans"]),
            word_ids=tuple(meta["word_ids"]),
            words=tuple(meta["words"]),
            special=tuple(meta["special"]),
            layers=tuple(meta["layers"]),
            heads=tuple(meta["heads"]),
            attn=main,
            causal=meta["causal"],
            level=meta["level"],
            truncated=meta["truncated"],
            decoder=decoder,
            cross=arrays.get("cross"),
        )


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
    return ", ".join(str(v) for v in values) if len(values) < 8 else f"{values[0]}-{values[-1]}"


def extract(
    text: str,
    model: str | LoadedModel | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    special_tokens: bool = True,
    words: bool = False,
    truncate: bool = False,
    max_length: int | None = None,
    qkv: bool = False,
    decoder_text: str | None = None,
    device: str | None = "auto",
    dtype: str | None = "float32",
    store: str = "float32",
) -> Attention:
    """Extract one text's attention (see `extract_batch` for many)."""
    return extract_batch(
        [text],
        model,
        layers=layers,
        heads=heads,
        special_tokens=special_tokens,
        words=words,
        truncate=truncate,
        max_length=max_length,
        qkv=qkv,
        decoder_text=decoder_text,
        device=device,
        dtype=dtype,
        store=store,
    )[0]


def extract_batch(
    texts: Sequence[str],
    model: str | LoadedModel | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    special_tokens: bool = True,
    words: bool = False,
    truncate: bool = False,
    max_length: int | None = None,
    qkv: bool = False,
    decoder_text: str | None = None,
    batch_size: int = 16,
    device: str | None = "auto",
    dtype: str | None = "float32",
    store: str = "float32",
) -> list[Attention]:
    """Extract the attention of many texts, `batch_size` at a time, padding never leaking.

    `store="float16"` keeps the weights as float16: half the memory and file, each weight rounded.
    """
    from attnviz.capture import STORES
    from attnviz.models import LoadedModel, load_model

    if store not in STORES:
        raise InputError(f"unknown store '{store}': use {' or '.join(STORES)}")

    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"text {i + 1} is empty" if len(texts) > 1 else "the text is empty")
    layer_list = resolve_indices(layers, loaded.num_layers, "layer", loaded.name)
    head_list = resolve_indices(heads, loaded.capture.num_heads, "head", loaded.name)
    out: list[Attention] = []
    for start in range(0, len(texts), max(1, batch_size)):
        chunk = texts[start : start + batch_size]
        encoded = tokenize(loaded, chunk, special_tokens, truncate, max_length)
        out.extend(
            run_batch(loaded, encoded, layer_list, head_list, qkv=qkv, decoder_text=decoder_text, store=store)
        )
    return [a.to_words() for a in out] if words else out


@dataclass
class Encoded:
    """Tokenised texts, right-padded, with what is needed to cut results back per text."""

    texts: list[str]
    input_ids: Any  # [batch, seq] tensor
    attention_mask: Any
    lengths: list[int]
    offsets: list[list[tuple[int, int]]]
    special: list[list[bool]]
    tokens: list[list[str]]
    truncated: list[int]


def tokenize(
    loaded: LoadedModel,
    texts: Sequence[str],
    special_tokens: bool = True,
    truncate: bool = False,
    max_length: int | None = None,
) -> Encoded:
    """Tokenise with offsets; over-long texts are an error unless `truncate` is set."""
    import torch

    tok = loaded.tokenizer
    limit = (
        min(x for x in (max_length, loaded.max_length) if x) if (max_length or loaded.max_length) else None
    )
    kwargs = {
        "add_special_tokens": special_tokens,
        "return_special_tokens_mask": True,
        "return_offsets_mapping": bool(getattr(tok, "is_fast", False)),
    }
    enc = tok(list(texts), **kwargs)
    full = [len(ids) for ids in enc["input_ids"]]
    truncated = [0] * len(full)
    if limit is not None and max(full) > limit:
        if not truncate:
            i = max(range(len(full)), key=full.__getitem__)
            where = f"text {i + 1} has" if len(full) > 1 else "the text has"
            raise TextTooLongError(
                f"{where} {full[i]} tokens but {loaded.name} takes at most {limit}; pass --truncate to cut it"
            )
        enc = tok(list(texts), truncation=True, max_length=limit, **kwargs)
        truncated = [max(0, f - limit) for f in full]
    ids = enc["input_ids"]
    lengths = [len(x) for x in ids]
    width = max(lengths)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    offsets = enc.get("offset_mapping") or [[(0, 0)] * n for n in lengths]
    specials = [[bool(s) for s in row] for row in enc["special_tokens_mask"]]
    return Encoded(
        texts=list(texts),
        input_ids=input_ids,
        attention_mask=mask,
        lengths=lengths,
        offsets=[[tuple(o) for o in row] for row in offsets],
        special=specials,
        tokens=[tok.convert_ids_to_tokens(row) for row in ids],
        truncated=truncated,
    )


def run_batch(
    loaded: LoadedModel,
    enc: Encoded,
    layers: list[int] | None,
    heads: list[int] | None,
    qkv: bool = False,
    decoder_text: str | None = None,
    store: str = "float32",
) -> list[Attention]:
    """One forward pass over an encoded batch; returns one Attention per text."""
    cap = loaded.capture
    device = loaded.device
    inputs: dict[str, Any] = {
        "input_ids": enc.input_ids.to(device),
        "attention_mask": enc.attention_mask.to(device),
    }
    dec: Encoded | None = None
    if cap.encoder_decoder:
        dec = _decoder_inputs(loaded, enc if decoder_text is None else None, decoder_text, len(enc.texts))
        inputs["decoder_input_ids"] = dec.input_ids.to(device)
        inputs["decoder_attention_mask"] = dec.attention_mask.to(device)
    rec = cap.run(inputs, layers, heads, qkv=qkv, store=store)
    main = "encoder" if cap.encoder_decoder else "self"
    layer_ids = layers if layers is not None else list(range(cap.num_layers))
    head_ids = heads if heads is not None else list(range(cap.num_heads))

    def stacked(stream: str) -> np.ndarray | None:
        arr = rec.stacked(stream, layer_ids)  # [batch, layers, heads, q, k], filled in place: no copy
        return None if arr is None else arr.cpu().numpy()

    main_arr = stacked(main)
    if main_arr is None:
        raise InputError("the model returned no attention weights for the selected layers")
    dec_arr = stacked("decoder") if dec is not None else None
    cross_arr = stacked("cross") if dec is not None else None
    results = []
    for b, text in enumerate(enc.texts):
        n = enc.lengths[b]
        spans = tuple(enc.offsets[b])
        special = tuple(enc.special[b])
        word_ids, words = align_words(text, spans, special)
        decoder_att = None
        cross = None
        if dec is not None and dec_arr is not None:
            m = dec.lengths[b]
            decoder_att = Attention(
                model=loaded.name,
                kind="decoder",
                text=dec.texts[b],
                tokens=tuple(dec.tokens[b]),
                spans=tuple(dec.offsets[b]),
                word_ids=tuple(None for _ in range(m)),
                words=(),
                special=tuple(dec.special[b]),
                layers=tuple(layer_ids),
                heads=tuple(head_ids),
                attn=np.ascontiguousarray(dec_arr[b, :, :, :m, :m]),
                causal=True,
            )
            if cross_arr is not None:
                cross = np.ascontiguousarray(cross_arr[b, :, :, :m, :n])
        results.append(
            Attention(
                model=loaded.name,
                kind=loaded.kind,
                text=text,
                tokens=tuple(enc.tokens[b]),
                spans=spans,
                word_ids=tuple(word_ids),
                words=tuple(words),
                special=special,
                layers=tuple(layer_ids),
                heads=tuple(head_ids),
                attn=np.ascontiguousarray(main_arr[b, :, :, :n, :n]),
                causal=cap.causal,
                truncated=enc.truncated[b],
                decoder=decoder_att,
                cross=cross,
                qkv=_vectors(rec, main, layer_ids, head_ids, b, n) if qkv else None,
            )
        )
    return results


def _vectors(rec: Any, stream: str, layers: list[int], heads: list[int], b: int, n: int) -> dict[int, QKV]:
    import torch

    out = {}
    for layer in layers:
        q, k, v, scaling, bias = rec.vectors[(stream, layer)]
        rep = q.shape[1] // k.shape[1]
        if rep > 1:  # grouped-query attention: each key/value head serves `rep` query heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if bias is None:
            bias_arr = np.zeros((1, n, n), dtype=np.float32)
        else:
            bb = bias[b if bias.shape[0] > 1 else 0].float()
            bb = bb[heads] if bb.shape[0] > 1 else bb
            bb = bb[:, :n, :n].clone()
            bb[bb <= torch.finfo(torch.float32).min / 2] = float("-inf")
            bias_arr = bb.cpu().numpy()
        out[layer] = QKV(
            q=q[b, heads, :n].float().cpu().numpy(),
            k=k[b, heads, :n].float().cpu().numpy(),
            v=v[b, heads, :n].float().cpu().numpy(),
            scaling=scaling,
            bias=bias_arr,
        )
    return out


def _decoder_inputs(loaded: LoadedModel, enc: Encoded | None, text: str | None, batch: int) -> Encoded:
    """Decoder input for encoder-decoder models: the start token, then the (same) text's tokens."""
    import torch

    tok = loaded.tokenizer
    config = loaded.model.config
    start = config.decoder_start_token_id
    if start is None:
        start = tok.pad_token_id or 0
    if enc is None:
        enc = tokenize(loaded, [text or ""] * batch)
    rows = [[start, *enc.input_ids[i, : enc.lengths[i]].tolist()] for i in range(batch)]
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = torch.full((batch, width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return Encoded(
        texts=enc.texts,
        input_ids=ids,
        attention_mask=mask,
        lengths=lengths,
        offsets=[[(0, 0), *enc.offsets[i]] for i in range(batch)],
        special=[[True, *enc.special[i]] for i in range(batch)],
        tokens=[tok.convert_ids_to_tokens(r) for r in rows],
        truncated=[0] * batch,
    )
