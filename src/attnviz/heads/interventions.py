"""Where patching reads and writes: heads, the residual stream, attention and MLP outputs, q/k/v.

Heads' outputs (before the output projection) and their query/key/value inputs are edited inside
attnviz's registered attention function (capture.Editor), as ablation edits them. The residual
stream is the input of each layer's block (and the output of the last block), found by structure:
the outermost entry of a module list that holds the layer's attention module. An MLP is found by
data flow, on one traced call: the block's submodule whose output is what the block adds to its
input besides attention (out - in - attention outputs); post-norm blocks have none and say so.

`Interventions` records a run's activations, or replaces chosen (row, position[, head]) entries of
them with a source run's, one forward pass at a time, and removes every hook when it closes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError
from attnviz.models.architecture import describe
from attnviz.models.capture import Editor, editing

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

Key = tuple[str, int]  # (kind, layer): kind "head", "q", "k", "v", "resid", "attn" or "mlp"


def attention_modules(loaded: LoadedModel, stream: str) -> list[Any]:
    """The attention module of each layer of `stream`, in layer order."""
    cap = loaded.capture
    found: dict[int, Any] = {}
    for module in loaded.model.modules():
        key = cap.index.get(id(module))
        if key is not None and key[0] == stream:
            found[key[1]] = module
    return [found[i] for i in sorted(found)]


def block_modules(loaded: LoadedModel, stream: str, purpose: str) -> list[Any]:
    """Each layer's block: the outermost module-list entry that holds the layer's attention module."""
    import torch

    if loaded.capture.shared:
        raise InputError(f"{describe(loaded)} runs one layer module several times: {purpose} is not possible")
    model = loaded.model
    names = {id(m): n for n, m in model.named_modules()}
    blocks = []
    for module in attention_modules(loaded, stream):
        parts = names[id(module)].split(".")
        block = None
        for i in range(1, len(parts)):
            if parts[i].isdigit() and isinstance(
                model.get_submodule(".".join(parts[:i])), torch.nn.ModuleList
            ):
                block = model.get_submodule(".".join(parts[: i + 1]))
                break
        if block is None:
            raise InputError(f"cannot find the layer blocks of {describe(loaded)}: {purpose} is not possible")
        blocks.append(block)
    return blocks


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, tuple) else x


def _swap_first(output: Any, new: Any) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def mlp_modules(loaded: LoadedModel, stream: str) -> list[Any]:
    """Each layer's MLP, by data flow: the submodule whose output the block adds besides attention."""
    import torch

    blocks = block_modules(loaded, stream, "patching MLP outputs")
    cap = loaded.capture
    attn_ids = {ident for ident, (s, _) in cap.index.items()}
    seen: dict[int, Any] = {}
    handles = []

    def keep(module: Any, args: Any, output: Any) -> None:
        seen[id(module)] = _first(output)

    def keep_in(module: Any, args: Any, kwargs: Any) -> None:
        seen[("in", id(module))] = args[0] if args else kwargs.get("hidden_states")  # type: ignore[index]

    subs: list[list[tuple[str, Any]]] = []
    for block in blocks:
        attn_names = [n for n, m in block.named_modules() if id(m) in attn_ids]
        mine = [
            (n, m) for n, m in block.named_modules()
            if n and not any(n == a or n.startswith(a + ".") for a in attn_names)
        ]  # fmt: skip
        subs.append(mine)
        for _, m in [("", block), *mine, *[(n, m) for n, m in block.named_modules() if id(m) in attn_ids]]:
            handles.append(m.register_forward_hook(keep))
        handles.append(block.register_forward_pre_hook(keep_in, with_kwargs=True))
    try:
        with torch.no_grad():
            loaded.model(**cap.probe)
    finally:
        for h in handles:
            h.remove()
    found = []
    for layer, block in enumerate(blocks):
        out, inp = seen[id(block)], seen[("in", id(block))]
        rest = out - inp
        for _, m in block.named_modules():
            if id(m) in attn_ids:
                rest = rest - _first(seen[id(m)])
        match = None
        for _, m in sorted(subs[layer], key=lambda nm: nm[0].count(".")):
            got = seen.get(id(m))
            tol = 1e-4 * (1 + float(out.abs().max()))  # out - in cancels: float32 error scales with out
            if (
                isinstance(got, torch.Tensor)
                and got.shape == rest.shape
                and torch.allclose(got, rest, atol=tol)
            ):
                match = m
                break
        if match is None:
            raise InputError(
                f"{describe(loaded)} layer {layer} does not add an MLP output to its residual stream (a"
                " post-norm or otherwise mixed block): attention and MLP outputs cannot be patched apart"
            )
        found.append(match)
    return found


