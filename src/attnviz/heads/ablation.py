"""Removing heads and measuring the effect: the check that attention rankings cannot give.

A head is ablated where every architecture hands over each head's output before the output
projection ([batch, q, heads, head_dim]; capture.Editor): inside attnviz's registered attention
function, or, on a model whose attention is its own code, at the input of its output projection
(found by data flow, models/architecture.py). The head's slice is set to zero (`zero`) or to its
mean over reference texts (`mean`), which equals removing its columns of W_O (plus, for `mean`, a
constant). No module names; the editor is always switched off.

The measure depends on the model: a causal LM's log-probability of a target, a masked LM's
probability of the original token at a masked position, else 1 - cosine similarity of the
mean-pooled sentence embedding. A scan ablates every head in turn, one head per batch row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.attention import Attention
from attnviz.errors import AttnvizError, InputError, param
from attnviz.extraction import tokenize
from attnviz.heads.ablation_options import AblationOptions
from attnviz.heads.arguments import ablation_model
from attnviz.heads.induction import random_repeats
from attnviz.heads.search import ranked_positions, resolve
from attnviz.models.architecture import main_stream, require_editable
from attnviz.models.capture import Editor, editing
from attnviz.models.loading import load_model
from attnviz.tokens import align_words

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

MEASURES = ("log-prob", "masked-prob", "embedding")


@dataclass(frozen=True)
class Ablation:
    """The measure with and without the heads, so a ranking can be checked against an effect."""

    model: str
    measure: str  # "log-prob", "masked-prob", "embedding" or "repeat-loss"
    reason: str  # why this measure, in words
    heads: tuple[tuple[int, int], ...]  # (layer, head) ablated together
    mode: str
    target: str | None  # the token(s) measured, as found in the text (None: the embedding)
    position: int | None  # first token position of the target
    before: float
    after: float

    @property
    def delta(self) -> float:
        return self.after - self.before

    def as_dict(self) -> dict[str, Any]:
        """Exactly the fields the JSON output promises."""
        return {
            "model": self.model,
            "measure": self.measure,
            "target": self.target,
            "position": self.position,
            "before": self.before,
            "after": self.after,
            "delta": self.delta,
        }


@dataclass(frozen=True)
class ScanRow:
    """One head of a scan's ranking."""

    rank: int
    layer: int
    head: int
    delta: float

    def as_dict(self) -> dict[str, int | float]:
        return {"rank": self.rank, "layer": self.layer, "head": self.head, "delta": self.delta}


@dataclass(frozen=True)
class HeadScan:
    """Every head ablated in turn: the change in the measure per head, to rank heads by effect."""

    model: str
    measure: str
    reason: str
    mode: str
    target: str | None
    position: int | None
    before: float
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    delta: np.ndarray  # [layers, heads] float64: after - before
    seconds: float = 0.0

    @property
    def effect(self) -> np.ndarray:
        """What the ranking sorts on: the rise for a loss, else the size of the change."""
        return self.delta if self.measure == "repeat-loss" else np.abs(self.delta)

    def ranking(self, top: int | None = None) -> tuple[ScanRow, ...]:
        """Heads by descending effect; ties keep layer-then-head order."""

        return tuple(
            ScanRow(r, self.layers[li], self.heads[hi], float(self.delta[li, hi]))
            for r, (li, hi) in enumerate(ranked_positions(self.effect, top), start=1)
        )


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""

    def ranks(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=float).ravel()
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # ties share their mean rank
            same = v == value
            if same.sum() > 1:
                r[same] = r[same].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# -- the model side --------------------------------------------------------------------------------


def choose_task(loaded: LoadedModel) -> str:
    """The head a measure needs: causal-lm for decoders, masked-lm when the checkpoint has one."""
    if loaded.capture.encoder_decoder:
        return "base"
    if loaded.causal:
        return "causal-lm"
    archs = getattr(loaded.model.config, "architectures", None) or []
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
        return "masked-lm"
    return "base"


def for_ablation(loaded: LoadedModel, trust_remote_code: bool = False) -> LoadedModel:
    """The same model with the LM head its measure needs (loaded once and cached)."""

    require_editable(loaded, "ablation")  # before loading the model again with its head
    task = choose_task(loaded)
    if task == loaded.task:
        return loaded
    return load_model(
        loaded.source.spec,
        device=loaded.device,
        dtype=loaded.dtype,
        trust_remote_code=trust_remote_code,
        task=task,
    )


