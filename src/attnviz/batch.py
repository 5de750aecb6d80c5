"""Corpus analyses: per-head statistics for many texts, streamed to Parquet.

The pipeline, one window of `texts_per_part` texts at a time (so memory stays flat):

1. read: records with their line number; bad ones become `Reject`s (never exceptions);
2. bucket: tokenise the window once for lengths, reject over-long texts, sort by length and cut
   into batches (capped by `batch_size` and an attention-memory budget) so padding stays small;
3. analyse: one forward pass per batch records only the asked layers and heads; every statistic
   is computed over the whole padded batch in torch with validity masks, so padding never enters
   a number and the values equal those of the text alone (`statistics_of` is the per-text
   reference the tests compare against);
4. commit: each part is written as `heads/part-NNNNN.parquet` (one row group) under a hidden
   temporary name, then renamed: a killed run leaves only complete parts, and `--resume` reads
   the text ids of those parts to continue without duplicating or skipping a text.

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

import contextlib
import gzip
import io
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import numpy as np

from attnviz.config import BatchConfig, Probe
from attnviz.errors import InputError, TokenNotFoundError

if TYPE_CHECKING:
    import pandas as pd

    from attnviz.extraction import Attention, Encoded
    from attnviz.models import LoadedModel

RUN_FORMAT = 1
HEADS_DIR = "heads"
TEXTS_DIR = "_texts"
ATTENTION_DIR = "_attention"
PLOTS_DIR = "_plots"
SUMMARY_FILE = "_summary.csv"
RUN_FILE = "_run.json"
REJECTS_FILE = "_rejects.jsonl"
LOCK_FILE = ".lock"
OUR_FILES = (HEADS_DIR, TEXTS_DIR, ATTENTION_DIR, PLOTS_DIR, SUMMARY_FILE, RUN_FILE, REJECTS_FILE)
PATTERN_NAMES = ("self", "previous", "next", "first", "last_sep", "punctuation", "broad")
EXCERPT = 80

Source = str | Path | Iterable[str]


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One text to analyse; `text_id` is its 0-based record number in the input (stable on resume)."""

    text_id: int
    line: int  # 1-based line (txt, jsonl, csv) or row (parquet, Python iterables)
    text: str


@dataclass(frozen=True)
class Reject:
    """A record that was not analysed, and why."""

    text_id: int
    line: int
    reason: str  # empty, undecodable, malformed_json, missing_field, not_text, too_long, no_tokens
    detail: str
    excerpt: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "text_id": self.text_id,
            "line": self.line,
            "reason": self.reason,
            "detail": self.detail,
            "excerpt": self.excerpt,
        }


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def detect_format(source: Source, fmt: str = "auto") -> str:
    """txt, jsonl, csv or parquet: as asked, else from the file name (.gz allowed), else txt."""
    if fmt != "auto":
        return fmt
    if not isinstance(source, str | Path) or str(source) == "-":
        return "txt"
    name = Path(source).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(suffix, "txt")


@contextlib.contextmanager
def _open_binary(source: str | Path) -> Iterator[BinaryIO]:
    if str(source) == "-":
        yield sys.stdin.buffer
        return
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"no such input file: {source}")
    try:
        f: Any = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
    with f:
        yield f


def _decode_line(raw: bytes, index: int) -> tuple[str | None, Reject | None]:
    raw = raw.rstrip(b"\r\n")
    if index == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", errors="replace")
        return None, Reject(
            index, index + 1, "undecodable", f"invalid UTF-8 at byte {exc.start}", _excerpt(shown)
        )


def _text_item(text_id: int, line: int, value: Any, what: str) -> Item | Reject:
    if value is None:
        return Reject(text_id, line, "missing_field", f"no {what}")
    if not isinstance(value, str):
        return Reject(
            text_id, line, "not_text", f"{what} is {type(value).__name__}, not text", _excerpt(str(value))
        )
    if not value.strip():
        return Reject(text_id, line, "empty", "empty text")
    return Item(text_id, line, value)


def _read_txt(f: BinaryIO) -> Iterator[Item | Reject]:
    for i, raw in enumerate(f):
        text, bad = _decode_line(raw, i)
        yield bad if bad is not None else _text_item(i, i + 1, text, "text")


def _read_jsonl(f: BinaryIO, key: str) -> Iterator[Item | Reject]:
    for i, raw in enumerate(f):
        text, bad = _decode_line(raw, i)
        if bad is not None:
            yield bad
            continue
        assert text is not None
        if not text.strip():
            yield Reject(i, i + 1, "empty", "empty line")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Reject(i, i + 1, "malformed_json", f"{exc.msg} at column {exc.colno}", _excerpt(text))
            continue
        if not isinstance(obj, dict):
            yield Reject(i, i + 1, "malformed_json", "not a JSON object", _excerpt(text))
        elif key not in obj:
            yield Reject(i, i + 1, "missing_field", f"no field '{key}'", _excerpt(text))
        else:
            yield _text_item(i, i + 1, obj[key], f"field '{key}'")


def _read_csv(f: BinaryIO, column: str) -> Iterator[Item | Reject]:
    import csv

    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    stream = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    if column not in header:
        raise InputError(f"the CSV has no column '{column}'; its columns are: {', '.join(header)}")
    col = header.index(column)
    row_id = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Reject(row_id, start, "malformed_csv", str(exc))
            row_id += 1
            continue
        if not row:  # a blank line between records
            continue
        value = row[col] if col < len(row) else None
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                yield Reject(row_id, start, "undecodable", "invalid UTF-8", _excerpt(shown))
                row_id += 1
                continue
        yield _text_item(row_id, start, value, f"column '{column}'")
        row_id += 1


def _read_parquet(f: BinaryIO, column: str) -> Iterator[Item | Reject]:
    import pyarrow.parquet as pq

    handle: Any = f if f.seekable() else io.BytesIO(f.read())
    try:
        pfile = pq.ParquetFile(handle)
    except Exception as exc:  # pyarrow raises ArrowInvalid for non-Parquet bytes
        raise InputError(f"not a Parquet file: {exc}") from None
    names = pfile.schema_arrow.names
    if column not in names:
        raise InputError(f"the Parquet file has no column '{column}'; its columns are: {', '.join(names)}")
    row = 0
    for batch in pfile.iter_batches(columns=[column], batch_size=4096):
        for value in batch.column(0).to_pylist():
            yield _text_item(row, row + 1, value, f"column '{column}'")
            row += 1


