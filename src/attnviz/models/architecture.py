"""What attnviz reaches into beyond attention weights, found the same way on every architecture.

No table of module names: ablation edits each head's output inside our registered attention
function (capture.Editor), where every architecture hands over the same [batch, q, heads, head_dim]
tensor; norm weighting needs W_O, found by data flow as the module whose input is exactly that
output, on one traced call. A model whose attention does not go through transformers' attention
interface supports neither, and `require_interface` says so in one line before any analysis runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel


def in_features(module: Any) -> int | None:
    """Width of a projection's input (heads * head_dim), or None when the module is no projection."""
    if type(module).__name__ == "Conv1D":  # GPT-2: weight is [in, out]
        return int(module.weight.shape[0])
    if hasattr(module, "in_features") and getattr(getattr(module, "weight", None), "ndim", 0) == 2:
        return int(module.in_features)
    return None


def describe(loaded: LoadedModel) -> str:
    """'name (ArchClass, model type x)': how errors name an architecture."""
    model_type = getattr(getattr(loaded.model, "config", None), "model_type", "?")
    return f"{loaded.name} ({type(loaded.model).__name__}, model type '{model_type}')"


def require_interface(loaded: LoadedModel, purpose: str) -> None:
    """`purpose` (norm weighting, ablation) needs transformers' attention interface; else one line."""
    if not loaded.capture.interface:
        raise InputError(
            f"{describe(loaded)} computes attention in its own code, not through transformers' "
            f"attention interface: its attention weights can be extracted (eager), but {purpose} "
            "needs each head's output and is not possible on it"
        )


def main_stream(loaded: LoadedModel) -> str:
    """The stream analyses act on: the encoder of an encoder-decoder, else the only one."""
    return "encoder" if loaded.capture.encoder_decoder else "self"


def output_projections(loaded: LoadedModel, purpose: str, stream: str | None = None) -> list[Any]:
    """The module receiving each layer's attention output of `stream` (default: the main one), in order.

    Found by tracing one forward pass: the first projection (Linear or Conv1D) called after a
    layer's attention whose input equals that attention's output, element for element.
    """
    require_interface(loaded, purpose)
    found = _trace(loaded, stream)  # one three-token pass: cheap, and always the model as it is now
    missing = [layer for layer, proj in enumerate(found) if proj is None]
    if missing:
        raise InputError(
            f"cannot find where the attention output of {describe(loaded)} layer {missing[0]} enters "
            f"its output projection (it is changed on the way, e.g. gated): {purpose} is not possible"
        )
    return found


def _trace(loaded: LoadedModel, stream: str | None = None) -> list[Any | None]:
    import torch

    from attnviz.models.capture import Editor, editing

    cap = loaded.capture
    main = stream or main_stream(loaded)
    events: list[tuple[str, Any, Any]] = []  # ("attn", layer, out) / ("proj", module, input), in order

    def seen(key: tuple[str, int], out: Any, module: Any) -> Any:
        events.append(("attn", key[1] if key[0] == main else None, out.detach()))
        return out

    def pre_hook(module: Any, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            events.append(("proj", module, args[0].detach()))

    handles = [
        m.register_forward_pre_hook(pre_hook) for m in loaded.model.modules() if in_features(m) is not None
    ]
    try:
        with torch.no_grad(), editing(Editor(index=cap.index, edit=seen, shared=cap.shared)):
            loaded.model(**cap.probe)
    finally:
        for handle in handles:
            handle.remove()
    found: list[Any | None] = [None] * cap.layer_counts.get(main, 0)
    for i, (kind, layer, out) in enumerate(events):
        if kind != "attn" or layer is None or found[layer] is not None:
            continue
        for kind2, module, x in events[i + 1 :]:
            if kind2 == "attn":
                break
            if x.numel() == out.numel() and torch.equal(x.reshape(-1), out.reshape(-1)):
                found[layer] = module
                break
    return found
