"""`attnviz.generate`: what a causal or seq2seq LM read when it wrote each token.

Generation goes through the model's own `generate` (so the ids are the model's). While it runs, a
step recorder sits in capture.py's attention function: each forward call is one step, and for the
heads asked it computes only the last query row, the query that produced the next token, over the
keys up to it. A step costs [heads, 1, context] weights, written straight into one preallocated
[layers, heads, new tokens, context] array: never a square matrix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from attnviz.analyses.rollout import rollout
from attnviz.analyses.transform import ViewOptions
from attnviz.attention import Attention, FileFields, HeadResult
from attnviz.errors import InputError, check_seed, param
from attnviz.generation.transform import pooled, without_special
from attnviz.models.capture import recording
from attnviz.models.generation_capture import recorder, sampling
from attnviz.models.loading import LoadedModel, load_model, model_spec, resolve_model
from attnviz.outputs import read_arrays, write_arrays
from attnviz.selection import format_indices
from attnviz.tokens import display, token_labels

if TYPE_CHECKING:
    from attnviz.attention import Attention
    from attnviz.models.generation_capture import StepRecorder
    from attnviz.models.loading import LoadedModel

FORMAT = "generation"
MIN_TEMPERATURE = 0.01  # below, sampling is greedy decoding anyway, and 1e-300 overflows the logits
ENCODERS = frozenset(
    {"bert", "distilbert", "roberta", "xlm-roberta", "albert", "electra", "deberta", "deberta-v2", "mpnet"}
)


@dataclass(frozen=True)
class Generation(HeadResult):
    """A continuation and, for each new token, the attention row of the step that produced it."""

    kind: Literal["decoder", "encoder-decoder"]
    prompt: str  # the prompt as given (before any chat template)
    text: str  # the continuation, decoded without special tokens
    tokens: tuple[str, ...]  # readable labels of the context: prompt (or decoder start) + new tokens
    token_ids: tuple[int, ...]
    special: tuple[bool, ...]
    prompt_length: int  # context tokens before the first new one (encoder-decoder: the decoder start)
    attn: np.ndarray  # [layers, heads, new, context] float32: row t reads keys 0..prompt_length+t-1
    source_tokens: tuple[str, ...] = ()  # encoder-decoder: the encoder's tokens (the prompt)
    source_special: tuple[bool, ...] = ()
    cross: np.ndarray | None = None  # encoder-decoder: [layers, heads, new, source]
    settings: dict[str, Any] = field(default_factory=dict)  # how it was generated (greedy, seed...)
    prompt_attn: np.ndarray | None = None  # `prompt_rows=True`: [layers, heads, prompt, prompt] (square)

    _verb = "recorded"

    @property
    def generated_ids(self) -> tuple[int, ...]:
        return self.token_ids[self.prompt_length :]

    @property
    def n_new(self) -> int:
        return int(self.attn.shape[2])

    @property
    def labels(self) -> list[str]:
        """Context tokens as people read them."""

        return [display(t) for t in self.tokens]

    @property
    def new_labels(self) -> list[str]:
        return self.labels[self.prompt_length :]

    @property
    def streams(self) -> dict[str, np.ndarray]:
        """The arrays by name, as files store them: `self` (decoder self-attention) and `cross`."""
        out = {"self": self.attn}
        if self.cross is not None:
            out["cross"] = self.cross
        if self.prompt_attn is not None:
            out["prompt"] = self.prompt_attn
        return out

    def head(self, layer: int, head: int, stream: str = "self") -> np.ndarray:
        """One head's [new, context] (or [new, source] for `cross`) rows, by model layer and head."""
        row, col = self.layer_pos(layer), self.head_pos(head)
        if stream == "cross" and self.cross is None:
            raise InputError(f"{self.model} is not an encoder-decoder model: it has no cross-attention")
        arr = self.cross if stream == "cross" else self.attn
        return arr[row, col]

    def as_attention(self) -> Attention:
        """Prompt and continuation (less the last token, which nothing read) as a square Attention,
        exactly the model's causal attention, for views, find_heads and head_patterns.

        Row `prompt_length - 1 + t` is new token t's step; the prompt's rows come from
        `generate(prompt_rows=True)` (an encoder-decoder's one start token needs none).
        """

        p = self.prompt_length
        n = p + self.n_new - 1
        square = np.zeros((*self.attn.shape[:2], n, n), dtype=np.float32)  # [layers, heads, q, k]
        if p > 1:
            if self.prompt_attn is None:
                raise InputError("the prompt's own rows were not recorded: generate with prompt_rows=True")
            square[:, :, : p - 1, : p - 1] = self.prompt_attn[:, :, : p - 1, : p - 1]
        square[:, :, p - 1 :, :] = self.attn[..., :n]
        tokens = self.tokens[:n]
        return Attention(
            model=self.model,
            kind="decoder",
            text=self.prompt + self.text,
            tokens=tokens,
            spans=tuple((0, 0) for _ in tokens),
            word_ids=tuple(None for _ in tokens),
            words=(),
            special=self.special[:n],
            layers=self.layers,
            heads=self.heads,
            attn=square,
            causal=True,
            token_ids=self.token_ids[:n],
            notes=self.notes,
        )

    def rolled_out(self, head_fusion: str = "mean", residual: float = 0.5) -> Generation:
        """Attention rollout (Abnar & Zuidema 2020) through the recorded layers, as one pooled row per step.

        Needs every head of consecutive layers and the prompt's rows (`generate(prompt_rows=True)`).
        """

        ro = rollout(self.as_attention(), head_fusion, residual)
        p, n = self.prompt_length, self.n_new
        rows = np.zeros((1, 1, n, self.attn.shape[-1]), dtype=np.float32)  # [1, 1, new, context]
        rows[0, 0, :, : ro.matrix.shape[1]] = ro.matrix[p - 1 : p - 1 + n]
        return replace(
            self,
            attn=rows,
            cross=None,
            prompt_attn=None,
            layers=(self.layers[0],),
            heads=(self.heads[0],),
            notes=(
                *self.notes,
                f"attention rollout over layers {format_indices(self.layers)} ({head_fusion} of heads)",
            ),
        )

    def _repr_html_(self) -> str:
        """Jupyter shows the explorer's generation mode."""
        from attnviz.views.notebook import generation_html

        return generation_html(self)

    def transformed(self, hide_special: bool = False, aggregate: str | None = None, over: str = "heads"):
        """Special tokens hidden (columns dropped, rows renormalised) and/or heads or layers pooled."""

        ViewOptions(hide_special=hide_special, aggregate=aggregate, over=over).check()
        gen = without_special(self) if hide_special else self
        return pooled(gen, aggregate, over) if aggregate else gen

    @property
    def source_labels(self) -> list[str]:
        return [display(t) for t in self.source_tokens]

    # -- files --------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready values."""
        return {
            "format": FORMAT,
            "model": self.model,
            "kind": self.kind,
            "prompt": self.prompt,
            "text": self.text,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "special": list(self.special),
            "prompt_length": self.prompt_length,
            "generated_ids": list(self.generated_ids),
            "layers": list(self.layers),
            "heads": list(self.heads),
            "source_tokens": list(self.source_tokens),
            "source_special": list(self.source_special),
            "settings": self.settings,
            "notes": list(self.notes),
            "shape": list(self.attn.shape),
        }

    def save(self, path: str | Path) -> Path:
        """Write `self` (and `cross`) with the metadata to .safetensors or .npz, as `extract` does."""

        arrays = {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in self.streams.items()}
        return write_arrays(Path(path), arrays, json.dumps(self.metadata()))

    @classmethod
    def load(cls, path: str | Path) -> Generation:
        """Read a file written by `save`; a file whose fields or shapes do not fit is an InputError
        naming it."""

        what = "file from `attnviz generate -o`"
        meta, arrays = read_arrays(Path(path), what)
        r = FileFields(meta, arrays, Path(path), what)
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not a readable {what} (not a generation file)")
        tokens, layers, heads = r.texts("tokens"), r.counts("layers"), r.counts("heads")
        n, lh = len(tokens), (len(layers), len(heads))
        prompt_length = r.count("prompt_length")
        if prompt_length > n:
            raise r.fail(f"'prompt_length' {prompt_length} is more than its {n} tokens")
        source_tokens = r.texts("source_tokens", ())
        settings = r._get("settings", {})
        if not isinstance(settings, dict):
            raise r.fail("'settings' is not an object")
        return cls(
            model=r.text("model"),
            kind=r.choice("kind", ("decoder", "encoder-decoder")),
            prompt=r.text("prompt"),
            text=r.text("text"),
            tokens=tokens,
            token_ids=r.counts("token_ids", length=(n,)),
            special=r.flags("special", length=(n,)),
            prompt_length=prompt_length,
            layers=layers,
            heads=heads,
            attn=r.array("self", (*lh, n - prompt_length, n)),
            prompt_attn=r.array("prompt", (*lh, prompt_length, prompt_length), required=False),
            source_tokens=source_tokens,
            source_special=r.flags("source_special", (), length=(0, len(source_tokens))),
            cross=r.array("cross", (*lh, n - prompt_length, len(source_tokens)), required=False),
            settings=dict(settings),
            notes=r.texts("notes", ()),
        )


