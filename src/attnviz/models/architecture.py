"""What attnviz reaches into beyond attention weights, found the same way on every architecture.

No table of module names. Heads are edited (capture.Editor: ablation, patching) where every
architecture hands over each head's output as [batch, q, heads, head_dim]:
- through transformers' attention interface, inside our registered attention function; norm
  weighting's W_O is then the module whose input is exactly that output, on one traced call;
- on a model whose attention is its own code, at the input of its output projection W_O, found by
  data flow through autograd on one traced call (`install_head_edits`, at load): the first
  projection whose input depends on the layer's attention weights, head h's slice on head h's
  weights only. A forward pre-hook there hands the active editor the same [batch, q, heads,
  head_dim] view; value vectors (norm weighting) come from the same graph (`traced_values`).
Where W_O cannot be found that way, `require_editable` says so in one line before any analysis runs.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from attnviz.errors import AttnvizError, InputError
from attnviz.models.capture import Editor, active_editor, editing

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

_TRACING: ContextVar[object | None] = ContextVar("attnviz_trace", default=None)  # this thread's trace


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
    """`purpose` (the query and key vectors) needs transformers' attention interface; else one line."""
    if not loaded.capture.interface:
        raise InputError(
            f"{describe(loaded)} computes attention in its own code, not through transformers' "
            f"attention interface: its attention weights can be extracted (eager), but {purpose} "
            "needs each head's vectors and is not possible on it"
        )


def require_editable(loaded: LoadedModel, purpose: str) -> None:
    """`purpose` (norm weighting, ablation, patching) needs each head's output; else one line why not."""
    cap = loaded.capture
    if cap.interface or getattr(cap, "edit_at", None) == "projection":
        return
    why = getattr(cap, "edit_problem", None) or "its output projection was not found"
    raise InputError(
        f"{describe(loaded)} computes attention in its own code, not through transformers' "
        f"attention interface, and {why}: its attention weights can be extracted (eager), but "
        f"{purpose} needs each head's output and is not possible on it"
    )


def main_stream(loaded: LoadedModel) -> str:
    """The stream analyses act on: the encoder of an encoder-decoder, else the only one."""
    return "encoder" if loaded.capture.encoder_decoder else "self"


def output_projections(loaded: LoadedModel, purpose: str, stream: str | None = None) -> list[Any]:
    """The module receiving each layer's attention output of `stream` (default: the main one), in order.

    Found by tracing one forward pass: the first projection (Linear or Conv1D) called after a
    layer's attention whose input equals that attention's output, element for element (own
    attention code: the projection found at load, see `install_head_edits`).
    """
    require_editable(loaded, purpose)
    if not loaded.capture.interface:
        return list(loaded.capture.projections)
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

    cap = loaded.capture
    main = stream or main_stream(loaded)
    events: list[tuple[str, Any, Any]] = []  # ("attn", layer, out) / ("proj", module, input), in order

    def seen(key: tuple[str, int], out: Any, module: Any) -> Any:
        events.append(("attn", key[1] if key[0] == main else None, out.detach()))
        return out

    editor = Editor(index=cap.index, edit=seen, shared=cap.shared)

    def pre_hook(module: Any, args: tuple[Any, ...]) -> None:
        # only this trace's pass: other threads may run the same model meanwhile, through these hooks
        if active_editor() is editor and args and isinstance(args[0], torch.Tensor):
            events.append(("proj", module, args[0].detach()))

    handles = [
        m.register_forward_pre_hook(pre_hook) for m in loaded.model.modules() if in_features(m) is not None
    ]
    try:
        with torch.no_grad(), editing(editor):
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


# -- own attention code: heads edited at the output projection's input ------------------------------


def install_head_edits(model: Any, cap: Any) -> None:
    """On a model whose attention is its own code, find each layer's W_O by data flow and hook it.

    Sets `cap.projections` (W_O per main-stream layer), `cap.index` (id(W_O) -> (stream, layer),
    what an Editor is keyed by) and `cap.edit_at = "projection"`; or `cap.edit_problem`, why not.
    The hooks do nothing unless an editor is active in the calling thread.
    """
    import torch

    if cap.interface:
        return
    try:
        found = _trace_own_code(model, cap)
    except Exception as exc:  # any failure only means: no head editing here
        cap.edit_problem = f"tracing its output projection failed ({type(exc).__name__})"
        return
    missing = [layer for layer, hit in enumerate(found) if hit is None]
    if missing or not found:
        cap.edit_problem = (
            f"no projection's input in its layer {missing[0] if missing else 0} is the heads' outputs "
            "side by side (found by data flow from the attention weights)"
        )
        return
    stream = "encoder" if cap.encoder_decoder else "self"
    heads = cap.num_heads
    hits = [hit for hit in found if hit is not None]
    size = {id(proj): d for proj, d in hits}

    def edit_heads(module: Any, args: tuple[Any, ...]) -> Any:
        editor = active_editor()
        key = editor.key(module) if editor is not None else None
        if key is None or not args:
            return None
        x = args[0]
        width = heads * size[id(module)]
        out = x[..., :width].unflatten(-1, (heads, -1))  # [batch, q, heads, head_dim]
        new = editor.edit(key, out, module)
        if new is out:
            return None
        new = new.flatten(-2)
        return (new if width == x.shape[-1] else torch.cat([new, x[..., width:]], -1), *args[1:])

    for proj in dict.fromkeys(proj for proj, _ in hits):
        proj.register_forward_pre_hook(edit_heads)
    cap.projections = tuple(proj for proj, _ in hits)
    cap.head_sizes = tuple(d for _, d in hits)
    cap.index = {id(proj): (stream, layer) for layer, proj in enumerate(cap.projections)}
    cap.edit_at = "projection"


