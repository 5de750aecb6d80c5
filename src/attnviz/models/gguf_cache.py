"""The on-disk cache of de-quantised GGUF models: entries named by the file's content hash,
written whole (temporary folder, then rename) under a per-entry lock, checked before reuse."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Where dequantised GGUF models are kept: $ATTNVIZ_CACHE, else $XDG_CACHE_HOME/attnviz."""
    if env := os.environ.get("ATTNVIZ_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnviz"


ENTRY_FILE = "attnviz-entry.json"  # written last into a cache entry: what it was built from


def _digest_index() -> Path:
    return cache_dir() / "gguf" / "digests.json"


def file_digest(path: Path) -> str:
    """The sha256 of a file's content, remembered per path, size, inode, mtime_ns and ctime_ns.

    Hashing reads the file once (about 0.2 s for SmolLM2's 100 MB). A replaced file has a new
    inode or change time (which, unlike the modification time, cannot be set back), so it is hashed
    again and can never reuse the old file's weights.
    """
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
    index_path = _digest_index()
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if isinstance(index, dict) and isinstance(index.get(key), str):
        return index[key]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    index = (
        {k: v for k, v in index.items() if not k.startswith(f"{path.resolve()}:")}
        if isinstance(index, dict)
        else {}
    )
    index[key] = digest
    try:
        from attnviz.outputs import atomic_output

        with atomic_output(index_path) as tmp:
            tmp.write_text(json.dumps(index, indent=1))
    except OSError:
        pass  # an unwritable cache only costs a re-hash next time
    return digest


def cache_folder(gguf: Path, digest: str | None = None) -> Path:
    """The cache entry of a GGUF file, named by a hash of its content (not its path or date)."""
    digest = digest or file_digest(gguf)
    return cache_dir() / "gguf" / f"{gguf.stem}-{digest[:16]}"


def entry_ok(folder: Path, digest: str) -> bool:
    """True when `folder` is a finished entry built from a file with this content hash."""
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
        files = entry["files"]
        return entry.get("source_sha256") == digest and all(
            (folder / name).is_file() and (folder / name).stat().st_size == size
            for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)-[^/]*$|^.+\.tmp(\d+)$")  # atomic_output's and the old names


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove half-written cache entries left by processes that died; returns what was removed."""
    import shutil

    removed = []
    try:
        children = list(folder.iterdir())
    except OSError:
        return removed
    for child in children:
        match = _TMP_NAME.match(child.name)
        if not match:
            continue
        pid = int(match.group(1) or match.group(2))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
        removed.append(child)
    return removed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if needed): one writer per cache entry."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_AGAIN = "download or copy it again"


def gguf_problem(path: Path) -> str | None:
    """Why a .gguf file cannot be read (not GGUF, or cut short), or None when its layout is whole.

    Asked only after loading failed, so the few seconds of parsing are spent on the error path.
    """
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if magic != b"GGUF":
        return "is not a GGUF file (it does not start with the GGUF magic bytes)"
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception:  # the reader runs off the end of a cut file in many different ways
        return f"is truncated or damaged: it cannot be read as GGUF ({size:,} bytes); {_AGAIN}"
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        return f"is truncated: its tensors need {end:,} bytes, the file has {size:,}; {_AGAIN}"
    return None
