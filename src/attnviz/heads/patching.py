"""Activation patching: which head carries what makes a clean text differ from a corrupted one.

Two runs of the unmodified model, one on each text. Denoising (the default) runs the corrupt text
and puts back, one unit at a time, that unit's activation from the clean run; noising does the
opposite. A unit is a head's output before the output projection (edited inside attnviz's registered
attention function, as ablation does: no module names, grouped-query heads included), the residual
stream entering a layer (or leaving the last one) at one position, or a layer's attention or MLP
output. Every patched copy is a row of one batched forward, as the ablation scan runs.

The metric is read at the last position (a masked LM: at a mask appended to the text; an
encoder-decoder: the decoder's first prediction): the logit difference answer - wrong, the answer's
log-probability, or the KL divergence from the clean run's distribution. A model without an LM
head is measured as `ablate` measures it, on its mean-pooled embedding (here: the cosine
similarity with the clean run's). `effect` is the metric normalised so 0 is the corrupt run and 1
the clean one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError, param
from attnviz.extraction import tokenize
from attnviz.heads.ablation import choose_task
from attnviz.heads.interventions import block_modules, intervening
from attnviz.heads.skipping import Skipper, chunks
from attnviz.models.architecture import require_editable
from attnviz.models.loading import LoadedModel, load_model
from attnviz.outputs import read_arrays, write_arrays

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel

METRICS = ("logit-diff", "log-prob", "kl")
UNITS = ("heads", "resid", "layer")
FORMAT = "attnviz-patching-1"


def normalised(patched: Any, clean: float, corrupt: float) -> np.ndarray:
    """A patched metric (or array of them) as an effect: 0 = the corrupt run, 1 = the clean run (NaN
    where the two runs agree)."""
    span = clean - corrupt
    if span == 0:
        return np.full(np.shape(patched), np.nan)
    return (np.asarray(patched, dtype=np.float64) - corrupt) / span


@dataclass(frozen=True)
class Patching:
    """The metric after patching each unit, beside the clean and corrupt runs' own values."""

    model: str
    metric: str  # "logit-diff", "log-prob", "kl" or "embedding"
    unit: str  # "heads", "resid" or "layer"
    stream: str  # the attention stream patched ("self"; "decoder"/"cross"/"encoder")
    answer: str | None
    wrong: str | None
    clean_text: str
    corrupt_text: str
    clean: float  # the metric on the clean run
    corrupt: float  # the metric on the corrupt run
    patched: np.ndarray  # heads: [layers, heads] (or [layers, heads, positions]); resid: [layers+1,
    # positions]; layer: [layers, 2] (or [layers, 2, positions]), 2 = attention, MLP
    rows: tuple[str, ...]  # label of each entry of patched's first axis (layer numbers, or "out")
    columns: tuple[str, ...]  # label of each entry of its second axis (head numbers, or attn/mlp)
    positions: tuple[str, ...] = ()  # the destination's tokens, when there is a positions axis
    noising: bool = False
    at: str | None = None
    note: str = ""
    seconds: float = 0.0

    @property
    def effect(self) -> np.ndarray:
        """`patched` normalised: 0 = the corrupt run's metric, 1 = the clean run's."""
        return normalised(self.patched, self.clean, self.corrupt)

    def top(self, k: int = 10) -> list[tuple[tuple[int, ...], float]]:
        """The k entries that move the metric most from the run patched into (the corrupt one when
        denoising: |effect|; the clean one when noising: |effect - 1|): (index, effect), largest first."""
        eff = np.nan_to_num(self.effect)
        order = np.argsort(-np.abs(eff - (1.0 if self.noising else 0.0)), axis=None, kind="stable")[:k]
        return [(tuple(int(i) for i in np.unravel_index(j, eff.shape)), float(eff.flat[j])) for j in order]

    def as_dict(self) -> dict[str, Any]:
        """The JSON the command prints."""
        return {
            "model": self.model,
            "metric": self.metric,
            "answer": self.answer,
            "wrong": self.wrong,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "patched": self.patched.tolist(),
            "effect": np.where(np.isnan(self.effect), None, self.effect).tolist(),
        }

    def metadata(self) -> dict[str, Any]:
        keys = ("model", "metric", "unit", "stream", "answer", "wrong", "clean_text", "corrupt_text")
        meta: dict[str, Any] = {k: getattr(self, k) for k in keys}
        meta.update(
            format=FORMAT, clean=self.clean, corrupt=self.corrupt, rows=list(self.rows),
            columns=list(self.columns), positions=list(self.positions), noising=self.noising,
            at=self.at, note=self.note, seconds=self.seconds,
        )  # fmt: skip
        return meta

    def save(self, path: str | Path) -> Path:
        """Write to .safetensors or .npz (never pickle)."""

        arrays = {"patched": np.ascontiguousarray(self.patched, dtype=np.float64)}
        return write_arrays(Path(path), arrays, json.dumps(self.metadata()))

    @classmethod
    def load(cls, path: str | Path) -> Patching:
        """Read a file written by `save`."""

        what = "patching file from `attnviz patch -o`"
        meta, arrays = read_arrays(Path(path), what)
        if meta.get("format") != FORMAT or "patched" not in arrays:
            raise InputError(f"{path} is not a {what}")
        meta.pop("format")
        for name in ("rows", "columns", "positions"):
            meta[name] = tuple(meta[name])
        return cls(patched=np.asarray(arrays["patched"], dtype=np.float64), **meta)

    def _repr_html_(self) -> str:
        return table_html(self)


