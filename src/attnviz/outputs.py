"""Where outputs go: checked `-o` paths, default names that never overwrite, and atomic writes.

Every file attnviz writes goes through `atomic_output`: written under a temporary name in the same
folder, then renamed, so a full disk or an interrupt never leaves a half-written file behind, and
created with the permissions the user's umask asks for.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from attnviz.errors import InputError, param

FORMATS = ("png", "svg", "pdf")
OUTPUT_DIR = Path("outputs")
# The output a message points to, by the keyword of the function that takes it; -o on the command line.
OUTPUT, PATH = param("output", flag="-o"), param("path", flag="-o")


def slug(text: str, max_len: int = 40) -> str:
    """A short, file-name-safe form of a text: 'Emily wanted Paris!' -> 'emily-wanted-paris'."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", plain.lower())
    out = ""
    for w in words:
        if out and len(out) + 1 + len(w) > max_len:
            break
        out = f"{out}-{w}" if out else w[:max_len]
    return out or "text"


def image_format(path: Path) -> str:
    """The format named by a path's extension; raises InputError for anything but png/svg/pdf."""
    ext = path.suffix.lower().lstrip(".")
    if not ext:
        raise InputError(f"output {path} has no extension; end it with .png, .svg or .pdf")
    if ext not in FORMATS:
        raise InputError(f"unknown image format '.{ext}' for {path}; use .png, .svg or .pdf")
    return ext


MAX_NAME = 120  # characters of a default file name, extension included (file systems allow 255 bytes)