# -- the API ------------------------------------------------------------------------------------


def check_settings(
    max_new_tokens: int,
    min_new_tokens: int = 0,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> None:
    """InputError for settings `generate` would refuse, before any model loads."""
    if max_new_tokens < 1:
        raise InputError(f"{param('max_new_tokens')} must be at least 1 (got {max_new_tokens})")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise InputError(
            f"{param('min_new_tokens')} must be between 0 and {param('max_new_tokens')} "
            f"(got {min_new_tokens})"
        )
    if not MIN_TEMPERATURE <= temperature < math.inf:  # NaN fails too; a tinier one overflows
        raise InputError(
            f"{param('temperature')} must be a number from {MIN_TEMPERATURE} up (got {temperature}); "
            "lower ones are greedy decoding, which is what leaving out sampling does"
        )
    if not 0 < top_p <= 1:
        raise InputError(f"{param('top_p')} must be in (0, 1] (got {top_p})")
    if not sample and (temperature != 1.0 or top_p != 1.0):
        raise InputError(
            f"{param('temperature')} and {param('top_p')} shape sampling: add {param('sample', True)}"
        )
    if seed is not None:
        check_seed(seed)
        if not sample:  # greedy decoding draws nothing: a seed there would be silently ignored
            raise InputError(f"{param('seed')} only matters when sampling: add {param('sample', True)}")


def generation_task(spec: str | None) -> str:
    """The head generation needs ("causal-lm" or "seq2seq-lm"), read from config.json; no model loads.

    InputError for a model that cannot generate (an encoder such as BERT).
    """

    source = resolve_model(spec)
    if source.origin == "gguf":
        return "causal-lm"
    config: dict[str, Any] = {}
    path = Path(source.path) / "config.json"
    if source.origin in ("bundled", "folder") and path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
    elif source.origin == "hub":  # the cached config only; loading reports a missing model
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source.path, local_files_only=True).to_dict()
        except Exception:  # not cached, or unreadable: load_model says so in one line
            config = {}
    if config.get("is_encoder_decoder"):
        return "seq2seq-lm"
    if config.get("model_type") in ENCODERS and not config.get("is_decoder"):
        raise InputError(
            f"{source.name} is an encoder ({config['model_type']}): it cannot generate; "
            "use a causal LM such as smollm2, or a seq2seq model (T5, BART, Marian)"
        )
    return "causal-lm"