def read_corpus(
    source: Source, fmt: str = "auto", field: str = "text", column: str = "text"
) -> Iterator[Item | Reject]:
    """Stream records from a file (`-`: standard input) or an iterable of strings."""
    if not isinstance(source, str | Path):
        for i, value in enumerate(source):
            yield _text_item(i, i + 1, value, "text")
        return
    fmt = detect_format(source, fmt)
    with _open_binary(source) as f:
        if fmt == "txt":
            yield from _read_txt(f)
        elif fmt == "jsonl":
            yield from _read_jsonl(f, field)
        elif fmt == "csv":
            yield from _read_csv(f, column)
        elif fmt == "parquet":
            yield from _read_parquet(f, column)
        else:
            raise InputError(f"unknown input format '{fmt}'")


def count_records(source: Source, fmt: str = "auto", column: str = "text") -> int | None:
    """How many records the input holds (for a progress bar's ETA); None when unknowable cheaply."""
    if not isinstance(source, str | Path):
        return len(source) if isinstance(source, Sequence) else None
    if str(source) == "-":
        return None
    fmt = detect_format(source, fmt)
    try:
        with _open_binary(source) as f:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                return pq.ParquetFile(f).metadata.num_rows
            if fmt == "csv":
                import csv

                stream = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
                return max(0, sum(1 for row in csv.reader(stream) if row) - 1)
            count, last = 0, b"\n"
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk[-1:]
            return count + (last != b"\n")
    except Exception:
        return None


# -- statistics ---------------------------------------------------------------------------------
def stat_columns(config: BatchConfig) -> list[str]:
    """The long table's statistic columns, in order."""
    cols: list[str] = []
    if "entropy" in config.statistics:
        cols.append("entropy")
    if "max_weight" in config.statistics:
        cols += ["max_weight", "mean_row_max"]
    if "special" in config.statistics:
        cols.append("special")
    if "patterns" in config.statistics:
        cols += [f"pattern_{p}" for p in PATTERN_NAMES]
    for p in config.probes:
        cols += list(p.columns)
    return cols


def word_units(
    tokens: Sequence[str], word_ids: Sequence[int | None], words: Sequence[str]
) -> tuple[list[str], list[int]]:
    """The word-level view's unit labels, and each token's unit (as `Attention.to_words` builds)."""
    labels: list[str] = []
    unit_of: list[int] = []
    seen: dict[int, int] = {}
    for tok, wid in zip(tokens, word_ids, strict=True):
        if wid is None:
            labels.append(tok)
            unit_of.append(len(labels) - 1)
        elif wid in seen:
            unit_of.append(seen[wid])
        else:
            seen[wid] = len(labels)
            labels.append(words[wid])
            unit_of.append(len(labels) - 1)
    return labels, unit_of


def find_unit(alternatives: Sequence[str], labels: Sequence[str]) -> int | None:
    """The earliest unit matching any alternative (`locate` rules: case-free, `@N`); None if none."""
    from attnviz.tokens import locate

    best: int | None = None
    for alt in alternatives:
        try:
            idx = locate(alt, labels).index
        except TokenNotFoundError:
            continue
        best = idx if best is None else min(best, idx)
    return best


def statistics_of(att: Attention, config: BatchConfig) -> dict[str, np.ndarray]:
    """One text's statistics, per text in numpy: the reference the batched path must equal.

    Returns column -> [layers, heads] float32, with the columns of `stat_columns(config)`.
    """
    from attnviz.patterns import pattern_scores, row_entropy

    if att.level != "token":
        raise InputError("batch statistics need token-level attention (extract without words=True)")
    a = np.asarray(att.attn, dtype=np.float32)  # [layers, heads, n, n]
    out: dict[str, np.ndarray] = {}
    if "entropy" in config.statistics:
        out["entropy"] = row_entropy(a).mean(-1).astype(np.float32)
    if "max_weight" in config.statistics:
        out["max_weight"] = a.max(axis=(-1, -2))
        out["mean_row_max"] = a.max(-1).mean(-1)
    if "special" in config.statistics:
        spec = np.asarray(att.special, dtype=bool)
        out["special"] = a[..., spec].sum(-1).mean(-1) if spec.any() else np.zeros(a.shape[:2], np.float32)
    if "patterns" in config.statistics:
        scores = pattern_scores(a, att.special, att.tokens, att.causal)
        out.update({f"pattern_{k}": scores[k] for k in PATTERN_NAMES})
    if config.probes:
        words = att.to_words()
        for p in config.probes:
            ia, ib = find_unit(p.a, words.tokens), find_unit(p.b, words.tokens)
            ab, ba = p.columns
            if ia is None or ib is None:
                out[ab] = out[ba] = np.full(a.shape[:2], np.nan, np.float32)
            else:
                out[ab] = words.attn[:, :, ia, ib]
                out[ba] = words.attn[:, :, ib, ia]
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


class Entry(NamedTuple):
    """A text ready for a batch: its token count and, unless it must be cut, its tokenisation."""

    item: Item
    n_tokens: int
    ids: list[int] | None = None  # None: tokenise again (truncation)
    offsets: list[tuple[int, int]] | None = None
    special: list[bool] | None = None
    tokens: list[str] | None = None


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


