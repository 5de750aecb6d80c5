"""Direct logit attribution: what each head, each MLP and the embeddings write into the answer's logit.

The residual stream the LM head reads is a sum: the embeddings, then each layer's heads (their
outputs pushed through their slices of the output projection, W_O^h o_h) and the rest of the layer
(its MLP, measured exactly as the layer's change minus its attention). Through the final norm with
its scale frozen from the run, and the unembedding, each term is a number, and the numbers add up
to the model's own logit (or logit difference with `wrong`). What the biases add is one component,
`bias`; what a final softcap (Gemma-2) or any other step after the unembedding changes is another,
`softcap` or `rest`, so nothing is hidden. All found by data flow (analyses/residual.py), on any
pre-norm decoder, masked LM or encoder-decoder whose attention goes through transformers' interface;
post-norm ones (BERT, BART) with every norm's scale frozen too (analyses/postnorm.py).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.analyses.postnorm import parts, run_with_norms
from attnviz.analyses.residual import (
    after_unembed,
    head_links,
    link,
    plan,
    unembed_rows,
    weight_of,
    with_head,
)
from attnviz.errors import InputError, param
from attnviz.outputs import read_arrays, write_arrays
from attnviz.tokens import token_labels

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

PURPOSE = "direct logit attribution"


@dataclass(frozen=True)
class Attribution:
    """Each component's direct contribution to the answer's logit (difference); they sum to `logit`."""

    model: str
    text: str
    tokens: tuple[str, ...]  # the positions the logits are for (the decoder's, for seq2seq)
    position: int  # where the answer is predicted (0-based)
    answer: str  # the answer token, readable
    answer_id: int
    wrong: str | None
    wrong_id: int | None
    logit: float  # the model's own logit of the answer (minus the wrong one's)
    names: tuple[str, ...]  # "embeddings", "L18H6", "L3X1" (cross-attention), "L18MLP", "bias", ...
    values: np.ndarray  # [components] float64
    num_layers: int
    num_heads: int

    def __repr__(self) -> str:
        what = f"'{self.answer}'" + (f" - '{self.wrong}'" if self.wrong is not None else "")
        return (
            f"Attribution(model={self.model!r}, {what} at token {self.position}: logit {self.logit:+.4f}"
            f" = {len(self.names)} components)"
        )

    @property
    def total(self) -> float:
        return float(self.values.sum())

    def value(self, name: str) -> float:
        return float(self.values[self.names.index(name)])

    def head_map(self, cross: bool = False) -> np.ndarray:
        """[layers, heads] of the heads' contributions (cross-attention heads with `cross`)."""
        out = np.zeros((self.num_layers, self.num_heads))
        mark = "X" if cross else "H"
        for name, v in zip(self.names, self.values, strict=True):
            if name.startswith("L") and mark in name and not name.endswith("MLP"):
                layer, head = name[1:].split(mark)
                out[int(layer), int(head)] = v
        return out

    @property
    def has_cross(self) -> bool:
        return any("X" in n for n in self.names)

    @property
    def mlp(self) -> np.ndarray:
        """[layers]: each layer's MLP (everything the layer adds besides its attention)."""
        return np.array([self.value(f"L{layer}MLP") for layer in range(self.num_layers)])

    @property
    def others(self) -> dict[str, float]:
        """The components that are neither a head nor an MLP: embeddings, bias, softcap or rest."""
        return {n: float(v) for n, v in zip(self.names, self.values, strict=True) if not n.startswith("L")}

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        order = np.argsort(-np.abs(self.values), kind="stable")[:k]
        return [(self.names[i], float(self.values[i])) for i in order]

    def as_dict(self) -> dict[str, Any]:
        """The JSON output: {"model", "answer", "wrong", "logit", "components": [{"name", "value"}]}."""
        return {
            "model": self.model,
            "answer": self.answer,
            "wrong": self.wrong,
            "logit": self.logit,
            "components": [
                {"name": n, "value": float(v)} for n, v in zip(self.names, self.values, strict=True)
            ],
        }

    def _repr_html_(self) -> str:
        esc = html.escape
        what = f"'{esc(self.answer)}'" + (f" minus '{esc(self.wrong)}'" if self.wrong is not None else "")
        rows = "".join(f"<tr><td>{esc(n)}</td><td>{v:+.4f}</td></tr>" for n, v in self.top(15))
        return (
            f"<div><p>{esc(self.model)}: direct logit attribution of {what} at token {self.position} "
            f"('{esc(self.tokens[self.position])}'): logit {self.logit:+.4f} = sum of {len(self.names)} "
            f"components</p><p>{esc(self.text)}</p><table><thead><tr><th>component</th><th>value</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>"
        )

    def save(self, path: str | Path) -> Path:
        """Write to .safetensors or .npz (never pickle)."""

        meta = {
            "kind": "attribution",
            **{k: getattr(self, k) for k in ("model", "text", "position", "answer", "answer_id")},
            **{k: getattr(self, k) for k in ("wrong", "wrong_id", "logit", "num_layers", "num_heads")},
            "tokens": list(self.tokens),
            "names": list(self.names),
        }
        return write_arrays(Path(path), {"values": np.ascontiguousarray(self.values)}, json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> Attribution:
        meta, arrays = read_arrays(Path(path), "attribution file from `attnviz attribute -o`")
        if meta.get("kind") != "attribution":
            raise InputError(f"{path} is not an attribution file (written by `attnviz attribute -o`)")
        meta.pop("kind")
        return cls(
            **{**meta, "tokens": tuple(meta["tokens"]), "names": tuple(meta["names"])},
            values=np.asarray(arrays["values"], dtype=np.float64),
        )


def check_answers(answer: str | int | None, wrong: str | int | None) -> None:
    """Before any model loads: an answer is given, and differs from the wrong one."""
    if isinstance(answer, int) or isinstance(wrong, int):
        if answer is None or answer == wrong:
            raise InputError(f"{param('answer')} and {param('wrong')} are the same (or no answer is given)")
        return
    if answer is None or not str(answer).strip():
        raise InputError(f"give the answer to explain with {param('answer')}")
    if wrong is not None and not wrong.strip():
        raise InputError(f"{param('wrong')} is empty: give a word or leave it out")
    if wrong is not None and wrong.strip() == answer.strip():
        raise InputError(
            f"{param('answer')} and {param('wrong')} are the same ('{answer.strip()}'): their difference is 0"
        )


def answer_token(loaded: LoadedModel, text: str, word: str | int, what: str = "answer") -> tuple[str, int]:
    """`word` as the tokenizer makes it right after `text`: (readable label, id); it must be one token.

    A whole number is a token id already."""

    tok = loaded.tokenizer
    if isinstance(word, int):
        vocab = loaded.model.get_output_embeddings().weight.shape[0]
        if not 0 <= word < vocab:
            raise InputError(f"{param(what)} token id {word} is out of range: the vocabulary has {vocab}")
        return token_labels(tok, [word])[0][0], word
    word = word.strip()
    spaced = word if not text or text[-1:].isspace() else " " + word
    base = tok(text, add_special_tokens=False)["input_ids"]
    full = tok(text + spaced, add_special_tokens=False)["input_ids"]
    pieces = (
        full[len(base) :] if full[: len(base)] == base else tok(spaced, add_special_tokens=False)["input_ids"]
    )
    labels, _raw = token_labels(tok, pieces)
    if len(pieces) != 1:
        became = " + ".join(f"'{label}'" for label in labels) or "nothing"
        raise InputError(
            f"the {param(what)} '{word}' is not one token of {loaded.name}'s vocabulary: after the text it "
            f"becomes {len(pieces)} tokens ({became}); give a word that is one token"
        )
    return labels[0], int(pieces[0])


def resolve_position(loaded: LoadedModel, ids: tuple[int, ...], position: int) -> int:
    """A position in range; -1 on a masked LM is its (last) mask token when the text has one."""
    n = len(ids)
    mask_id = getattr(loaded.tokenizer, "mask_token_id", None)
    if position == -1 and not loaded.causal and not loaded.capture.encoder_decoder and mask_id in ids:
        return max(i for i, t in enumerate(ids) if t == mask_id)
    if not -n <= position < n:
        raise InputError(f"{param('position')} {position} is out of range: the text has {n} tokens")
    return position % n


def attribute(
    text: str,
    model: str | LoadedModel | None = None,
    *,
    answer: str | int,
    wrong: str | int | None = None,
    position: int = -1,
    device: str | None = "auto",
    dtype: str | None = "float32",
) -> Attribution:
    """Each head's, MLP's and the embeddings' direct contribution to `answer`'s logit at `position`.

    With `wrong`, to the logit difference answer - wrong (words, or token ids). `model`: a name, a
    path or a LoadedModel (loaded again with its LM head when it has none). The components sum to
    the model's own logit.
    """

    check_answers(answer, wrong)
    loaded = with_head(model, PURPOSE, device, dtype)
    p = plan(loaded, PURPOSE, post_norm=True)
    label, a_id = answer_token(loaded, text, answer)
    w_label, w_id = answer_token(loaded, text, wrong, "wrong") if wrong is not None else (None, None)
    if w_id == a_id:
        raise InputError(f"{param('answer')} and {param('wrong')} are the same token '{label}'")
    r = run_with_norms(loaded, p, PURPOSE, text)
    pos = resolve_position(loaded, r.token_ids, position)
    return _attribution(loaded, p, r, pos, (label, a_id), (w_label, w_id), text)


def head_attribution(loaded: LoadedModel, ids: Sequence[int]) -> np.ndarray:
    """[layers, heads]: each head's direct contribution to the logit of the model's own top token
    after the last of `ids` (batch's `dla` statistic). `loaded` must have its LM head (`with_head`)."""

    p = plan(loaded, PURPOSE, post_norm=True)
    r = run_with_norms(loaded, p, PURPOSE, None, ids=list(ids))
    top = int(r.logits[-1].argmax())
    return _attribution(loaded, p, r, len(r.token_ids) - 1, (str(top), top), (None, None), "").head_map()


def _attribution(
    loaded: LoadedModel,
    p: Any,
    r: Any,
    pos: int,
    answer: tuple[str, int],
    wrong: tuple[str | None, int | None],
    text: str,
) -> Attribution:
    """The components of one run at `pos`, through the frozen path to the unembedding."""

    (label, a_id), (w_label, w_id) = answer, wrong
    names, rows, bias = parts(p, r, pos) if p.post_norm else _parts(p, r, pos)
    for step in head_links(p, r, pos):
        rows, bias = step.apply(rows, bias)
    w_u, b_u = unembed_rows(p.unembed, [a_id] if w_id is None else [a_id, w_id])
    direction = w_u[0] - (w_u[1] if w_id is not None else 0.0)
    values = (rows @ direction).cpu().numpy()
    extra = float(bias @ direction)
    if b_u is not None:
        extra += float(b_u[0] - (b_u[1] if w_id is not None else 0.0))
    kind, after = after_unembed(loaded, r.io[id(p.unembed)][1], r.logits)
    if kind == "scale":  # a constant factor (Cohere's logit scale) scales every component
        values, extra = values * after, extra * after
    elif kind == "shift":  # a constant bias added to the logits (BART's final logits bias)
        extra += float(after[a_id] - (after[w_id] if w_id is not None else 0.0))
    logits = r.logits[pos].double()
    logit = float(logits[a_id] - (logits[w_id] if w_id is not None else 0.0))
    rest = logit - float(values.sum()) - extra
    return Attribution(
        model=loaded.name,
        text=text,
        tokens=r.tokens,
        position=pos,
        answer=label,
        answer_id=a_id,
        wrong=w_label,
        wrong_id=w_id,
        logit=logit,
        names=(*names, "bias", "softcap" if kind == "softcap" else "rest"),
        values=np.concatenate([values, [extra, rest]]).astype(np.float64),
        num_layers=len(p.layers),
        num_heads=int(next(iter(r.heads.values())).shape[1]),
    )


def _parts(p: Any, r: Any, pos: int) -> tuple[list[str], Any, Any]:
    """The stream at `pos` as a sum: names, rows [components, d] float64 and the biases' part [d]."""
    import torch

    stages = r.stages[:, pos].double()
    d = stages.shape[-1]
    names, parts = ["embeddings"], [stages[0][None]]
    bias = torch.zeros(d, dtype=torch.float64, device=stages.device)
    for layer in range(len(p.layers)):
        attention = torch.zeros_like(bias)
        for stream in p.streams:
            w, b = weight_of(p.projections[stream][layer])  # [d, heads * head_dim]
            out = r.heads[(stream, layer)][pos].double()  # [heads, head_dim]
            n_heads, head_dim = out.shape
            writes = torch.einsum("ohd,hd->ho", w.reshape(w.shape[0], n_heads, head_dim), out)
            extra = b if b is not None else torch.zeros_like(bias)
            for module in p.after[stream][layer]:  # a norm on the attention output (Gemma-2)
                x, y = r.io[id(module)]
                writes, extra = link(module, x[pos], y[pos]).apply(writes, extra)
            attention += writes.sum(0) + extra
            bias = bias + extra
            mark = "X" if stream == "cross" else "H"
            names += [f"L{layer}{mark}{h}" for h in range(n_heads)]
            parts.append(writes)
        names.append(f"L{layer}MLP")
        parts.append((stages[layer + 1] - stages[layer] - attention)[None])
    return names, torch.cat(parts), bias
