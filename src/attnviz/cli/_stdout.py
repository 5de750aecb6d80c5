"""Standard output as git and ripgrep treat it: a full disk is one `error:` line, a closed pipe ends quietly.

Writes to stdout go through `Guarded`, which turns their OSError into `StdoutError`, so a failure on
stdout is never mistaken for one on a file the command writes (that stays the command's own error).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, NoReturn

_REASONS = {errno.ENOSPC: "no space left", errno.EIO: "input/output error", errno.EBADF: "it is closed"}


class StdoutError(Exception):
    """Writing to standard output failed; deliberately not an OSError, so no `except OSError` hides it."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.errno = error.errno


class Guarded:
    """A stand-in for sys.stdout whose write and flush raise StdoutError instead of OSError."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: Any) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise StdoutError(exc) from exc

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise StdoutError(exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Closed:
    """Standard output when the shell closed it (`attnviz models >&-`): Python leaves sys.stdout None."""

    encoding = "utf-8"
    errors = "strict"

    def write(self, text: Any) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def guard() -> None:
    """Route sys.stdout through Guarded (once); a closed one fails on the first write, not silently."""
    if not isinstance(sys.stdout, Guarded):
        sys.stdout = Guarded(sys.stdout if sys.stdout is not None else _Closed())  # type: ignore[assignment]


def failed(exc: StdoutError) -> NoReturn:
    """A closed pipe (`| head -1`) exits 0 without a word; anything else is one line and exit 2."""
    try:  # what is still buffered must not fail again when the interpreter flushes at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ is not None else 1)
    except (OSError, ValueError):
        pass
    if exc.errno == errno.EPIPE:
        sys.exit(0)
    reason = _REASONS.get(exc.errno or 0) or (os.strerror(exc.errno).lower() if exc.errno else str(exc))
    print(f"error: cannot write to standard output: {reason}", file=sys.stderr)
    sys.exit(2)
