"""Path patching: does a sender head act on the answer through given receiver heads' q, k or v?

Exact, in two forward passes of the destination text (the corrupt one when denoising):
1. the sender's output is taken from the source run and every head that is neither the sender nor
   a receiver is frozen at its output in the destination run (MLPs recompute, so paths through
   them count, as in Wang et al. 2022); the receivers' chosen inputs (queries, keys or values, as
   the attention function receives them) are recorded;
2. the destination runs again with only those inputs replaced by the recorded ones; everything else
   computes freely, and the metric is read.
No linear approximation anywhere. On a grouped-query model a key or value belongs to a group of
query heads: patching it patches the whole group, and the result says so. The receiver "logits"
is the residual stream leaving the last layer (what the unembedding reads), so "every downstream
component" is expressible and equals activation patching of the sender.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnviz.errors import InputError, param
from attnviz.heads.interventions import intervening
from attnviz.heads.patching import (
    check_options,
    for_patching,
    forward,
    metric_of,
    normalised,
    prepare,
    readout,
    record,
)
from attnviz.models.architecture import require_interface
from attnviz.outputs import read_arrays, write_arrays

VIA = ("q", "k", "v")
LOGITS = "logits"
FORMAT = "attnviz-path-patching-1"
Receiver = tuple[int, int] | str


@dataclass(frozen=True)
class PathPatching:
    """The metric with the sender's effect let through the receivers' inputs only."""

    model: str
    metric: str
    stream: str
    answer: str | None
    wrong: str | None
    clean_text: str
    corrupt_text: str
    sender: tuple[int, int]
    receivers: tuple[Receiver, ...]
    via: str  # letters of "qkv"
    clean: float
    corrupt: float
    patched: float
    noising: bool = False
    note: str = ""  # e.g. which key/value groups a grouped-query path patched
    seconds: float = 0.0

    @property
    def effect(self) -> float:
        """`patched` normalised: 0 = the corrupt run's metric, 1 = the clean run's."""
        return float(normalised(self.patched, self.clean, self.corrupt))

    def as_dict(self) -> dict[str, Any]:
        eff = self.effect
        return {
            "model": self.model,
            "metric": self.metric,
            "answer": self.answer,
            "wrong": self.wrong,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "patched": self.patched,
            "effect": None if eff != eff else eff,
            "sender": list(self.sender),
            "receivers": [r if isinstance(r, str) else list(r) for r in self.receivers],
            "via": self.via,
            "note": self.note,
        }

    def save(self, path: str | Path) -> Path:
        """Write to .safetensors or .npz (never pickle)."""

        meta = {k: v for k, v in self.__dict__.items() if k != "patched"}
        meta["format"] = FORMAT
        arrays = {"patched": np.array([self.patched], dtype=np.float64)}
        return write_arrays(Path(path), arrays, json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path) -> PathPatching:
        what = "path-patching file from `attnviz patch -o`"
        meta, arrays = read_arrays(Path(path), what)
        if meta.pop("format", None) != FORMAT or "patched" not in arrays:
            raise InputError(f"{path} is not a {what}")
        meta["sender"] = tuple(meta["sender"])
        meta["receivers"] = tuple(r if isinstance(r, str) else tuple(r) for r in meta["receivers"])
        return cls(patched=float(arrays["patched"][0]), **meta)

    def _repr_html_(self) -> str:
        import html

        recv = ", ".join(r if isinstance(r, str) else f"L{r[0]}H{r[1]}" for r in self.receivers)
        return html.escape(
            f"{self.model}: L{self.sender[0]}H{self.sender[1]} -> {recv} via {self.via}: {self.metric}"
            f" {self.patched:.4f} (clean {self.clean:.4f}, corrupt {self.corrupt:.4f}), effect"
            f" {self.effect:+.3f}. {self.note}"
        )


def parse_unit(value: str, what: str = "sender") -> tuple[int, int]:
    """'9.6' -> (9, 6); a one-line error otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*[.:]\s*(\d+)\s*", value)
    if not m:
        raise InputError(f"bad {param(what)} '{value}': use LAYER.HEAD like 9.6")
    return int(m.group(1)), int(m.group(2))