class Analyzer:
    """Runs batches through a loaded model and turns recorded attention into statistics."""

    def __init__(self, loaded: LoadedModel, config: BatchConfig) -> None:
        from attnviz.selection import resolve_indices

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

    # -- bucketing ------------------------------------------------------------------------------
    def bucket(self, items: list[Item]) -> tuple[list[list[Entry]], list[Reject]]:
        """Reject over-long and token-less texts; sort the rest by length into batches.

        The window is tokenised once here; batches reuse it (only texts to cut are tokenised again).
        """
        start = time.perf_counter()
        tok = self.loaded.tokenizer
        fast = bool(getattr(tok, "is_fast", False))
        enc = tok(
            [it.text for it in items],
            add_special_tokens=self.config.special_tokens,
            return_special_tokens_mask=True,
            return_offsets_mapping=fast,
        )
        rejects: list[Reject] = []
        keep: list[Entry] = []
        for i, (it, row) in enumerate(zip(items, enc["input_ids"], strict=True)):
            n = len(row)
            if n == 0:
                rejects.append(
                    Reject(
                        it.text_id, it.line, "no_tokens", "the tokenizer made no tokens", _excerpt(it.text)
                    )
                )
            elif self.limit is not None and n > self.limit:
                if self.config.truncate:
                    keep.append(Entry(it, self.limit))
                else:
                    rejects.append(
                        Reject(
                            it.text_id,
                            it.line,
                            "too_long",
                            f"{n} tokens but {self.loaded.name} takes at most {self.limit}; "
                            "--truncate cuts such texts instead",
                            _excerpt(it.text),
                        )
                    )
            else:
                offsets = enc["offset_mapping"][i] if fast else [(0, 0)] * n
                tokens = enc.encodings[i].tokens if fast and enc.encodings else tok.convert_ids_to_tokens(row)
                special = [bool(x) for x in enc["special_tokens_mask"][i]]
                keep.append(Entry(it, n, row, [tuple(o) for o in offsets], special, list(tokens)))
        keep.sort(key=lambda e: e.n_tokens)
        per_head = len(self.layer_ids) * len(self.head_ids) * 4  # bytes per attention entry
        budget = self.config.attention_memory_mb * 2**20
        batches: list[list[Entry]] = []
        current: list[Entry] = []
        for entry in keep:
            n = entry.n_tokens
            fits = (len(current) + 1) * n * n * per_head <= budget
            if current and (len(current) >= self.config.batch_size or not fits):
                batches.append(current)
                current = []
            current.append(entry)
        if current:
            batches.append(current)
        # run them in a fixed shuffled order, so early progress (rate, ETA) is typical of the corpus
        random.Random(len(batches)).shuffle(batches)
        self.timings.tokenize += time.perf_counter() - start
        return batches, rejects

    def _encode(self, batch: Sequence[Entry]) -> Encoded:
        """Pad a batch's stored tokenisation (as extract.tokenize would), or tokenise it again."""
        import torch

        from attnviz.extraction import Encoded, tokenize

        texts = [e.item.text for e in batch]
        if any(e.ids is None for e in batch):
            cfg = self.config
            return tokenize(self.loaded, texts, cfg.special_tokens, cfg.truncate, cfg.max_length)
        lengths = [e.n_tokens for e in batch]
        pad = self.loaded.tokenizer.pad_token_id
        ids = np.full((len(batch), max(lengths)), pad if pad is not None else 0, dtype=np.int64)
        mask = np.zeros(ids.shape, dtype=np.int64)
        for b, e in enumerate(batch):
            ids[b, : e.n_tokens] = e.ids
            mask[b, : e.n_tokens] = 1
        return Encoded(
            texts=texts,
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            lengths=lengths,
            offsets=[list(e.offsets or []) for e in batch],
            special=[list(e.special or []) for e in batch],
            tokens=[list(e.tokens or []) for e in batch],
            truncated=[0] * len(batch),
        )

    # -- one batch ------------------------------------------------------------------------------
    def analyse(self, batch: Sequence[Entry | Item]) -> BatchResult:
        """One forward pass and every statistic of a batch (texts of similar length)."""
        import torch

        t0 = time.perf_counter()
        entries = [e if isinstance(e, Entry) else Entry(e, 0) for e in batch]
        enc = self._encode(entries)
        texts = enc.texts
        batch = [e.item for e in entries]
        t1 = time.perf_counter()
        rec = self._forward(enc)
        t2 = time.perf_counter()
        with torch.inference_mode():
            stats, attention = self._statistics(rec.weights, enc)
        t3 = time.perf_counter()
        self.timings.tokenize += t1 - t0
        self.timings.forward += t2 - t1
        self.timings.statistics += t3 - t2
        return BatchResult(
            text_ids=np.array([it.text_id for it in batch], dtype=np.int64),
            lines=np.array([it.line for it in batch], dtype=np.int64),
            n_tokens=np.array(enc.lengths, dtype=np.int32),
            truncated=np.array(enc.truncated, dtype=np.int32),
            texts=texts,
            stats=stats,
            attention=attention,
            tokens=enc.tokens if attention is not None else None,
        )

    def _forward(self, enc: Encoded) -> Any:
        loaded = self.loaded
        inputs: dict[str, Any] = {
            "input_ids": enc.input_ids.to(loaded.device),
            "attention_mask": enc.attention_mask.to(loaded.device),
        }
        if loaded.capture.encoder_decoder:  # statistics use the encoder; the decoder reads the text
            from attnviz.extraction import _decoder_inputs

            dec = _decoder_inputs(loaded, enc, None, len(enc.texts))
            inputs["decoder_input_ids"] = dec.input_ids.to(loaded.device)
            inputs["decoder_attention_mask"] = dec.attention_mask.to(loaded.device)
        return loaded.capture.run(inputs, self.layers, self.heads)

    def _is_punct(self, token: str) -> bool:
        hit = self._punct.get(token)
        if hit is None:
            from attnviz.patterns import is_punctuation

            hit = self._punct[token] = is_punctuation(token)
        return hit

    def _statistics(
        self, weights: dict[tuple[str, int], Any], enc: Encoded
    ) -> tuple[dict[str, np.ndarray], list[np.ndarray] | None]:
        """Every statistic over the padded batch at once; padded rows and keys never count.

        Each statistic is a per-query quantity [B, H, L] averaged over the queries it concerns
        with weights [B, L] (zero on padding); all are averaged in one einsum per layer.
        """
        import torch
        import torch.nn.functional as F

        cfg = self.config
        device = weights[(self.stream, self.layer_ids[0])].device
        lengths = torch.tensor(enc.lengths, device=device)
        B, L = enc.input_ids.shape
        pos = torch.arange(L, device=device)
        valid = pos[None, :] < lengths[:, None]  # [B, L]

        def norm(mask: Any) -> Any:  # query mask -> averaging weights summing to 1 (or all 0)
            m = mask.float()
            return m / m.sum(-1, keepdim=True).clamp_min(1.0)

        want = set(cfg.statistics)
        q_all = norm(valid)  # [B, L] the mean over the text's rows
        # per-query quantities computed from each layer, in this order:
        row_names: list[str] = []  # columns from row quantities (entropy, row max, diagonals...)
        row_weights: list[Any] = []  # their query weights [B, L]
        key_masks: list[Any] = []  # keys whose summed weight is a quantity ([B, L] each)
        key_names: list[str] = []
        key_weights: list[Any] = []
        spec = torch.zeros((B, L), dtype=torch.bool, device=device)
        for b, row in enumerate(enc.special):
            spec[b, : len(row)] = torch.tensor(row, dtype=torch.bool)
        if "entropy" in want:
            row_names.append("entropy")
            row_weights.append(q_all)
        if "max_weight" in want:
            row_names.append("mean_row_max")
            row_weights.append(q_all)
        if "special" in want:
            key_names.append("special")
            key_masks.append(spec)
            key_weights.append(q_all)
        bound = None
        if "patterns" in want:
            if self.causal:
                chooses = valid & (pos[None, :] >= 1)
                n_visible = (pos + 1).float()[None, :].expand(B, L)
            else:
                chooses = valid & (lengths[:, None] > 1)
                n_visible = lengths[:, None].float().expand(B, L)
            w_choose = norm(chooses)  # [B, L]
            w_prev = F.pad(norm(chooses[:, 1:]), (1, 0))  # queries 1..n-1 (previous, first)
            w_next = F.pad(norm(chooses[:, :-1] & valid[:, 1:]), (0, 1))  # queries 0..n-2
            if self.causal:
                w_next = torch.zeros_like(w_next)  # the next token is masked: 0 by definition
            bound = torch.log2(n_visible.clamp_min(2.0))[:, None]  # [B, 1, L]
            row_names += [
                "pattern_broad",
                "pattern_self",
                "pattern_previous",
                "pattern_next",
                "pattern_first",
            ]
            row_weights += [w_choose, w_choose, w_prev, w_next, w_prev]
            seps = spec & (pos[None, :] >= 1)
            if not self.causal:
                none = ~seps.any(-1)
                seps[none, (lengths - 1).clamp_min(0)[none]] = True
            punct = torch.zeros((B, L), dtype=torch.bool, device=device)
            for b, toks in enumerate(enc.tokens):
                flags = [self._is_punct(t) for t in toks]
                if any(flags):
                    punct[b, : len(flags)] = torch.tensor(flags, dtype=torch.bool)
            punct &= ~spec & valid
            key_names += ["pattern_last_sep", "pattern_punctuation"]
            key_masks += [seps, punct]
            key_weights += [w_choose, w_choose]
        found: dict[str, np.ndarray] = {}
        if cfg.probes:
            for p, (a_mask, b_mask, hit) in zip(
                cfg.probes, self._probe_masks(enc, B, L, device), strict=True
            ):
                ab, ba = p.columns
                key_names += [ab, ba]
                key_masks += [b_mask, a_mask]  # A->B sums over B's pieces; B->A over A's
                key_weights += [norm(a_mask), norm(b_mask)]
                found[ab] = found[ba] = hit.cpu().numpy()
        names = row_names + key_names
        qmat = torch.stack(row_weights + key_weights, -1)[:, None] if names else None  # [B, 1, L, R]
        if key_masks:
            # key sets are a few positions per text: gather those columns ([B, M] indices, padded
            # with position 0 at coefficient 0) instead of multiplying the whole [L, L] matrix
            kmask = torch.stack(key_masks, -1)  # [B, L, K]
            any_key = kmask.any(-1)  # [B, L]
            m = max(1, int(any_key.sum(-1).max()))
            key_idx = torch.argsort((~any_key).to(torch.int8), dim=-1, stable=True)[:, :m]  # [B, M]
            in_set = torch.gather(any_key, 1, key_idx)  # [B, M]: a real key, not padding
            coef = torch.gather(kmask, 1, key_idx[..., None].expand(-1, -1, kmask.shape[-1]))
            coef = (coef & in_set[..., None]).float()  # [B, M, K]
            batch_idx = torch.arange(B, device=device)[:, None]

        n_layers, n_heads = len(self.layer_ids), len(self.head_ids)
        means = torch.empty((B, n_layers, n_heads, len(names)), device=device)
        maxima = torch.empty((B, n_layers, n_heads), device=device) if "max_weight" in want else None
        saved: list[list[np.ndarray]] | None = [[] for _ in range(B)] if cfg.save_attention else None
        pad_rows = ~valid[:, None, :]  # [B, 1, L]: padded query rows hold the model's noise
        for li, layer in enumerate(self.layer_ids):
            w = weights[(self.stream, layer)].float()  # [B, H, L, L]; padded keys are exact zeros
            if saved is not None:
                host = w.cpu().numpy()
                for b in range(B):
                    n = enc.lengths[b]
                    saved[b].append(host[b, :, :n, :n])
            rows: list[Any] = []  # [B, H, L] each, in row_names order
            if "entropy" in want or "patterns" in want:
                h_row = -w.clamp_min(1e-30).log2_().mul_(w).sum(-1)  # [B, H, L] bits; 0 log 0 = 0
                if "entropy" in want:
                    rows.append(h_row)
            if maxima is not None:
                row_max = w.amax(-1).masked_fill_(pad_rows, 0.0)  # [B, H, L]
                maxima[:, li] = row_max.amax(-1)
                rows.append(row_max)
            if bound is not None:
                rows += [
                    h_row / bound,
                    torch.diagonal(w, 0, -2, -1),
                    F.pad(torch.diagonal(w, -1, -2, -1), (1, 0)),  # w[i, i-1] at query i
                    F.pad(torch.diagonal(w, 1, -2, -1), (0, 1)),  # w[i, i+1] at query i
                    w[..., 0],
                ]
            parts = [torch.stack(rows, -1)] if rows else []  # [B, H, L, rows]
            if key_masks:
                picked = w[batch_idx, :, :, key_idx]  # [B, M, H, L]: weight on each gathered key
                parts.append(torch.einsum("bmhl,bmk->bhlk", picked, coef))  # mass on each key set
            if parts:
                quantities = parts[0] if len(parts) == 1 else torch.cat(parts, -1)  # [B, H, L, R]
                quantities.masked_fill_(pad_rows[..., None], 0.0)
                means[:, li] = (quantities * qmat).sum(2)
        host_means = means.cpu().numpy()
        out = {name: np.ascontiguousarray(host_means[..., i]) for i, name in enumerate(names)}
        if maxima is not None:
            out["max_weight"] = maxima.cpu().numpy()
        for name in out:
            if name.startswith("pattern_"):
                np.clip(out[name], 0.0, 1.0, out=out[name])
        for name, hit in found.items():
            out[name][~hit] = np.nan
        out = {c: out[c] for c in self.columns}
        attention = [np.ascontiguousarray(np.stack(s)) for s in saved] if saved is not None else None
        return out, attention

    def _probe_masks(self, enc: Encoded, B: int, L: int, device: Any) -> list[tuple[Any, Any, Any]]:
        """Per probe: A's and B's piece masks [B, L] (word-level view) and found [B]."""
        import torch

        from attnviz.tokens import align_words

        probes = self.config.probes
        a_masks = torch.zeros((len(probes), B, L), dtype=torch.bool)
        b_masks = torch.zeros((len(probes), B, L), dtype=torch.bool)
        found = torch.zeros((len(probes), B), dtype=torch.bool)
        for b, text in enumerate(enc.texts):
            n = enc.lengths[b]
            word_ids, words = align_words(text, enc.offsets[b][:n], enc.special[b][:n])
            labels, unit_of = word_units(enc.tokens[b][:n], word_ids, words)
            units = np.asarray(unit_of)
            for i, p in enumerate(probes):
                ua, ub = find_unit(p.a, labels), find_unit(p.b, labels)
                if ua is None or ub is None:
                    continue
                a_masks[i, b, :n] = torch.from_numpy(units == ua)
                b_masks[i, b, :n] = torch.from_numpy(units == ub)
                found[i, b] = True
        return [
            (a_masks[i].to(device), b_masks[i].to(device), found[i].to(device)) for i in range(len(probes))
        ]


