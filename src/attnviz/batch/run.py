"""`run_batch_analysis`, and the local engine: texts analysed in this process, batch by batch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.batch.analyzer import Analyzer, RunShape
from attnviz.batch.config import BatchConfig
from attnviz.batch.corpus import CorpusReadError, Reject, Source, read_corpus
from attnviz.batch.lifecycle import BatchRun, RunProgress, RunState, Windows, drive, model_record
from attnviz.batch.records import load, torch_threads
from attnviz.batch.store import HEADS_DIR, OutputFolder
from attnviz.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from attnviz.models.loading import LoadedModel

__all__ = ["BatchRun", "LocalEngine", "RunProgress", "run_batch_analysis"]


class LocalEngine:
    """The default engine: one model in this process; parts committed every `commit_seconds`."""

    def __init__(self, config: BatchConfig, model: LoadedModel | None = None) -> None:
        self.config = config
        self.model = model
        self.analyzer: Analyzer | None = None
        self.details: dict[str, Any] | None = None

    def prepare(self) -> tuple[RunShape, dict[str, Any]]:
        """Load the model (or take the one given) and check the settings against it."""
        self.analyzer = Analyzer(load(self.config, self.model), self.config)
        import torch

        # the threads chosen (free CPUs when not set): what to compare when a run was slow
        self.details = {"name": "local", "threads": torch.get_num_threads()}
        return self.analyzer, model_record(self.analyzer)

    def analyse(self, windows: Windows, state: RunState) -> None:
        """Bucket each window, analyse its batches, commit at least once per window."""
        assert self.analyzer is not None, "prepare() first"
        for window in windows:
            if isinstance(window, Reject):
                state.reject(window)
                continue
            batches, rejects = self.analyzer.bucket(window)
            for rej in rejects:
                state.reject(rej)
            for batch in batches:
                state.add(self.analyzer.analyse(batch), self.config.commit_seconds)
            if state.pending:
                state.commit()
        state.commit()

    def salvage(self, state: RunState, interrupted: bool) -> None:
        """Batches analysed but not yet committed are complete: commit them."""
        state.commit()


def run_batch_analysis(
    texts_or_path: Source,
    config: BatchConfig | None,
    outdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    model: LoadedModel | None = None,
    progress: Callable[[RunProgress], None] | None = None,
    folder: OutputFolder | None = None,
) -> BatchRun:
    """Analyse a corpus into `outdir`: Parquet parts, summary, plots, rejects and `_run.json`.

    `texts_or_path`: an iterable of strings, a path (.txt, .jsonl, .csv, .parquet, .gz) or "-".
    Safe to interrupt: committed parts stay; `resume=True` continues where a run stopped.
    `folder`: the output folder already checked and locked (as the CLI does before loading).
    """
    config = config or BatchConfig()
    own = folder is None
    folder = folder or OutputFolder(outdir, config, texts_or_path, resume, overwrite)
    try:
        if (done := already_complete(folder, texts_or_path, config)) is not None:
            return done
        if config.engine == "ray":
            from attnviz.batch.ray_engine import run_on_ray

            return run_on_ray(texts_or_path, config, folder, progress, model)
        with torch_threads(config):  # this process's setting is given back after the run
            return drive(LocalEngine(config, model), texts_or_path, config, folder, progress)
    finally:
        if own:
            folder.release()


def already_complete(folder: OutputFolder, source: Source, config: BatchConfig) -> BatchRun | None:
    """The earlier run, when `--resume` finds it complete over every record of the same file.

    Reading the input is cheap; loading a model to skip every text is not. Text ids are record
    numbers, so a file that still holds as many records as the run counted has nothing left.
    """
    previous = folder.previous
    if previous is None or folder.overwrite or previous.get("status") != "complete":
        return None
    if not isinstance(source, str | Path) or str(source) == "-":  # stdin cannot be read twice
        return None
    counts = previous.get("counts") or {}
    texts, rejected = counts.get("texts"), counts.get("rejected")
    if not isinstance(texts, int) or not isinstance(rejected, int):
        return None
    try:
        records = sum(1 for _ in read_corpus(source, config.format, config.field, config.column))
    except (CorpusReadError, InputError, OSError):
        return None  # the run itself says what is wrong
    if records != texts + rejected:
        return None
    listed = previous.get("manifest") or {}
    if any(n.startswith(HEADS_DIR + "/") and not (folder.outdir / n).is_file() for n in listed):
        return None  # a part was moved away (a damaged one): its texts are analysed again
    return BatchRun(
        outdir=folder.outdir,
        processed=0,
        rejected=0,
        resumed=texts,
        resumed_rejects=rejected,
        parts=0,
        seconds=0.0,
        timings={},
        status="complete",
        run=previous,
    )