def parse_receivers(value: str) -> tuple[Receiver, ...]:
    """'10.7,11.10' (or 'logits') -> ((10, 7), (11, 10))."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise InputError(f"{param('receivers')} is empty: give LAYER.HEAD,... like 10.7,11.10")
    return tuple(dict.fromkeys(p if p == LOGITS else parse_unit(p, "receivers") for p in parts))


def check_path(sender: tuple[int, int], receivers: Sequence[Receiver], via: str) -> str:
    """Before any model loads: `via` letters, and every receiver downstream of the sender."""
    letters = "".join(dict.fromkeys(via.replace(",", "")))
    if not letters or any(c not in VIA for c in letters):
        raise InputError(f"unknown {param('via')} '{via}': use q, k or v (or several, like qkv)")
    if not receivers:
        raise InputError(f"no receiver: give {param('receivers')} as LAYER.HEAD,...")
    for r in receivers:
        if isinstance(r, str):
            if r != LOGITS:
                raise InputError(f"unknown receiver '{r}': use LAYER.HEAD or {LOGITS}")
            continue
        if r[0] <= sender[0]:
            raise InputError(
                f"sender {sender[0]}.{sender[1]} is not upstream of receiver {r[0]}.{r[1]}: a receiver"
                f" must be in a later layer than the sender (layer {sender[0]})"
            )
    return letters


def _check_ranges(loaded: Any, stream: str, sender: tuple[int, int], receivers: Sequence[Receiver]) -> None:
    n_layers = loaded.capture.layer_counts[stream]
    n_heads = loaded.capture.num_heads
    for layer, head in [sender, *[r for r in receivers if not isinstance(r, str)]]:
        if not 0 <= layer < n_layers:
            raise InputError(f"layer {layer} is out of range: {loaded.name} has layers 0-{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise InputError(f"head {head} is out of range: {loaded.name} has heads 0-{n_heads - 1}")


def path_patch(
    clean: str,
    corrupt: str,
    model: Any = "smollm2",
    *,
    sender: tuple[int, int],
    receivers: Sequence[Receiver],
    via: str = "q",
    answer: str | None = None,
    wrong: str | None = None,
    metric: str | None = None,
    noising: bool = False,
    stream: str | None = None,
) -> PathPatching:
    """Patch `sender`'s effect into `receivers`' `via` inputs only (two exact passes): a `PathPatching`."""
    import time

    import torch

    sender = (int(sender[0]), int(sender[1]))
    receivers = tuple(r if isinstance(r, str) else (int(r[0]), int(r[1])) for r in receivers)
    letters = check_path(sender, receivers, via)
    chosen = check_options(answer, wrong, metric, "heads", None, False)
    loaded = for_patching(model)
    require_interface(loaded, "path patching (the receivers' queries, keys or values)")
    setup = prepare(loaded, clean, corrupt, answer, wrong, chosen, None, stream)
    _check_ranges(loaded, setup.stream, sender, receivers)
    start = time.perf_counter()
    with torch.inference_mode():
        base = {t: float(metric_of(setup, readout(setup, setup.ids[t]))[0]) for t in ("clean", "corrupt")}
    src, dst = ("corrupt", "clean") if noising else ("clean", "corrupt")
    n = loaded.capture.layer_counts[setup.stream]
    heads_keys = [("head", layer) for layer in range(n)]
    from_src = record(setup, src, {"head"}, [("head", sender[0])])
    from_dst = record(setup, dst, {"head"}, heads_keys)
    heads = [r for r in receivers if not isinstance(r, str)]
    # pass 1: the sender from the source, every other head but the receivers frozen at the destination
    sources, masks = {}, {}
    for key in heads_keys:
        out = from_dst[key].clone()
        mask = torch.ones(out.shape[:3], dtype=torch.bool)
        if key[1] == sender[0]:
            out[:, :, sender[1]] = from_src[key][:, :, sender[1]]
        for layer, head in heads:
            if layer == key[1]:
                mask[:, :, head] = False
        sources[key], masks[key] = out, mask
    wanted = [(c, layer) for layer in sorted({r[0] for r in heads}) for c in letters]
    if LOGITS in receivers:
        wanted.append(("resid", n))
    kinds = {"head", "qkv"} | ({"resid"} if LOGITS in receivers else set())
    with torch.inference_mode(), intervening(loaded, setup.stream, kinds) as state:
        state.sources, state.masks, state.record = sources, masks, set(wanted)
        forward(setup, setup.ids[dst])
        recorded = dict(state.saved)
    # pass 2: only the receivers' chosen inputs replaced
    masks2, note = _receiver_masks(loaded, recorded, heads, letters)
    if LOGITS in receivers:
        masks2[("resid", n)] = torch.ones(recorded[("resid", n)].shape[:2], dtype=torch.bool)
    with torch.inference_mode(), intervening(loaded, setup.stream, kinds) as state:
        state.sources, state.masks = recorded, masks2
        patched = float(metric_of(setup, readout(setup, setup.ids[dst]))[0])
    return PathPatching(
        model=loaded.name, metric=setup.metric, stream=setup.stream, answer=answer, wrong=wrong,
        clean_text=clean, corrupt_text=corrupt, sender=sender, receivers=receivers, via=letters,
        clean=base["clean"], corrupt=base["corrupt"], patched=patched, noising=noising,
        note=" ".join(x for x in (setup.reason, note) if x), seconds=time.perf_counter() - start,
    )  # fmt: skip


def _receiver_masks(
    loaded: Any, recorded: dict[Any, Any], heads: Sequence[tuple[int, int]], letters: str
) -> tuple[dict[Any, Any], str]:
    """Where pass 2 replaces: [1, n, heads] for queries, [1, n, kv heads] for a key/value group."""
    import torch

    masks: dict[Any, Any] = {}
    groups: list[str] = []
    for c in letters:
        for layer, head in heads:
            x = recorded[(c, layer)]  # [1, n, heads or kv heads, d]
            mask = masks.setdefault((c, layer), torch.zeros(x.shape[:3], dtype=torch.bool))
            n_heads = loaded.capture.num_heads
            rep = max(1, n_heads // x.shape[2])
            index = head if c == "q" else head // rep
            mask[:, :, index] = True
            if c != "q" and rep > 1:
                first, last = index * rep, index * rep + rep - 1
                groups.append(f"L{layer}H{head}'s {c} is group {index} (heads {first}-{last})")
    note = ""
    if groups:
        note = (
            "grouped-query: a key/value path patches the whole key/value group, shared by its query"
            " heads: " + "; ".join(dict.fromkeys(groups))
        )
    return masks, note