@dataclass
class Interventions:
    """Hooks on one model for record or patch passes; `record` keys are filled by the next forward."""

    loaded: Any
    stream: str
    record: set[Key] = field(default_factory=set)  # what the next pass keeps
    saved: dict[Key, Any] = field(default_factory=dict)  # key -> [rows, q, ...] activation
    masks: dict[Key, Any] = field(default_factory=dict)  # key -> bool [rows, q(, heads)]: where to patch
    sources: dict[Key, Any] = field(default_factory=dict)  # key -> [1 or rows, q, ...] what to put there
    blocks: list[Any] = field(default_factory=list)

    def _apply(self, key: Key, x: Any) -> Any:
        import torch

        if key in self.record:
            self.saved[key] = x.detach().clone()
        mask = self.masks.get(key)
        if mask is None:
            return x
        src = self.sources[key].to(device=x.device, dtype=x.dtype)
        m = mask.to(x.device)
        while m.ndim < x.ndim:
            m = m[..., None]
        return torch.where(m, src, x)

    def heads_out(self, key: tuple[str, int], out: Any, module: Any) -> Any:
        """The Editor's edit: out [rows, q, heads, head_dim]."""
        if key[0] != self.stream:
            return out
        return self._apply(("head", key[1]), out)

    def heads_in(self, key: tuple[str, int], q: Any, k: Any, v: Any, module: Any) -> tuple[Any, Any, Any]:
        """The Editor's input hook: q [rows, heads, q, d], k/v [rows, kv heads, k, d]."""
        if key[0] != self.stream:
            return q, k, v
        layer = key[1]
        new = []
        for name, x in (("q", q), ("k", k), ("v", v)):
            if (name, layer) in self.record or (name, layer) in self.masks:
                x = self._apply((name, layer), x.transpose(1, 2)).transpose(1, 2)  # [rows, n, heads, d]
            new.append(x)
        return new[0], new[1], new[2]


@contextmanager
def intervening(loaded: LoadedModel, stream: str, kinds: set[str]) -> Iterator[Interventions]:
    """Install the hooks `kinds` need ("head", "qkv", "resid", "attn", "mlp"); always removed."""

    state = Interventions(loaded=loaded, stream=stream)
    cap = loaded.capture
    with ExitStack() as stack:
        if kinds & {"head", "qkv"}:
            inputs = state.heads_in if "qkv" in kinds else None
            stack.enter_context(
                editing(Editor(index=cap.index, edit=state.heads_out, shared=cap.shared, inputs=inputs))
            )
        if "resid" in kinds:
            state.blocks = block_modules(loaded, stream, "patching the residual stream")
            _hook_resid(state, stack)
        if "attn" in kinds:
            for layer, m in enumerate(attention_modules(loaded, stream)):
                _hook_output(state, stack, m, ("attn", layer))
        if "mlp" in kinds:
            for layer, m in enumerate(mlp_modules(loaded, stream)):
                _hook_output(state, stack, m, ("mlp", layer))
        yield state


def _hook_output(state: Interventions, stack: ExitStack, module: Any, key: Key) -> None:
    def hook(mod: Any, args: Any, output: Any) -> Any:
        return _swap_first(output, state._apply(key, _first(output)))

    stack.callback(module.register_forward_hook(hook).remove)


def _hook_resid(state: Interventions, stack: ExitStack) -> None:
    """Layer L's block input is ("resid", L); the last block's output is ("resid", layers)."""
    n = len(state.blocks)
    for layer, block in enumerate(state.blocks):

        def pre(mod: Any, args: Any, kwargs: Any, layer: int = layer) -> Any:
            if args:
                return (state._apply(("resid", layer), args[0]), *args[1:]), kwargs
            kwargs["hidden_states"] = state._apply(("resid", layer), kwargs["hidden_states"])
            return args, kwargs

        stack.callback(block.register_forward_pre_hook(pre, with_kwargs=True).remove)
    _hook_output(state, stack, state.blocks[-1], ("resid", n))
