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

The names below are re-exported lazily: `import attnviz.batch.config` (read by the CLI at start-up)
loads neither pandas nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Analyzer": "attnviz.batch.analyzer",
    "BatchResult": "attnviz.batch.analyzer",
    "Timings": "attnviz.batch.analyzer",
    "Entry": "attnviz.batch.bucketing",
    "BatchConfig": "attnviz.batch.config",
    "Probe": "attnviz.batch.config",
    "CorpusReadError": "attnviz.batch.corpus",
    "Item": "attnviz.batch.corpus",
    "Reject": "attnviz.batch.corpus",
    "Source": "attnviz.batch.corpus",
    "check_input": "attnviz.batch.corpus",
    "count_records": "attnviz.batch.corpus",
    "detect_format": "attnviz.batch.corpus",
    "read_corpus": "attnviz.batch.corpus",
    "BatchRun": "attnviz.batch.lifecycle",
    "Engine": "attnviz.batch.lifecycle",
    "RunProgress": "attnviz.batch.lifecycle",
    "RunState": "attnviz.batch.lifecycle",
    "drive": "attnviz.batch.lifecycle",
    "TextStats": "attnviz.batch.records",
    "iter_records": "attnviz.batch.records",
    "records_frame": "attnviz.batch.records",
    "LocalEngine": "attnviz.batch.run",
    "run_batch_analysis": "attnviz.batch.run",
    "STATISTICS": "attnviz.batch.statistics",
    "Statistic": "attnviz.batch.statistics",
    "find_unit": "attnviz.batch.statistics",
    "stat_columns": "attnviz.batch.statistics",
    "statistics_of": "attnviz.batch.statistics",
    "word_units": "attnviz.batch.statistics",
    "ATTENTION_DIR": "attnviz.batch.store",
    "HEADS_DIR": "attnviz.batch.store",
    "LOCK_FILE": "attnviz.batch.store",
    "OUR_FILES": "attnviz.batch.store",
    "OutputError": "attnviz.batch.store",
    "OutputFolder": "attnviz.batch.store",
    "PLOTS_DIR": "attnviz.batch.store",
    "REJECTS_FILE": "attnviz.batch.store",
    "RUN_FILE": "attnviz.batch.store",
    "RUN_FORMAT": "attnviz.batch.store",
    "SUMMARY_FILE": "attnviz.batch.store",
    "TEXTS_DIR": "attnviz.batch.store",
    "check_outdir": "attnviz.batch.store",
    "read_results": "attnviz.batch.summary",
    "summarise": "attnviz.batch.summary",
    "summary_plots": "attnviz.batch.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnviz.batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
