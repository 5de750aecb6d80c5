"""Text(s) -> Attention: tokens, character spans, word ids and a [layers, heads, q, k] float32 array.

Padding-safe: texts are batched right-padded and each result is cut back to its own tokens, so a
text's attention is the same alone or in a batch.
"""

from __future__ import annotations

import itertools
import threading
import unicodedata
import weakref
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.attention import QKV, Attention, Encoded
from attnviz.errors import InputError, TextTooLongError, param
from attnviz.models.capture import check_store
from attnviz.models.loading import LoadedModel, as_loaded, model_spec
from attnviz.selection import resolve_indices
from attnviz.tokens import align_words, token_labels

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

__all__ = [
    "STREAMS",
    "check_stream",
    "decoder_inputs",
    "extract",
    "extract_batch",
    "extract_stream",
    "model_inputs",
    "pad_rows",
    "run_batch",
    "tokenize",
]


STREAMS = ("self", "decoder", "cross")
CROSS = param("stream", "cross")
UNHIDDEN = param("hide_special", True, flag="--no-special")  # a ViewOptions field; the CLI's flag


def check_stream(
    stream: str,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    words: bool = False,
    transformed: bool = False,
    norm: bool = False,
) -> None:
    """Before a model loads: `stream` is known, cross-attention (decoder rows on encoder keys, not
    square) is asked for one head at token level, untransformed, and norm weighting (which reads the
    encoder's value vectors) is not asked of the decoder. InputError otherwise."""
    if stream not in STREAMS:
        raise InputError(f"unknown {param('stream')} '{stream}': use self, decoder or cross")
    if stream == "decoder" and norm:
        raise InputError(
            f"{param('weighting', 'norm')} weighs the encoder's self-attention:"
            f" drop {param('stream', 'decoder')}"
        )
    if stream != "cross":
        return
    if layer is None or heads is None or len(heads) != 1 or words:
        raise InputError(
            f"{CROSS} draws one head at token level: pass a {param('layer')} and a {param('head')}"
        )
    if transformed:
        raise InputError(
            f"{CROSS} draws raw weights: drop {param('aggregate')}, {param('weighting')} and {UNHIDDEN}"
        )


def square_stream(att: Attention, stream: str) -> Attention:
    """The self-attention stream to draw: `self`/`encoder` is `att`, `decoder` its decoder's.

    InputError for a model without that stream, or for `cross` (see plots.cross_figure).
    """
    if stream == "cross":
        raise InputError("cross-attention is not a square self-attention: draw it with plots.cross_figure")
    return att.stream(stream)


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

    check_store(store)

    if isinstance(texts, str):  # a string is an iterable of characters: one text each, not wanted
        raise TypeError("texts must be a list of strings, not one string (extract takes one text)")
    if not isinstance(model, LoadedModel):
        model_spec(model)  # a wrong type is a TypeError before anything else
    texts = list(texts)
    check_sizes(batch_size, max_length)
    for i, t in enumerate(texts):  # checked before the model loads
        check_text(t, i + 1, len(texts) > 1)
    loaded = as_loaded(model, device=device, dtype=dtype)
    out = list(
        extract_stream(
            texts,
            loaded,
            layers=layers,
            heads=heads,
            special_tokens=special_tokens,
            truncate=truncate,
            max_length=max_length,
            qkv=qkv,
            decoder_text=decoder_text,
            batch_size=batch_size,
            store=store,
        )
    )
    return [a.to_words() for a in out] if words else out


def extract_stream(
    texts: Iterable[str],
    model: str | LoadedModel | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    special_tokens: bool = True,
    truncate: bool = False,
    max_length: int | None = None,
    qkv: bool = False,
    decoder_text: str | None = None,
    batch_size: int = 32,
    device: str | None = "auto",
    dtype: str | None = "float32",
    store: str = "float32",
) -> Iterator[Attention]:
    """Extract many texts lazily, `batch_size` at a time, so a long corpus never holds every
    tensor at once; an empty or over-long text is named by its place in the whole input."""

    check_sizes(batch_size, max_length)
    loaded = as_loaded(model, device=device, dtype=dtype)
    layer_list = resolve_indices(layers, loaded.num_layers, "layer", loaded.name)
    head_list = resolve_indices(heads, loaded.capture.num_heads, "head", loaded.name)
    many = not (isinstance(texts, Sized) and len(texts) == 1)
    it = iter(texts)
    start = 0
    while chunk := list(itertools.islice(it, batch_size)):
        for i, t in enumerate(chunk):
            check_text(t, start + i + 1, many)
        encoded = tokenize(loaded, chunk, special_tokens, truncate, max_length, first=start + 1, many=many)
        yield from run_batch(
            loaded, encoded, layer_list, head_list, qkv=qkv, decoder_text=decoder_text, store=store
        )
        start += len(chunk)


