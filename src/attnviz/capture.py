"""How attention is recorded: an attention function registered with transformers.

transformers 5 returns no attention weights under its default `sdpa` implementation. We register
our own implementation, `attnviz`, that runs the model's own eager attention for the layers we
record (so the numbers are exactly the model's) and sdpa for the others, and keeps only the layers,
heads and query/key/value vectors asked for. Models that cannot switch fall back to
`eager` + `output_attentions`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

ATTN_IMPLEMENTATION = "attnviz"
_CROSS_NAMES = ("encdecattention", "encoder_attn", "crossattention", "cross_attn")

_registered = False
_active: Recorder | None = None


@dataclass
class Recorder:
    """What one forward pass should keep; filled in by the attention function."""

    index: dict[int, tuple[str, int]]  # id(attention module) -> (stream, layer)
    layers: frozenset[int] | None  # None = all
    heads: list[int] | None  # None = all
    qkv: bool = False
    discover: bool = False
    weights: dict[tuple[str, int], Any] = field(default_factory=dict)  # [batch, heads, q, k]
    vectors: dict[tuple[str, int], tuple[Any, Any, Any, float, Any]] = field(default_factory=dict)
    order: list[Any] = field(default_factory=list)  # modules in call order (discovery only)

    def wants(self, key: tuple[str, int] | None) -> bool:
        if self.discover:
            return True
        if key is None:
            return False
        return self.layers is None or key[1] in self.layers


def _eager_for(module: Any) -> Any:
    """The model's own eager attention function, so recorded weights equal `eager` exactly."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:  # pragma: no cover - every refactored model defines one
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn


def attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
    """Registered as transformers' `attnviz` attention: eager where recorded, sdpa elsewhere."""
    rec = _active
    ident = rec.index.get(id(module)) if rec is not None else None
    if rec is None or not rec.wants(ident):
        if "position_bias" not in kwargs and getattr(module, "_attnviz_sdpa_ok", True):
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return _eager_for(module)(module, query, key, value, attention_mask, **kwargs)
    out, weights = _eager_for(module)(module, query, key, value, attention_mask, **kwargs)
    if rec.discover:
        rec.order.append(module)
        rec.weights[("discover", len(rec.order) - 1)] = weights.detach()
        return out, weights
    w = weights.detach()
    if rec.heads is not None:
        w = w[:, rec.heads]
    rec.weights[ident] = w
    if rec.qkv:
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
        bias = attention_mask
        if kwargs.get("position_bias") is not None:
            bias = kwargs["position_bias"] if bias is None else bias + kwargs["position_bias"]
        rec.vectors[ident] = (query.detach(), key.detach(), value.detach(), float(scaling), bias)
    return out, weights


def register() -> None:
    """Register the `attnviz` attention and mask functions with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
    _registered = True


@contextmanager
def recording(rec: Recorder) -> Iterator[Recorder]:
    """Activate a recorder for one forward pass; always deactivated, even on error."""
    global _active
    previous, _active = _active, rec
    try:
        yield rec
    finally:
        _active = previous


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
        names = {id(m): n for n, m in model.named_modules()}
        sdpa_ok = bool(getattr(model, "_supports_sdpa", False))
        self.index: dict[int, tuple[str, int]] = {}
        counts: dict[str, int] = {}
        first: dict[str, Any] = {}
        if self.interface:
            rec = Recorder(index={}, layers=None, heads=None, discover=True)
            with torch.no_grad(), recording(rec):
                model(**inputs)
            for i, module in enumerate(rec.order):
                stream = _stream_of(names.get(id(module), ""), self.encoder_decoder)
                module._attnviz_sdpa_ok = sdpa_ok
                self.index[id(module)] = (stream, counts.get(stream, 0))
                first.setdefault(stream, rec.weights[("discover", i)])
                counts[stream] = counts.get(stream, 0) + 1
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
    ) -> Recorder:
        """One forward pass that records the chosen layers and heads of every stream."""
        import torch

        rec = Recorder(
            index=self.index,
            layers=frozenset(layers) if layers is not None else None,
            heads=heads,
            qkv=qkv,
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
                            rec.weights[(stream, i)] = w if heads is None else w[:, heads]
        return rec