# -- records for Python callers -----------------------------------------------------------------
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


def _split(result: BatchResult, layers: Sequence[int], heads: Sequence[int]) -> list[TextStats]:
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


def _events(
    records: Iterable[Item | Reject],
    analyzer: Analyzer,
    skip: Callable[[int], bool] | None = None,
) -> Iterator[BatchResult | Reject | object]:
    """Windows of texts -> rejects, batch results, and WINDOW_END after each window."""
    size = analyzer.config.texts_per_part
    window: list[Item] = []
    it = iter(records)
    while True:
        t0 = time.perf_counter()
        rec = next(it, None)
        analyzer.timings.read += time.perf_counter() - t0
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
            batches, rejects = analyzer.bucket(window)
            yield from rejects
            for batch in batches:
                yield analyzer.analyse(batch)
            yield WINDOW_END
            window = []
        if rec is None:
            return


def _load(config: BatchConfig, loaded: LoadedModel | None) -> LoadedModel:
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    if loaded is not None:
        return loaded
    from attnviz.models import load_model

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
    analyzer = Analyzer(_load(config, model), config)
    pending: list[TextStats] = []
    for ev in _events(read_corpus(texts, config.format, config.field, config.column), analyzer):
        if isinstance(ev, Reject):
            if on_reject is not None:
                on_reject(ev)
        elif isinstance(ev, BatchResult):
            pending += _split(ev, analyzer.layer_ids, analyzer.head_ids)
        else:
            pending.sort(key=lambda r: r.text_id)
            yield from pending
            pending = []


