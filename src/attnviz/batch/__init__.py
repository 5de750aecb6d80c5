"""Corpus analyses: per-head statistics for many texts, streamed to Parquet.

The pipeline, one window of `texts_per_part` texts at a time (so memory stays flat):

1. read (`corpus`): records with their line number; bad ones become `Reject`s (never exceptions);
2. bucket (`bucketing`): tokenise the window once for lengths, reject over-long texts, sort by
   length and cut into batches (capped by `batch_size` and an attention-memory budget);
3. analyse (`analyzer`, `statistics`): one forward pass per batch records only the asked layers
   and heads; every statistic is computed over the whole padded batch in torch with validity
   masks, so padding never enters a number and the values equal those of the text alone
   (`statistics_of` is the per-text reference the tests compare against);
4. commit (`store`, `run`): each part is written under a hidden temporary name, then renamed: a
   killed run leaves only complete parts, and `--resume` continues without duplicating or
   skipping a text; `summary` reads the parts back.

Output folder (side files start with `_` so `pandas.read_parquet(OUTDIR)` reads only the parts):

    heads/part-*.parquet   long table: text_id, layer, head, n_tokens, one column per statistic
    _texts/part-*.parquet  text_id, line, n_tokens, truncated, text
    _summary.csv           per head: role, and mean / std / count of every statistic
    _plots/*.png           layers x heads maps of mean entropy and of role
    _rejects.jsonl         one line per rejected record: text_id, line, reason, detail, excerpt
    _run.json              configuration, versions, timings and counts
    _attention/*.safetensors  raw [layers, heads, n, n] tensors, with --save-attention only
"""

from __future__ import annotations

from attnviz.batch.analyzer import Analyzer, BatchResult, Timings
from attnviz.batch.bucketing import Entry
from attnviz.batch.lifecycle import BatchRun, Engine, RunProgress, RunState, drive
from attnviz.batch.records import TextStats, iter_records, records_frame
from attnviz.batch.run import LocalEngine, run_batch_analysis
from attnviz.batch.statistics import STATISTICS, Statistic, find_unit, stat_columns, statistics_of, word_units
from attnviz.batch.store import (
    ATTENTION_DIR,
    HEADS_DIR,
    LOCK_FILE,
    OUR_FILES,
    PLOTS_DIR,
    REJECTS_FILE,
    RUN_FILE,
    RUN_FORMAT,
    SUMMARY_FILE,
    TEXTS_DIR,
    OutputError,
    OutputFolder,
    check_outdir,
)
from attnviz.batch.summary import read_results, summarise, summary_plots
from attnviz.config import BatchConfig, Probe
from attnviz.corpus import (
    CorpusReadError,
    Item,
    Reject,
    Source,
    check_input,
    count_records,
    detect_format,
    read_corpus,
)

__all__ = [
    "ATTENTION_DIR",
    "HEADS_DIR",
    "LOCK_FILE",
    "OUR_FILES",
    "PLOTS_DIR",
    "REJECTS_FILE",
    "RUN_FILE",
    "RUN_FORMAT",
    "STATISTICS",
    "SUMMARY_FILE",
    "TEXTS_DIR",
    "Analyzer",
    "BatchConfig",
    "BatchResult",
    "BatchRun",
    "CorpusReadError",
    "Engine",
    "Entry",
    "Item",
    "LocalEngine",
    "OutputError",
    "OutputFolder",
    "Probe",
    "Reject",
    "RunProgress",
    "RunState",
    "Source",
    "Statistic",
    "TextStats",
    "Timings",
    "check_input",
    "check_outdir",
    "count_records",
    "detect_format",
    "drive",
    "find_unit",
    "iter_records",
    "read_corpus",
    "read_results",
    "records_frame",
    "run_batch_analysis",
    "stat_columns",
    "statistics_of",
    "summarise",
    "summary_plots",
    "word_units",
]
