"""How attention is recorded: an attention function registered with transformers.

transformers 5 returns no attention weights under its default `sdpa` implementation. We register
our own implementation, `attnviz`, that computes every layer's output exactly as the unrecorded
model does (transformers' own sdpa function; the model's eager function where sdpa cannot run) and,
on the layers we record, computes softmax weights only for the heads asked for: their query and key
slices, the same mask, scaling, softcapping and position bias as the model's eager attention, a
block of query rows at a time, written straight into one preallocated [batch, layers, heads, q, k]
array. So recording one head costs about one head's weights, and recording everything costs the
result plus one block. Models that cannot switch fall back to `eager` + `output_attentions`.

The active recorder and editor are per call, not per process: each lives in a `ContextVar`, so any
number of threads (the server's pool, two models, `generate` beside `extract`) each see only their
own. A new `threading.Thread` starts with neither; `contextvars.copy_context().run` carries them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

ATTN_IMPLEMENTATION = "attnviz"
STORES = ("float32", "float16")


def check_store(store: str) -> None:
    """InputError unless `store` is a dtype the weights can be kept in: the one copy of this rule."""
    if store not in STORES:
        from attnviz.errors import InputError, param

        raise InputError(f"unknown {param('store')} '{store}': use {' or '.join(STORES)}")


_CROSS_NAMES = ("encdecattention", "encoder_attn", "crossattention", "cross_attn")
_BLOCK_ELEMENTS = 1 << 22  # scores computed at once (16 MB of float32): bounds the working set
_EAGER_ONLY = {"s_aux", "sinks"}  # weight terms head_weights does not model (attention sinks): eager

_registered = False
# this call's recorder (a Recorder, or generation's StepRecorder) and editor: per thread and task
_ACTIVE: ContextVar[Any] = ContextVar("attnviz_recorder", default=None)
_EDITOR: ContextVar[Editor | None] = ContextVar("attnviz_editor", default=None)


@dataclass
class Recorder:
    """What one forward pass should keep; filled in by the attention function."""

    index: dict[int, tuple[str, int]]  # id(attention module) -> (stream, layer)
    layers: frozenset[int] | None  # None = all
    heads: list[int] | None  # None = all
    qkv: bool = False
    discover: bool = False
    store: str = "float32"  # dtype of the recorded weights ("float16" rounds them)
    counts: dict[str, int] = field(default_factory=dict)  # layers per stream, to size the buffers
    weights: dict[tuple[str, int], Any] = field(default_factory=dict)  # [batch, heads, q, k] views
    vectors: dict[tuple[str, int], tuple[Any, Any, Any, float, Any]] = field(default_factory=dict)
    order: list[Any] = field(default_factory=list)  # modules in call order (discovery only)
    buffers: dict[str, Any] = field(default_factory=dict)  # stream -> [batch, layers, heads, q, k]
    shared: dict[int, tuple[tuple[str, int], ...]] = field(default_factory=dict)  # modules run N times
    calls: dict[int, int] = field(default_factory=dict)  # calls so far of each shared module

    def key(self, module: Any) -> tuple[str, int] | None:
        """(stream, layer) of this call of `module`: a module run N times (ALBERT) is N layers."""
        return _key_of(self.index, self.shared, self.calls, module)

    def wants(self, key: tuple[str, int] | None) -> bool:
        if self.discover:
            return True
        if key is None:
            return False
        return self.layers is None or key[1] in self.layers

    def rows(self, stream: str) -> list[int]:
        """Model layer index of each row of `stream`'s buffer."""
        return sorted(self.layers) if self.layers is not None else list(range(self.counts.get(stream, 0)))

    def target(self, key: tuple[str, int], shape: tuple[int, ...], device: Any) -> Any:
        """Where `key`'s weights go: a view into its stream's buffer, allocated on first use."""
        import torch

        stream, layer = key
        rows = self.rows(stream)
        if self.discover or layer not in rows:
            return torch.empty(shape, dtype=self.torch_dtype, device=device)
        buf = self.buffers.get(stream)
        b, h, q, k = shape
        if buf is None or tuple(buf.shape) != (b, len(rows), h, q, k):
            buf = self.buffers[stream] = torch.empty(
                (b, len(rows), h, q, k), dtype=self.torch_dtype, device=device
            )  # [batch, layers, heads, q, k]
        return buf[:, rows.index(layer)]

    @property
    def torch_dtype(self) -> Any:
        import torch

        return torch.float16 if self.store == "float16" else torch.float32

    def stacked(self, stream: str, layers: list[int]) -> Any | None:
        """[batch, layers, heads, q, k] for `layers` of `stream` (no copy when it can); None if missing."""
        import torch

        keys = [(stream, layer) for layer in layers]
        if not all(k in self.weights for k in keys):
            return None
        buf = self.buffers.get(stream)
        if buf is not None and self.rows(stream) == list(layers):
            return buf
        return torch.stack([self.weights[k] for k in keys], dim=1).to(self.torch_dtype)


