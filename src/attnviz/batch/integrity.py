"""What keeps a batch folder honest: unguessable temporary files, the manifest of what a run wrote,
a rejects file that is only ever ours, and a `_run.json` whose values have the types they should.

A run records in `_run.json` a manifest: for every file it wrote (parts, shards, summary, plots) its
size and SHA-256. `--overwrite` deletes only files that match it; `--resume` refuses a rejects file
or a `_run.json` that someone else changed, and a damaged part, in one line, before the model loads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from attnviz.errors import InputError, param
from attnviz.outputs import default_mode

OUTDIR, RESUME, OVERWRITE = param("outdir", flag="-o"), param("resume", True), param("overwrite", True)
# Our temporary names: `.NAME.` + tempfile's random letters + `.tmp` (never guessable in advance).
TMP_SUFFIX = r"(\.[A-Za-z0-9_]+)?\.tmp"
REJECT_KEYS = {"text_id", "line", "reason", "detail", "excerpt"}
PATH_MAX = 4096  # bytes of a path the kernel takes (Linux), our own names inside the folder included
ROOM = 64  # bytes our names add below the folder: `_attention/.part-00000-0000.safetensors.XXXX.tmp`

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
# What attnviz writes inside its folders (and the hidden temporary names it writes them under).
OUR_NAMES = {
    HEADS_DIR: re.compile(rf"\.?part-\d{{5}}\.parquet({TMP_SUFFIX})?"),
    TEXTS_DIR: re.compile(rf"\.?part-\d{{5}}\.parquet({TMP_SUFFIX})?"),
    ATTENTION_DIR: re.compile(rf"\.?part-\d{{5}}-\d{{4}}\.safetensors({TMP_SUFFIX})?"),
    PLOTS_DIR: re.compile(rf"\.?(entropy|role)\.png({TMP_SUFFIX})?"),
}
# Temporary files of the run's own files at the top (left by a kill -9): removed by the next run.
OUR_TEMPORARIES = re.compile(rf"\.(_run\.json|_summary\.csv){TMP_SUFFIX}")


def foreign_file(outdir: Path) -> Path | None:
    """The first path in `outdir` that would make --overwrite or --resume unsafe, if any.

    Unsafe: a link or a wrong kind of entry where attnviz writes (a link is never followed), and a
    file that is not ours but looks like a part (`part-1.parquet`), which readers would take for
    one. Other files of the user's own (notes, sketches) are safe: they are kept.
    """
    for name in (SUMMARY_FILE, RUN_FILE, REJECTS_FILE, LOCK_FILE):
        path = outdir / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            return path
    rejects = outdir / REJECTS_FILE
    if rejects.is_file() and rejects.stat().st_nlink > 1:  # appending would change the other name's file
        return rejects
    for folder, pattern in OUR_NAMES.items():
        path = outdir / folder
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            return path
        if not path.is_dir():
            continue
        for child in sorted(path.iterdir()):
            ours = pattern.fullmatch(child.name) is not None
            if child.is_symlink() or (ours and not child.is_file()) or (not ours and _looks_ours(child.name)):
                return child
    return None


def _looks_ours(name: str) -> bool:
    plain = name.lstrip(".").removesuffix(".tmp")
    return plain.startswith("part-") or plain.endswith((".parquet", ".safetensors"))


def listed_files(outdir: Path) -> list[Path]:
    """The files a run writes that the manifest covers: the summary, and every part, shard and plot
    (their hidden temporary files are not: they are the run's own leftovers, removed freely)."""
    out = [outdir / SUMMARY_FILE] if (outdir / SUMMARY_FILE).is_file() else []
    for folder, pattern in OUR_NAMES.items():
        path = outdir / folder
        if path.is_dir() and not path.is_symlink():
            found = sorted(path.iterdir())
            out += [c for c in found if pattern.fullmatch(c.name) and not c.name.startswith(".")]
    return out


def shown(path: str | Path) -> str:
    """A path as a line can print it: a byte that is not UTF-8 as its escape (`caf\\xe9`)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def temporary(path: Path) -> Path:
    """A new, empty, hidden file beside `path`, made with O_EXCL (no link followed, no name reused)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def entry(path: Path) -> list[Any]:
    """A manifest entry: [size, sha256] of the file's bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return [size, digest.hexdigest()]


def matches(path: Path, recorded: Any, content: bool = True) -> bool:
    """Whether `path` is a regular file (not a link) with the recorded size (and bytes)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not isinstance(recorded, list) or len(recorded) != 2:
        return False
    if st.st_size != recorded[0]:
        return False
    return not content or entry(path) == recorded


def check_name(outdir: Path) -> None:
    """Refuse an output folder the file system cannot take: not UTF-8, a name or a path too long."""
    text = str(outdir)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"the output folder {shown(outdir)} has a name that is not UTF-8; "
            f"pick a folder with a UTF-8 name with {OUTDIR}"
        ) from None
    raw = os.fsencode(outdir)
    limit = _name_max(outdir)
    for part in outdir.parts:
        if len(os.fsencode(part)) > limit:
            raise InputError(
                f"a name in the output folder's path is {len(os.fsencode(part))} bytes long, over the "
                f"file system's limit of {limit}; pick a shorter {OUTDIR}"
            )
    if len(raw) + ROOM >= PATH_MAX:
        raise InputError(
            f"the output folder's path is {len(raw)} bytes long; with the names inside it that passes "
            f"the system's limit of {PATH_MAX}; pick a shorter {OUTDIR}"
        )