def load_for_generation(
    model: str | LoadedModel | None,
    device: str | None = "auto",
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    progress: Any = None,
) -> LoadedModel:
    """The model with its LM head (loaded once and cached like every model)."""

    if isinstance(model, LoadedModel):
        if model.task in ("causal-lm", "seq2seq-lm"):
            return model
        device, dtype, model = model.device, model.dtype, model.source.spec
    model = model_spec(model)  # a name or a path; TypeError naming `model` for anything else
    task = generation_task(model)
    loaded = load_model(
        model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=progress, task=task
    )
    _check_generates(loaded)
    return loaded


def _check_generates(loaded: LoadedModel) -> None:
    """InputError for a model whose steps cannot be recorded, or that cannot generate at all."""
    if not loaded.capture.interface:
        raise InputError(
            f"{loaded.name} cannot switch to attnviz's attention (its attention is its own code), "
            "so its steps cannot be recorded"
        )
    if loaded.kind not in ("decoder", "encoder-decoder"):
        raise InputError(f"{loaded.name} is not causal: it cannot generate text one token at a time")


def generate(
    prompt: str,
    model: str | LoadedModel | None = "smollm2",
    *,
    max_new_tokens: int = 20,
    min_new_tokens: int = 0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
    prompt_rows: bool = False,
    device: str | None = "auto",
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """Continue `prompt` with the model's own `generate`, recording each new token's attention row.

    Greedy unless `sample`; stops at EOS or after `max_new_tokens`. Encoder-decoder models also
    record each new token's cross-attention over the source. `prompt_rows` also keeps the prompt's
    own rows (one square [prompt, prompt] per head, at the first step): `as_attention` needs them.
    `progress(new tokens so far, max_new_tokens)` is called after each step (from (0, max) on), and
    `on_text(piece)` with the continuation as it grows: the pieces join to the result's `text`.
    """
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, not {type(prompt).__name__}")
    if not prompt or not prompt.strip():
        raise InputError("the prompt is empty")
    check_settings(max_new_tokens, min_new_tokens, sample, temperature, top_p, seed)
    loaded = load_for_generation(model, device, dtype, trust_remote_code)
    _check_generates(loaded)
    settings = {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "sample": sample,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "chat": chat,
    }

    inputs = _prompt_inputs(loaded, prompt, chat, max_new_tokens)
    rec = recorder(loaded, inputs, layers, heads, max_new_tokens, prompt_rows)
    streamer = _Streamer(loaded.tokenizer, max_new_tokens, progress, on_text) if progress or on_text else None
    ids = _run(loaded, inputs, rec, settings, streamer)
    return _result(loaded, prompt, inputs, rec, ids, settings)


def generate_kwargs(loaded: LoadedModel, settings: dict[str, Any]) -> dict[str, Any]:
    """What `model.generate` is given for `settings` (the benchmark and tests call it the same way)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings["max_new_tokens"],
        "min_new_tokens": settings.get("min_new_tokens") or None,
        "do_sample": bool(settings.get("sample")),
        "num_beams": 1,
        "pad_token_id": loaded.tokenizer.pad_token_id,
    }
    if kwargs["do_sample"]:
        kwargs.update(temperature=settings.get("temperature", 1.0), top_p=settings.get("top_p", 1.0))
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def prompt_ids(loaded: LoadedModel, prompt: str, chat: bool = False) -> list[int]:
    """The prompt's token ids, through the chat template when `chat`."""
    tok = loaded.tokenizer
    if not chat:
        return list(tok(prompt)["input_ids"])
    if not getattr(tok, "chat_template", None):
        raise InputError(f"{loaded.name}'s tokenizer has no chat template: drop {param('chat', True)}")
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _prompt_inputs(loaded: LoadedModel, prompt: str, chat: bool, max_new: int) -> dict[str, Any]:
    import torch

    ids = prompt_ids(loaded, prompt, chat)
    if not ids:
        raise InputError("the prompt encodes to no tokens")
    limit = loaded.max_length
    total = len(ids) + (0 if loaded.kind == "encoder-decoder" else max_new)
    if limit is not None and total > limit:
        raise InputError(
            f"the prompt ({len(ids)} tokens) plus {param('max_new_tokens')} {max_new} exceeds "
            f"{loaded.name}'s limit of {limit} tokens"
        )
    device = next(loaded.model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class _Streamer:
    """transformers' streamer interface: counts the new tokens and hands on the text as it grows."""

    def __init__(self, tokenizer: Any, total: int, progress: Any, on_text: Any) -> None:
        self.tokenizer, self.total, self.progress, self.on_text = tokenizer, total, progress, on_text
        self.ids: list[int] | None = None  # None until the prompt's put (the first) has passed
        self.shown = ""
        if progress is not None:
            progress(0, total)

    def put(self, value: Any) -> None:
        if self.ids is None:
            self.ids = []
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        if self.progress is not None:
            self.progress(min(len(self.ids), self.total), self.total)
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        """The text not yet handed on; a piece ending in a half character waits for the next token."""
        if self.on_text is None or self.ids is None:
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.shown) and (final or not text.endswith("\ufffd")) and text != self.shown:
            self.on_text(text[len(self.shown) :])
            self.shown = text


def _run(
    loaded: LoadedModel,
    inputs: dict[str, Any],
    rec: StepRecorder,
    settings: dict[str, Any],
    streamer: Any = None,
) -> list[int]:
    """model.generate with the recorder active; its hook and recorder always removed."""
    import torch

    hook = loaded.model.register_forward_pre_hook(rec.next_step)
    try:
        with torch.inference_mode(), recording(rec), sampling(settings.get("sample"), settings.get("seed")):
            extra = {"streamer": streamer} if streamer is not None else {}
            out = loaded.model.generate(**inputs, **generate_kwargs(loaded, settings), **extra)
    finally:
        hook.remove()
    return [int(i) for i in out[0].tolist()]


def _result(
    loaded: LoadedModel,
    prompt: str,
    inputs: dict[str, Any],
    rec: StepRecorder,
    ids: list[int],
    settings: dict[str, Any],
) -> Generation:

    tok = loaded.tokenizer
    encdec = loaded.capture.encoder_decoder
    source = [int(i) for i in inputs["input_ids"][0].tolist()]
    start = 1 if encdec else len(source)
    n_new = len(ids) - start
    width = start + n_new
    specials = set(tok.all_special_ids)

    def trimmed(stream: str, cols: int) -> np.ndarray:
        arr = rec.buffers[stream][:, :, :n_new, :cols].cpu().numpy()  # [layers, heads, new, cols]
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)

    labels, _ = token_labels(tok, ids)
    self_stream = "decoder" if encdec else "self"
    src_labels = token_labels(tok, source)[0] if encdec else []
    layers = sorted(rec.rows[self_stream], key=rec.rows[self_stream].get)
    return Generation(
        model=loaded.name,
        kind="encoder-decoder" if encdec else "decoder",
        prompt=prompt,
        text=tok.decode(ids[start:], skip_special_tokens=True),
        tokens=tuple(labels),
        token_ids=tuple(ids),
        special=tuple(i in specials for i in ids),
        prompt_length=start,
        layers=tuple(layers),
        heads=tuple(rec.heads) if rec.heads is not None else tuple(range(loaded.capture.num_heads)),
        attn=trimmed(self_stream, width),
        source_tokens=tuple(src_labels),
        source_special=tuple(i in specials for i in source) if encdec else (),
        cross=trimmed("cross", len(source)) if encdec else None,
        prompt_attn=rec.prompt.cpu().numpy() if rec.prompt is not None else None,
        settings=settings,
    )
