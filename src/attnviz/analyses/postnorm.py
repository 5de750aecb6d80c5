"""Post-norm layers (BERT, RoBERTa, BART, Marian...) as a sum, every norm's scale frozen from the run.

A post-norm layer adds a component to its stream and normalises the sum, once per sub-block:
h = N1(x + attention(x)), out = N2(h + mlp(h)). With each norm's 1/sigma frozen from the run (per
position, as the final norm's already is), a norm is affine: N(z) = L(z) + beta, with
L(z) = gamma * (z - mean(z)) / sigma_run (RMSNorm: no centring). The stream after the last layer is
then exactly a sum: the embeddings, each head's slice of the output projection, each MLP's output,
every bias, each carried through the linear part L of every norm after it; the betas join the
projection biases in the one `bias` component, carried the same way.

Found by data flow, on one traced pass (the capture's probe), with no table of names: inside each
layer, a norm whose input is not the stream itself (that is a pre-norm read) must take the stream
plus one component: the output of the layer's output projection (attention, per stream) or of some
other module of the layer (its MLP). That is checked (allclose) on the traced call; a layer where it
does not hold, or whose output is not the last such norm's, is refused in one line.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attnviz.analyses.residual import Plan, Run, _input, _tensor, is_norm, link, run, same, weight_of
from attnviz.errors import InputError
from attnviz.models.architecture import describe

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel


@dataclass(frozen=True)
class Step:
    """One norm of the stream inside a layer, and what was added to the stream before it."""

    norm: Any  # the norm module
    adds: str  # a capture stream ("self", "decoder", "cross": that attention) or "mlp"


_STEPS: weakref.WeakKeyDictionary[Any, list[list[Step]]] = weakref.WeakKeyDictionary()


def steps(loaded: LoadedModel, p: Plan, purpose: str) -> list[list[Step]]:
    """Each layer's post-norm steps, in call order, traced once and kept while the model lives."""
    found = _STEPS.get(p.layers[0])
    if found is None:
        found = _STEPS[p.layers[0]] = _trace(loaded, p, purpose)
    return found


def _trace(loaded: LoadedModel, p: Plan, purpose: str) -> list[list[Step]]:
    import torch

    inside: dict[int, int] = {}  # id(module) -> its layer
    for i, layer in enumerate(p.layers):
        inside.update({id(m): i for m in layer.modules() if m is not layer})
    calls: dict[int, list[tuple[Any, Any, Any]]] = {i: [] for i in range(len(p.layers))}
    ends: dict[int, tuple[Any, Any]] = {}

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        calls[inside[id(module)]].append((module, _input(args, kwargs), _tensor(out)))

    def layer_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        ends[p.layers.index(module)] = (_input(args, kwargs), _tensor(out))

    handles = [
        m.register_forward_hook(hook, with_kwargs=True)
        for layer in p.layers
        for m in layer.modules()
        if m is not layer
    ]
    handles += [m.register_forward_hook(layer_hook, with_kwargs=True) for m in p.layers]
    try:
        with torch.no_grad():
            loaded.model(**loaded.capture.probe)
    finally:
        for handle in handles:
            handle.remove()
    return [_layer_steps(loaded, p, i, calls[i], *ends[i], purpose) for i in range(len(p.layers))]


def _layer_steps(
    loaded: LoadedModel, p: Plan, i: int, calls: list, x_in: Any, out: Any, purpose: str
) -> list[Step]:
    """Layer i's norms of the stream, each checked to take the stream plus one component's output."""
    import torch

    def refuse(why: str) -> InputError:
        return InputError(
            f"{describe(loaded)} is post-norm and layer {i} {why}: {purpose} is not possible on it"
        )

    writers = {id(p.projections[s][i]): s for s in p.streams}
    for s in p.streams:  # what the layer does to the projection's output before adding it
        writers.update({id(m): s for m in p.after[s][i]})
    found: list[Step] = []
    cur, since = x_in, 0
    for k, (module, x, y) in enumerate(calls):
        if x is None or y is None or x.shape != cur.shape or y.shape != cur.shape or same(x, cur):
            continue  # not on the stream, or a pre-norm read of it
        if same(y, cur):  # a module around the norm just traced (hooks fire on the way out)
            continue
        if not is_norm(module, x):
            continue
        delta = x - cur
        tol = 1e-4 * (1.0 + float(delta.abs().max()))
        made = [
            m
            for m, _a, b in calls[since:k]
            if b is not None and b.shape == delta.shape and torch.allclose(b, delta, atol=tol)
        ]
        if not made:
            raise refuse(f"adds to its stream something no module of it made, before {type(module).__name__}")
        adds = next((writers[id(m)] for m in made if id(m) in writers), "mlp")
        found.append(Step(module, adds))
        cur, since = y, k + 1
    if not same(cur, out):
        raise refuse("does not end in a norm of its stream")
    missing = [s for s in p.streams if not any(st.adds == s for st in found)]
    if missing:
        raise refuse(f"adds its {missing[0]} attention output to the stream in a way not traced")
    return found