def _measure_of(loaded: LoadedModel) -> tuple[str, str]:
    if loaded.capture.encoder_decoder:
        return "embedding", (
            f"{loaded.name} is an encoder-decoder: its encoder's heads are ablated and the measure is"
            " 1 - cosine similarity of the mean-pooled encoder output with and without them"
        )
    if loaded.task == "causal-lm":
        return "log-prob", (
            f"{loaded.name} is a causal LM: the log-probability of the target given the text before it"
        )
    if loaded.task == "masked-lm":
        return "masked-prob", (
            f"{loaded.name} is a masked LM: the probability of the original token(s) at the masked target"
        )
    archs = ", ".join(getattr(loaded.model.config, "architectures", None) or [type(loaded.model).__name__])
    return "embedding", (
        f"{loaded.name} has no LM head (its checkpoint is {archs}): 1 - cosine similarity of the"
        " mean-pooled sentence embedding with and without the heads"
    )


def check_heads(loaded: LoadedModel, heads: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Layer and head numbers in range (negative layers count from the end); one-line errors."""
    n_layers, n_heads = loaded.capture.num_layers, loaded.capture.num_heads
    out = []
    for layer, head in heads:
        if not -n_layers <= layer < n_layers:
            raise InputError(f"layer {layer} is out of range: {loaded.name} has layers 0-{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise InputError(f"head {head} is out of range: {loaded.name} has heads 0-{n_heads - 1}")
        out.append((layer % n_layers, head))
    return tuple(dict.fromkeys(out))


class _Ablator:
    """The editor's state: which heads each batch row loses, and what replaces them."""

    def __init__(self, loaded: LoadedModel, means: list[Any] | None) -> None:
        self.name = loaded.name
        self.stream = main_stream(loaded)
        self.num_heads = loaded.capture.num_heads
        self.means = means  # per layer: [heads, head_dim] mean output, or None for zero
        self.keep: dict[int, Any] = {}  # layer -> [rows, heads] float, 1 keeps and 0 ablates

    def edit(self, key: tuple[str, int], out: Any, module: Any) -> Any:
        """out: [rows, q, heads, head_dim], each head's output before the output projection."""
        keep = self.keep.get(key[1]) if key[0] == self.stream else None
        if keep is None:
            return out
        _check_heads_out(out, self.num_heads, self.name)
        mask = keep.to(dtype=out.dtype, device=out.device)[:, None, :, None]  # [rows, 1, heads, 1]
        if self.means is None:
            return out * mask
        mean = self.means[key[1]].to(dtype=out.dtype, device=out.device)  # [heads, head_dim]
        return out * mask + (1 - mask) * mean


def _check_heads_out(out: Any, num_heads: int, name: str) -> None:
    if out.ndim != 4 or out.shape[2] != num_heads:
        raise AttnvizError(
            f"{name}'s attention function returned {tuple(out.shape)}, not [batch, q, {num_heads} heads,"
            " head_dim]: heads cannot be ablated on it"
        )


@contextmanager
def ablating(loaded: LoadedModel, means: list[Any] | None = None) -> Iterator[_Ablator]:
    """Each head's output edited inside the attention function, driven by the yielded state; always undone."""

    require_editable(loaded, "ablation")
    state = _Ablator(loaded, means)
    cap = loaded.capture
    with editing(Editor(index=cap.index, edit=state.edit, shared=cap.shared)):
        yield state


def _keep(rows: int, num_heads: int, heads: Sequence[int]) -> Any:
    import torch

    keep = torch.ones(rows, num_heads)
    keep[:, list(heads)] = 0.0
    return keep


def reference_means(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> list[Any]:
    """Each head's mean output over the real tokens of the reference texts: [heads, head_dim] per layer."""
    import torch

    require_editable(loaded, "ablation")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError(f"{param('reference')} has no text: give at least one text that is not blank")
    stream = main_stream(loaded)
    cap = loaded.capture
    sums: list[Any] = [None] * cap.num_layers
    count = 0
    mask_now: list[Any] = [None]

    def record(key: tuple[str, int], out: Any, module: Any) -> Any:
        if key[0] == stream:
            _check_heads_out(out, cap.num_heads, loaded.name)
            m = mask_now[0].to(out.device, out.dtype)[:, :, None, None]  # [batch, q, 1, 1]
            total = (out * m).sum(dim=(0, 1)).double()  # [heads, head_dim]
            sums[key[1]] = total if sums[key[1]] is None else sums[key[1]] + total
        return out

    with editing(Editor(index=cap.index, edit=record, shared=cap.shared)):
        for start in range(0, len(texts), batch_size):
            enc = tokenize(loaded, texts[start : start + batch_size], truncate=True)
            mask_now[0] = enc.attention_mask
            with torch.inference_mode():
                _encoder_forward(loaded, enc.input_ids, enc.attention_mask)
            count += int(enc.attention_mask.sum())
    return [(s / count).float() for s in sums]


def _encoder_forward(loaded: LoadedModel, ids: Any, mask: Any) -> Any:
    """Hidden states of the last layer (the encoder's, for an encoder-decoder)."""
    model = loaded.model
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    if loaded.capture.encoder_decoder:
        return model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    if loaded.task == "base":
        return model(input_ids=ids, attention_mask=mask).last_hidden_state
    return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state


@dataclass
class _Prepared:
    """One text, tokenised, with its target resolved and the measure chosen."""

    measure: str
    reason: str
    ids: Any  # [1, n] long (masked: with the target masked)
    mask: Any  # [1, n]
    target: str | None
    positions: tuple[int, ...]  # the target's token positions
    target_ids: tuple[int, ...]  # the original token ids there


def _prepare(
    loaded: LoadedModel, text: str, target: str | None, occurrence: int | None, truncate: bool
) -> _Prepared:

    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty")
    measure, reason = _measure_of(loaded)
    enc = tokenize(loaded, [text], truncate=truncate)
    ids, mask = enc.input_ids, enc.attention_mask
    n = enc.lengths[0]
    word_ids, words = align_words(text, enc.offsets[0], enc.special[0])
    att = Attention(
        model=loaded.name, kind=loaded.kind, text=text, tokens=tuple(enc.tokens[0]),
        spans=tuple(enc.offsets[0]), word_ids=tuple(word_ids), words=tuple(words),
        special=tuple(enc.special[0]), layers=(0,), heads=(0,),
        attn=np.zeros((1, 1, n, n), dtype=np.float32), causal=loaded.causal,
    )  # fmt: skip
    if measure == "embedding":
        if target is not None:
            resolve(att, target, occurrence)  # a word not in the text is still an error
            reason += " (the target is not used: the embedding covers the whole text)"
        return _Prepared(measure, reason, ids, mask, None, (), ())
    if target is None:
        if measure == "log-prob":
            target = "@-1"
        else:  # masked: the last word of the text
            last = [w for w in att.word_ids if w is not None and re.search(r"\w", words[w])]
            if not last:
                raise InputError(f"the text has no word to mask: name a token with {param('target')}")
            target = words[last[-1]]
            occurrence = sum(1 for w in words[: last[-1] + 1] if w.casefold() == target.casefold())
    unit = resolve(att, target, occurrence)
    positions = unit.tokens
    if measure == "log-prob" and positions[0] == 0:
        raise InputError(
            f"the target {unit.describe()} is the first token: nothing comes before it to predict it from"
        )
    target_ids = tuple(int(ids[0, p]) for p in positions)
    if measure == "masked-prob":
        mask_id = loaded.tokenizer.mask_token_id
        if mask_id is None:
            raise AttnvizError(f"{loaded.name}'s tokenizer has no mask token")
        ids = ids.clone()
        ids[0, list(positions)] = mask_id
    return _Prepared(measure, reason, ids, mask, unit.label, positions, target_ids)


def _scores(loaded: LoadedModel, prep: _Prepared, rows: int, base: Any | None) -> tuple[Any, Any]:
    """The measure for `rows` copies of the text under the current hooks: [rows] float64, and raw state.

    `base` is the unablated embedding (the embedding measure compares with it).
    """
    import torch

    ids = prep.ids.expand(rows, -1).to(loaded.device)
    mask = prep.mask.expand(rows, -1).to(loaded.device)
    model = loaded.model
    if prep.measure == "embedding":
        hidden = _encoder_forward(loaded, ids, mask).double()  # [rows, n, hidden]
        m = mask[:, :, None].double()
        emb = (hidden * m).sum(1) / m.sum(1)  # mean pooling, as sentence-transformers does
        if base is None:
            return torch.zeros(rows, dtype=torch.float64), emb
        cos = torch.nn.functional.cosine_similarity(emb, base.to(emb.device).expand_as(emb), dim=-1)
        return 1.0 - cos, emb
    pos = torch.tensor(prep.positions, device=ids.device)
    tgt = torch.tensor(prep.target_ids, device=ids.device)
    if prep.measure == "log-prob":
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, pos - 1])  # [rows, pieces, vocab]
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, pos]
    logp = torch.log_softmax(logits.double(), dim=-1)[:, torch.arange(len(pos)), tgt]  # [rows, pieces]
    total = logp.sum(-1)
    return (total if prep.measure == "log-prob" else total.exp()), None


