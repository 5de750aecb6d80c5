"""The logit lens: what the residual stream would predict if the model stopped after each layer.

Each stage's stream (the embeddings, then each layer's output) goes through the model's own path to
the logits: its final norm, run on THAT stage's stream (so the norm's scale is the stage's own,
not the last layer's: TransformerLens #1076), any step between (a masked LM's dense layer and
activation) and the unembedding, then what the model does after it (Gemma-2's softcap). The last
stage is therefore the model's own logits, which `lens` checks. The path is found by data flow
(analyses/residual.py); a step of the model's own code that depends on its input (an activation
outside a module) cannot be rerun on another stage, and is refused in one line.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.analyses.attribution import answer_token
from attnviz.analyses.residual import after_unembed, constant_ratio, plan, run, same, with_head
from attnviz.errors import AttnvizError, InputError, param
from attnviz.outputs import read_arrays, write_arrays
from attnviz.tokens import family, readable

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

PURPOSE = "the logit lens"
_ROWS = 2048  # stream rows unembedded at once: bounds the [rows, vocab] working set


@dataclass(frozen=True)
class Lens:
    """Top-k tokens of every stage at every position; with an answer, its rank and probability."""

    model: str
    text: str
    tokens: tuple[str, ...]  # the positions (the decoder's, for seq2seq)
    stages: tuple[str, ...]  # "embeddings", then "L0" ... the last layer
    top_ids: np.ndarray  # [stages, positions, k] int64, most probable first
    top_probs: np.ndarray  # [stages, positions, k] float32
    top_tokens: tuple[str, ...]  # readable labels of top_ids, flattened in the same order
    answer: str | None = None
    answer_id: int | None = None
    answer_rank: np.ndarray | None = None  # [stages, positions] int64, 1 = the top token
    answer_prob: np.ndarray | None = None  # [stages, positions] float32

    def __repr__(self) -> str:
        s, n, k = self.top_ids.shape
        extra = f", answer={self.answer!r}" if self.answer is not None else ""
        return f"Lens(model={self.model!r}, {s} stages x {n} positions, top {k}{extra})"

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[2])

    def label(self, stage: int, position: int, rank: int = 0) -> str:
        _, n, k = self.top_ids.shape
        return self.top_tokens[(stage * n + position) * k + rank]

    def top_labels(self) -> list[list[str]]:
        """[stages][positions]: the most probable token's label."""
        s, n, _ = self.top_ids.shape
        return [[self.label(i, j) for j in range(n)] for i in range(s)]

    def as_dict(self, position: int = -1) -> dict[str, Any]:
        """The JSON output: top_ids (stage x position), the top-k at `position`, the answer by stage."""
        s, n, k = self.top_ids.shape
        pos = position % n
        out: dict[str, Any] = {
            "model": self.model,
            "tokens": list(self.tokens),
            "stages": list(self.stages),
            "top_ids": self.top_ids[:, :, 0].tolist(),
            "position": pos,
            "top": [
                [
                    {
                        "token": self.label(i, pos, r),
                        "id": int(self.top_ids[i, pos, r]),
                        "prob": float(self.top_probs[i, pos, r]),
                    }
                    for r in range(k)
                ]
                for i in range(s)
            ],
            "answer": self.answer,
        }
        if self.answer_rank is not None and self.answer_prob is not None:
            out["answer_rank"] = self.answer_rank[:, pos].tolist()
            out["answer_prob"] = [float(v) for v in self.answer_prob[:, pos]]
        return out

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(t)}</th>" for t in self.tokens)
        rows = []
        for i, stage in enumerate(self.stages):
            cells = "".join(
                f'<td style="background:rgba(31,119,180,{float(self.top_probs[i, j, 0]):.2f})">'
                f"{esc(self.label(i, j))}</td>"
                for j in range(len(self.tokens))
            )
            rows.append(f"<tr><th>{esc(stage)}</th>{cells}</tr>")
        return (
            f"<div><p>{esc(self.model)}: logit lens, top token per stage and position (shade: its "
            f"probability)</p><p>{esc(self.text)}</p><table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div>"
        )

    def save(self, path: str | Path) -> Path:
        """Write to .safetensors or .npz (never pickle)."""

        arrays = {"top_ids": self.top_ids.astype(np.int64), "top_probs": self.top_probs.astype(np.float32)}
        if self.answer_rank is not None and self.answer_prob is not None:
            arrays["answer_rank"] = self.answer_rank.astype(np.int64)
            arrays["answer_prob"] = self.answer_prob.astype(np.float32)
        meta = {
            "kind": "lens",
            **{k: getattr(self, k) for k in ("model", "text", "answer", "answer_id")},
            **{k: list(getattr(self, k)) for k in ("tokens", "stages", "top_tokens")},
        }
        return write_arrays(
            Path(path), {k: np.ascontiguousarray(v) for k, v in arrays.items()}, json.dumps(meta)
        )

    @classmethod
    def load(cls, path: str | Path) -> Lens:
        meta, arrays = read_arrays(Path(path), "lens file from `attnviz lens -o`")
        if meta.get("kind") != "lens":
            raise InputError(f"{path} is not a lens file (written by `attnviz lens -o`)")
        return cls(
            model=meta["model"],
            text=meta["text"],
            tokens=tuple(meta["tokens"]),
            stages=tuple(meta["stages"]),
            top_ids=np.asarray(arrays["top_ids"], dtype=np.int64),
            top_probs=np.asarray(arrays["top_probs"], dtype=np.float32),
            top_tokens=tuple(meta["top_tokens"]),
            answer=meta.get("answer"),
            answer_id=meta.get("answer_id"),
            answer_rank=arrays.get("answer_rank"),
            answer_prob=arrays.get("answer_prob"),
        )