def _key_of(
    index: dict[int, tuple[str, int]],
    shared: dict[int, tuple[tuple[str, int], ...]],
    calls: dict[int, int],
    module: Any,
) -> tuple[str, int] | None:
    ident = id(module)
    many = shared.get(ident)
    if not many:
        return index.get(ident)
    n = calls.get(ident, 0)
    calls[ident] = n + 1
    return many[n % len(many)]


@dataclass
class Editor:
    """Changes heads' outputs before the output projection (ablation); keyed like a Recorder.

    `edit(key, out, module)` gets `out` [batch, q, heads, head_dim] of layer `key` and returns the
    output to use instead (or the same tensor). `inputs(key, query, key_, value, module)`, when set,
    sees the layer's query [batch, heads, q, d] and key/value [batch, kv heads, k, d] first and
    returns the three to use (path patching records and replaces them there).
    """

    index: dict[int, tuple[str, int]]
    edit: Any  # Callable[[tuple[str, int], Tensor, Any], Tensor]
    inputs: Any = None  # Callable[[tuple[str, int], Tensor, Tensor, Tensor, Any], tuple[...]] | None
    shared: dict[int, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)

    def key(self, module: Any) -> tuple[str, int] | None:
        return _key_of(self.index, self.shared, self.calls, module)


def _eager_for(module: Any) -> Any:
    """The model's own eager attention function, for models that cannot run sdpa."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:  # pragma: no cover - every refactored model defines one
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def _is_causal(module: Any, query: Any, mask: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a missing mask means causal, decided exactly as transformers' sdpa function decides."""
    flag = kwargs.get("is_causal")
    if flag is None:
        flag = getattr(module, "is_causal", True)
    return bool(query.shape[2] > 1 and mask is None and flag)


def _additive(module: Any, query: Any, key: Any, mask: Any, kwargs: dict[str, Any]) -> Any:
    """The mask as eager attention adds it: [batch, 1, q, k] float, 0 visible, dtype min masked (or None)."""
    import torch

    dtype = query.dtype if query.dtype.is_floating_point else torch.float32
    if mask is None:
        if not _is_causal(module, query, mask, kwargs):
            return None
        q, k = query.shape[2], key.shape[2]
        hidden = torch.ones(q, k, dtype=torch.bool, device=query.device).triu(1)
        full = torch.zeros(q, k, dtype=dtype, device=query.device)
        return full.masked_fill(hidden, torch.finfo(dtype).min)[None, None]  # [1, 1, q, k]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    return mask


def _sdpa_can_run(module: Any, kwargs: dict[str, Any]) -> bool:
    """Whether transformers' sdpa function computes this layer as the model's eager one does."""
    if not getattr(module, "_attnviz_sdpa_ok", True) or "position_bias" in kwargs:
        return False
    return all(kwargs.get(name) is None for name in ("softcap", *_EAGER_ONLY))


