"""Reading a corpus: records with their line numbers; a bad record becomes a `Reject`, never an error.

Only a problem with the whole input (a missing file, a missing column, a `.gz` that is not gzip or
is cut short) raises an `InputError`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
import unicodedata
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from attnviz.batch.config import BatchConfig
from attnviz.batch.integrity import shown
from attnviz.errors import InputError

EXCERPT = 80
GZIP_MAGIC = b"\x1f\x8b"
# The longest record line read (bytes): a longer one is rejected as too long and skipped in pieces,
# so a stream without newlines (/dev/zero, a binary file) never has to fit in memory.
MAX_LINE_BYTES = 4 * 2**20
_CHUNK = 2**20

Source = str | Path | Iterable[str]


class CorpusReadError(InputError):
    """The input cannot be read on from here (a cut-short or corrupt .gz): records so far are fine."""


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
    # empty, undecodable, malformed_json, malformed_csv, missing_field, not_text, too_long, no_tokens
    reason: str
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


def excerpt(text: str) -> str:
    """A record shortened for a reject line (a lone surrogate shown as its escape, `\\ud800`)."""
    short = text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"
    return short.encode("utf-8", "backslashreplace").decode("utf-8")


def visible(text: str) -> bool:
    """Whether a text holds a character that shows: not only spaces, zero-width or control ones."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc") for c in text)


def not_utf8(text: str) -> int | None:
    """The index of the first lone surrogate (a character UTF-8 cannot encode), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


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


def _is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def check_gzip_header(path: Path) -> None:
    """A file named .gz must start like gzip: say so before anything is read or loaded."""
    with path.open("rb") as f:
        head = f.read(2)
    if head and head != GZIP_MAGIC:
        raise InputError(
            f"{path} is named .gz but is not gzip-compressed; rename it without .gz or compress it"
        )


class _Guarded:
    """A binary stream whose read errors (a cut-short or corrupt gzip) become one-line errors."""

    def __init__(self, f: Any, name: str) -> None:
        self.f = f
        self.name = name

    def _fail(self, exc: BaseException) -> CorpusReadError:
        if isinstance(exc, EOFError):
            why = "it is cut short (the gzip stream ends before its end marker)"
        else:
            why = f"it is corrupt ({exc})"
        return CorpusReadError(f"cannot read {self.name} to the end: {why}; re-create the file")

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.f, method)(*args)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise self._fail(exc) from None

    def read(self, n: int = -1) -> bytes:
        return self._call("read", n)

    def read1(self, n: int = -1) -> bytes:
        return self._call("read1", n)

    def readline(self, n: int = -1) -> bytes:
        return self._call("readline", n)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self.f.seekable())

    def __getattr__(self, name: str) -> Any:  # seek, tell, closed...: as the wrapped file
        return getattr(self.f, name)


@contextlib.contextmanager
def open_binary(source: str | Path) -> Iterator[BinaryIO]:
    """The input's bytes (`-`: standard input); a .gz file is decompressed as it is read."""
    if str(source) == "-":
        yield sys.stdin.buffer
        return
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"no such input file: {shown(source)}")
    try:
        if _is_gzip_name(path):
            check_gzip_header(path)
            f: Any = gzip.open(path, "rb")  # noqa: SIM115
        else:
            f = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
    with f:
        yield _Guarded(f, str(source)) if _is_gzip_name(path) else f  # type: ignore[misc]


def _decode_line(raw: bytes, index: int) -> tuple[str | None, Reject | None]:
    raw = raw.rstrip(b"\r\n")
    if index == 0 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", errors="replace")
        return None, Reject(
            index, index + 1, "undecodable", f"invalid UTF-8 at byte {exc.start}", excerpt(shown)
        )


def text_item(text_id: int, line: int, value: Any, what: str) -> Item | Reject:
    """A record's value as an Item, or the reason it is not a usable text."""
    if value is None:
        return Reject(text_id, line, "missing_field", f"no {what}")
    if not isinstance(value, str):
        kind = type(value).__name__
        return Reject(text_id, line, "not_text", f"{what} is {kind}, not text", excerpt(_shown(value)))
    if (at := not_utf8(value)) is not None:  # a tokenizer cannot take it: a lone surrogate
        detail = f"a lone surrogate at character {at} (not valid Unicode text)"
        return Reject(text_id, line, "undecodable", detail, excerpt(value))
    if not visible(value):
        return Reject(text_id, line, "empty", "empty text", excerpt(value) if value.strip() else "")
    return Item(text_id, line, value)


def _shown(value: Any) -> str:
    try:
        return str(value)[: EXCERPT * 2]
    except ValueError:  # an integer too long to print (Python's 4300-digit limit)
        return f"<{type(value).__name__}>"