def check_options(k: int, answer: str | None = None) -> None:
    """The lens's rules on its options, once: before a model loads (CLI, server) and in `lens`."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"{param('k', k, flag='-k')} must be a whole number of at least 1")
    if answer is not None and not answer.strip():
        raise InputError(f"{param('answer')} is empty: give a word or leave it out")


def lens(
    text: str,
    model: str | LoadedModel | None = None,
    *,
    k: int = 5,
    answer: str | None = None,
    device: str | None = "auto",
    dtype: str | None = "float32",
) -> Lens:
    """The logit lens of `text`: every stage's top-k tokens at every position (and the answer's rank).

    `model`: a name, a path or a LoadedModel (loaded again with its LM head when it has none).
    """

    check_options(k, answer)
    loaded = with_head(model, PURPOSE, device, dtype)
    p = plan(loaded, PURPOSE, post_norm=True)
    label, a_id = answer_token(loaded, text, answer) if answer is not None else (None, None)
    r = run(loaded, p, text, heads=False, last_logits=True)  # the lens makes every other logit itself
    k = min(k, int(r.logits.shape[-1]))
    stages, n, _ = r.stages.shape
    top_ids, top_probs, rank, prob = _scores(loaded, p, r, k, a_id)
    ids = top_ids.reshape(stages, n, k).cpu().numpy().astype(np.int64)
    return Lens(
        model=loaded.name,
        text=text,
        tokens=r.tokens,
        stages=("embeddings", *(f"L{i}" for i in range(stages - 1))),
        top_ids=ids,
        top_probs=top_probs.reshape(stages, n, k).cpu().numpy().astype(np.float32),
        top_tokens=_labels(loaded.tokenizer, ids.reshape(-1)),
        answer=label,
        answer_id=a_id,
        answer_rank=rank.reshape(stages, n).cpu().numpy().astype(np.int64) if rank is not None else None,
        answer_prob=prob.reshape(stages, n).cpu().numpy().astype(np.float32) if prob is not None else None,
    )


def _scores(loaded: LoadedModel, p: Any, r: Any, k: int, a_id: int | None) -> tuple[Any, ...]:
    """Every stage's rows through the path to the logits, block by block: (top ids, top
    probabilities, the answer's rank and probability or None), all [stages * n, ...].

    After the matmul writes a block's [rows, vocab] logits, they are read for the groups' maxima
    (the top-k), the answer's comparison count (with an answer, 16 rows at a time) and one
    in-place exp and sum (the log-sum-exp); no other [rows, vocab] tensor is made.
    The last stage's rows at the positions the model made logits for are kept and checked against
    its own logits.
    """
    import torch

    steps, after = _head_steps(loaded, p, r), _after_unembed(loaded, p, r)
    flat = r.stages.reshape(-1, r.stages.shape[-1])
    own = r.logits.shape[0]  # the model's own logits: the last `own` rows of the last stage
    ids, probs, ranks, aprob, last = [], [], [], [], None
    with torch.inference_mode():
        for s in range(0, flat.shape[0], _ROWS):
            logits = after(p.unembed(_through(steps, flat[s : s + _ROWS]))).float()
            if s + logits.shape[0] == flat.shape[0]:
                last = logits[-own:].clone()
            values, top = _top_k(logits, k)
            ids.append(top)
            if a_id is not None:
                target = logits[:, a_id : a_id + 1].clone()
                ranks.append(_above(logits, target) + 1)
            lse = _log_sum_exp_(logits, values[:, 0])
            probs.append((values - lse[:, None]).exp())
            if a_id is not None:
                aprob.append((target[:, 0] - lse).exp())
    _check_last(loaded, r.logits, last)
    cat = torch.cat
    return cat(ids), cat(probs), cat(ranks) if ranks else None, cat(aprob) if aprob else None


_GROUP = 64  # vocabulary entries per group in `_top_k`


def _top_k(logits: Any, k: int) -> tuple[Any, Any]:
    """torch.topk(logits, k) along the last dimension (values, ids; most probable first), faster on a
    large vocabulary: the top k lie in the k groups of `_GROUP` entries whose maxima are largest
    (any other group's maximum is below k values already), so one max over each group and a top-k
    over those k groups replace the full top-k's partial sort of every row."""
    import torch

    rows, vocab = logits.shape
    groups = vocab // _GROUP
    if groups < 8 * k:
        return torch.topk(logits, k, dim=-1)
    body = logits[:, : groups * _GROUP].view(rows, groups, _GROUP)
    pick = torch.topk(body.amax(-1), k, dim=-1).indices  # [rows, k] the groups that hold the top k
    values = body.gather(1, pick[:, :, None].expand(rows, k, _GROUP)).reshape(rows, k * _GROUP)
    spread = torch.arange(_GROUP, device=logits.device)
    cols = (pick[:, :, None] * _GROUP + spread).reshape(rows, k * _GROUP)
    if groups * _GROUP < vocab:  # the entries after the last whole group are always candidates
        tail = torch.arange(groups * _GROUP, vocab, device=logits.device)
        values = torch.cat([values, logits[:, groups * _GROUP :]], 1)
        cols = torch.cat([cols, tail.expand(rows, -1)], 1)
    best, at = torch.topk(values, k, dim=-1)
    return best, cols.gather(1, at)


def _above(logits: Any, target: Any, rows: int = 16) -> Any:
    """How many entries of each row of `logits` exceed that row's `target` [rows, 1] (int32),
    compared `rows` rows at a time: each mask stays in cache (4x faster than one [rows, vocab] mask
    on a 49,152-token vocabulary)."""
    import torch

    parts = zip(logits.split(rows), target.split(rows), strict=True)
    return torch.cat([torch.sum(x > t, dim=-1, dtype=torch.int32) for x, t in parts])


def _log_sum_exp_(logits: Any, top: Any) -> Any:
    """log(sum(exp(logits))) of each row [rows], given each row's maximum `top`; overwrites `logits`.

    The usual subtraction of the maximum only on the rows whose exp could overflow (the sum stays
    within float32 below 88 - log(vocab)) or vanish (below -80); on the others one in-place exp
    and a sum, which agree with the shifted form to float32 rounding.
    """
    import torch

    limit = min(80.0, 88.0 - math.log(logits.shape[-1]))
    far = torch.nonzero(top.abs() >= limit)[:, 0].tolist()
    if len(far) > logits.shape[0] // 8:  # many rows: one shifted pass over the block
        return top + logits.sub_(top[:, None]).exp_().sum(-1).log()
    shift = torch.zeros_like(top)
    for i in far:
        logits[i].sub_(top[i])
        shift[i] = top[i]
    return shift + logits.exp_().sum(-1).log()


def _labels(tokenizer: Any, ids: np.ndarray) -> tuple[str, ...]:
    """The readable label of each id, each token on its own (the top-k of a cell are not a text:
    a byte piece is not joined with its neighbour), every distinct id labelled once."""
    distinct, back = np.unique(ids, return_inverse=True)
    pieces = list(tokenizer.convert_ids_to_tokens(distinct.tolist()))
    specials = getattr(tokenizer, "all_special_tokens", ()) or ()
    kind = family(tokenizer)
    labels = [readable([piece], specials, kind)[0] for piece in pieces]
    return tuple(labels[i] for i in back.reshape(-1))


def _head_steps(loaded: LoadedModel, p: Any, r: Any) -> list[Any]:
    """The path from a stage's stream to the unembedding's input: modules, and constant rescalings."""

    steps: list[Any] = []
    prev = r.stages[-1]
    for module in [*p.head, None]:
        x = r.io[id(module if module is not None else p.unembed)][0]
        prev = prev[prev.shape[0] - x.shape[0] :]  # the positions it saw (the last, when asked)
        if not same(x, prev):
            c = constant_ratio(prev, x)
            if c is None:
                raise InputError(
                    f"{loaded.name} applies a step of its own code on the way to its logits that depends on "
                    f"its input: {PURPOSE} cannot rerun it on earlier layers"
                )
            steps.append(c)
        if module is not None:
            steps.append(module)
            prev = r.io[id(module)][1]
    return steps


def _through(steps: list[Any], x: Any) -> Any:
    for step in steps:
        x = x * step if isinstance(step, float) else step(x)
    return x


def _after_unembed(loaded: LoadedModel, p: Any, r: Any) -> Any:
    """What the model does after its unembedding (softcap, a bias, a scale), as a function."""
    import torch

    raw = r.io[id(p.unembed)][1]  # the unembedding's output in the run: what `steps` lead to
    kind, value = after_unembed(loaded, raw, r.logits)
    if kind == "other":
        raise InputError(
            f"{loaded.name} changes its logits after the unembedding in a way {PURPOSE} cannot rerun"
        )
    if kind == "softcap":
        return lambda x: torch.tanh(x / value) * value
    if kind == "scale":
        return lambda x: x * value
    if kind == "shift":
        return lambda x: x + value
    return lambda x: x


def _check_last(loaded: LoadedModel, own: Any, last: Any) -> None:
    """The lens's last stage at the positions the model made logits for ([1, vocab] or [n, vocab])."""
    import torch

    if not torch.allclose(last.float(), own.float(), rtol=1e-4, atol=1e-3):
        raise AttnvizError(
            f"the lens's last stage differs from {loaded.name}'s own logits: please report this"
        )
