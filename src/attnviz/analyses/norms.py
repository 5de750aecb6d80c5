"""Value-weighted attention (Kobayashi et al. 2020): `||alpha_ij * f_h(x_j)||`, not just `alpha_ij`.

`f_h(x) = (x W_V^h + b_V^h) W_O^h` is head h's value vector pushed through its slice of the output
projection: what key j actually adds to query i's output. Sink tokens ([CLS], [SEP], BOS) often get
large weights and tiny vectors; this view shows it. The value vectors come from the capture (they
include the value bias; grouped-query heads already repeated per query head), the output
projection W_O from the model's own weights, found by data flow (architecture.py: the module whose
input is the attention function's output). On a model whose attention is its own code, W_O is the
projection found by data flow at load, and the value vectors are read off the autograd graph of one
more forward pass (W_O's input is P_h V_h per head, so its gradient by P_h is V_h), checked by
rebuilding that input from them. GPT-2's Conv1D stores its weight transposed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.analyses.aggregate import derive
from attnviz.attention import Attention
from attnviz.errors import InputError
from attnviz.extraction import extract
from attnviz.models.architecture import output_projections as attention_output_projections
from attnviz.models.architecture import require_editable, traced_values
from attnviz.models.loading import LoadedModel, load_model

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

WEIGHTINGS = ("attention", "norm")


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown weighting '{weighting}': use attention or norm")


def needs_qkv(loaded: LoadedModel) -> bool:
    """Whether norm weighting needs `extract(..., qkv=True)` first: not on a model whose attention is
    its own code (its value vectors are traced, `value_norms`; it has no query and key vectors)."""
    return bool(loaded.capture.interface)


def output_projections(loaded: LoadedModel) -> dict[int, np.ndarray]:
    """Model layer -> output projection weight as [hidden, heads * head_dim] (x @ W.T convention).

    Raises InputError naming the model when a layer's projection cannot be found or read.
    """
    out: dict[int, np.ndarray] = {}
    for layer, proj in enumerate(attention_output_projections(loaded, "norm weighting")):
        w = proj.weight.detach().float().cpu().numpy()
        out[layer] = w.T if type(proj).__name__ == "Conv1D" else w  # GPT-2 stores [in, out]
    return out


def value_norms(att: Attention, loaded: LoadedModel) -> np.ndarray:
    """`||f_h(x_j)||` for every extracted layer, head and key token: [layers, heads, k] float32."""
    own_code = not getattr(loaded.capture, "interface", True)
    if att.qkv is None and not own_code:
        raise InputError("norm weighting needs the value vectors: extract with qkv=True")
    if att.level != "token":
        raise InputError("norm weighting works on tokens: extract without words=True")
    projections = output_projections(loaded)
    traced = traced_values(loaded, att.token_ids) if att.qkv is None else None  # [heads, k, d] per layer
    norms = np.zeros((len(att.layers), len(att.heads), att.n_tokens), dtype=np.float32)
    for li, layer in enumerate(att.layers):
        if traced is not None:
            v = traced[layer][list(att.heads)].numpy()
        else:
            vectors = att.qkv.get(layer) if att.qkv is not None else None
            if vectors is None or layer not in projections:
                raise InputError(f"layer {layer} has no captured value vectors")
            v = vectors.v
        w = projections[layer]  # [hidden, heads * d (and more: ConvBERT's convolution heads)]
        d = v.shape[-1]
        if w.shape[1] % d:
            raise InputError(
                f"the output projection of {loaded.name} layer {layer} takes {w.shape[1]} inputs, "
                f"not a multiple of the head size {d}"
            )
        for hi, head in enumerate(att.heads):
            pushed = v[hi].astype(np.float64) @ w[:, head * d : (head + 1) * d].T  # [k, hidden]
            norms[li, hi] = np.linalg.norm(pushed, axis=-1)
    return norms


def norm_weighted(
    source: Attention | str,
    model: str | LoadedModel | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    special_tokens: bool = True,
    truncate: bool = False,
    device: str | None = "auto",
    dtype: str | None = "float32",
) -> Attention:
    """A text's (or an Attention's) norm-weighted attention: `attn[l, h, i, j] * ||f_h(x_j)||`.

    Rows no longer sum to 1: their total is the size of what the head writes for that query. An
    Attention given here must carry its value vectors (`extract(..., qkv=True)`), except on a model
    whose attention is its own code (they are traced from its token ids then).
    """

    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
    require_editable(loaded, "norm weighting")
    if isinstance(source, str):
        att = extract(
            source,
            loaded,
            layers=layers,
            heads=heads,
            special_tokens=special_tokens,
            truncate=truncate,
            qkv=needs_qkv(loaded),
        )
    else:
        att = source
        if att.weighting != "attention":
            raise InputError("this attention is already norm-weighted")
    norms = value_norms(att, loaded)  # [layers, heads, k]
    weighted = (att.attn * norms[:, :, None, :]).astype(np.float32)
    return derive(
        att, "norm-weighted: ||alpha f(x)||", attn=weighted, weighting="norm", decoder=None, cross=None
    )


def special_share(att: Attention) -> np.ndarray:
    """Per head, the mean over non-special queries of the share of a row's total on special keys.

    [layers, heads] float32. On plain attention and on its norm-weighted twin this shows how much
    of a head's apparent focus on [CLS]/[SEP]/BOS survives once value norms are counted.
    """
    special = np.asarray(att.special, dtype=bool)
    if not special.any() or special.all():
        return np.zeros(att.attn.shape[:2], dtype=np.float32)
    total = att.attn.sum(axis=-1)  # [layers, heads, q]
    on_special = att.attn[..., special].sum(axis=-1)
    share = np.divide(on_special, total, out=np.zeros_like(total), where=total > 0)
    return share[..., ~special].mean(axis=-1).astype(np.float32)


def weighting_statistics(att: Attention, weighted: Attention) -> dict[str, np.ndarray]:
    """Batch statistics, [layers, heads] each: special-token share under attention and under norms."""
    return {"special_attention": special_share(att), "special_norm": special_share(weighted)}


def batch_value_norms(
    loaded: LoadedModel,
    vectors: dict[tuple[str, int], Any],
    stream: str,
    layers: Sequence[int],
    heads: Sequence[int],
    projections: dict[int, np.ndarray] | None = None,
) -> list[Any]:
    """`||f_h(x_j)||` for a padded batch, from a capture run with `qkv=True`: per layer [B, H, L].

    `vectors` is the recorder's (stream, layer) -> (q, k, v, scaling, bias), v [B, kv heads, L, d];
    `projections` (from `output_projections`, read once per run) saves reading the weights again.
    """
    import torch

    projections = projections if projections is not None else output_projections(loaded)
    out = []
    for layer in layers:
        q, _k, v, _scaling, _bias = vectors[(stream, layer)]
        rep = q.shape[1] // v.shape[1]
        if rep > 1:  # grouped-query attention: each value head serves `rep` query heads
            v = v.repeat_interleave(rep, dim=1)
        d = v.shape[-1]
        w = torch.as_tensor(projections[layer], device=v.device)  # [hidden, heads * d]
        per_head = torch.stack([w[:, h * d : (h + 1) * d] for h in heads])  # [H, hidden, d]
        pushed = torch.einsum("bhld,hod->bhlo", v[:, list(heads)].float(), per_head)  # [B, H, L, hidden]
        out.append(torch.linalg.vector_norm(pushed, dim=-1))  # [B, H, L]
    return out
