"""The output folder: checks and lock (before any model loads), committed parts, resume, rejects.

Each part is written as `heads/part-NNNNN.parquet` (one row group) under a hidden temporary name,
then renamed: a killed run leaves only complete parts, and `--resume` reads the text ids of those
parts to continue without duplicating or skipping a text. `--overwrite` deletes only files that
`_run.json`'s manifest lists with their size and hash (see `integrity`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.batch import integrity
from attnviz.batch.config import BatchConfig
from attnviz.batch.corpus import Reject, Source, detect_format, input_label
from attnviz.batch.integrity import (
    ATTENTION_DIR,
    HEADS_DIR,
    LOCK_FILE,
    OUR_FILES,
    OUR_NAMES,
    OUR_TEMPORARIES,
    OUTDIR,
    OVERWRITE,
    REJECTS_FILE,
    RESUME,
    RUN_FILE,
    SUMMARY_FILE,
    TEXTS_DIR,
    foreign_file,
    listed_files,
    shown,
)
from attnviz.batch.integrity import PLOTS_DIR as PLOTS_DIR  # the names of a run's files, re-exported
from attnviz.batch.integrity import RUN_FORMAT as RUN_FORMAT
from attnviz.errors import AttnvizError, InputError
from attnviz.outputs import default_mode

if TYPE_CHECKING:
    from attnviz.batch.analyzer import BatchResult, RunShape


class OutputError(AttnvizError):
    """The output folder cannot be written (read-only, no permission, disk full)."""


@contextlib.contextmanager
def writing(path: Path, outdir: Path) -> Iterator[None]:
    """Turn an OS error while writing into one line that says what to do."""
    try:
        yield
    except OSError as exc:
        raise _output_error(exc, path, outdir) from None
    except AttnvizError:
        raise
    except Exception as exc:  # a library's own error for an I/O failure (safetensors)
        failed = integrity.os_error(exc)
        if failed is None:
            raise
        raise _output_error(failed, path, outdir) from None


def _output_error(exc: OSError, path: Path, outdir: Path) -> OutputError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"no space left on {outdir}; nothing committed is lost, free space and rerun with {RESUME}"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return OutputError(f"cannot write to {path}: {why}; pick a folder you can write to with {OUTDIR}")
    return OutputError(f"cannot write to {path}: {exc.strerror or exc}")


def part_index(name: str) -> int | None:
    stem = name.split(".")[0]
    try:
        return int(stem.split("-")[1])
    except (IndexError, ValueError):
        return None


def atomic_write(
    path: Path,
    write: Callable[[Path], None],
    outdir: Path | None = None,
    record: Callable[[Path, Path], None] | None = None,
) -> None:
    """Write through a new hidden temporary file (O_EXCL, a name no one can plant a link under),
    fsync, then rename: readers never see half a file. `record(path, tmp)` runs just before the
    rename (the manifest entry is taken from the bytes that land)."""

    with writing(path, outdir or path.parent):
        tmp = integrity.temporary(path)
        try:
            write(tmp)
            os.chmod(tmp, default_mode())  # mkstemp makes it 0600; a writer may have replaced it
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            if record is not None:
                record(path, tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if integrity.not_utf8(text):  # a lone surrogate (a name from a non-UTF-8 argument): JSON's escape
        text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def identity(config: BatchConfig, source: Source) -> dict[str, Any]:
    """What must match to resume: the settings, with the input format resolved."""
    return {**config.identity(), "format": detect_format(source, config.format)}


class _Lock:
    """An exclusive lock on the output folder (released by the OS if the process dies)."""

    def __init__(self, outdir: Path) -> None:
        with writing(outdir / LOCK_FILE, outdir):
            self.file = open(outdir / LOCK_FILE, "a+b")  # noqa: SIM115
        try:
            import fcntl

            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        except OSError:
            self.file.close()
            raise InputError(
                f"another attnviz batch is writing to {outdir}; "
                f"wait for it to finish or pick another {OUTDIR} folder"
            ) from None

    def release(self) -> None:
        self.file.close()


def read_run(outdir: Path) -> dict[str, Any] | None:
    """The folder's `_run.json` when an attnviz run wrote it; None when there is none or it is not ours.

    One whose values have the wrong types is refused in one line (`integrity.check_run`)."""
    path = outdir / RUN_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(data, dict) and "attnviz_run" in data):
        return None
    integrity.check_run(data, path)
    return data


class OutputFolder:
    """The output folder checked, created and locked: done before a model loads, so a folder that
    cannot be used costs nothing. `release()` (or leaving the `with` block) frees the lock."""

    def __init__(
        self, outdir: str | Path, config: BatchConfig, source: Source, resume: bool, overwrite: bool
    ):
        check_resume(resume, overwrite)
        self.outdir = Path(outdir).expanduser()
        self.overwrite = overwrite
        integrity.check_name(self.outdir)
        if self.outdir.exists() and not self.outdir.is_dir():
            raise InputError(f"{shown(self.outdir)} exists and is not a folder; pick a folder with {OUTDIR}")
        self.created = not self.outdir.exists()
        with writing(self.outdir, self.outdir):
            self.outdir.mkdir(parents=True, exist_ok=True)
        _refuse_linked_lock(self.outdir)
        self.lock = _Lock(self.outdir)
        try:
            self.previous = _check_folder(self.outdir, config, source, resume, overwrite)
        except BaseException:
            self.release()
            raise
        self.cleared = False

    def clear(self) -> None:
        """With --overwrite, delete the earlier run's files (only those attnviz wrote)."""
        if self.overwrite and self.previous is not None and not self.cleared:
            clear_run(self.outdir, self.previous.get("manifest", {}))
            self.previous = None
            self.cleared = True

    def release(self) -> None:
        """Free the lock; a folder made for a run that wrote nothing is removed again."""
        self.lock.release()
        if self.created:
            with contextlib.suppress(OSError):
                if [p.name for p in self.outdir.iterdir()] == [LOCK_FILE]:
                    (self.outdir / LOCK_FILE).unlink()
                    self.outdir.rmdir()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_resume(resume: bool, overwrite: bool) -> None:
    """One continues the run in the folder, the other replaces it: InputError for both."""
    if resume and overwrite:
        raise InputError(f"give {RESUME} (continue the run) or {OVERWRITE} (replace it), not both")