def _lines(f: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """Physical lines, each at most MAX_LINE_BYTES: (line, True) or (its first bytes, False) for a
    longer one, whose rest is read and dropped in pieces."""
    while raw := f.readline(MAX_LINE_BYTES + 1):
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw, True
            continue
        yield raw[:EXCERPT], False  # rejected at once: an endless stream (/dev/zero) shows it too
        while (rest := f.readline(_CHUNK)) and not rest.endswith(b"\n"):
            pass


def _too_long(i: int, head: bytes) -> Reject:
    detail = f"the line is longer than {MAX_LINE_BYTES // 2**20} MiB; split it into texts"
    return Reject(i, i + 1, "too_long", detail, excerpt(head.decode("utf-8", "replace")))


def _read_txt(f: BinaryIO) -> Iterator[Item | Reject]:
    for i, (raw, whole) in enumerate(_lines(f)):
        if not whole:
            yield _too_long(i, raw)
            continue
        text, bad = _decode_line(raw, i)
        yield bad if bad is not None else text_item(i, i + 1, text, "text")


def _read_jsonl(f: BinaryIO, key: str) -> Iterator[Item | Reject]:
    for i, (raw, whole) in enumerate(_lines(f)):
        if not whole:
            yield _too_long(i, raw)
            continue
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
            yield Reject(i, i + 1, "malformed_json", f"{exc.msg} at column {exc.colno}", excerpt(text))
            continue
        except RecursionError:
            yield Reject(i, i + 1, "malformed_json", "nested too deeply", excerpt(text))
            continue
        except ValueError as exc:  # e.g. an integer over Python's 4300-digit limit
            yield Reject(i, i + 1, "malformed_json", str(exc).split(";")[0], excerpt(text))
            continue
        if not isinstance(obj, dict):
            yield Reject(i, i + 1, "malformed_json", "not a JSON object", excerpt(text))
        elif key not in obj:
            yield Reject(i, i + 1, "missing_field", f"no field '{key}'", excerpt(text))
        else:
            yield text_item(i, i + 1, obj[key], f"field '{key}'")


class _Lines:
    """Physical lines for the csv module, remembering those of the current record so they can be
    read again when that record turns out to be an unterminated quote."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.stream = stream
        self.replay: deque[str] = deque()
        self.taken: list[str] = []
        self.exhausted = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.replay.popleft() if self.replay else self.stream.readline()
        if not line:
            self.exhausted = True
            raise StopIteration
        self.taken.append(line)
        return line

    def start_record(self) -> None:
        self.taken = []
        self.exhausted = False

    def unterminated(self) -> bool:
        """The record just read ran into the end of the input inside a quoted field."""
        import csv

        if not self.exhausted:
            return False
        try:
            list(csv.reader(io.StringIO("".join(self.taken)), strict=True))
        except csv.Error as exc:
            return "unexpected end of data" in str(exc)
        return False


def _read_csv(f: BinaryIO, column: str) -> Iterator[Item | Reject]:
    import csv

    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    stream = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _Lines(stream)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    if column not in header:
        raise InputError(f"the CSV has no column '{column}'; its columns are: {', '.join(header)}")
    col = header.index(column)
    row_id, consumed = 0, len(lines.taken)
    while True:
        start = consumed + 1
        lines.start_record()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            consumed += len(lines.taken)
            yield Reject(row_id, start, "malformed_csv", str(exc))
            row_id += 1
            continue
        if lines.unterminated():  # the quote opened here never closes: read the lines after it again
            first, *rest = lines.taken
            lines.replay.extendleft(reversed(rest))
            consumed += 1
            detail = f"a quoted field opened on line {start} never closes"
            yield Reject(row_id, start, "malformed_csv", detail, excerpt(first.rstrip("\r\n")))
            row_id += 1
            continue
        consumed += len(lines.taken)
        if not row:  # a blank line between records
            continue
        yield _csv_value(row_id, start, row[col] if col < len(row) else None, column)
        row_id += 1


def _csv_value(row_id: int, line: int, value: str | None, column: str) -> Item | Reject:
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return Reject(row_id, line, "undecodable", "invalid UTF-8", excerpt(shown))
    return text_item(row_id, line, value, f"column '{column}'")


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
            yield text_item(row, row + 1, value, f"column '{column}'")
            row += 1


def read_corpus(
    source: Source, fmt: str = "auto", field: str = "text", column: str = "text"
) -> Iterator[Item | Reject]:
    """Stream records from a file (`-`: standard input) or an iterable of strings."""
    if not isinstance(source, str | Path):
        for i, value in enumerate(source):
            yield text_item(i, i + 1, value, "text")
        return
    fmt = detect_format(source, fmt)
    with open_binary(source) as f:
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
        with open_binary(source) as f:
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


def input_label(source: Source) -> str:
    """How `_run.json` names the input: an absolute path, `-`, or a Python iterable."""
    if isinstance(source, str | Path):
        if str(source) == "-":
            return "-"
        path = os.fsencode(Path(source).expanduser().resolve())
        return path.decode("utf-8", "backslashreplace")  # a byte that is not UTF-8 as its escape
    return "<python iterable>"


def check_input(source: Source, config: BatchConfig) -> None:
    """Fail early (before a model loads): a missing or empty file, a .gz that is not gzip, a
    missing CSV / Parquet column."""
    if not isinstance(source, str | Path) or str(source) == "-":
        return
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"no such input file: {shown(source)}")
    try:
        size = path.stat().st_size
        if _is_gzip_name(path):
            check_gzip_header(path)
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
    if size == 0:
        raise InputError(f"nothing to read: {source} is empty")
    if detect_format(source, config.format) in ("csv", "parquet"):
        records = read_corpus(source, config.format, config.field, config.column)
        try:
            next(records, None)
        finally:
            records.close()


def read_texts(
    source: str | Path | Iterable[str], fmt: str = "auto", field: str = "text", column: str = "text"
) -> tuple[list[str], int]:
    """Texts from a corpus (as `batch` reads it: txt, jsonl, csv, parquet, `-`) and how many were skipped."""
    texts, skipped = [], 0
    for rec in read_corpus(source, fmt, field, column):
        if isinstance(rec, Item):
            texts.append(rec.text)
        else:
            skipped += 1
    return texts, skipped
