"""How generation is recorded: a step recorder that capture.py's attention function hands each layer.

Each forward call of `generate` is one step; for the heads asked, only the step's last query row is
computed (the query that produced the next token), over the keys up to it, and written straight
into one zeroed [layers, heads, new tokens, context] buffer per stream.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError, param
from attnviz.models.capture import _EAGER_ONLY, _additive, _eager_for, _plain, active, head_weights
from attnviz.selection import resolve_indices

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel


# -- recording --------------------------------------------------------------------------------


@dataclass
class StepRecorder:
    """Keeps, per forward call (one generation step), the last query row of the heads asked.

    Activated with `capture.recording`; capture.attention_forward hands each layer to `forward`.
    """

    index: dict[int, tuple[str, int]]  # id(attention module) -> (stream, layer)
    rows: dict[str, dict[int, int]]  # stream -> {model layer: row of its buffer}
    heads: list[int] | None
    buffers: dict[str, Any]  # stream -> [layers, heads, new, width] tensor, zero past each row's end
    start: dict[str, int]  # stream -> context length at step 0 (cross: absent, its keys are fixed)
    prompt: Any = None  # prompt_rows: [layers, heads, prompt, prompt], the prompt's own rows (step 0)
    step: int = -1  # the forward call in progress (0: the prompt's)

    def next_step(self, *_: Any) -> None:
        """A forward pre-hook on the model: every call is one generation step, when it is this
        recorder's call (the same model may run in other threads at the same time: not counted)."""

        if active() is self:
            self.step += 1

    def forward(self, module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any):
        """The layer's output as without recording; the step's last query row saved on the side."""

        out, _ = _plain(module, query, key, value, mask, **kwargs)
        ident = self.index.get(id(module))
        if ident is None or ident[1] not in self.rows.get(ident[0], {}):
            return out, None
        stream, layer = ident
        buf = self.buffers[stream]
        t = self.step
        if not 0 <= t < buf.shape[2]:
            return out, None
        end = key.shape[2] if stream == "cross" else self.start[stream] + t  # keys up to the query
        dest = buf[self.rows[stream][layer], :, t]  # [heads, width]
        if t == 0 and self.prompt is not None and stream == "self":
            rows = self.prompt[self.rows[stream][layer]][None]  # [1, heads, prompt, prompt]
            head_weights(module, query, key, mask, self.heads, rows, **kwargs)
            dest[:, : rows.shape[-1]] = rows[0, :, -1]
            return out, None
        self._row(module, query, key, value, mask, dest, end, kwargs)
        return out, None

    def _row(self, module: Any, query: Any, key: Any, value: Any, mask: Any, dest: Any, end: int, kwargs):
        """The last query row's weights for the asked heads, into dest[:, :end]."""
        import torch

        q = query[:, :, -1:]  # [batch, heads, 1, d]
        if mask is not None and mask.dim() == 4:
            mask = mask[:, :, -1:]
        kw = dict(kwargs)
        if kw.get("position_bias") is not None:
            kw["position_bias"] = kw["position_bias"][:, :, -1:]
        k_len = key.shape[2]
        if any(kw.get(name) is not None for name in _EAGER_ONLY):  # attention sinks: the eager function
            _, w = _eager_for(module)(module, q, key, value, _additive(module, q, key, mask, kw), **kw)
            w = w[:, self.heads] if self.heads is not None else w  # [1, heads, 1, k_len]
        elif k_len <= end:  # the usual case: keys end at the query (a sliding window starts later)
            head_weights(module, q, key, mask, self.heads, dest[None, :, None, end - k_len : end], **kw)
            return
        else:  # a static cache: the keys past the query are masked slots
            w = torch.empty((1, dest.shape[0], 1, k_len), dtype=torch.float32, device=dest.device)
            head_weights(module, q, key, mask, self.heads, w, **kw)
        if k_len <= end:
            dest[:, end - k_len : end] = w[0, :, 0]
        else:
            dest[:, :end] = w[0, :, 0, :end]


def recorder(
    loaded: LoadedModel,
    inputs: dict[str, Any],
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    max_new: int,
    prompt_rows: bool = False,
) -> StepRecorder:
    """Zeroed [layers, heads, new, width] buffers for the streams generation records."""
    import torch

    cap = loaded.capture
    streams = ["decoder", "cross"] if cap.encoder_decoder else ["self"]
    n_layers = cap.layer_counts.get(streams[0], 0)
    layer_list = resolve_indices(layers, n_layers, "layer", loaded.name) or list(range(n_layers))
    head_list = resolve_indices(heads, cap.num_heads, "head", loaded.name)
    n_heads = len(head_list) if head_list is not None else cap.num_heads
    prompt_len = inputs["input_ids"].shape[1]
    start = {"decoder": 1} if cap.encoder_decoder else {"self": prompt_len}
    device = inputs["input_ids"].device
    widths = {s: prompt_len if s == "cross" else start[s] + max_new for s in streams}
    check_size(4 * len(layer_list) * n_heads * max_new * sum(widths.values()), str(device))
    buffers = {
        s: torch.zeros((len(layer_list), n_heads, max_new, w), device=device) for s, w in widths.items()
    }  # stream -> [layers, heads, new, width] float32
    return StepRecorder(
        index=cap.index,
        rows={s: {layer: i for i, layer in enumerate(layer_list)} for s in streams},
        heads=head_list,
        buffers=buffers,
        start=start,
        prompt=torch.zeros((len(layer_list), n_heads, prompt_len, prompt_len), device=device)
        if prompt_rows and not cap.encoder_decoder
        else None,
    )


_SAMPLING = threading.Lock()


@contextmanager
def sampling(sample: bool | None, seed: int | None) -> Iterator[None]:
    """Sampling draws from torch's one global generator: one sampling run at a time, seeded inside
    the lock, so a seed gives the same text whatever other threads sample meanwhile."""
    if not sample:
        yield
        return
    import torch

    with _SAMPLING:
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


def check_size(n_bytes: int, device: str) -> None:
    """InputError, before anything is allocated, for a result larger than half the machine's memory."""
    import os

    if device != "cpu":
        return
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return
    if n_bytes > total // 2:
        raise InputError(
            f"recording would need {n_bytes / 1e9:.1f} GB for its rows ({total / 1e9:.0f} GB of memory "
            f"here): record fewer {param('layers')} or {param('heads')}, or fewer {param('max_new_tokens')}"
        )