def ablate(
    loaded: LoadedModel | str,
    text: str,
    heads: Sequence[tuple[int, int]],
    *,
    target: str | None = None,
    occurrence: int | None = None,
    mode: str = "zero",
    reference: Sequence[str] | None = None,
    truncate: bool = False,
) -> Ablation:
    """The measure on `text` with and without the given (layer, head)s ablated together.

    `loaded`: a name or path (loaded with its LM head), or a LoadedModel (without one: its embedding).
    """
    import torch

    AblationOptions(tuple(heads or ()), False, target, occurrence, mode, _texts(reference), truncate).check()
    loaded = ablation_model(loaded, for_ablation)  # a name or a path: loaded with its LM head
    pairs = check_heads(loaded, heads)
    prep = _prepare(loaded, text, target, occurrence, truncate)
    means = reference_means(loaded, reference) if mode == "mean" and reference else None
    with torch.inference_mode():
        before, base = _scores(loaded, prep, 1, None)
        with ablating(loaded, means) as state:
            by_layer: dict[int, list[int]] = {}
            for layer, head in pairs:
                by_layer.setdefault(layer, []).append(head)
            for layer, hs in by_layer.items():
                state.keep[layer] = _keep(1, loaded.capture.num_heads, hs)
            after, _ = _scores(loaded, prep, 1, base)
    return Ablation(
        model=loaded.name,
        measure=prep.measure,
        reason=prep.reason,
        heads=pairs,
        mode=mode,
        target=prep.target,
        position=prep.positions[0] if prep.positions else None,
        before=float(before[0]),
        after=float(after[0]),
    )