def table_html(result: Patching, top: int = 10) -> str:
    """A small escaped HTML summary: the runs' metrics and the top units by effect."""
    import html

    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(unit_name(result, idx))}</td><td>{eff:+.3f}</td>"
        f"<td>{result.patched[idx]:.4f}</td></tr>"
        for idx, eff in result.top(top)
    )
    title = (
        f"{esc(result.model)}: {'noising' if result.noising else 'denoising'} {esc(result.unit)},"
        f" {esc(result.metric)} (clean {result.clean:.4f}, corrupt {result.corrupt:.4f})"
    )
    return (
        f"<div><p>{title}</p><table><thead><tr><th>unit</th><th>effect</th><th>patched</th></tr>"
        f"</thead><tbody>{rows}</tbody></table></div>"
    )


def unit_name(result: Patching, idx: tuple[int, ...]) -> str:
    """'L18H6', 'L18H6 @3 Mary', 'resid 4 @3 Mary', 'L4 mlp' for an index of `patched`."""
    row, col = result.rows[idx[0]], (result.columns[idx[1]] if len(idx) > 1 and result.columns else "")
    if result.unit == "heads":
        name = f"L{row}H{col}"
    elif result.unit == "layer":
        name = f"L{row} {col}"
    else:
        name = f"resid {row}"
    pos = idx[-1] if (result.unit == "resid" or len(idx) == 3) else None
    if pos is not None and result.positions:
        name += f" @{pos} {result.positions[pos]}"
    return name


# -- checks before any model loads -----------------------------------------------------------------


def check_options(
    answer: str | None,
    wrong: str | None,
    metric: str | None,
    unit: str,
    at: str | None,
    positions: bool,
) -> str:
    """One-line errors for options that need no model; returns the metric to use."""
    if unit not in UNITS:
        raise InputError(f"unknown {param('unit')} '{unit}': use {', '.join(UNITS)}")
    if at not in (None, "last"):
        raise InputError(f"unknown {param('at')} '{at}': use last (or leave it out for every position)")
    if at == "last" and positions:
        raise InputError(f"{param('at', 'last')} patches the last position only: drop {param('positions')}")
    if answer is not None and not answer.strip():
        raise InputError(f"{param('answer')} is empty: give the word the model should predict")
    if wrong is not None and answer is not None and wrong.strip() == answer.strip():
        raise InputError(
            f"{param('answer')} and {param('wrong')} are the same word '{answer.strip()}': the logit"
            " difference would be 0 on every run"
        )
    chosen = metric or ("logit-diff" if wrong is not None else "log-prob")
    if chosen not in METRICS:
        raise InputError(f"unknown {param('metric')} '{chosen}': use {', '.join(METRICS)}")
    if chosen == "logit-diff" and wrong is None:
        raise InputError(f"{param('metric', 'logit-diff')} needs {param('wrong')}: the word to compare with")
    return chosen


# -- the model side --------------------------------------------------------------------------------


def for_patching(model: Any, trust_remote_code: bool = False) -> LoadedModel:
    """A LoadedModel with the LM head the metric needs (name, path or LoadedModel; loaded once, cached)."""

    loaded = model if isinstance(model, LoadedModel) else load_model(str(model))
    require_editable(loaded, "patching")
    task = "seq2seq-lm" if loaded.capture.encoder_decoder else choose_task(loaded)
    if task == loaded.task:
        return loaded
    return load_model(
        loaded.source.spec, device=loaded.device, dtype=loaded.dtype, trust_remote_code=trust_remote_code,
        task=task,
    )  # fmt: skip