def _plain(module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The layer's output exactly as without recording: transformers' sdpa, or eager where it cannot run."""
    if _sdpa_can_run(module, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)
    additive = _additive(module, query, key, mask, kwargs)
    return _eager_for(module)(module, query, key, value, additive, **kwargs)


def head_weights(
    module: Any,
    query: Any,
    key: Any,
    mask: Any,
    heads: list[int] | None,
    out: Any,
    **kwargs: Any,
) -> Any:
    """Eager softmax weights of `heads` only, a block of query rows at a time, written into `out`.

    query: [batch, heads, q, d]; key: [batch, kv heads, k, d] (grouped-query keys are not repeated);
    out: [batch, len(heads), q, k]. Mirrors eager attention: (q k^T) * scaling, softcapping, position
    bias, mask, float32 softmax.
    """
    import torch

    n_heads, n_kv = query.shape[1], key.shape[1]
    sel = list(range(n_heads)) if heads is None else list(heads)
    rep = max(1, n_heads // n_kv)
    idx = torch.tensor(sel, device=query.device)
    q = query.index_select(1, idx)  # [batch, h, q, d]
    k = key.index_select(1, torch.tensor([h // rep for h in sel], device=key.device))  # [batch, h, k, d]
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    softcap = kwargs.get("softcap")
    bias = kwargs.get("position_bias")  # [batch or 1, heads or 1, q, k]
    if bias is not None and bias.shape[1] > 1:
        bias = bias.index_select(1, idx.to(bias.device))
    if mask is not None and mask.shape[1] > 1:
        mask = mask.index_select(1, idx.to(mask.device))
    causal = _is_causal(module, query, mask, kwargs)
    q_len, k_len = q.shape[2], k.shape[2]
    step = max(1, _BLOCK_ELEMENTS // max(1, q.shape[0] * len(sel) * k_len))
    kt = k.transpose(-1, -2)
    for s in range(0, q_len, step):
        e = min(q_len, s + step)
        scores = torch.matmul(q[:, :, s:e], kt) * scaling  # [batch, h, rows, k]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if bias is not None:
            scores = scores + bias[:, :, s:e]
        if mask is not None:
            block = mask[:, :, s:e]
            if block.dtype == torch.bool:
                scores = scores.masked_fill(~block, torch.finfo(scores.dtype).min)
            else:
                scores = scores + block
        elif causal:
            rows = torch.arange(s, e, device=q.device)[:, None]
            hidden = torch.arange(k_len, device=q.device)[None, :] > rows
            scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        out[:, :, s:e] = torch.softmax(scores, dim=-1, dtype=torch.float32)
    return out


def attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
    """Registered as transformers' `attnviz` attention: the unrecorded output, plus the heads asked for.

    Any other kind of active recorder (generation's step recorder) is handed the layer through its
    own `forward(module, query, key, value, mask, **kwargs)`. An active Editor then edits the output.
    """
    edit = _EDITOR.get()
    ident = edit.key(module) if edit is not None else None
    if ident is not None and edit.inputs is not None:
        query, key, value = edit.inputs(ident, query, key, value, module)
    rec = _ACTIVE.get()
    if rec is not None and not isinstance(rec, Recorder):
        out, _ = rec.forward(module, query, key, value, attention_mask, **kwargs)
    else:
        out, _ = _recorded(rec, module, query, key, value, attention_mask, **kwargs)
    if ident is not None:
        out = edit.edit(ident, out, module)
    return out, None


def _recorded(
    rec: Recorder | None, module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
):
    """The layer's output, recording its weights (and vectors) when the active recorder wants them."""
    ident = rec.key(module) if rec is not None else None
    if rec is None or not rec.wants(ident):
        return _plain(module, query, key, value, attention_mask, **kwargs)
    if any(kwargs.get(name) is not None for name in _EAGER_ONLY):
        out, weights = _eager_for(module)(
            module, query, key, value, _additive(module, query, key, attention_mask, kwargs), **kwargs
        )
        w = weights.detach()
        if rec.heads is not None and not rec.discover:
            w = w[:, rec.heads]
        target = None
    else:
        out, _ = _plain(module, query, key, value, attention_mask, **kwargs)
        w = None
        heads = None if rec.discover else rec.heads
        n = query.shape[1] if heads is None else len(heads)
        shape = (query.shape[0], n, query.shape[2], key.shape[2])
        key_id = ("discover", len(rec.order)) if rec.discover else ident
        target = rec.target(key_id, shape, query.device)
        w = head_weights(module, query, key, attention_mask, heads, target, **kwargs)
    if rec.discover:
        rec.order.append(module)
        rec.weights[("discover", len(rec.order) - 1)] = w
        return out, None
    if target is None:
        target = rec.target(ident, tuple(w.shape), w.device)
        target.copy_(w)
    rec.weights[ident] = target
    if rec.qkv:
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
        bias = _additive(module, query, key, attention_mask, kwargs)
        if kwargs.get("position_bias") is not None:
            bias = kwargs["position_bias"] if bias is None else bias + kwargs["position_bias"]
        rec.vectors[ident] = (query.detach(), key.detach(), value.detach(), float(scaling), bias)
    return out, None


def register() -> None:
    """Register the `attnviz` attention and mask functions with transformers (idempotent).

    The mask is sdpa's (boolean, or none at all when causal without padding), so unrecorded layers
    run exactly as under `sdpa` and no [q, k] float mask is ever materialised for a long text. A
    missing mask therefore always means causal (a bidirectional mask is always made, as eager does).
    """
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def mask(*args: Any, **kwargs: Any) -> Any:
        """sdpa's mask, except that a bidirectional one is always made: eager reads None as "no mask"."""
        kwargs["allow_is_bidirectional_skip"] = False
        return sdpa_mask(*args, **kwargs)

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, mask)
    _registered = True


@contextmanager
def recording(rec: Recorder) -> Iterator[Recorder]:
    """Activate a recorder for one forward pass in this thread (or task); always deactivated."""
    if isinstance(rec, Recorder):
        rec.calls.clear()
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)