def check_outdir(
    outdir: str | Path, config: BatchConfig, source: Source, resume: bool, overwrite: bool
) -> None:
    """Raise the error `run_batch_analysis` would raise for this output folder, changing nothing."""
    check_resume(resume, overwrite)
    outdir = Path(outdir).expanduser()
    integrity.check_name(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{shown(outdir)} exists and is not a folder; pick a folder with {OUTDIR}")
    if outdir.is_dir():
        _check_folder(outdir, config, source, resume, overwrite)


def _refuse_linked_lock(outdir: Path) -> None:
    """The lock file is opened for appending: a link would create or hold a file we did not write."""
    if (outdir / LOCK_FILE).is_symlink():
        raise InputError(
            f"{outdir / LOCK_FILE} is a symbolic link; move it away or pick another {OUTDIR} folder"
        )


def _check_folder(
    outdir: Path, config: BatchConfig, source: Source, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Refuse a folder holding another run (unless overwrite); return the earlier run to resume."""
    _refuse_linked_lock(outdir)
    previous = read_run(outdir)
    if previous is None:
        ours = [n for n in OUR_FILES if os.path.lexists(outdir / n)]
        linked = [n for n in ours if (outdir / n).is_symlink()]
        if linked:
            raise InputError(
                f"{outdir / linked[0]} is a symbolic link; move it away or pick another {OUTDIR} folder"
            )
        if ours:
            raise InputError(
                f"{outdir / ours[0]} exists but no attnviz run wrote it (no readable {RUN_FILE}); "
                f"move it away or pick another {OUTDIR} folder"
            )
        others = [p.name for p in outdir.iterdir() if not p.name.startswith(".")]
        if others and not overwrite:
            raise InputError(
                f"{outdir} is not empty and holds no attnviz batch run; pick an empty folder "
                f"or pass {OVERWRITE} (which keeps files attnviz did not write)"
            )
        return None
    if overwrite or resume:
        _refuse_foreign(outdir, "overwrite" if overwrite else "resume")
        integrity.read_rejects(outdir / REJECTS_FILE)  # a line attnviz did not write: refused here
    if overwrite:
        _refuse_unlisted(outdir, previous.get("manifest", {}))
        return previous
    if not resume:
        status = previous.get("status", "unknown")
        done = previous.get("counts", {}).get("texts", "?")
        same = previous.get("identity") == identity(config, source)
        what = "this run" if same else "a different run"
        hint = (
            f"pass {RESUME} to continue it or {OVERWRITE} to start again"
            if same
            else f"pass {OVERWRITE} to replace it, or pick another folder"
        )
        raise InputError(f"{outdir} already holds {what} ({status}, {done} texts); {hint}")
    old = previous.get("identity") or {}
    new = identity(config, source)
    differ = [k for k in new if old.get(k) != new[k]]
    if differ:
        raise InputError(
            f"cannot resume: {outdir} holds a run with different settings ({', '.join(differ)}); "
            f"pass {OVERWRITE} to start again"
        )
    label = input_label(source)
    old_input = previous.get("input", {}).get("path")
    if (
        old_input not in (None, "-", "<python iterable>")
        and label not in ("-", "<python iterable>")
        and old_input != label
    ):
        raise InputError(f"cannot resume: {outdir} was a run over {old_input}, not {label}")
    for part in sorted((outdir / HEADS_DIR).glob("part-*.parquet")):
        if OUR_NAMES[HEADS_DIR].fullmatch(part.name) and part.is_file():
            integrity.check_part(part)  # a cut part: named, before the model loads
    return previous


def _refuse_foreign(outdir: Path, what: str) -> None:
    """Check the whole folder before anything is deleted or added: refuse what is unsafe to keep."""
    found = foreign_file(outdir)
    if found is None:
        return
    if found.is_symlink():
        kind = "a symbolic link"
    elif found.is_file() and found.stat().st_nlink > 1:
        kind = "a hard link to another file"
    else:
        kind = "not written by attnviz"
    raise InputError(
        f"cannot {what} {outdir}: {found} is {kind}; move it away (attnviz never deletes, "
        "follows or reads what it did not write)"
    )


def _refuse_unlisted(outdir: Path, manifest: dict[str, Any]) -> None:
    """--overwrite deletes only what the run wrote: a file its manifest does not list, or lists with
    another size or hash, is refused in one line before anything is deleted."""
    for path in listed_files(outdir):
        if not integrity.matches(path, manifest.get(path.relative_to(outdir).as_posix())):
            raise InputError(
                f"cannot overwrite {outdir}: {path} is not a file this run wrote (its name, size or "
                f"content differs from {RUN_FILE}'s manifest); move it away (attnviz deletes only "
                "what it wrote)"
            )


def clear_run(outdir: Path, manifest: dict[str, Any] | None = None) -> None:
    """Delete what an attnviz run wrote: its named files (with a manifest: only those of the size it
    records), and its folders only once empty."""
    listed = set(listed_files(outdir))
    for name in (SUMMARY_FILE, REJECTS_FILE, RUN_FILE):
        path = outdir / name
        if manifest is not None and path in listed and not _same_size(path, manifest, outdir):
            continue
        with writing(path, outdir), contextlib.suppress(FileNotFoundError):
            path.unlink()
    for folder, pattern in OUR_NAMES.items():
        path = outdir / folder
        if path.is_symlink() or not path.is_dir():
            continue  # never followed: `_refuse_foreign` stops a run before it gets here
        with writing(path, outdir):
            for child in path.iterdir():
                if not (child.is_file() and not child.is_symlink() and pattern.fullmatch(child.name)):
                    continue
                if manifest is not None and child in listed and not _same_size(child, manifest, outdir):
                    continue
                child.unlink()
            if not any(path.iterdir()):
                path.rmdir()


def _same_size(path: Path, manifest: dict[str, Any], outdir: Path) -> bool:
    return integrity.matches(path, manifest.get(path.relative_to(outdir).as_posix()), content=False)


class PartWriter:
    """Writes complete parts (statistics, texts, attention shards) numbered from `next_part`.

    The Ray engine's workers each hold one, numbered by chunk, so parts never collide.
    """

    def __init__(self, outdir: Path, analyzer: RunShape, next_part: int = 0) -> None:
        self.outdir = outdir
        self.analyzer = analyzer
        self.config = analyzer.config
        self.heads_dir = outdir / HEADS_DIR
        self.texts_dir = outdir / TEXTS_DIR
        self.attention_dir = outdir / ATTENTION_DIR
        self.next_part = next_part
        self.shard = 0
        self.parts_written = 0
        self.written: dict[str, list[Any]] = {}  # the manifest's new entries: relative name -> [size, sha256]

    def note(self, path: Path, content: Path | None = None) -> None:
        """Add a file this run wrote to the manifest (its bytes read from `content`, if given)."""
        self.written[path.relative_to(self.outdir).as_posix()] = integrity.entry(content or path)

    # -- writing ------------------------------------------------------------------------------
    def save_attention(self, result: BatchResult) -> None:
        """Raw tensors of one batch as a safetensors shard named after the part it belongs to."""
        if result.attention is None:
            return
        from safetensors.numpy import save_file

        an = self.analyzer
        arrays = {str(int(t)): a for t, a in zip(result.text_ids, result.attention, strict=True)}
        meta = {
            "model": an.model_name,
            "layers": json.dumps(an.layer_ids),
            "heads": json.dumps(an.head_ids),
            "tokens": json.dumps(
                {str(int(t)): tk for t, tk in zip(result.text_ids, result.tokens or [], strict=True)}
            ),
        }
        path = self.attention_dir / f"part-{self.next_part:05d}-{self.shard:04d}.safetensors"
        start = time.perf_counter()
        atomic_write(path, lambda p: save_file(arrays, str(p), metadata=meta), self.outdir, self.note)
        self.analyzer.timings.write += time.perf_counter() - start
        self.shard += 1
        result.attention = None  # written: do not keep it until the commit

    def commit(self, results: list[BatchResult]) -> int:
        """Write the pending batches as one part (texts table first, the statistics last)."""
        if not results:
            return 0
        start = time.perf_counter()
        ids = np.concatenate([r.text_ids for r in results])
        order = np.argsort(ids, kind="stable")
        name = f"part-{self.next_part:05d}.parquet"
        with writing(self.heads_dir / name, self.outdir):  # a full disk: one line, parts so far kept
            if self.config.keep_texts:
                self._write_table(self.texts_dir / name, _texts_table(results, order))
            self._write_table(self.heads_dir / name, self._heads_table(results, order))
        self.next_part += 1
        self.shard = 0
        self.parts_written += 1
        self.analyzer.timings.write += time.perf_counter() - start
        return len(ids)

    def _heads_table(self, results: list[BatchResult], order: np.ndarray) -> Any:
        import pyarrow as pa

        an = self.analyzer
        ids = np.concatenate([r.text_ids for r in results])[order]
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
        return pa.table(columns)

    def _write_table(self, path: Path, table: Any) -> None:
        """A Parquet part, one row group, written atomically (the seam the disk-full tests use)."""
        import pyarrow.parquet as pq

        atomic_write(
            path,
            lambda p: pq.write_table(table, p, compression="zstd", row_group_size=max(1, len(table))),
            self.outdir,
            self.note,
        )


class Store(PartWriter):
    """Writes committed parts, rejects and the run record into the output folder; knows what is done."""

    def __init__(self, outdir: Path, analyzer: RunShape) -> None:
        super().__init__(outdir, analyzer)
        with writing(outdir, outdir):
            self.heads_dir.mkdir(parents=True, exist_ok=True)
            if self.config.keep_texts:
                self.texts_dir.mkdir(exist_ok=True)
            if self.config.save_attention:
                self.attention_dir.mkdir(exist_ok=True)
            self._remove_temporaries()
            self.done_ids, self.next_part = self._committed()
            self.rejects = integrity.open_rejects(outdir / REJECTS_FILE)
        try:
            self.reject_ids = self._read_rejects()
            both = sorted(self.reject_ids.intersection(self.done_ids.tolist()))
            if both:
                raise InputError(
                    f"cannot resume: text {both[0]} is both in a committed part and in {REJECTS_FILE} "
                    f"(edited by hand?); remove its line from {REJECTS_FILE}, or pick another {OUTDIR} folder"
                )
        except BaseException:
            self.close()
            raise

    def _remove_temporaries(self) -> None:
        """`_run.json` and `_summary.csv` temporary files left by a killed run (the folder is locked)."""
        for child in self.outdir.iterdir():
            if OUR_TEMPORARIES.fullmatch(child.name) and child.is_file() and not child.is_symlink():
                child.unlink()

    def adopt(self, manifest: dict[str, Any]) -> None:
        """On resume: files of the run's own that a kill -9 left unlisted (renamed into place before
        `_run.json` was rewritten) join the manifest: they are read as the run's parts anyway."""
        for path in listed_files(self.outdir):
            if path.relative_to(self.outdir).as_posix() not in manifest:
                self.note(path)

    # -- resume state -----------------------------------------------------------------------
    def _committed(self) -> tuple[np.ndarray, int]:
        """Text ids in committed parts; the next part number; stale temporary files removed."""
        import pyarrow.parquet as pq

        ids: list[np.ndarray] = []
        committed: set[int] = set()  # Ray runs may leave gaps: a part per chunk, in any order
        for path in sorted(self.heads_dir.glob("part-*.parquet")):
            idx = part_index(path.name)
            if idx is None or not OUR_NAMES[HEADS_DIR].fullmatch(path.name):
                continue
            committed.add(idx)
            try:
                table = pq.read_table(path, columns=["text_id"])
            except Exception:  # checked before the model loaded; a part cut since then is named here
                integrity.check_part(path)
                raise
            ids.append(np.unique(table.column(0).to_numpy()))
        next_part = max(committed, default=-1) + 1
        for folder in (self.heads_dir, self.texts_dir, self.attention_dir):
            if not folder.is_dir():
                continue
            pattern = OUR_NAMES[folder.name]
            for path in folder.iterdir():
                if not pattern.fullmatch(path.name):
                    continue  # not ours: never touched
                idx = part_index(path.name.lstrip("."))
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()  # a write cut short
                elif folder is not self.heads_dir and idx is not None and idx not in committed:
                    path.unlink()  # side files of a part that was never committed
        done = np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)
        return done, next_part

    def _read_rejects(self) -> set[int]:
        """The ids already rejected, read through the file opened for appending (checked ours)."""
        size = os.fstat(self.rejects).st_size
        data = os.pread(self.rejects, size, 0) if size else b""
        if data and not data.endswith(b"\n"):  # a line cut short by a kill: drop it
            data = data[: data.rfind(b"\n") + 1]
            os.ftruncate(self.rejects, len(data))
        return integrity.reject_ids(data, self.outdir / REJECTS_FILE)

    def skip(self, text_id: int) -> bool:
        if text_id in self.reject_ids:
            return True
        if not len(self.done_ids):
            return False
        i = np.searchsorted(self.done_ids, text_id)
        return bool(i < len(self.done_ids) and self.done_ids[i] == text_id)

    # -- writing ------------------------------------------------------------------------------
    def reject(self, rej: Reject) -> None:
        line = json.dumps(rej.as_dict(), ensure_ascii=False) + "\n"
        with writing(self.outdir / REJECTS_FILE, self.outdir):  # unbuffered: nothing left to flush
            integrity.append(self.rejects, line.encode("utf-8", "backslashreplace"))

    def close(self) -> None:
        """Close the rejects file (twice is fine): every line is written already, nothing can fail."""
        fd, self.rejects = self.rejects, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _texts_table(results: list[BatchResult], order: np.ndarray) -> Any:
    import pyarrow as pa

    texts = [t for r in results for t in r.texts]
    return pa.table(
        {
            "text_id": pa.array(np.concatenate([r.text_ids for r in results])[order]),
            "line": pa.array(np.concatenate([r.lines for r in results])[order]),
            "n_tokens": pa.array(np.concatenate([r.n_tokens for r in results])[order]),
            "truncated": pa.array(np.concatenate([r.truncated for r in results])[order]),
            "text": pa.array([texts[i] for i in order], type=pa.string()),
        }
    )
