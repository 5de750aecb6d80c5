"""The analyser: batches through a loaded model, recorded attention turned into statistics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from attnviz.analyses.attribution import PURPOSE, head_attribution
from attnviz.analyses.norms import batch_value_norms, output_projections
from attnviz.analyses.residual import plan, with_head
from attnviz.batch.bucketing import Entry, cut_batches, encode, tokenize_window
from attnviz.batch.config import BatchConfig
from attnviz.batch.corpus import Item, Reject
from attnviz.batch.statistics import Masks, batch_statistics, probe_masks, stat_columns
from attnviz.errors import InputError
from attnviz.extraction import model_inputs
from attnviz.selection import resolve_indices

if TYPE_CHECKING:
    from attnviz.attention import Encoded
    from attnviz.models.loading import LoadedModel


@dataclass
class BatchResult:
    """The statistics of one batch, column-wise: what a Parquet part is built from."""

    text_ids: np.ndarray  # [B] int64
    lines: np.ndarray  # [B] int64
    n_tokens: np.ndarray  # [B] int32
    truncated: np.ndarray  # [B] int32
    texts: list[str]
    stats: dict[str, np.ndarray]  # column -> [B, layers, heads] float32
    attention: list[np.ndarray] | None = None  # per text [layers, heads, n, n] (--save-attention)
    tokens: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.text_ids)


@dataclass
class Timings:
    """Where the time goes, summed over a run (seconds)."""

    read: float = 0.0
    tokenize: float = 0.0
    forward: float = 0.0
    statistics: float = 0.0
    write: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


class RunShape(Protocol):
    """What the store and `_run.json` need of an analysis, whichever engine (or process) runs it."""

    config: BatchConfig
    timings: Timings

    @property
    def model_name(self) -> str: ...

    @property
    def layer_ids(self) -> list[int]: ...

    @property
    def head_ids(self) -> list[int]: ...

    @property
    def columns(self) -> list[str]: ...


class Analyzer:
    """Runs batches through a loaded model and turns recorded attention into statistics."""

    def __init__(self, loaded: LoadedModel, config: BatchConfig) -> None:
        self.loaded = loaded
        self.config = config
        cap = loaded.capture
        self.layers = resolve_indices(config.layers, loaded.num_layers, "layer", loaded.name)
        self.heads = resolve_indices(config.heads, cap.num_heads, "head", loaded.name)
        self.layer_ids = self.layers if self.layers is not None else list(range(cap.num_layers))
        self.head_ids = self.heads if self.heads is not None else list(range(cap.num_heads))
        self.stream = "encoder" if cap.encoder_decoder else "self"
        self.causal = bool(cap.causal)
        limits = [x for x in (config.max_length, loaded.max_length) if x]
        self.limit = min(limits) if limits else None
        self.columns = stat_columns(config)
        self.timings = Timings()
        self._punct: dict[str, bool] = {}
        self._projections: dict[int, np.ndarray] | None = None  # output projections, for `norm`
        if "norm" in config.statistics:  # a model whose projections cannot be read fails here, at once
            from attnviz.analyses.norms import output_projections

            self._projections = output_projections(loaded)
        self._with_head = self._dla_model() if "dla" in config.statistics else None

    def _dla_model(self) -> LoadedModel:
        """The model with its LM head for the `dla` statistic (refused at once where it cannot run)."""

        if self.loaded.capture.encoder_decoder:
            raise InputError(
                f"the dla statistic attributes a decoder's prediction, but {self.loaded.name}'s batch "
                "statistics are its encoder's heads: leave dla out for an encoder-decoder"
            )
        loaded = with_head(self.loaded, PURPOSE)
        plan(loaded, PURPOSE)  # no LM head, post-norm, own attention code: one line now
        return loaded

    def _dla(self, enc: Encoded) -> np.ndarray:
        """[B, layers, heads]: each text's per-head direct logit attribution (one pass per text)."""

        assert self._with_head is not None
        maps = [
            head_attribution(self._with_head, enc.input_ids[b, :n].tolist())
            for b, n in enumerate(enc.lengths)
        ]
        return np.stack([m[self.layer_ids][:, self.head_ids] for m in maps]).astype(np.float32)

    @property
    def model_name(self) -> str:
        return self.loaded.name

    def bucket(self, items: list[Item]) -> tuple[list[list[Entry]], list[Reject]]:
        """Reject over-long and token-less texts; sort the rest by length into batches.

        The window is tokenised once here; batches reuse it (only texts to cut are tokenised again).
        """
        start = time.perf_counter()
        entries, rejects = tokenize_window(self.loaded, self.config, items, self.limit)
        batches = cut_batches(entries, self.config, len(self.layer_ids) * len(self.head_ids))
        self.timings.tokenize += time.perf_counter() - start
        return batches, rejects

    def analyse(self, batch: Sequence[Entry | Item]) -> BatchResult:
        """One forward pass and every statistic of a batch (texts of similar length)."""
        import torch

        t0 = time.perf_counter()
        entries = [e if isinstance(e, Entry) else Entry(e, 0) for e in batch]
        enc = encode(self.loaded, self.config, entries)
        t1 = time.perf_counter()
        rec = self._forward(enc)
        t2 = time.perf_counter()
        weights = [rec.weights[(self.stream, layer)] for layer in self.layer_ids]  # [B, H, L, L] each
        with torch.inference_mode():
            masks = Masks(enc, self.causal, weights[0].device, self._is_punct)
            probes = probe_masks(enc, self.config, weights[0].device) if self.config.probes else []
            norms = self._norms(rec) if "norm" in self.config.statistics else None
            stats = batch_statistics(weights, masks, self.config, probes, norms)
        if self._with_head is not None:
            stats["dla"] = self._dla(enc)
        attention = self._saved(weights, enc) if self.config.save_attention else None
        t3 = time.perf_counter()
        self.timings.tokenize += t1 - t0
        self.timings.forward += t2 - t1
        self.timings.statistics += t3 - t2
        return BatchResult(
            text_ids=np.array([e.item.text_id for e in entries], dtype=np.int64),
            lines=np.array([e.item.line for e in entries], dtype=np.int64),
            n_tokens=np.array(enc.lengths, dtype=np.int32),
            truncated=np.array(enc.truncated, dtype=np.int32),
            texts=enc.texts,
            stats=stats,
            attention=attention,
            tokens=enc.tokens if attention is not None else None,
        )

    @staticmethod
    def _saved(weights: list[Any], enc: Encoded) -> list[np.ndarray]:
        """Per text its [layers, heads, n, n] float32 attention, padding cut off."""
        host = [w.float().cpu().numpy() for w in weights]
        return [
            np.ascontiguousarray(np.stack([h[b, :, :n, :n] for h in host])) for b, n in enumerate(enc.lengths)
        ]

    def _forward(self, enc: Encoded) -> Any:
        inputs, _ = model_inputs(self.loaded, enc)  # statistics use the encoder; a decoder reads the text
        return self.loaded.capture.run(inputs, self.layers, self.heads, qkv="norm" in self.config.statistics)

    def _norms(self, rec: Any) -> list[Any]:
        """Per layer [B, H, L] value-vector norms (the `norm` statistic); projections read once."""

        if self._projections is None:
            self._projections = output_projections(self.loaded)
        return batch_value_norms(
            self.loaded, rec.vectors, self.stream, self.layer_ids, self.head_ids, self._projections
        )

    def _is_punct(self, token: str) -> bool:
        hit = self._punct.get(token)
        if hit is None:
            from attnviz.heads.patterns import is_punctuation

            hit = self._punct[token] = is_punctuation(token)
        return hit