def check_sizes(batch_size: object, max_length: object) -> None:
    """InputError for a batch size below 1 or a token limit below 2 (one token and one more)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"{param('batch_size')} must be a whole number of at least 1 (got {batch_size!r})")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
    ):
        raise InputError(f"{param('max_length')} must be a whole number of at least 2 (got {max_length!r})")


def check_text(text: object, number: int = 1, many: bool = False) -> None:
    """InputError for a text that is empty or holds a lone surrogate: half of a
    UTF-16 pair, or a byte that was not UTF-8 (Python keeps one as \\udcXX), which no tokenizer
    can encode; TypeError for one that is not a string. `number` names the text among `many`."""
    which = f"text {number}" if many else "the text"
    if text is not None and not isinstance(text, str):
        raise TypeError(f"{which} must be a string, not {type(text).__name__}")
    if not text or not text.strip():
        raise InputError(f"{which} is empty")
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text):
        raise InputError(f"{which} is empty: it holds only invisible characters (zero-width spaces...)")
    bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        raise InputError(
            f"{which} holds a lone surrogate at character {bad + 1} ({ascii(text[bad])[1:-1]}): a byte "
            "that is not UTF-8, or half of an emoji; fix the text's encoding"
        )


def tokenize(
    loaded: LoadedModel,
    texts: Sequence[str],
    special_tokens: bool = True,
    truncate: bool = False,
    max_length: int | None = None,
    *,
    first: int = 1,
    many: bool | None = None,
) -> Encoded:
    """Tokenise with offsets; over-long texts are an error unless `truncate` is set.

    `first`: the input's number of `texts[0]`, and `many`: whether the input holds more than these
    texts, so an error names a text by its place in the whole input.
    """
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
            several = many if many is not None else len(full) > 1
            where = f"text {i + first} has" if several else "the text has"
            raise TextTooLongError(
                f"{where} {full[i]} tokens but {loaded.name} takes at most {limit}; "
                f"pass {param('truncate', True)} to cut it"
            )
        enc = _truncating(tok, limit)(list(texts), truncation=True, max_length=limit, **kwargs)
        truncated = [max(0, f - limit) for f in full]
    ids = enc["input_ids"]
    lengths = [len(x) for x in ids]
    input_ids, mask = pad_rows(ids, tok.pad_token_id)
    offsets = enc.get("offset_mapping") or [[(0, 0)] * n for n in lengths]
    specials = [[bool(s) for s in row] for row in enc["special_tokens_mask"]]
    labels = [token_labels(tok, row) for row in ids]
    return Encoded(
        texts=list(texts),
        input_ids=input_ids,
        attention_mask=mask,
        lengths=lengths,
        offsets=[[tuple(o) for o in row] for row in offsets],
        special=specials,
        tokens=[readable for readable, _ in labels],
        truncated=truncated,
        pieces=[raw for _, raw in labels],
    )


_TRUNCATING: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
_TRUNCATING_LOCK = threading.Lock()


def _truncating(tok: Any, limit: int) -> Any:
    """A tokenizer that truncates at `limit`, never the shared one when it is a fast tokenizer.

    A fast tokenizer keeps its truncation setting between calls: truncating with the shared one
    would change what other threads' calls get at the same time (cut, or "Already borrowed"). So a
    private copy per limit, set up once under a lock, truncates; the shared one never truncates.
    """
    import copy

    if not getattr(tok, "is_fast", False):
        return tok  # a slow tokenizer truncates in Python, holding no setting
    with _TRUNCATING_LOCK:
        copies = _TRUNCATING.setdefault(tok, {})
        if limit not in copies:
            private = copy.deepcopy(tok)
            private("a", truncation=True, max_length=limit)  # its setting, made once, before any use
            copies[limit] = private
        return copies[limit]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int | None) -> tuple[Any, Any]:
    """Right-pad token id rows: (input_ids, attention_mask), both [batch, longest] long tensors.

    The one place padding is built, so every batch pads the same way (and padding never leaks:
    the mask hides it and results are cut back to each row's length).
    """
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


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
    if qkv:
        from attnviz.models.architecture import require_interface

        require_interface(loaded, "the query, key and value vectors (qkv, explain, norm weighting)")
    inputs, dec = model_inputs(loaded, enc, decoder_text)
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
                token_ids=tuple(dec.input_ids[b, :m].tolist()),
                pieces=tuple(dec.pieces[b]) if dec.pieces is not None else tuple(dec.tokens[b]),
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
                token_ids=tuple(enc.input_ids[b, :n].tolist()),
                pieces=tuple(enc.pieces[b]) if enc.pieces is not None else tuple(enc.tokens[b]),
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


def model_inputs(
    loaded: LoadedModel, enc: Encoded, decoder_text: str | None = None
) -> tuple[dict[str, Any], Encoded | None]:
    """The keyword arguments of one forward pass, on the model's device, and the decoder's input.

    Encoder-decoder models also get decoder inputs: the start token then the same text (or
    `decoder_text`). The one builder that extraction, batch statistics and induction share.
    """
    device = loaded.device
    inputs: dict[str, Any] = {
        "input_ids": enc.input_ids.to(device),
        "attention_mask": enc.attention_mask.to(device),
    }
    dec: Encoded | None = None
    if loaded.capture.encoder_decoder:
        dec = decoder_inputs(loaded, enc if decoder_text is None else None, decoder_text, len(enc.texts))
        inputs["decoder_input_ids"] = dec.input_ids.to(device)
        inputs["decoder_attention_mask"] = dec.attention_mask.to(device)
    return inputs, dec


def decoder_inputs(loaded: LoadedModel, enc: Encoded | None, text: str | None, batch: int) -> Encoded:
    """Decoder input for encoder-decoder models: the start token, then the (same) text's tokens."""
    tok = loaded.tokenizer
    config = loaded.model.config
    start = config.decoder_start_token_id
    if start is None:
        start = tok.pad_token_id or 0
    if enc is None:
        enc = tokenize(loaded, [text or ""] * batch)
    rows = [[start, *enc.input_ids[i, : enc.lengths[i]].tolist()] for i in range(batch)]
    ids, mask = pad_rows(rows, tok.pad_token_id or 0)
    labels = [token_labels(tok, r) for r in rows]
    return Encoded(
        texts=enc.texts,
        input_ids=ids,
        attention_mask=mask,
        lengths=[len(r) for r in rows],
        offsets=[[(0, 0), *enc.offsets[i]] for i in range(batch)],
        special=[[True, *enc.special[i]] for i in range(batch)],
        tokens=[readable for readable, _ in labels],
        truncated=[0] * batch,
        pieces=[raw for _, raw in labels],
    )