def scan_heads(
    loaded: LoadedModel | str,
    text: str,
    *,
    target: str | None = None,
    occurrence: int | None = None,
    mode: str = "zero",
    reference: Sequence[str] | None = None,
    truncate: bool = False,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> HeadScan:
    """Ablate every head in turn, `batch_size` copies of the text per forward pass (one head each);
    `progress(done, total)` is called with the heads scanned so far, from (0, total) on."""
    import time

    import torch

    AblationOptions((), True, target, occurrence, mode, _texts(reference), truncate).check()
    loaded = ablation_model(loaded, for_ablation)  # a name or a path: loaded with its LM head
    prep = _prepare(loaded, text, target, occurrence, truncate)
    means = reference_means(loaded, reference) if mode == "mean" and reference else None
    start = time.perf_counter()
    with torch.inference_mode():
        before, base = _scores(loaded, prep, 1, None)
        delta = _scan(loaded, means, batch_size, lambda rows: _scores(loaded, prep, rows, base)[0], progress)
    delta -= float(before[0])
    return HeadScan(
        model=loaded.name,
        measure=prep.measure,
        reason=prep.reason,
        mode=mode,
        target=prep.target,
        position=prep.positions[0] if prep.positions else None,
        before=float(before[0]),
        layers=tuple(range(loaded.capture.num_layers)),
        heads=tuple(range(loaded.capture.num_heads)),
        delta=delta,
        seconds=time.perf_counter() - start,
    )


def run_ablation(
    text: str,
    model: LoadedModel | str,
    options: AblationOptions,
    progress: Callable[[int, int], None] | None = None,
) -> Ablation | HeadScan:
    """`scan_heads` (with `options.scan`) or `ablate` of `options.heads`, as `options` ask."""
    kw = {"target": options.target, "occurrence": options.occurrence, "mode": options.mode,
          "reference": options.reference, "truncate": options.truncate}  # fmt: skip
    if options.check().scan:
        return scan_heads(model, text, progress=progress, **kw)
    return ablate(model, text, options.heads, **kw)


def _texts(reference: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if reference is None else tuple(reference)


def _scan(loaded: LoadedModel, means: Any, batch_size: int, score: Any, progress: Any) -> np.ndarray:
    """The measure with each head ablated alone: [layers, heads], rows of a batch = heads."""
    import torch

    n_layers, n_heads = loaded.capture.num_layers, loaded.capture.num_heads
    every = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    out = np.zeros(len(every))
    step = max(1, batch_size)
    tell = progress or (lambda done, total: None)
    tell(0, len(every))
    with ablating(loaded, means) as state:
        for start in range(0, len(every), step):
            chunk = every[start : start + step]
            state.keep.clear()
            for row, (layer, head) in enumerate(chunk):
                if layer not in state.keep:
                    state.keep[layer] = torch.ones(len(chunk), n_heads)
                state.keep[layer][row, head] = 0.0
            out[start : start + len(chunk)] = score(len(chunk)).double().cpu().numpy()
            tell(start + len(chunk), len(every))
    return out.reshape(n_layers, n_heads)


def repeat_loss_scan(
    loaded: LoadedModel,
    *,
    seq_len: int = 20,
    batch: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> HeadScan:
    """Ablate each head on the induction test's repeated random tokens: the rise in loss on the second copy.

    The same sequences as `induction_scores` with the same seed; rows of a forward pass are
    (head, sequence) pairs. `progress(done, total)` is called with the heads done, from (0, total) on.
    """
    import time

    import torch

    require_editable(loaded, "ablation")
    if loaded.task != "causal-lm":
        raise InputError(f"the repeat-loss ablation needs a causal LM head; {loaded.name} has none")
    enc, prefix = random_repeats(loaded, seq_len, batch, seed)
    ids = enc.input_ids.to(loaded.device)  # [batch, prefix + 2T]
    model = loaded.model
    pred = torch.arange(prefix + seq_len, prefix + 2 * seq_len, device=ids.device)  # second-copy tokens

    def loss(rows: int) -> Any:
        """Mean cross-entropy on the second copy, per head row: [rows // batch]."""
        x = ids.repeat(rows // batch, 1)
        hidden = model.base_model(input_ids=x).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, pred - 1]).double()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, x[:, pred][..., None])[..., 0]
        return (-logp.mean(-1)).reshape(rows // batch, batch).mean(-1)

    start = time.perf_counter()
    n_layers, n_heads = loaded.capture.num_layers, loaded.capture.num_heads
    per = max(1, batch_size // batch)  # heads per forward pass
    every = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    out = np.zeros(len(every))
    tell = progress or (lambda done, total: None)
    tell(0, len(every))
    with torch.inference_mode():
        before = float(loss(batch)[0])
        with ablating(loaded) as state:
            for s in range(0, len(every), per):
                chunk = every[s : s + per]
                state.keep.clear()
                for row, (layer, head) in enumerate(chunk):
                    if layer not in state.keep:
                        state.keep[layer] = torch.ones(len(chunk) * batch, n_heads)
                    state.keep[layer][row * batch : (row + 1) * batch, head] = 0.0
                out[s : s + len(chunk)] = loss(len(chunk) * batch).cpu().numpy()
                tell(s + len(chunk), len(every))
    return HeadScan(
        model=loaded.name,
        measure="repeat-loss",
        reason=f"{batch} sequences of {seq_len} random tokens repeated twice (seed {seed}): the rise in"
        " mean cross-entropy on the second copy, which induction heads make predictable",
        mode="zero",
        target=None,
        position=None,
        before=before,
        layers=tuple(range(n_layers)),
        heads=tuple(range(n_heads)),
        delta=out.reshape(n_layers, n_heads) - before,
        seconds=time.perf_counter() - start,
    )


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> tuple[int, int]:
    """How many of the k highest cells of two [layers, heads] scores coincide, and k as used."""

    k = min(k, a.size)
    return len(set(ranked_positions(a, k)) & set(ranked_positions(b, k))), k
