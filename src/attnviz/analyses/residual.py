"""The residual stream and its path to the logits, found by data flow: what attribution and the lens share.

No table of module names. On one traced pass (the capture's three-token probe):
- the residual stream's layers are the layer modules holding the attention modules of the stream
  the LM head reads (the decoder's for an encoder-decoder): for each, its outermost ancestor that is
  an item of a module list;
- each layer's output projection is the one norm weighting finds (models/architecture.py);
- the unembedding is the model's output embedding, and the path to it is walked back from its input:
  the leaf module whose output is that input (the final norm, a dense layer, an activation...),
  until the last layer's output is reached. A step the model takes in its own code between two
  modules (T5's rescaling, RoBERTa's functional gelu) is an elementwise gate, taken from the run.
- what a layer does to its attention output before adding it to the stream (Gemma-2's sandwich
  norm) is the chain of leaf modules whose input is the projection's output.

A model whose layers normalise the stream itself (post-norm: BERT, BART) is a sum only with every norm's
scale frozen: attribution reads it so (analyses/postnorm.py); the lens reads each layer's output as it is.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attnviz.errors import AttnvizError, InputError
from attnviz.heads.interventions import block_modules
from attnviz.models.architecture import describe, in_features, output_projections
from attnviz.models.capture import Editor, editing
from attnviz.models.info import describe as read_config
from attnviz.models.loading import LoadedModel, load_model

if TYPE_CHECKING:
    from attnviz.attention import Encoded
    from attnviz.models.loading import LoadedModel

_MAX_HEAD = 12  # leaf modules between the last layer and the unembedding, at most


@dataclass
class Plan:
    """Where the residual stream read by the LM head lives, and how it reaches the logits."""

    streams: tuple[str, ...]  # capture streams writing into it: ("self",) or ("decoder", "cross")
    layers: list[Any]  # its layer modules, in order
    projections: dict[str, list[Any]]  # stream -> each layer's output projection
    after: dict[str, list[list[Any]]]  # stream -> per layer, leaf modules between projection and stream
    head: list[Any]  # leaf modules from the last layer's output to the unembedding, in order
    unembed: Any
    post_norm: str = ""  # why the stream is normalised inside each layer (BERT, BART), or ""


_PLANS: weakref.WeakKeyDictionary[Any, Plan] = weakref.WeakKeyDictionary()


def task_with_head(loaded: LoadedModel, purpose: str) -> str:
    """The loading task that gives this model its LM head; one line when its checkpoint has none."""
    if loaded.capture.encoder_decoder:
        return "seq2seq-lm"
    if loaded.causal:
        return "causal-lm"
    archs = getattr(loaded.model.config, "architectures", None) or []
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
        return "masked-lm"
    shown = ", ".join(archs) or type(loaded.model).__name__
    raise InputError(
        f"{loaded.name} has no LM head (its checkpoint is {shown}): {purpose} needs the logits over the "
        "vocabulary; use a causal LM, a masked LM or an encoder-decoder"
    )


def head_task(spec: str | None) -> str:
    """The loading task of a named model's LM head, read from its config without loading it:
    causal-lm for a decoder, seq2seq-lm for an encoder-decoder, else base (decided once loaded)."""

    try:
        kind = read_config(spec).kind
    except (AttnvizError, OSError, ValueError):  # loading says what is wrong, in one line
        return "base"
    return {"decoder": "causal-lm", "encoder-decoder": "seq2seq-lm"}.get(kind, "base")


def with_head(model: Any, purpose: str, device: str | None = "auto", dtype: str | None = "float32") -> Any:
    """A model name, path or LoadedModel, loaded (once, cached) with the LM head `purpose` needs."""

    if not isinstance(model, LoadedModel):
        model = load_model(model, device=device, dtype=dtype, task=head_task(model))
    loaded = model
    task = task_with_head(loaded, purpose)
    if loaded.task == task:
        return loaded
    return load_model(loaded.source.spec, device=loaded.device, dtype=loaded.dtype, task=task)


def plan(loaded: LoadedModel, purpose: str, post_norm: bool = False) -> Plan:
    """The plan of `loaded`'s model, traced once and kept while the model lives.

    A post-norm model (each layer ends in a norm of the stream) is refused unless `post_norm`: the
    lens reads each layer's output through the head as it is, attribution freezes every norm
    (analyses/postnorm.py).
    """
    found = _PLANS.get(loaded.model)
    if found is None:
        found = _PLANS[loaded.model] = _make_plan(loaded, purpose)
    if found.post_norm and not post_norm:
        raise InputError(
            f"{describe(loaded)} normalises its residual stream at the end of every layer (post-norm): "
            f"no head's output reaches the logits as a term of a sum, so {purpose} is not defined on it"
        )
    return found


def _tensor(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    first = _tensor(args[0]) if args else None
    return first if first is not None else _tensor(kwargs.get("hidden_states"))


def _make_plan(loaded: LoadedModel, purpose: str) -> Plan:
    import torch

    model = loaded.model
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if unembed is None or in_features(unembed) is None:
        raise InputError(f"{describe(loaded)} has no LM head: {purpose} needs the logits")
    streams = ("decoder", "cross") if loaded.capture.encoder_decoder else ("self",)
    streams = tuple(s for s in streams if loaded.capture.layer_counts.get(s))
    projections = {s: output_projections(loaded, purpose, s) for s in streams}
    layers = block_modules(loaded, streams[0], purpose)  # the blocks patching edits, found the same way
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    calls: list[tuple[Any, Any, Any]] = []  # (module, input, output), in call order
    outputs: dict[int, Any] = {}

    def leaf_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        calls.append((module, _input(args, kwargs), _tensor(out)))

    def layer_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        outputs[id(module)] = _tensor(out)

    inner: list[tuple[Any, Any, Any]] = []  # every module inside a layer (a norm need not be a leaf)

    def inner_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        inner.append((module, _input(args, kwargs), _tensor(out)))

    handles = [m.register_forward_hook(leaf_hook, with_kwargs=True) for m in leaves]
    handles += [m.register_forward_hook(layer_hook, with_kwargs=True) for m in layers]
    handles += [
        m.register_forward_hook(inner_hook, with_kwargs=True)
        for layer in layers
        for m in layer.modules()
        if m is not layer and next(m.children(), None) is not None
    ]
    try:
        with torch.no_grad():
            model(**loaded.capture.probe)
    finally:
        for handle in handles:
            handle.remove()
    post = _post_norm(layers, calls + inner, outputs)
    head = _walk_back(loaded, calls, unembed, outputs[id(layers[-1])], purpose)
    after = {
        s: [_after(calls, proj, layer) for proj, layer in zip(projections[s], layers, strict=True)]
        for s in streams
    }
    return Plan(streams, layers, projections, after, head, unembed, post)


def is_norm(module: Any, x: Any) -> bool:
    """Whether `module` ignores the scale of its input (a LayerNorm or RMSNorm), tried on `x`."""
    import torch

    if x is None or in_features(module) is not None:
        return False
    with torch.no_grad():
        try:
            a, b = _tensor(module(x)), _tensor(module(x * 2.0))
        except Exception:  # not callable on one tensor: not a norm
            return False
    if not isinstance(a, torch.Tensor) or a.shape != x.shape or torch.equal(a, x):
        return False
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4))


def _post_norm(layers: list[Any], calls: list, outputs: dict[int, Any]) -> str:
    """Whether a layer's output is a norm's output (the layer normalises the stream itself): some
    module inside it, a leaf or not (I-BERT's norm has children), gave exactly the layer's output
    and ignores the scale of its input."""
    for layer in layers:
        inside = {id(m) for m in layer.modules()}
        out = outputs.get(id(layer))
        for module, x, y in calls:
            if id(module) in inside and same(y, out) and is_norm(module, x):
                return "post-norm"
    return ""


def same(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool((a == b).all())


def _walk_back(loaded: LoadedModel, calls: list, unembed: Any, last: Any, purpose: str) -> list[Any]:
    """The leaf modules from the last layer's output to the unembedding's input, in call order."""
    idx = max(i for i, (m, _x, _y) in enumerate(calls) if m is unembed)
    cur = calls[idx][1]
    chain: list[Any] = []
    while not same(cur, last):
        earlier = [j for j in range(idx) if calls[j][2] is not None and calls[j][2].shape == cur.shape]
        exact = [j for j in earlier if same(calls[j][2], cur)]
        pick = exact or earlier  # no module made it: a step of the model's own code (a gate)
        if not pick or len(chain) >= _MAX_HEAD:
            raise InputError(
                f"cannot trace how the last layer of {describe(loaded)} reaches its logits: "
                f"{purpose} is not possible on it"
            )
        idx = pick[-1]
        chain.insert(0, calls[idx][0])
        cur = calls[idx][1]
    return chain


def _after(calls: list, projection: Any, layer: Any) -> list[Any]:
    """Leaf modules applied to the projection's output before it joins the stream (a sandwich norm)."""
    inside = {id(m) for m in layer.modules()}
    start = next((i for i, (m, _x, _y) in enumerate(calls) if m is projection), None)
    if start is None:
        return []
    chain, cur = [], calls[start][2]
    for module, x, y in calls[start + 1 :]:
        if id(module) not in inside:
            break
        if same(x, cur):
            chain.append(module)
            cur = y
    return chain


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """One text's forward pass: the stream after each stage, heads' outputs, and every path module's I/O."""

    tokens: tuple[str, ...]  # labels of the positions the logits are for
    token_ids: tuple[int, ...]
    stages: Any  # [layers + 1, n, d]: embeddings (input of layer 0), then each layer's output
    heads: dict[tuple[str, int], Any]  # (stream, layer) -> [n, heads, head_dim] before the projection
    io: dict[int, tuple[Any, Any]]  # id(module) -> (input, output) [n, ...] of each path module
    logits: Any  # [n, vocab] the model's own


def tokenized(loaded: LoadedModel, text: str) -> tuple[dict[str, Any], Encoded]:
    """The forward pass's inputs, and the tokens its logits are for (the decoder's, for seq2seq)."""
    from attnviz.extraction import model_inputs, tokenize

    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty")
    enc = tokenize(loaded, [text])
    inputs, dec = model_inputs(loaded, enc)
    return inputs, dec if dec is not None else enc


def run(loaded: LoadedModel, p: Plan, text: str | None, heads: bool = True, ids: Any = None) -> Run:
    """Run `text` (or token `ids` [n], batch's texts) once, recording what attribution and the lens
    read; every hook removed after."""
    import torch

    if ids is None:
        inputs, enc = tokenized(loaded, text or "")
        labels, kept = tuple(enc.tokens[0]), enc.input_ids[0, : enc.lengths[0]]
    else:
        kept = torch.as_tensor(ids)
        inputs, labels = {"input_ids": kept[None].to(loaded.device)}, tuple(str(i) for i in ids)
    cap = loaded.capture
    got: dict[tuple[str, int], Any] = {}
    io: dict[int, tuple[Any, Any]] = {}
    outs: dict[int, Any] = {}
    first: list[Any] = []

    def record(key: tuple[str, int], out: Any, module: Any) -> Any:
        if heads and key[0] in p.streams:
            got[key] = out[0].detach()
        return out

    def path_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        io[id(module)] = (_input(args, kwargs)[0], _tensor(out)[0])

    def layer_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if module is p.layers[0] and not first:
            first.append(_input(args, kwargs)[0])
        outs[id(module)] = _tensor(out)[0]

    path = [*p.head, p.unembed, *(m for s in p.streams for chain in p.after[s] for m in chain)]
    handles = [m.register_forward_hook(path_hook, with_kwargs=True) for m in dict.fromkeys(path)]
    handles += [m.register_forward_hook(layer_hook, with_kwargs=True) for m in p.layers]
    try:
        with torch.inference_mode(), editing(Editor(index=cap.index, edit=record, shared=cap.shared)):
            logits = loaded.model(**inputs).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    stages = torch.stack([first[0], *(outs[id(m)] for m in p.layers)])
    return Run(
        tokens=labels,
        token_ids=tuple(int(i) for i in kept),
        stages=stages,
        heads=got,
        io=io,
        logits=logits,
    )


# -- frozen links: the path at one position as affine maps ----------------------------------------


def unembed_rows(module: Any, ids: list[int]) -> tuple[Any, Any]:
    """The unembedding's rows of `ids` ([len(ids), d] float64) and their biases (or None): only those
    rows are converted, not the whole [vocab, d] matrix."""
    w = module.weight.detach()
    rows = w[:, ids].T if type(module).__name__ == "Conv1D" else w[ids]
    b = getattr(module, "bias", None)
    return rows.double(), (b.detach()[ids].double() if b is not None else None)


def weight_of(module: Any) -> tuple[Any, Any]:
    """A projection's (W [out, in], bias [out] or None) in float64 (GPT-2's Conv1D is stored [in, out])."""
    w = module.weight.detach().double()
    w = w.T if type(module).__name__ == "Conv1D" else w
    b = getattr(module, "bias", None)
    return w, (b.detach().double() if b is not None else None)


@dataclass
class Link:
    """One step of the path at one position, frozen from the run: affine in what flows through it."""

    kind: str  # "projection", "norm", "gate" or "identity"
    weight: Any = None  # projection [out, in]; norm and gate: per-feature scale [d]
    bias: Any = None  # projection and norm: what is added [out] (None: nothing)
    centred: bool = False  # norm: the mean is removed first (LayerNorm)

    def apply(self, rows: Any, bias: Any) -> tuple[Any, Any]:
        """rows [n, d] (the parts of a sum) and the bias part [d] -> the same after this step."""
        if self.kind == "identity":
            return rows, bias
        if self.kind == "projection":
            rows, bias = rows @ self.weight.T, bias @ self.weight.T
        elif self.kind == "gate":
            return rows * self.weight, bias * self.weight
        else:
            if self.centred:
                rows, bias = rows - rows.mean(-1, keepdim=True), bias - bias.mean()
            rows, bias = rows * self.weight, bias * self.weight
        return rows, (bias + self.bias if self.bias is not None else bias)


def link(module: Any, x: Any, y: Any) -> Link:
    """`module` at one position, input x [d] and output y [d'], as an affine map with its scale frozen."""
    if in_features(module) is not None:
        w, b = weight_of(module)
        return Link("projection", w, b)
    if same(x, y):
        return Link("identity")
    if x.shape == y.shape and is_norm(module, x[None, None]):
        frozen = _frozen_norm(module, x, y)
        if frozen is not None:
            return frozen
    if x.shape != y.shape:
        raise InputError(
            f"{type(module).__name__} on the path to the logits is neither a projection nor elementwise"
        )
    return gate(x, y)


def gate(x: Any, y: Any) -> Link:
    """y = g * x elementwise, g frozen from the run (a step of the model's own code, an activation)."""
    import torch

    x, y = x.double(), y.double()
    g = torch.where(x != 0, y / torch.where(x != 0, x, 1.0), torch.zeros_like(x))
    return Link("gate", g)


def _frozen_norm(module: Any, x: Any, y: Any) -> Link | None:
    """A norm with its scale frozen from the run: y = g * P(x) / s + b, with P centring or not.

    Read from the module's behaviour, not its class: b = N(0); centring when N(x + 3) = N(x); the
    per-feature gain from one probe of known scale; s by least squares on the run's own x and y.
    """
    import torch

    dtype = x.dtype

    def call(v: Any) -> Any:
        with torch.no_grad():
            return module(v.to(dtype)[None, None]).reshape(-1).double()

    yd = y.double()
    shift = call(torch.zeros_like(x))
    centred = bool(torch.allclose(call(x + 3.0), yd, rtol=1e-3, atol=1e-4))
    probe = torch.ones(x.numel(), dtype=torch.float64, device=x.device)
    if centred:
        probe[1::2] = -1.0
        probe = probe - probe.mean()
    gain = (call(probe) - shift) / probe  # proportional to the norm's weight
    px = x.double() - x.double().mean() if centred else x.double()
    base = gain * px
    k = float((base @ (yd - shift)) / (base @ base).clamp_min(1e-300))
    if not torch.allclose(base * k + shift, yd, rtol=1e-3, atol=1e-4 * (1.0 + float(yd.abs().max()))):
        return None
    return Link("norm", gain * k, shift if bool(shift.any()) else None, centred)


def head_links(p: Plan, r: Run, pos: int) -> list[Link]:
    """The path from the last layer's output to the unembedding's input at `pos`, frozen."""
    links: list[Link] = []
    prev = r.stages[-1, pos]
    for module in p.head:
        x, y = r.io[id(module)]
        if not same(x[pos], prev):
            links.append(gate(prev, x[pos]))
        links.append(link(module, x[pos], y[pos]))
        prev = y[pos]
    x_u = r.io[id(p.unembed)][0][pos]
    if not same(x_u, prev):
        links.append(gate(prev, x_u))
    return links


def constant_ratio(before: Any, after: Any) -> float | None:
    """The one number c with after = c * before, if there is one (a rescaling in the model's code)."""
    import torch

    nz = before != 0
    if not bool(nz.any()):
        return None
    ratio = after[nz].double() / before[nz].double()
    c = float(ratio.median())
    return c if bool(torch.allclose(ratio, torch.full_like(ratio, c), rtol=1e-4, atol=1e-6)) else None


def after_unembed(loaded: LoadedModel, raw: Any, own: Any) -> tuple[str, Any]:
    """What the model does to the unembedding's output [n, vocab] to make its logits, read off the run.

    ("none", None), ("softcap", cap) from the config, ("scale", c) for a constant factor (Cohere's
    logit scale), ("shift", [vocab]) for a constant added vector (BART's final logits bias), else
    ("other", None).
    """
    import torch

    cap = getattr(loaded.model.config, "final_logit_softcapping", None)
    if cap:
        return "softcap", float(cap)
    if torch.allclose(raw, own, rtol=1e-5, atol=1e-5):
        return "none", None
    c = constant_ratio(raw, own)
    if c is not None:
        return "scale", c
    shift = own - raw
    if torch.allclose(shift, shift[:1].expand_as(shift), rtol=1e-4, atol=1e-5):
        return "shift", shift[0]
    return "other", None