def _traced(model: Any, cap: Any, inputs: dict[str, Any], keep: list[Any] | None = None):
    """One forward pass with autograd on (whatever the caller's mode): (attention weights of the main
    stream, [(projection, its input)] in call order, over `keep` or every projection)."""
    import torch

    calls: list[tuple[Any, Any]] = []
    mine = object()

    def pre_hook(module: Any, args: tuple[Any, ...]) -> None:
        # only this pass: other threads may run the same model meanwhile, through these hooks
        if _TRACING.get() is mine and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            calls.append((module, args[0]))

    modules = keep if keep is not None else [m for m in model.modules() if in_features(m) is not None]
    handles = [m.register_forward_pre_hook(pre_hook) for m in dict.fromkeys(modules)]
    token = _TRACING.set(mine)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        _TRACING.reset(token)
        for handle in handles:
            handle.remove()
    attns = out.encoder_attentions if cap.encoder_decoder else out.attentions
    return list(attns or ()), calls


def _trace_own_code(model: Any, cap: Any) -> list[tuple[Any, int] | None]:
    """(W_O, head size) of each layer: the first projection called whose input depends on the layer's
    weights P, with head h's slice of it depending on P's head h only (the heads side by side)."""
    attns, calls = _traced(model, cap, cap.probe)
    found: list[Any | None] = []
    start = 0
    for weights in attns:
        proj = None
        if weights.requires_grad:
            for i in range(start, len(calls)):
                module, x = calls[i]
                g = _grad(x, weights)
                if g is not None and bool(g.any()):
                    d = _head_size(x, weights)
                    proj = (module, d) if d else None
                    start = i + 1
                    break
        found.append(proj)
    return found


def _grad(part: Any, weights: Any) -> Any:
    """d sum(part) / d weights, or None when part does not depend on them."""
    import torch

    return torch.autograd.grad(part, weights, torch.ones_like(part), retain_graph=True, allow_unused=True)[0]


def _head_size(x: Any, weights: Any) -> int | None:
    """The head size d when x's first heads * d columns are the heads' outputs in head order (slice h
    depends on head h's weights only) and any further columns on no head (ConvBERT's convolution
    heads); else None."""
    heads, width = weights.shape[1], x.shape[-1]
    for d in sorted((d for d in range(1, width // heads + 1) if width % d == 0), reverse=True):
        rest = x[..., heads * d :]
        if rest.numel() and (g := _grad(rest, weights)) is not None and bool(g.any()):
            continue
        for h in range(heads):
            g = _grad(x[..., h * d : (h + 1) * d], weights)
            if g is None or not bool(g[:, h].any()) or bool(g[:, :h].any()) or bool(g[:, h + 1 :].any()):
                break
        else:
            return d
    return None


def traced_values(loaded: LoadedModel, input_ids: Any) -> list[Any]:
    """Own attention code: each main-stream layer's value vectors, [heads, k, head_dim] float32, of one
    text, read off the graph: W_O's input is P_h V_h per head, so its gradient by P_h is V_h.

    Checked: P_h V_h must give W_O's input back (else the input is not linear in the weights).
    """
    import torch

    require_editable(loaded, "norm weighting")
    cap = loaded.capture
    ids = torch.as_tensor(input_ids, device=loaded.device).reshape(1, -1)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    attns, calls = _traced(loaded.model, cap, inputs, keep=list(cap.projections))
    seen: dict[int, list[Any]] = {}  # id(W_O) -> its inputs in call order (one per layer it serves)
    for module, x in calls:
        seen.setdefault(id(module), []).append(x)
    values = []
    for layer, weights in enumerate(attns):
        proj = cap.projections[layer]
        nth = sum(1 for p in cap.projections[:layer] if p is proj)
        x = seen[id(proj)][nth][..., : weights.shape[1] * cap.head_sizes[layer]]  # [1, n, heads * d]
        values.append(_values_from(x, weights, loaded.name, layer))
    return values


def _values_from(x: Any, weights: Any, name: str, layer: int) -> Any:
    """V [heads, k, d] with x = P V per head: grad of sum_q x[q, h, c(q)] by P[h, q, k] is V_h[k, c(q)]."""
    import torch

    heads, n = weights.shape[1], weights.shape[-1]
    xh = x.unflatten(-1, (heads, -1))  # [1, q, heads, d]
    q, d = xh.shape[1], xh.shape[-1]
    values = torch.zeros(heads, n, d, dtype=torch.float32)
    for first in range(0, d, q):  # columns first.. first+q-1 in one pass: row r reads column first+r
        rows = min(q, d - first)
        pick = torch.zeros_like(xh)
        pick[0, torch.arange(rows), :, first + torch.arange(rows)] = 1.0
        g = torch.autograd.grad(xh, weights, pick, retain_graph=True)[0]  # [1, heads, q, k]
        values[:, :, first : first + rows] = g[0, :, :rows].transpose(-1, -2).float().cpu()
    with torch.no_grad():
        again = torch.einsum("hqk,hkd->qhd", weights[0].float().cpu(), values)
        if not torch.allclose(again, xh[0].float().cpu(), atol=1e-4, rtol=1e-3):
            raise AttnvizError(
                f"{name} layer {layer}: its output projection's input is not the attention weights"
                " times value vectors: norm weighting is not possible on it"
            )
    return values