def records_frame(texts: Source, config: BatchConfig | None = None, **kwargs: Any) -> pd.DataFrame:
    """The long table of `iter_records` as a pandas DataFrame (the Parquet parts' layout)."""
    import pandas as pd

    rows = [row for rec in iter_records(texts, config, **kwargs) for row in rec.rows()]
    return pd.DataFrame(rows)


# -- the output folder --------------------------------------------------------------------------
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


def _part_index(name: str) -> int | None:
    stem = name.split(".")[0]
    try:
        return int(stem.split("-")[1])
    except (IndexError, ValueError):
        return None


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a hidden temporary file, fsync, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n"))


def _versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from attnviz import __version__

    out = {"attnviz": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "numpy", "pyarrow", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _now() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _input_label(source: Source) -> str:
    if isinstance(source, str | Path):
        return "-" if str(source) == "-" else str(Path(source).expanduser().resolve())
    return "<python iterable>"


class _Lock:
    """An exclusive lock on the output folder (released by the OS if the process dies)."""

    def __init__(self, outdir: Path) -> None:
        self.file = open(outdir / LOCK_FILE, "a+b")  # noqa: SIM115
        try:
            import fcntl

            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        except OSError:
            self.file.close()
            raise InputError(
                f"another attnviz batch is writing to {outdir}; wait for it or pick another folder"
            ) from None

    def release(self) -> None:
        self.file.close()


def check_input(source: Source, config: BatchConfig) -> None:
    """Fail early (before a model loads) on a missing file or a missing CSV / Parquet column."""
    if not isinstance(source, str | Path) or str(source) == "-":
        return
    if not Path(source).expanduser().is_file():
        raise InputError(f"no such input file: {source}")
    if detect_format(source, config.format) in ("csv", "parquet"):
        records = read_corpus(source, config.format, config.field, config.column)
        try:
            next(records, None)
        finally:
            records.close()


def check_outdir(
    outdir: str | Path, config: BatchConfig, source: Source, resume: bool, overwrite: bool
) -> None:
    """Raise the error `run_batch_analysis` would raise for this output folder, changing nothing."""
    outdir = Path(outdir).expanduser()
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} exists and is not a folder")
    if outdir.is_dir() and not overwrite:
        _prepare_outdir(outdir, config, source, resume, overwrite=False)


def _identity(config: BatchConfig, source: Source) -> dict[str, Any]:
    """What must match to resume: the settings, with the input format resolved."""
    return {**config.identity(), "format": detect_format(source, config.format)}