def run_with_norms(loaded: LoadedModel, p: Plan, purpose: str, text: str | None, ids: Any = None) -> Run:
    """residual.run, with each post-norm step's (input, output) [n, d] added to the run's `io`."""
    if not p.post_norm:
        return run(loaded, p, text, ids=ids)
    layer_steps = steps(loaded, p, purpose)
    io: dict[int, tuple[Any, Any]] = {}

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        io[id(module)] = (_input(args, kwargs)[0], _tensor(out)[0])

    norms = dict.fromkeys(st.norm for layer in layer_steps for st in layer)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in norms]
    try:
        r = run(loaded, p, text, ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    r.io.update(io)
    return r


def parts(p: Plan, r: Run, pos: int) -> tuple[list[str], Any, Any]:
    """The stream after the last layer at `pos` as a sum: names, rows [components, d] float64 and the
    biases' part [d] (projection biases and every norm's beta), each carried through the later norms."""
    import torch

    layer_steps = _STEPS[p.layers[0]]
    stages = r.stages[:, pos].double()
    names, rows = ["embeddings"], [stages[0]]
    bias = torch.zeros_like(stages[0])
    for layer, these in enumerate(layer_steps):
        cur = stages[layer]
        mlp = len(rows)
        names.append(f"L{layer}MLP")
        rows.append(torch.zeros_like(bias))
        for st in these:
            x, y = r.io[id(st.norm)]
            x, y = x[pos], y[pos]
            if st.adds == "mlp":
                rows[mlp] = rows[mlp] + (x.double() - cur.double())
            else:
                writes, extra = _heads(p, r, st.adds, layer, pos, bias)
                mark = "X" if st.adds == "cross" else "H"
                names += [f"L{layer}{mark}{h}" for h in range(writes.shape[0])]
                rows += list(writes)
                bias = bias + extra
            frozen = link(_Tensors(st.norm), x, y)
            if frozen.kind != "norm":
                raise InputError(
                    f"cannot freeze {type(st.norm).__name__} of layer {layer} as a norm: "
                    "direct logit attribution is not possible"
                )
            stacked, bias = frozen.apply(torch.stack(rows), bias)
            rows = list(stacked)
            cur = y
        names.append(names.pop(mlp))  # the layer's heads first, then its MLP, as pre-norm models
        rows.append(rows.pop(mlp))
    total = torch.stack(rows)
    if not torch.allclose(total.sum(0) + bias, stages[-1], atol=1e-4 * (1.0 + float(stages[-1].abs().max()))):
        raise InputError(  # I-BERT: its layers' own code adds what no traced module made
            f"{p.layers[0].__class__.__name__} layers are post-norm and their parts do not add up to the "
            "stream (their own code): direct logit attribution is not possible on them"
        )
    return names, total, bias


class _Tensors:
    """A norm that returns a tuple (I-BERT's: the tensor and its scaling factor), called for its tensor."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, x: Any) -> Any:
        return _tensor(self.module(x))


def _heads(p: Plan, r: Run, stream: str, layer: int, pos: int, like: Any) -> tuple[Any, Any]:
    """Each head's write [heads, d] through its slice of the output projection, and the projection's
    bias [d], both through what the layer does to the projection's output before adding it."""
    import torch

    w, b = weight_of(p.projections[stream][layer])  # [d, heads * head_dim]
    out = r.heads[(stream, layer)][pos].double()  # [heads, head_dim]
    n_heads, head_dim = out.shape
    if w.shape[1] != n_heads * head_dim:  # ConvBERT: its span convolution's heads share the projection
        raise InputError(
            f"layer {layer}'s output projection reads {w.shape[1]} features, not its {n_heads} heads' "
            f"{n_heads * head_dim} (heads of its own code): direct logit attribution is not possible on it"
        )
    writes = torch.einsum("ohd,hd->ho", w.reshape(w.shape[0], n_heads, head_dim), out)
    extra = b if b is not None else torch.zeros_like(like)
    for module in p.after[stream][layer]:
        x, y = r.io[id(module)]
        writes, extra = link(module, x[pos], y[pos]).apply(writes, extra)
    return writes, extra