@dataclass
class Setup:
    """Both texts tokenised, the answer resolved and the measure chosen: what every run needs."""

    loaded: Any
    metric: str
    stream: str
    ids: dict[str, Any]  # "clean"/"corrupt" -> [1, n] long
    tokens: dict[str, tuple[str, ...]]
    answer_id: int | None
    wrong_id: int | None
    at: str | None
    reason: str = ""
    reference: dict[str, Any] = field(default_factory=dict)  # "clean" -> its log-probs or embedding

    @property
    def lm(self) -> bool:
        return self.metric != "embedding"


def answer_token(loaded: LoadedModel, word: str, what: str = "answer") -> int:
    """The token of " WORD" after the text; a word that is not one token is a one-line error."""
    tok = loaded.tokenizer
    ids = list(tok(" " + word.strip(), add_special_tokens=False)["input_ids"])
    pieces = tok.convert_ids_to_tokens(ids)
    while len(ids) > 1 and not tok.decode(ids[:1]).strip():  # a lone word-start marker ("▁")
        ids, pieces = ids[1:], pieces[1:]
    if len(ids) != 1:
        raise InputError(
            f"{param(what)} '{word.strip()}' is not one token after the text: ' {word.strip()}' became"
            f" {len(ids)} tokens {pieces} in {loaded.name}; give a word that is a single token"
        )
    return int(ids[0])


def _encode(loaded: LoadedModel, text: str, masked: bool) -> tuple[Any, tuple[str, ...]]:
    if not isinstance(text, str) or not text.strip():
        raise InputError("a text is empty: give a clean and a corrupt text")
    if masked:
        text = f"{text} {loaded.tokenizer.mask_token}"
    enc = tokenize(loaded, [text])
    return enc.input_ids[:, : enc.lengths[0]], tuple(enc.tokens[0])


def prepare(
    loaded: LoadedModel,
    clean: str,
    corrupt: str,
    answer: str | None,
    wrong: str | None,
    metric: str,
    at: str | None,
    stream: str | None = None,
) -> Setup:
    """Tokenise both texts, check their lengths, resolve the answer and choose the measure."""
    import torch

    cap = loaded.capture
    masked = loaded.task == "masked-lm"
    if masked and loaded.tokenizer.mask_token is None:
        raise InputError(f"{loaded.name}'s tokenizer has no mask token to read the answer at")
    ids, tokens = {}, {}
    for name, text in (("clean", clean), ("corrupt", corrupt)):
        ids[name], tokens[name] = _encode(loaded, text, masked)
    n_clean, n_corrupt = ids["clean"].shape[1], ids["corrupt"].shape[1]
    if n_clean != n_corrupt and at != "last":
        raise InputError(
            f"the texts have different lengths: clean {n_clean} tokens {list(tokens['clean'])}, corrupt"
            f" {n_corrupt} tokens {list(tokens['corrupt'])}; make them the same length or patch the"
            f" last position only with {param('at', 'last')}"
        )
    streams = sorted(cap.layer_counts)
    chosen = stream or ("cross" if cap.encoder_decoder else "self")
    if chosen not in streams:
        raise InputError(f"unknown {param('stream')} '{chosen}' for {loaded.name}: use {', '.join(streams)}")
    lm = loaded.task in ("causal-lm", "masked-lm", "seq2seq-lm")
    setup = Setup(
        loaded=loaded, metric=metric if lm else "embedding", stream=chosen, ids=ids, tokens=tokens,
        answer_id=None, wrong_id=None, at=at,
    )  # fmt: skip
    if lm:
        setup.answer_id = answer_token(loaded, answer or "")
        setup.wrong_id = answer_token(loaded, wrong, "wrong") if wrong is not None else None
        if setup.wrong_id is not None and setup.wrong_id == setup.answer_id:
            raise InputError(f"{param('answer')} and {param('wrong')} are the same token in {loaded.name}")
    else:
        setup.reason = (
            f"{loaded.name} has no LM head: the metric is the cosine similarity of the mean-pooled"
            " embedding with the clean run's (the answer is not used)"
        )
    with torch.inference_mode():
        setup.reference["clean"] = readout(setup, ids["clean"])
    return setup