def _name_max(path: Path) -> int:
    folder = path.absolute()
    while True:
        with contextlib.suppress(OSError, ValueError):
            if folder.is_dir():
                return int(os.pathconf(folder, "PC_NAME_MAX"))
        if folder == folder.parent:
            return 255
        folder = folder.parent


def os_error(exc: BaseException) -> OSError | None:
    """An I/O failure a library reports as its own error (safetensors: `... os error 28 ...`)."""
    if isinstance(exc, OSError):
        return exc
    m = re.search(r"os error (\d+)|No space left on device", str(exc))
    if m is None:
        return None
    code = int(m.group(1)) if m.group(1) else errno.ENOSPC
    return OSError(code, os.strerror(code))


# -- the rejects file --------------------------------------------------------------------------
def open_rejects(path: Path) -> int:
    """The rejects file opened for appending (made if missing): never through a link, never a file
    with another name (a hard link) or one that is not a regular file."""

    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, default_mode())
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{shown(path)} is a symbolic link; move it away (attnviz never writes through links)"
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        why = "is not a regular file" if not stat.S_ISREG(st.st_mode) else "has another name (a hard link)"
        raise InputError(
            f"{shown(path)} {why}; attnviz appends only to a file of its own: move it away, "
            f"or pick another {OUTDIR} folder"
        )
    return fd


def append(fd: int, data: bytes) -> None:
    """Write all of `data` (no buffer left to flush on close)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def reject_ids(data: bytes, path: Path) -> set[int]:
    """The text ids of a rejects file's lines; a line attnviz did not write is a one-line refusal."""
    out: set[int] = set()
    for n, line in enumerate(data.splitlines(), 1):
        why = _bad_reject(line)
        if why is not None:
            raise InputError(
                f"{shown(path)} line {n} is not a reject attnviz wrote ({why}); restore it, or move the "
                f"file away (its records are then read again), or pick another {OUTDIR} folder"
            )
        out.add(json.loads(line)["text_id"])
    return out


def _bad_reject(line: bytes) -> str | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(obj, dict) or set(obj) != REJECT_KEYS:
        return f"not an object with {', '.join(sorted(REJECT_KEYS))}"
    for key in ("text_id", "line"):
        value = obj[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{key} is not a record number"
    if not all(isinstance(obj[k], str) for k in ("reason", "detail", "excerpt")):
        return "reason, detail and excerpt are not text"
    return None


def read_rejects(path: Path) -> set[int]:
    """`reject_ids` of the file at `path` (none when there is no file), changing nothing."""
    if not path.is_file() or path.is_symlink():
        return set()
    data = path.read_bytes()
    return reject_ids(data[: data.rfind(b"\n") + 1], path)  # a line cut by a kill is dropped later


# -- _run.json -----------------------------------------------------------------------------------
_SHAPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "counts": (dict,),
    "identity": (dict,),
    "input": (dict,),
    "sessions": (list,),
    "manifest": (dict,),
    "config": (dict,),
    "outputs": (dict,),
}


def check_run(data: dict[str, Any], path: Path) -> None:
    """Refuse a `_run.json` whose values have the wrong types (edited by hand, or damaged)."""

    def bad(what: str) -> InputError:
        return InputError(
            f"{shown(path)} is damaged: {what}; restore it, or move the folder away and pick another "
            f"{OUTDIR} folder"
        )

    for key, types in _SHAPES.items():
        if key in data and not isinstance(data[key], types):
            raise bad(f"'{key}' is {type(data[key]).__name__}, not {types[0].__name__}")
    for key, value in data.get("counts", {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(f"counts '{key}' is not a whole number")
    if not all(isinstance(s, dict) for s in data.get("sessions", [])):
        raise bad("'sessions' holds something other than objects")
    label = data.get("input", {}).get("path")
    if label is not None and not isinstance(label, str):
        raise bad("input 'path' is not text")
    for name, recorded in data.get("manifest", {}).items():
        if not (isinstance(recorded, list) and len(recorded) == 2 and isinstance(recorded[0], int)):
            raise bad(f"manifest entry '{name}' is not [size, sha256]")


def check_part(path: Path) -> None:
    """A committed part must read as Parquet with a text_id column: say which one is damaged."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises ArrowInvalid (an Exception) for a cut or foreign file
        names, why = [], f"{type(exc).__name__}"
    else:
        why = "it has no text_id column"
    if "text_id" not in names:
        raise InputError(
            f"cannot resume: {shown(path)} is damaged ({why}); move it away and rerun with {RESUME} "
            "to analyse its texts again"
        )
