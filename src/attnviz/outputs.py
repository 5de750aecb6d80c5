"""Where pictures go: checked `-o` paths, and default names under `outputs/` that never overwrite."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from attnviz.errors import InputError

FORMATS = ("png", "svg", "pdf")
OUTPUT_DIR = Path("outputs")


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


def default_name(*parts: str | int | None, ext: str = "png") -> str:
    """Join the non-empty parts into one file name: heatmap-emily-always-minilm-L1-H5.png."""
    cleaned = [re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(p)).strip("-.") for p in parts if p not in (None, "")]
    return "-".join(c for c in cleaned if c) + f".{ext}"


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


def reserve(folder: Path, name: str) -> Path:
    """The first free path among name, name-2, name-3... in `folder`, created empty so no one takes it."""
    _writable_dir(folder)
    stem, suffix = os.path.splitext(name)
    n = 1
    while True:
        path = folder / (name if n == 1 else f"{stem}-{n}{suffix}")
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def output_path(output: Path | None, name_parts: tuple[str | int | None, ...], ext: str = "png") -> Path:
    """Resolve `-o`: a file (format from its extension), a folder (default name inside), or nothing.

    Without `-o` the default name goes under `outputs/`, with -2, -3... added rather than overwriting.
    An explicit file is overwritten, as the user named it.
    """
    if output is None:
        return reserve(OUTPUT_DIR, default_name(*name_parts, ext=ext))
    if output.is_dir():
        return reserve(output, default_name(*name_parts, ext=ext))
    image_format(output)
    if output.exists() and not os.access(output, os.W_OK):
        raise InputError(f"cannot write {output}: permission denied")
    _writable_dir(output.parent if str(output.parent) else Path("."))
    return output


def check_output(output: Path | None) -> None:
    """Fail fast (before a model loads) on an unknown format or an unwritable `-o` path."""
    if output is None or output.is_dir():
        return
    image_format(output)
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"cannot write {output}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {output}: permission denied in {parent}")