def active() -> Any:
    """The recorder active in this thread (or task), or None."""
    return _ACTIVE.get()


def active_editor() -> Editor | None:
    """The editor active in this thread (or task), or None."""
    return _EDITOR.get()


@contextmanager
def editing(editor: Editor) -> Iterator[Editor]:
    """Activate an editor of heads' outputs (ablation) for any number of passes in this thread (or
    task); always deactivated."""
    editor.calls.clear()
    token = _EDITOR.set(editor)
    try:
        yield editor
    finally:
        _EDITOR.reset(token)


def _stream_of(name: str, encoder_decoder: bool) -> str:
    if not encoder_decoder:
        return "self"
    low = name.lower()
    if "decoder" in low:
        return "cross" if any(c in low for c in _CROSS_NAMES) else "decoder"
    return "encoder"


class Capture:
    """Knows a loaded model's attention modules, its streams and whether it is causal."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        import torch

        self.model = model
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.interface = model.config._attn_implementation == ATTN_IMPLEMENTATION
        self.kind = "encoder-decoder" if self.encoder_decoder else "encoder"
        ids = tokenizer("attention is all", add_special_tokens=False)["input_ids"][:3]
        while len(ids) < 3:
            ids.append(ids[-1] if ids else 0)
        device = next(model.parameters()).device
        inputs: dict[str, Any] = {"input_ids": torch.tensor([ids], device=device)}
        if self.encoder_decoder:
            inputs["decoder_input_ids"] = inputs["input_ids"]
        self.probe = inputs  # a three-token input: discovery, and tracing where outputs go
        # where an Editor edits heads: in our attention function, or (own attention code, set by
        # architecture.install_head_edits) at W_O's input; else edit_problem says why it cannot
        self.edit_at: str | None = "attention" if self.interface else None
        self.edit_problem: str | None = None
        self.projections: tuple[Any, ...] = ()  # own attention code: W_O per main-stream layer
        self.head_sizes: tuple[int, ...] = ()  # and its head size (W_O may take more: ConvBERT)
        names = {id(m): n for n, m in model.named_modules()}
        sdpa_ok = bool(getattr(model, "_supports_sdpa", False))
        self.index: dict[int, tuple[str, int]] = {}  # id(module) -> (stream, layer) of its first call
        self.shared: dict[int, tuple[tuple[str, int], ...]] = {}  # modules run N times: every call
        counts: dict[str, int] = {}
        first: dict[str, Any] = {}
        if self.interface:
            rec = Recorder(index={}, layers=None, heads=None, discover=True)
            with torch.no_grad(), recording(rec):
                model(**inputs)
            calls: dict[int, list[tuple[str, int]]] = {}
            for i, module in enumerate(rec.order):
                stream = _stream_of(names.get(id(module), ""), self.encoder_decoder)
                module._attnviz_sdpa_ok = sdpa_ok
                calls.setdefault(id(module), []).append((stream, counts.get(stream, 0)))
                first.setdefault(stream, rec.weights[("discover", i)])
                counts[stream] = counts.get(stream, 0) + 1
            self.index = {ident: keys[0] for ident, keys in calls.items()}
            self.shared = {ident: tuple(keys) for ident, keys in calls.items() if len(keys) > 1}
        else:
            with torch.no_grad():
                out = model(**inputs, output_attentions=True)
            for stream, attns in self._output_streams(out).items():
                counts[stream] = len(attns)
                first[stream] = attns[0]
        self.layer_counts = counts
        main = "encoder" if self.encoder_decoder else "self"
        self.num_layers = counts.get(main, 0)
        if self.num_layers == 0:
            raise RuntimeError("the model ran no attention layer that attnviz can record")
        w = first[main]
        self.num_heads = int(w.shape[1])
        upper = torch.triu(torch.ones(w.shape[-2], w.shape[-1], dtype=torch.bool), 1).to(w.device)
        self.causal = bool((w[..., upper] == 0).all())
        if self.causal and not self.encoder_decoder:
            self.kind = "decoder"

    def _output_streams(self, out: Any) -> dict[str, Any]:
        if self.encoder_decoder:
            return {
                "encoder": out.encoder_attentions or (),
                "decoder": out.decoder_attentions or (),
                "cross": out.cross_attentions or (),
            }
        return {"self": out.attentions or ()}

    def run(
        self,
        inputs: dict[str, Any],
        layers: list[int] | None,
        heads: list[int] | None,
        qkv: bool = False,
        store: str = "float32",
    ) -> Recorder:
        """One forward pass that records the chosen layers and heads of every stream.

        The weights land in `rec.buffers` (one [batch, layers, heads, q, k] array per stream, filled
        layer by layer); `store="float16"` halves them and rounds each weight to about 3 digits.
        """
        import torch

        check_store(store)
        rec = Recorder(
            index=self.index,
            layers=frozenset(layers) if layers is not None else None,
            heads=heads,
            qkv=qkv,
            store=store,
            counts=self.layer_counts,
            shared=self.shared,
        )
        with torch.inference_mode():
            if self.interface:
                with recording(rec):
                    self.model(**inputs)
            else:
                out = self.model(**inputs, output_attentions=True)
                for stream, attns in self._output_streams(out).items():
                    for i, w in enumerate(attns):
                        if rec.wants((stream, i)):
                            w = (w if heads is None else w[:, heads]).to(rec.torch_dtype)
                            rec.weights[(stream, i)] = w
        return rec
