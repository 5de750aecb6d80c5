"""The run lifecycle every batch engine shares: prepare, windows, analyse, commit, finish.

`drive` owns what is the same whichever engine analyses: the output folder, the store, the
`_run.json` record, reading the corpus into windows, the error paths, and the summary. An
`Engine` (local: `run.LocalEngine`; Ray: `ray_engine.RayEngine`) only prepares its model(s)
and analyses windows, committing through the `RunState` it is given.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from attnviz import __version__
from attnviz.batch.config import BatchConfig
from attnviz.batch.corpus import (
    CorpusReadError,
    Item,
    Reject,
    Source,
    count_records,
    detect_format,
    input_label,
    read_corpus,
)
from attnviz.batch.records import windows
from attnviz.batch.store import (
    ATTENTION_DIR,
    HEADS_DIR,
    PLOTS_DIR,
    REJECTS_FILE,
    RUN_FILE,
    RUN_FORMAT,
    SUMMARY_FILE,
    TEXTS_DIR,
    OutputFolder,
    Store,
    atomic_write,
    clear_run,
    identity,
    write_json,
    writing,
)
from attnviz.batch.summary import summarise, summary_plots
from attnviz.errors import InputError

if TYPE_CHECKING:
    from attnviz.batch.analyzer import Analyzer, BatchResult, RunShape


@dataclass
class RunProgress:
    """What a progress display needs: counts so far (this run and before) and the total if known."""

    processed: int
    rejected: int
    total: int | None
    before: int = 0  # texts and rejects already done by earlier runs (--resume)

    @property
    def done(self) -> int:
        return self.processed + self.rejected + self.before


@dataclass
class BatchRun:
    """What `run_batch_analysis` did: counts, timings and where everything is."""

    outdir: Path
    processed: int  # texts analysed in this run
    rejected: int  # records rejected in this run
    resumed: int  # texts already committed by earlier runs (--resume)
    resumed_rejects: int
    parts: int  # Parquet parts written in this run
    seconds: float
    timings: dict[str, float]
    status: str
    run: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def total_processed(self) -> int:
        return self.processed + self.resumed

    @property
    def total_rejected(self) -> int:
        return self.rejected + self.resumed_rejects

    @property
    def texts_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "outdir": str(self.outdir),
            "status": self.status,
            "processed": self.processed,
            "rejected": self.rejected,
            "resumed": self.resumed,
            "resumed_rejects": self.resumed_rejects,
            "total_processed": self.total_processed,
            "total_rejected": self.total_rejected,
            "parts": self.parts,
            "seconds": round(self.seconds, 3),
            "texts_per_second": round(self.texts_per_second, 2),
            "timings": self.timings,
        }


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"attnviz": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "numpy", "pyarrow", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def model_record(analyzer: Analyzer) -> dict[str, Any]:
    """What `_run.json` says of the model and what is recorded (a Ray worker sends it to the driver)."""
    loaded = analyzer.loaded
    return {
        "model": {
            "name": loaded.name,
            "path": loaded.source.path,
            "kind": loaded.kind,
            "causal": loaded.causal,
            "num_layers": loaded.num_layers,
            "num_heads": loaded.capture.num_heads,
            "max_length": analyzer.limit,
            "device": loaded.device,
            "dtype": loaded.dtype,
        },
        "layers": analyzer.layer_ids,
        "heads": analyzer.head_ids,
        "columns": ["text_id", "layer", "head", "n_tokens", *analyzer.columns],
    }


def run_record(source: Source, config: BatchConfig, model: dict[str, Any]) -> dict[str, Any]:
    """`_run.json` as it starts: what runs, over what, with what (`model_record`), and where each
    output goes."""
    return {
        "attnviz_run": RUN_FORMAT,
        "status": "running",
        "input": {"path": input_label(source), "format": detect_format(source, config.format)},
        "config": config.as_dict(),
        "identity": identity(config, source),
        **model,
        "versions": _versions(),
        "outputs": {
            "heads": HEADS_DIR,
            "texts": TEXTS_DIR if config.keep_texts else None,
            "summary": SUMMARY_FILE,
            "plots": PLOTS_DIR if config.plots else None,
            "rejects": REJECTS_FILE,
            "attention": ATTENTION_DIR if config.save_attention else None,
        },
    }


class RunState:
    """One session of a run: its counts, the batches not yet committed, and the `_run.json` it keeps."""

    def __init__(
        self,
        outdir: Path,
        shape: RunShape,
        store: Store,
        run: dict[str, Any],
        load_seconds: float,
        progress: Callable[[RunProgress], None] | None,
        total: int | None,
    ) -> None:
        self.outdir = outdir
        self.shape = shape
        self.store = store
        self.run = run
        self.load_seconds = load_seconds
        self.progress = progress
        self.total = total
        self.resumed = len(store.done_ids)
        self.resumed_rejects = len(store.reject_ids)
        self.session: dict[str, Any] = {"started": _now(), "resumed": bool(run.get("sessions"))}
        run["sessions"] = [*run.get("sessions", []), self.session]
        self.processed = 0  # texts committed in this session
        self.rejected = 0  # records rejected in this session
        self.read = 0  # records read, those skipped on resume included
        self.pending: list[BatchResult] = []  # analysed, not yet committed
        self.started = time.perf_counter()
        self.last_commit = self.started

    def record(self, status: str) -> None:
        """Rewrite `_run.json` with the counts so far."""
        elapsed = time.perf_counter() - self.started
        timings = self.shape.timings.as_dict()
        rate = round(self.processed / elapsed, 2) if elapsed > 0 else 0.0
        self.session.update(
            {
                "updated": _now(),
                "status": status,
                "processed": self.processed,
                "rejected": self.rejected,
                "seconds": round(elapsed, 3),
                "load_seconds": round(self.load_seconds, 3),
                "timings": timings,
                "texts_per_second": rate,
            }
        )
        texts = self.resumed + self.processed
        self.run["status"] = status
        self.run.setdefault("manifest", {}).update(self.store.written)  # what --overwrite may delete
        self.run["counts"] = {
            "texts": texts,
            "rejected": self.resumed_rejects + self.rejected,
            "parts": self.store.next_part,
            "rows": texts * len(self.shape.layer_ids) * len(self.shape.head_ids),
        }
        self.run["timings"] = {
            "load_s": round(self.load_seconds, 3),
            "run_s": round(elapsed, 3),
            **{f"{k}_s": v for k, v in timings.items()},
            "texts_per_second": rate,
        }
        write_json(self.outdir / RUN_FILE, self.run)

    def tick(self) -> None:
        """Tell the progress display (if any) the counts so far."""
        if self.progress is not None:
            analysed = self.processed + sum(len(r) for r in self.pending)
            before = self.resumed + self.resumed_rejects
            self.progress(RunProgress(analysed, self.rejected, self.total, before))

    def reject(self, rej: Reject) -> None:
        """A record that will not be analysed: written to the rejects file, counted."""
        self.store.reject(rej)
        self.rejected += 1
        self.tick()

    def add(self, result: BatchResult, commit_seconds: float) -> None:
        """An analysed batch, committed with the others once `commit_seconds` have passed."""
        self.store.save_attention(result)
        self.pending.append(result)
        if time.perf_counter() - self.last_commit > commit_seconds:
            self.commit()
        self.tick()

    def commit(self) -> None:
        """Write the pending batches as one part (an engine that analyses here)."""
        batch, self.pending = self.pending, []  # taken first: an interrupted write is redone on resume
        self.processed += self.store.commit(batch)
        self.last_commit = time.perf_counter()
        self.record("running")

    def committed(self, texts: int, part: int) -> None:
        """A part an engine wrote elsewhere (a Ray worker) is complete: count it."""
        self.processed += texts
        if texts:
            self.store.parts_written += 1
            self.store.next_part = max(self.store.next_part, part + 1)
        self.record("running")
        self.tick()

    def result(self) -> BatchRun:
        """What the run did, for the caller."""
        return BatchRun(
            outdir=self.outdir,
            processed=self.processed,
            rejected=self.rejected,
            resumed=self.resumed,
            resumed_rejects=self.resumed_rejects,
            parts=self.store.parts_written,
            seconds=time.perf_counter() - self.started,
            timings=self.shape.timings.as_dict(),
            status=str(self.run["status"]),
            run=self.run,
        )


Windows = Iterator[list[Item] | Reject]


class Engine(Protocol):
    """How texts are analysed; `drive` runs every engine through the same lifecycle."""

    details: dict[str, Any] | None  # what `_run.json` says of the engine ("engine"), if anything

    def prepare(self) -> tuple[RunShape, dict[str, Any]]:
        """Load the model (in every worker): what is recorded, and `model_record` of it."""
        ...

    def analyse(self, windows: Windows, state: RunState) -> None:
        """Analyse every window, committing each part through `state` (rejects to `state.reject`)."""
        ...

    def salvage(self, state: RunState, interrupted: bool) -> None:
        """The run stops early: commit what is complete and can be had without waiting long."""
        ...


def counted(records: Iterator[Item | Reject], state: RunState) -> Iterator[Item | Reject]:
    """The records, each one counted as read (a run that read nothing is refused at the end)."""
    for rec in records:
        state.read += 1
        yield rec


def drive(
    engine: Engine,
    source: Source,
    config: BatchConfig,
    folder: OutputFolder,
    progress: Callable[[RunProgress], None] | None,
) -> BatchRun:
    """One run, start to finish: prepare the engine, clear (--overwrite) only once that worked,
    open the store, feed the engine windows of texts, then summarise and mark the run complete."""
    start = time.perf_counter()
    shape, model = engine.prepare()
    load_seconds = time.perf_counter() - start
    previous = folder.previous
    folder.clear()  # --overwrite: only now that the model is loaded and the settings checked
    store = Store(folder.outdir, shape)
    run = run_record(source, config, model)
    run["sessions"] = list((previous or {}).get("sessions", []))
    run["manifest"] = dict((folder.previous or {}).get("manifest", {}))  # none left after --overwrite
    store.adopt(run["manifest"])
    if engine.details is not None:
        run["engine"] = engine.details
    total = count_records(source, config.format, config.column) if progress is not None else None
    state = RunState(folder.outdir, shape, store, run, load_seconds, progress, total)
    try:
        _analyse(engine, source, config, state)
        finish(state, config, source, fresh=previous is None)
        return state.result()
    finally:
        store.close()


def _analyse(engine: Engine, source: Source, config: BatchConfig, state: RunState) -> None:
    """Windows to the engine; on the way out keep what is complete and say why it stopped."""
    state.record("running")
    state.tick()
    records = counted(read_corpus(source, config.format, config.field, config.column), state)
    try:
        engine.analyse(windows(records, config.texts_per_part, state.store.skip, state.shape.timings), state)
    except (KeyboardInterrupt, CorpusReadError) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        with contextlib.suppress(BaseException):
            engine.salvage(state, interrupted)  # complete batches are worth keeping
        with contextlib.suppress(BaseException):
            state.record("interrupted" if interrupted else "failed")
        if isinstance(exc, CorpusReadError):
            done = state.resumed + state.processed
            raise CorpusReadError(f"{exc.message} ({done} texts before it are committed)") from None
        raise
    except BaseException:
        with contextlib.suppress(BaseException):
            state.record("failed")
        raise


def finish(state: RunState, config: BatchConfig, source: Source, fresh: bool) -> None:
    """Refuse an input that held nothing; else write the summary and plots and say complete."""
    if state.read == 0:
        if fresh:  # leave no run behind that a later run would have to --overwrite
            state.store.close()
            with contextlib.suppress(OSError):
                clear_run(state.outdir)
        else:
            with contextlib.suppress(BaseException):
                state.record("failed")
        if not isinstance(source, str | Path):
            what = "the texts given"
        else:
            what = "standard input" if str(source) == "-" else str(source)
        raise InputError(f"nothing was read: {what} held no records, so nothing was analysed")
    t0 = time.perf_counter()
    outdir = state.outdir
    summary = summarise(outdir)
    if summary is not None:
        store = state.store

        def write(path: Path) -> None:
            summary.to_csv(path, index=False, float_format="%.6g")

        atomic_write(outdir / SUMMARY_FILE, write, outdir, store.note)
        if config.plots:
            title = f"{state.run['model']['name']}, {state.resumed + state.processed} texts"
            with writing(outdir / PLOTS_DIR, outdir):
                for path in summary_plots(summary, outdir / PLOTS_DIR, title):
                    store.note(path)
    state.shape.timings.write += time.perf_counter() - t0
    state.record("complete")