def default_name(*parts: str | int | None, ext: str = "png", max_len: int = MAX_NAME) -> str:
    """Join the non-empty parts into one file name: heatmap-emily-always-minilm-L1-H5.png.

    Names longer than `max_len` keep their start and end and get a short hash of the whole name in
    the middle, so a model folder with a 240-character name still gives a valid, distinct name.
    """
    cleaned = [re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(p)).strip("-.") for p in parts if p not in (None, "")]
    stem = "-".join(c for c in cleaned if c)
    suffix = f".{ext}"
    if len(stem) + len(suffix) <= max_len:
        return stem + suffix
    digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
    room = max_len - len(suffix) - len(digest) - 2
    head, tail = stem[: room - room // 3].rstrip("-."), stem[len(stem) - room // 3 :].lstrip("-.")
    return f"{head}-{digest}-{tail}".strip("-") + suffix


def _writable_dir(folder: Path) -> Path:
    """Create `folder` if needed and make sure a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise InputError(f"cannot write to {folder}: not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {folder}: permission denied")
    return folder


# Default names this process reserved (created empty): a write that fails removes its empty file.
_RESERVED: set[Path] = set()


def reserve(folder: Path, name: str) -> Path:
    """The first free path among name, name-2, name-3... in `folder`, created empty so no one takes it."""
    _writable_dir(folder)
    stem, suffix = os.path.splitext(name)
    n = 1
    while True:
        path = folder / (name if n == 1 else f"{stem}-{n}{suffix}")
        try:
            with open(path, "x"):
                _RESERVED.add(path)
                return path
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_length(path: Path, option: str = OUTPUT) -> None:
    """Refuse a path the system cannot take: a name over its limit (255 bytes on most), or a whole
    path over PATH_MAX (4,096), which would end in "File name too long" deep inside a write."""
    encoded = os.fsencode(str(path))
    try:
        name_max, path_max = os.pathconf(".", "PC_NAME_MAX"), os.pathconf(".", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf here: the usual limits
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > name_max:
        raise InputError(
            f"a name in {option} is {longest} bytes long, over this system's limit of {name_max}"
        )
    if len(encoded) >= path_max:
        raise InputError(
            f"{option} is {len(encoded):,} bytes long, over this system's limit of {path_max - 1:,}"
        )


def refuse_link(path: Path, option: str = OUTPUT) -> None:
    """Refuse an `-o` that is a link to a file (or to nothing): writing would change a file we did not write.

    A link to a folder is fine: new files are made inside it under names that never overwrite.
    `option` is the `param()` the path came from (`-o` unless said otherwise), for the message.
    """
    check_length(path, option)
    if path.is_symlink() and not path.is_dir():
        raise InputError(
            f"{path} is a symbolic link; attnviz does not write through links, give another {option}"
        )


def output_path(output: Path | None, name_parts: tuple[str | int | None, ...], ext: str = "png") -> Path:
    """Resolve `-o`: a file (format from its extension), a folder (default name inside), or nothing.

    Without `-o` the default name goes under `outputs/`, with -2, -3... added rather than overwriting.
    An explicit file is overwritten, as the user named it; a symbolic link is refused.
    """
    if output is None:
        return reserve(OUTPUT_DIR, default_name(*name_parts, ext=ext))
    refuse_link(output)
    if output.is_dir():
        return reserve(output, default_name(*name_parts, ext=ext))
    image_format(output)
    if output.exists() and not os.access(output, os.W_OK):
        raise InputError(f"cannot write {output}: permission denied")
    _writable_dir(output.parent if str(output.parent) else Path("."))
    return output


def check_output(output: Path | None, option: str = OUTPUT) -> None:
    """Fail fast (before a model loads) on an unknown format or an unwritable `-o` (or `option`) path."""
    if output is None:
        return
    refuse_link(output, option)
    if output.is_dir():
        return
    image_format(output)
    check_parent(output, option)


DATA_FORMATS = (".safetensors", ".npz")


def check_data_output(output: Path | None) -> None:
    """Fail fast on a `-o` for arrays (extract) that could not be written: format, folder, rights."""
    if output is None:
        return
    refuse_link(output)
    if output.is_dir():
        raise InputError(f"{output} is a folder; give a file name ending in .safetensors or .npz")
    if output.suffix.lower() not in DATA_FORMATS:
        shown = output.suffix or "(none)"
        raise InputError(f"unknown output format '{shown}' for {output}; end it with .safetensors or .npz")
    check_parent(output)


def check_parent(output: Path, option: str = OUTPUT) -> None:
    """Fail fast when `output` could not be written: no rights, or a file where a folder should be."""
    check_length(output, option)
    if output.exists() and not os.access(output, os.W_OK):
        raise InputError(f"cannot write {output}: permission denied")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"cannot write {output}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {output}: permission denied in {parent}; choose another {option}")


def umask() -> int:
    """The process umask (read by setting and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The permissions `open()`/`mkdir()` would give a new file or folder under the user's umask."""
    return (0o777 if folder else 0o666) & ~umask()


def no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_error(path: Path, exc: OSError, elsewhere: str = "choose another path") -> str:
    """One line a user can act on, for an OSError met while writing `path`.

    Plain text unless `elsewhere` (what else to do on a full disk) names a `param()`: a warning
    shows it as it is, an error spells it for its caller.
    """
    if no_space(exc):
        return f"no space left on the device to write {path}; free some space or {elsewhere}"
    return f"cannot write {path}: {exc.strerror or exc}"


def _set_modes(tmp: Path) -> None:
    if not tmp.is_dir():
        os.chmod(tmp, default_mode())
        return
    os.chmod(tmp, default_mode(folder=True))
    for root, dirs, files in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), default_mode(folder=True))
        for f in files:
            os.chmod(os.path.join(root, f), default_mode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # it exists but is someone else's (or cannot be asked): leave its file alone
    return True


def remove_stale(path: Path) -> list[Path]:
    """Remove the temporary files (or folders) that `atomic_output` made for `path` in processes that
    died before renaming them (kill -9, a power cut): our names, `.NAME.tmpPID-XXXX`, a dead PID."""
    import shutil

    pattern = re.compile(rf"\.{re.escape(path.name[:80])}\.tmp(\d+)-[A-Za-z0-9_]+{re.escape(path.suffix)}")
    removed = []
    try:
        children = list(path.parent.iterdir())
    except OSError:
        return removed
    for child in children:
        match = pattern.fullmatch(child.name)
        if match is None or child.is_symlink() or int(match.group(1)) == os.getpid():
            continue  # a link was never ours
        if _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
            removed.append(child)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, else remove it.

    The temporary file (or folder, with `folder=True`) gets the mode the user's umask gives new
    files, not tempfile's 0600. Errors while writing propagate unchanged (see `write_error`).
    Temporary files of this same output left by a process that died are removed first
    (`remove_stale`); an empty default-named file this process reserved goes when the write fails.
    """
    path = Path(path)
    if path.is_symlink():  # os.replace would replace the link itself, a file we did not write
        raise InputError(
            f"{path} is a symbolic link; attnviz does not write through links, give another {PATH}"
        )
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    prefix = f".{path.name[:80]}.tmp{os.getpid()}-"
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        os.chmod(tmp, default_mode(folder=True))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, default_mode())
    try:
        yield tmp
        _set_modes(tmp)  # writers that replace the file themselves (safetensors) leave it 0600
        os.replace(tmp, path)  # a folder replaces only an empty folder; the caller clears its own
        _RESERVED.discard(path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if path in _RESERVED:  # the empty file `reserve` made for a default name: not left behind
            _RESERVED.discard(path)
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_size == 0:
                    path.unlink()
        raise


def write_arrays(path: Path, arrays: dict, meta: str) -> Path:
    """Write named arrays and a JSON metadata string, atomically, as .safetensors or .npz (never
    pickle): the one writer of `extract -o` and `generate -o` files."""
    check_data_output(path)
    try:
        with atomic_output(path) as tmp:
            if path.suffix.lower() == ".safetensors":
                from safetensors.numpy import save_file

                save_file(arrays, str(tmp), metadata={"attnviz": meta})
            else:
                import numpy as np

                np.savez_compressed(tmp, **arrays, metadata=np.array(meta))
    except OSError as exc:
        raise InputError(write_error(path, exc, f"choose another {PATH}")) from exc
    except Exception as exc:  # safetensors reports I/O failures (a full disk) as its own error
        if "No space left" in str(exc) or "os error 28" in str(exc):
            full = OSError(errno.ENOSPC, "No space left on device")
            raise InputError(write_error(path, full, f"choose another {PATH}")) from exc
        raise
    return path


def read_arrays(path: Path, what: str) -> tuple[dict, dict]:
    """Read a file `write_arrays` wrote: (metadata, arrays); anything unreadable is one line naming
    `what` wrote it."""
    import json

    if not path.is_file():
        raise InputError(f"no such file: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = json.loads((f.metadata() or {})["attnviz"])
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        else:
            import numpy as np

            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["metadata"]))
                arrays = {k: data[k] for k in data.files if k != "metadata"}
    except Exception as exc:  # damaged, cut short or foreign (safetensors has its own error type)
        raise InputError(f"{path} is not a readable {what} ({type(exc).__name__})") from exc
    return meta, arrays