def forward(setup: Setup, ids: Any, rows: int = 1) -> Any:
    """`rows` copies of `ids` through the model under the active hooks: the readout [rows, vocab/hidden]."""
    import torch

    loaded = setup.loaded
    model = loaded.model
    x = ids.expand(rows, -1).to(loaded.device)
    if loaded.capture.encoder_decoder:
        start = model.config.decoder_start_token_id
        start = model.config.pad_token_id if start is None else start
        dec = torch.full((rows, 1), int(start), dtype=torch.long, device=x.device)
        out = model(input_ids=x, decoder_input_ids=dec)
        return out.logits[:, -1] if setup.lm else out.encoder_last_hidden_state.mean(1)
    if not setup.lm:
        hidden = model(input_ids=x).last_hidden_state
        return hidden.mean(1)
    if loaded.task == "masked-lm":
        pos = int((ids[0] == loaded.tokenizer.mask_token_id).nonzero()[-1])
        return model(input_ids=x).logits[:, pos]
    import inspect

    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        extra = {"use_cache": False} if "use_cache" in params else {}  # no cache to build for one pass
        return model(input_ids=x, logits_to_keep=1, **extra).logits[:, -1]
    return model(input_ids=x).logits[:, -1]


def readout(setup: Setup, ids: Any, rows: int = 1) -> Any:
    """forward()'s readout as float64: log-probabilities (an LM) or the pooled embedding."""
    import torch

    out = forward(setup, ids, rows).double()
    return torch.log_softmax(out, dim=-1) if setup.metric in ("log-prob", "kl") else out


def metric_of(setup: Setup, out: Any) -> Any:
    """The metric of each row of a readout: [rows] float64."""
    import torch

    if setup.metric == "logit-diff":
        return out[:, setup.answer_id] - out[:, setup.wrong_id]
    if setup.metric == "log-prob":
        return out[:, setup.answer_id]
    ref = setup.reference["clean"].to(out.device)
    if setup.metric == "kl":
        return (ref.exp() * (ref - out)).sum(-1)
    return torch.nn.functional.cosine_similarity(out, ref.expand_as(out), dim=-1)


def _aligned(src: Any, length: int, at: str | None) -> Any:
    """A source activation [1, q, ...] on the destination's positions (`at="last"`: its last only)."""
    import torch

    if at != "last" and src.shape[1] == length:
        return src
    out = torch.zeros((src.shape[0], length, *src.shape[2:]), dtype=src.dtype, device=src.device)
    out[:, -1] = src[:, -1]
    return out


def record(setup: Setup, text: str, kinds: set[str], keys: Sequence[tuple[str, int]]) -> dict[Any, Any]:
    """One pass on `text` ("clean"/"corrupt") keeping the activations at `keys`."""
    import torch

    with torch.inference_mode(), intervening(setup.loaded, setup.stream, kinds) as state:
        state.record = set(keys)
        forward(setup, setup.ids[text])
    return state.saved


def _units(setup: Setup, unit: str, positions: bool) -> tuple[set[str], list[tuple[str, int]], int]:
    """The hooks a unit needs, the keys it patches, and the number of layers of the stream."""
    n = setup.loaded.capture.layer_counts[setup.stream]
    if unit == "heads":
        return {"head"}, [("head", layer) for layer in range(n)], n
    if unit == "resid":
        return {"resid"}, [("resid", layer) for layer in range(n + 1)], n
    return {"attn", "mlp"}, [(k, layer) for layer in range(n) for k in ("attn", "mlp")], n


def run_rows(
    setup: Setup,
    dst: str,
    kinds: set[str],
    sources: dict[Any, Any],
    rows: Sequence[tuple[tuple[str, int], int | None, int | None]],
    skipper: Skipper,
    batch_size: int = 64,
) -> np.ndarray:
    """The metric with each row's one patch: (key, position or None = all, head or None = all).

    Rows run `batch_size` at a time, whole layers together; the layers below a batch's lowest patch
    replay the destination run's outputs (heads/skipping.py) instead of being computed per row.
    """
    import torch

    out = np.zeros(len(rows))
    last = setup.at == "last"
    ids = setup.ids[dst]
    with torch.inference_mode(), intervening(setup.loaded, setup.stream, kinds) as state:
        state.sources = sources
        for start, stop, lowest in chunks([key[1] for key, _, _ in rows], batch_size):
            chunk = rows[start:stop]
            masks: dict[Any, Any] = {}
            for r, (key, pos, head) in enumerate(chunk):
                src = sources[key]
                shape = (
                    (len(chunk), src.shape[1], src.shape[2])
                    if key[0] in "headqkv"
                    else (len(chunk), src.shape[1])
                )
                mask = masks.setdefault(key, torch.zeros(shape, dtype=torch.bool))
                where = -1 if last else (slice(None) if pos is None else pos)
                if head is None:
                    mask[r, where] = True
                else:
                    mask[r, where, head] = True
            state.masks = masks
            with skipper.replaying(lowest, len(chunk)):
                vals = metric_of(setup, readout(setup, ids, len(chunk)))
            out[start:stop] = vals.cpu().numpy()
    return out


