"""Where each architecture keeps the parts attnviz reaches into beyond attention weights.

One lookup of every layer's attention output projection (BERT `attention.output.dense`, DistilBERT
`out_lin`, GPT-2 `c_proj`, Llama `o_proj`, T5 `o`), shared by norm weighting (its weights) and
ablation (a pre-hook on its input), so the two can never disagree about which module it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError

if TYPE_CHECKING:
    from attnviz.models import LoadedModel

SUPPORTED = "BERT, DistilBERT, GPT-2, Llama and T5"
_OWN = ("o_proj", "c_proj", "out_lin", "o", "out_proj", "dense")  # a child of the attention module
_PARENT = ("output.dense", "o_proj", "out_proj")  # BERT family: a sibling of the self-attention module


def in_features(module: Any) -> int | None:
    """Width of a projection's input (heads * head_dim), or None when the module is no projection."""
    if hasattr(module, "in_features"):
        return int(module.in_features)
    if type(module).__name__ == "Conv1D":  # GPT-2: weight is [in, out]
        return int(module.weight.shape[0])
    return None


def _first(named: dict[str, Any], prefix: str, children: tuple[str, ...]) -> Any | None:
    for child in children:
        found = named.get(f"{prefix}.{child}" if prefix else child)
        if found is not None and in_features(found) is not None:
            return found
    return None


def output_projections(loaded: LoadedModel, purpose: str) -> list[Any]:
    """The attention output projection module of each (encoder or only) layer, in layer order.

    Raises InputError naming the model and `purpose` (what needed it) when a layer has none we know.
    """
    cap = loaded.capture
    main = "encoder" if cap.encoder_decoder else "self"
    named = dict(loaded.model.named_modules())
    names = {id(m): n for n, m in named.items()}
    by_layer: dict[int, Any] = {}
    missing: list[Any] = []  # attention modules without a projection we know
    for ident, (stream, layer) in cap.index.items():
        name = names.get(ident)
        if stream != main or name is None:
            continue
        found = _first(named, name, _OWN)
        if found is None and "." in name:
            found = _first(named, name.rsplit(".", 1)[0], _PARENT)
        if found is None:
            missing.append(named[name])
        else:
            by_layer[layer] = found
    if missing or not by_layer:
        where = type(missing[0] if missing else loaded.model).__name__
        raise InputError(
            f"cannot read the attention output projection of {loaded.name} "
            f"({where}): {purpose} supports {SUPPORTED}"
        )
    return [by_layer[i] for i in sorted(by_layer)]
