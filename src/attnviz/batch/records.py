"""Records for Python callers: windows of texts -> batches -> one `TextStats` per text, nothing written."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.batch.analyzer import Analyzer, BatchResult, Timings
from attnviz.batch.config import BatchConfig
from attnviz.batch.corpus import Item, Reject, Source, read_corpus
from attnviz.models.loading import load_model

if TYPE_CHECKING:
    import pandas as pd

    from attnviz.models.loading import LoadedModel


@dataclass(frozen=True)
class TextStats:
    """One text's statistics: what `iter_records` yields and a Parquet part holds per text."""

    text_id: int
    line: int
    text: str
    n_tokens: int
    truncated: int
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    values: dict[str, np.ndarray]  # column -> [layers, heads] float32

    def rows(self) -> list[dict[str, Any]]:
        """Long-table rows (text_id, layer, head, n_tokens, statistics), as in the Parquet parts."""
        out = []
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(self.heads):
                row: dict[str, Any] = {
                    "text_id": self.text_id,
                    "layer": layer,
                    "head": head,
                    "n_tokens": self.n_tokens,
                }
                row.update({k: float(v[li, hi]) for k, v in self.values.items()})
                out.append(row)
        return out


def split(result: BatchResult, layers: Sequence[int], heads: Sequence[int]) -> list[TextStats]:
    """A batch's column-wise statistics as one TextStats per text."""
    return [
        TextStats(
            text_id=int(result.text_ids[b]),
            line=int(result.lines[b]),
            text=result.texts[b],
            n_tokens=int(result.n_tokens[b]),
            truncated=int(result.truncated[b]),
            layers=tuple(layers),
            heads=tuple(heads),
            values={k: v[b] for k, v in result.stats.items()},
        )
        for b in range(len(result))
    ]


WINDOW_END = object()  # marks the end of a bucketing window: a natural commit point


def windows(
    records: Iterable[Item | Reject],
    size: int,
    skip: Callable[[int], bool] | None = None,
    timings: Timings | None = None,
) -> Iterator[Reject | list[Item]]:
    """Records -> read rejects, and windows of up to `size` texts (what is skipped left out)."""
    window: list[Item] = []
    it = iter(records)
    while True:
        t0 = time.perf_counter()
        rec = next(it, None)
        if timings is not None:
            timings.read += time.perf_counter() - t0
        if rec is not None:
            if skip is not None and skip(rec.text_id):
                continue
            if isinstance(rec, Reject):
                yield rec
                continue
            window.append(rec)
            if len(window) < size:
                continue
        if window:
            yield window
            window = []
        if rec is None:
            return


def events(
    records: Iterable[Item | Reject],
    analyzer: Analyzer,
    skip: Callable[[int], bool] | None = None,
) -> Iterator[BatchResult | Reject | object]:
    """Windows of texts -> rejects, batch results, and WINDOW_END after each window."""
    for window in windows(records, analyzer.config.texts_per_part, skip, analyzer.timings):
        if isinstance(window, Reject):
            yield window
            continue
        batches, rejects = analyzer.bucket(window)
        yield from rejects
        for batch in batches:
            yield analyzer.analyse(batch)
        yield WINDOW_END


def free_cpus() -> int:
    """The CPUs this process may use that other work is not using now (1-minute load), at least 1.

    Torch starts one intra-op thread per core; on a busy machine those threads wait on each other
    and a batch ran 3-10x slower than with one thread (issue 20), so the default asks what is free.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): every CPU
        return cpus
    return max(1, min(cpus, int(cpus - load + 0.5)))


def threads_for(config: BatchConfig) -> int:
    """Torch threads for a run: as configured, else the CPUs free now (`free_cpus`)."""
    return config.threads if config.threads is not None else free_cpus()


@contextlib.contextmanager
def torch_threads(config: BatchConfig) -> Iterator[int]:
    """Torch's threads set for a run (`threads_for`) and given back after it: the caller's process
    (a notebook, a test session) keeps its own setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads_for(config))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def load(config: BatchConfig, loaded: LoadedModel | None) -> LoadedModel:
    """The model to run: the one given, else loaded from the config."""
    if loaded is not None:
        return loaded

    return load_model(
        config.model, device=config.device, dtype=config.dtype, trust_remote_code=config.trust_remote_code
    )


def iter_records(
    texts: Source,
    config: BatchConfig | None = None,
    *,
    model: LoadedModel | None = None,
    on_reject: Callable[[Reject], None] | None = None,
) -> Iterator[TextStats]:
    """Analyse texts (an iterable of strings, or a corpus file) and yield one TextStats per text.

    Texts come out in input order within each window of `config.texts_per_part`; rejected
    records go to `on_reject` (ignored when None). Nothing is written.
    """
    config = config or BatchConfig()
    with torch_threads(config):  # given back when the iteration ends or is closed
        analyzer = Analyzer(load(config, model), config)
        pending: list[TextStats] = []
        for ev in events(read_corpus(texts, config.format, config.field, config.column), analyzer):
            if isinstance(ev, Reject):
                if on_reject is not None:
                    on_reject(ev)
            elif isinstance(ev, BatchResult):
                pending += split(ev, analyzer.layer_ids, analyzer.head_ids)
            else:
                pending.sort(key=lambda r: r.text_id)
                yield from pending
                pending = []


def records_frame(texts: Source, config: BatchConfig | None = None, **kwargs: Any) -> pd.DataFrame:
    """The long table of `iter_records` as a pandas DataFrame (the Parquet parts' layout)."""
    import pandas as pd

    rows = [row for rec in iter_records(texts, config, **kwargs) for row in rec.rows()]
    return pd.DataFrame(rows)