def _skipper(setup: Setup, ids: Any) -> Skipper:
    """The destination run (`ids`), measured once: its readout (`result`) and its blocks' outputs,
    proven replayable on this model (or not: then every layer is computed)."""
    loaded = setup.loaded
    try:
        blocks = block_modules(loaded, setup.stream, "skipping layers")
        encoder = []
        if loaded.capture.encoder_decoder and setup.stream != "encoder":  # decoder-side patches
            encoder = block_modules(loaded, "encoder", "skipping layers")
    except InputError:  # one layer module run several times
        blocks, encoder = [], []
    skipper = Skipper(blocks=encoder + blocks, offset=len(encoder))
    skipper.record(lambda: readout(setup, ids))
    skipper.check(lambda rows: forward(setup, ids, rows))
    return skipper


def patch(
    clean: str,
    corrupt: str,
    model: Any = "smollm2",
    *,
    answer: str | None = None,
    wrong: str | None = None,
    metric: str | None = None,
    noising: bool = False,
    positions: bool = False,
    unit: str = "heads",
    at: str | None = None,
    stream: str | None = None,
    batch_size: int = 64,
) -> Patching:
    """Patch every unit from one run into the other and measure: a `Patching`.

    `model`: a name, a path or a LoadedModel. Denoising (default) runs `corrupt` with each unit
    taken from `clean`; `noising=True` runs `clean` with each unit from `corrupt`. `unit`: "heads"
    (each head's output at every position, or at each position with `positions=True`), "resid"
    (the residual stream entering each layer, and leaving the last, at each position) or "layer"
    (each layer's attention and MLP outputs). `at="last"`: the final query position only, which
    also lets the texts differ in length.
    """
    import time

    import torch

    chosen = check_options(answer, wrong, metric, unit, at, positions)
    loaded = for_patching(model)
    setup = prepare(loaded, clean, corrupt, answer, wrong, chosen, at, stream)
    start = time.perf_counter()
    src, dst = ("corrupt", "clean") if noising else ("clean", "corrupt")
    with torch.inference_mode():
        skipper = _skipper(setup, setup.ids[dst])
        outs = {"clean": setup.reference["clean"], dst: skipper.result}  # prepare ran the clean text
        if "corrupt" not in outs:
            outs["corrupt"] = readout(setup, setup.ids["corrupt"])
        base = {t: float(metric_of(setup, out)[0]) for t, out in outs.items()}
    kinds, keys, n = _units(setup, unit, positions)
    decoder_side = loaded.capture.encoder_decoder and setup.stream != "encoder"  # one decoder position
    length = 1 if decoder_side else setup.ids[dst].shape[1]
    saved = record(setup, src, kinds, keys)
    sources = {k: _aligned(v, length, at) for k, v in saved.items()}
    q = next(iter(sources.values())).shape[1]
    per_pos = unit == "resid" or positions
    pos_list: list[int | None] = list(range(q)) if per_pos else [None]
    if unit == "heads":
        n_heads = next(iter(sources.values())).shape[2]
        rows = [(k, p, h) for k in keys for h in range(n_heads) for p in pos_list]
        shape: tuple[int, ...] = (n, n_heads) + ((q,) if per_pos else ())
        labels = (tuple(str(i) for i in range(n)), tuple(str(h) for h in range(n_heads)))
    elif unit == "resid":
        rows = [(k, p, None) for k in keys for p in pos_list]
        shape = (n + 1, q)
        labels = ((*[str(i) for i in range(n)], "out"), ())
    else:
        rows = [(k, p, None) for k in keys for p in pos_list]
        shape = (n, 2) + ((q,) if per_pos else ())
        labels = (tuple(str(i) for i in range(n)), ("attn", "mlp"))
    values = run_rows(setup, dst, kinds, sources, rows, skipper, batch_size).reshape(shape)
    toks = setup.tokens[dst] if per_pos and not decoder_side else ()
    note = setup.reason
    if per_pos and decoder_side:
        note = (note + " " if note else "") + "positions are the decoder's"
    return Patching(
        model=loaded.name, metric=setup.metric, unit=unit, stream=setup.stream, answer=answer, wrong=wrong,
        clean_text=clean, corrupt_text=corrupt, clean=base["clean"], corrupt=base["corrupt"],
        patched=values, rows=labels[0], columns=labels[1], positions=tuple(toks), noising=noising,
        at=at, note=note, seconds=time.perf_counter() - start,
    )  # fmt: skip