def _prepare_outdir(
    outdir: Path, config: BatchConfig, source: Source, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Refuse a folder holding another run (unless overwrite); return the earlier run to resume."""
    run_path = outdir / RUN_FILE
    previous = None
    if run_path.is_file():
        try:
            previous = json.loads(run_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {}
    if overwrite:
        _clear(outdir)
        return None
    if previous is None:
        ours = [n for n in OUR_FILES if (outdir / n).exists()]
        others = [p.name for p in outdir.iterdir() if not p.name.startswith(".") and p.name not in ours]
        if ours or others:
            raise InputError(
                f"{outdir} is not empty and holds no attnviz batch run; pick an empty folder "
                "or pass --overwrite"
            )
        return None
    if not resume:
        status = previous.get("status", "unknown")
        done = previous.get("counts", {}).get("texts", "?")
        same = previous.get("identity") == _identity(config, source)
        what = "this run" if same else "a different run"
        hint = (
            "pass --resume to continue it or --overwrite to start again"
            if same
            else "pass --overwrite to replace it, or pick another folder"
        )
        raise InputError(f"{outdir} already holds {what} ({status}, {done} texts); {hint}")
    old = previous.get("identity") or {}
    new = _identity(config, source)
    differ = [k for k in new if old.get(k) != new[k]]
    if differ:
        raise InputError(
            f"cannot resume: {outdir} holds a run with different settings ({', '.join(differ)}); "
            "pass --overwrite to start again"
        )
    label = _input_label(source)
    old_input = previous.get("input", {}).get("path")
    if (
        old_input not in (None, "-", "<python iterable>")
        and label not in ("-", "<python iterable>")
        and old_input != label
    ):
        raise InputError(f"cannot resume: {outdir} was a run over {old_input}, not {label}")
    return previous


def _clear(outdir: Path) -> None:
    import shutil

    for name in OUR_FILES:
        path = outdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class _Store:
    """Writes committed parts, rejects and the run record into the output folder."""

    def __init__(self, outdir: Path, analyzer: Analyzer) -> None:
        self.outdir = outdir
        self.analyzer = analyzer
        self.config = analyzer.config
        self.heads_dir = outdir / HEADS_DIR
        self.texts_dir = outdir / TEXTS_DIR
        self.attention_dir = outdir / ATTENTION_DIR
        self.heads_dir.mkdir(parents=True, exist_ok=True)
        if self.config.keep_texts:
            self.texts_dir.mkdir(exist_ok=True)
        if self.config.save_attention:
            self.attention_dir.mkdir(exist_ok=True)
        self.done_ids, self.next_part = self._committed()
        self.reject_ids = self._read_rejects()
        self.rejects = open(outdir / REJECTS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self.shard = 0
        self.parts_written = 0

    # -- resume state -----------------------------------------------------------------------
    def _committed(self) -> tuple[np.ndarray, int]:
        """Text ids in committed parts; the next part number; stale temporary files removed."""
        import pyarrow.parquet as pq

        ids: list[np.ndarray] = []
        last = -1
        for path in sorted(self.heads_dir.glob("part-*.parquet")):
            idx = _part_index(path.name)
            if idx is None:
                continue
            last = max(last, idx)
            ids.append(np.unique(pq.read_table(path, columns=["text_id"]).column(0).to_numpy()))
        next_part = last + 1
        for folder in (self.heads_dir, self.texts_dir, self.attention_dir):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                idx = _part_index(path.name.lstrip("."))
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()  # a write cut short
                elif folder is not self.heads_dir and idx is not None and idx >= next_part:
                    path.unlink()  # side files of a part that was never committed
        done = np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)
        return done, next_part

    def _read_rejects(self) -> set[int]:
        path = self.outdir / REJECTS_FILE
        if not path.is_file():
            return set()
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a line cut short by a kill: drop it
            data = data[: data.rfind(b"\n") + 1]
            path.write_bytes(data)
        out: set[int] = set()
        for line in data.splitlines():
            with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                out.add(int(json.loads(line)["text_id"]))
        return out

    def skip(self, text_id: int) -> bool:
        if text_id in self.reject_ids:
            return True
        if not len(self.done_ids):
            return False
        i = np.searchsorted(self.done_ids, text_id)
        return bool(i < len(self.done_ids) and self.done_ids[i] == text_id)

    # -- writing ------------------------------------------------------------------------------
    def reject(self, rej: Reject) -> None:
        self.rejects.write(json.dumps(rej.as_dict(), ensure_ascii=False) + "\n")
        self.rejects.flush()

    def save_attention(self, result: BatchResult) -> None:
        """Raw tensors of one batch as a safetensors shard named after the part it belongs to."""
        if result.attention is None:
            return
        from safetensors.numpy import save_file

        an = self.analyzer
        arrays = {str(int(t)): a for t, a in zip(result.text_ids, result.attention, strict=True)}
        meta = {
            "model": an.loaded.name,
            "layers": json.dumps(an.layer_ids),
            "heads": json.dumps(an.head_ids),
            "tokens": json.dumps(
                {str(int(t)): tk for t, tk in zip(result.text_ids, result.tokens or [], strict=True)}
            ),
        }
        path = self.attention_dir / f"part-{self.next_part:05d}-{self.shard:04d}.safetensors"
        start = time.perf_counter()
        _atomic_write(path, lambda p: save_file(arrays, str(p), metadata=meta))
        self.analyzer.timings.write += time.perf_counter() - start
        self.shard += 1
        result.attention = None  # written: do not keep it until the commit

    def commit(self, results: list[BatchResult]) -> int:
        """Write the pending batches as one part (texts table first, the statistics last)."""
        if not results:
            return 0
        import pyarrow as pa
        import pyarrow.parquet as pq

        start = time.perf_counter()
        an = self.analyzer
        ids = np.concatenate([r.text_ids for r in results])
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        n_tokens = np.concatenate([r.n_tokens for r in results])[order]
        n_texts, n_layers, n_heads = len(ids), len(an.layer_ids), len(an.head_ids)
        per_text = n_layers * n_heads
        columns: dict[str, Any] = {
            "text_id": pa.array(np.repeat(ids, per_text)),
            "layer": pa.array(np.tile(np.repeat(np.asarray(an.layer_ids, np.int16), n_heads), n_texts)),
            "head": pa.array(np.tile(np.asarray(an.head_ids, np.int16), n_texts * n_layers)),
            "n_tokens": pa.array(np.repeat(n_tokens, per_text)),
        }
        for col in an.columns:
            values = np.concatenate([r.stats[col] for r in results])[order]
            columns[col] = pa.array(values.reshape(-1), type=pa.float32())
        name = f"part-{self.next_part:05d}.parquet"
        if self.config.keep_texts:
            texts = [t for r in results for t in r.texts]
            table = pa.table(
                {
                    "text_id": pa.array(ids),
                    "line": pa.array(np.concatenate([r.lines for r in results])[order]),
                    "n_tokens": pa.array(n_tokens),
                    "truncated": pa.array(np.concatenate([r.truncated for r in results])[order]),
                    "text": pa.array([texts[i] for i in order], type=pa.string()),
                }
            )
            _atomic_write(self.texts_dir / name, lambda p: pq.write_table(table, p, compression="zstd"))
        heads = pa.table(columns)
        _atomic_write(
            self.heads_dir / name,
            lambda p: pq.write_table(heads, p, compression="zstd", row_group_size=len(heads)),
        )
        self.next_part += 1
        self.shard = 0
        self.parts_written += 1
        an.timings.write += time.perf_counter() - start
        return n_texts

    def close(self) -> None:
        self.rejects.close()


def run_batch_analysis(
    texts_or_path: Source,
    config: BatchConfig | None,
    outdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    model: LoadedModel | None = None,
    progress: Callable[[RunProgress], None] | None = None,
) -> BatchRun:
    """Analyse a corpus into `outdir`: Parquet parts, summary, plots, rejects and `_run.json`.

    `texts_or_path`: an iterable of strings, a path (.txt, .jsonl, .csv, .parquet, .gz) or "-".
    Safe to interrupt: committed parts stay; `resume=True` continues where a run stopped.
    """
    config = config or BatchConfig()
    outdir = Path(outdir).expanduser()
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} exists and is not a folder")
    outdir.mkdir(parents=True, exist_ok=True)
    lock = _Lock(outdir)
    try:
        previous = _prepare_outdir(outdir, config, texts_or_path, resume, overwrite)
        start = time.perf_counter()
        loaded = _load(config, model)
        load_seconds = time.perf_counter() - start
        analyzer = Analyzer(loaded, config)
        store = _Store(outdir, analyzer)
        try:
            return _run(texts_or_path, config, outdir, analyzer, store, previous, load_seconds, progress)
        finally:
            store.close()
    finally:
        lock.release()


def _run(
    source: Source,
    config: BatchConfig,
    outdir: Path,
    analyzer: Analyzer,
    store: _Store,
    previous: dict[str, Any] | None,
    load_seconds: float,
    progress: Callable[[RunProgress], None] | None,
) -> BatchRun:
    loaded = analyzer.loaded
    resumed, resumed_rejects = len(store.done_ids), len(store.reject_ids)
    sessions = list((previous or {}).get("sessions", []))
    session: dict[str, Any] = {"started": _now(), "resumed": previous is not None}
    sessions.append(session)
    run: dict[str, Any] = {
        "attnviz_run": RUN_FORMAT,
        "status": "running",
        "input": {"path": _input_label(source), "format": detect_format(source, config.format)},
        "config": config.as_dict(),
        "identity": _identity(config, source),
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
        "versions": _versions(),
        "outputs": {
            "heads": HEADS_DIR,
            "texts": TEXTS_DIR if config.keep_texts else None,
            "summary": SUMMARY_FILE,
            "plots": PLOTS_DIR if config.plots else None,
            "rejects": REJECTS_FILE,
            "attention": ATTENTION_DIR if config.save_attention else None,
        },
        "sessions": sessions,
    }
    started = time.perf_counter()
    state = {"processed": 0, "rejected": 0}
    total = count_records(source, config.format, config.column) if progress is not None else None

    def record(status: str) -> None:
        elapsed = time.perf_counter() - started
        session.update(
            {
                "updated": _now(),
                "status": status,
                "processed": state["processed"],
                "rejected": state["rejected"],
                "seconds": round(elapsed, 3),
                "load_seconds": round(load_seconds, 3),
                "timings": analyzer.timings.as_dict(),
                "texts_per_second": round(state["processed"] / elapsed, 2) if elapsed > 0 else 0.0,
            }
        )
        run["status"] = status
        run["counts"] = {
            "texts": resumed + state["processed"],
            "rejected": resumed_rejects + state["rejected"],
            "parts": store.next_part,
            "rows": (resumed + state["processed"]) * len(analyzer.layer_ids) * len(analyzer.head_ids),
        }
        run["timings"] = {
            "load_s": round(load_seconds, 3),
            "run_s": round(elapsed, 3),
            **{f"{k}_s": v for k, v in analyzer.timings.as_dict().items()},
            "texts_per_second": session["texts_per_second"],
        }
        _write_json(outdir / RUN_FILE, run)

    def tick() -> None:
        if progress is not None:
            progress(RunProgress(state["processed"], state["rejected"], total, resumed + resumed_rejects))

    record("running")
    tick()
    pending: list[BatchResult] = []
    last_commit = time.perf_counter()

    def commit() -> None:
        nonlocal last_commit
        batch, pending[:] = list(pending), []  # taken first: an interrupted write is redone on resume
        state["processed"] += store.commit(batch)
        last_commit = time.perf_counter()
        record("running")

    records = read_corpus(source, config.format, config.field, config.column)
    try:
        for ev in _events(records, analyzer, store.skip):
            if isinstance(ev, Reject):
                store.reject(ev)
                state["rejected"] += 1
                tick()
            elif isinstance(ev, BatchResult):
                store.save_attention(ev)
                pending.append(ev)
                if time.perf_counter() - last_commit > config.commit_seconds:
                    commit()
                if progress is not None:
                    progress(
                        RunProgress(
                            state["processed"] + sum(len(r) for r in pending),
                            state["rejected"],
                            total,
                            resumed + resumed_rejects,
                        )
                    )
            elif pending:
                commit()
        commit()
    except KeyboardInterrupt:
        with contextlib.suppress(BaseException):
            commit()  # complete batches are worth keeping
            record("interrupted")
        raise
    except BaseException:
        with contextlib.suppress(BaseException):
            record("failed")
        raise
    t0 = time.perf_counter()
    summary = summarise(outdir)
    if summary is not None:
        _atomic_write(outdir / SUMMARY_FILE, lambda p: summary.to_csv(p, index=False, float_format="%.6g"))
        if config.plots:
            summary_plots(summary, outdir / PLOTS_DIR, f"{loaded.name}, {resumed + state['processed']} texts")
    analyzer.timings.write += time.perf_counter() - t0
    record("complete")
    return BatchRun(
        outdir=outdir,
        processed=state["processed"],
        rejected=state["rejected"],
        resumed=resumed,
        resumed_rejects=resumed_rejects,
        parts=store.parts_written,
        seconds=time.perf_counter() - started,
        timings=analyzer.timings.as_dict(),
        status="complete",
        run=run,
    )


# -- reading results back -----------------------------------------------------------------------
def summarise(outdir: str | Path) -> pd.DataFrame | None:
    """Per head: role (when pattern scores exist) and mean / std / count of every statistic.

    Streams the committed parts one at a time (Chan's parallel mean and variance), so memory does
    not grow with the corpus. Std is the sample standard deviation (NaN for fewer than 2 texts).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    parts = sorted((Path(outdir) / HEADS_DIR).glob("part-*.parquet"))
    if not parts:
        return None
    skip = {"text_id", "layer", "head", "n_tokens"}
    keys: np.ndarray | None = None  # [layer, head] pairs, sorted
    acc: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    log2_tokens, rows = 0.0, 0
    for path in parts:
        table = pq.read_table(path)
        log2_tokens += float(np.log2(np.maximum(table.column("n_tokens").to_numpy(), 1)).sum())
        rows += table.num_rows
        layer = table.column("layer").to_numpy().astype(np.int64)
        head = table.column("head").to_numpy().astype(np.int64)
        code = layer * 100_000 + head
        uniq, idx = np.unique(code, return_inverse=True)
        if keys is None:
            keys = uniq
        elif not np.array_equal(keys, uniq):
            merged = np.union1d(keys, uniq)
            remap = np.searchsorted(merged, keys)
            for name, (n0, m0, s0) in acc.items():
                n1, m1, s1 = (np.zeros(len(merged)) for _ in range(3))
                n1[remap], m1[remap], s1[remap] = n0, m0, s0
                acc[name] = (n1, m1, s1)
            keys = merged
        idx = np.searchsorted(keys, uniq)[idx]
        size = len(keys)
        for name in table.column_names:
            if name in skip:
                continue
            x = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            ok = ~np.isnan(x)
            n_b = np.bincount(idx[ok], minlength=size).astype(np.float64)
            sum_b = np.bincount(idx[ok], weights=x[ok], minlength=size)
            mean_b = np.divide(sum_b, n_b, out=np.zeros(size), where=n_b > 0)
            m2_b = np.bincount(idx[ok], weights=(x[ok] - mean_b[idx[ok]]) ** 2, minlength=size)
            if name not in acc:
                acc[name] = (n_b, mean_b, m2_b)
                continue
            n_a, mean_a, m2_a = acc[name]
            n = n_a + n_b
            delta = mean_b - mean_a
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(
                    n > 0, mean_a + delta * np.divide(n_b, n, out=np.zeros(size), where=n > 0), 0.0
                )
                m2 = m2_a + m2_b + delta**2 * np.divide(n_a * n_b, n, out=np.zeros(size), where=n > 0)
            acc[name] = (n, mean, m2)
    assert keys is not None
    frame: dict[str, Any] = {"layer": keys // 100_000, "head": keys % 100_000}
    means: dict[str, np.ndarray] = {}
    for name, (n, mean, m2) in acc.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(n > 1, np.sqrt(m2 / np.maximum(n - 1, 1)), np.nan)
        means[name] = np.where(n > 0, mean, np.nan)
        frame[f"{name}_mean"] = means[name]
        frame[f"{name}_std"] = std
        frame[f"{name}_count"] = n.astype(np.int64)
    out = pd.DataFrame(frame)
    if all(f"pattern_{p}" in means for p in PATTERN_NAMES):
        from attnviz.patterns import role_of

        out.insert(2, "role", role_of({p: means[f"pattern_{p}"] for p in PATTERN_NAMES}))
    out.attrs["mean_log2_tokens"] = log2_tokens / max(rows, 1)  # the typical uniform-entropy bound
    return out


def summary_plots(summary: pd.DataFrame, folder: Path, title: str) -> list[Path]:
    """Layers x heads maps of mean entropy and of role (when those statistics were kept)."""
    layers = sorted(int(v) for v in summary["layer"].unique())
    heads = sorted(int(v) for v in summary["head"].unique())
    grid = summary.set_index(["layer", "head"]).reindex(
        [(la, h) for la in layers for h in heads]
    )  # every (layer, head) in order, even if a part lacked one

    def values(column: str) -> np.ndarray:
        return grid[column].to_numpy().reshape(len(layers), len(heads))

    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    if "entropy_mean" in grid:
        from attnviz.plots import entropy_grid, save

        bound = float(summary.attrs.get("mean_log2_tokens", 0.0))
        fig = entropy_grid(
            values("entropy_mean"), layers, heads, bound=bound, title=f"mean row entropy ({title})"
        )
        out.append(save(fig, folder / "entropy.png"))
    if "role" in grid:
        from attnviz.roles_plot import role_map

        roles = values("role").astype(str)
        best = np.zeros(roles.shape)
        for name in PATTERN_NAMES:
            mask = roles == name
            best[mask] = values(f"pattern_{name}_mean")[mask]
        out.append(role_map(roles, layers, heads, folder / "role.png", best, f"head roles ({title})"))
    return out


def read_results(outdir: str | Path, texts: bool = False) -> pd.DataFrame:
    """The long table of a run (the same as `pandas.read_parquet(outdir)`), optionally with texts."""
    import pandas as pd

    outdir = Path(outdir)
    if not list((outdir / HEADS_DIR).glob("part-*.parquet")):
        raise InputError(f"{outdir} holds no attnviz batch results")
    frame = pd.read_parquet(outdir / HEADS_DIR)
    if texts:
        if not (outdir / TEXTS_DIR).is_dir():
            raise InputError(f"{outdir} has no texts table (the run was made with texts = false)")
        side = pd.read_parquet(outdir / TEXTS_DIR, columns=["text_id", "line", "text"])
        frame = frame.merge(side, on="text_id", how="left")
    return frame


__all__ = [
    "Analyzer",
    "BatchConfig",
    "BatchResult",
    "BatchRun",
    "Entry",
    "Item",
    "Probe",
    "Reject",
    "RunProgress",
    "TextStats",
    "check_input",
    "check_outdir",
    "count_records",
    "detect_format",
    "iter_records",
    "read_corpus",
    "read_results",
    "records_frame",
    "run_batch_analysis",
    "statistics_of",
    "summarise",
]
