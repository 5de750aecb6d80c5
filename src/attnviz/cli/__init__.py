"""The `attnviz` command line: parse arguments, call the library, print.

Library errors become one `error: ...` line on stderr and exit code 2; set ATTNVIZ_DEBUG=1 for the
traceback. Commands import heavy libraries only when they run, so `--help` stays fast.
"""

from __future__ import annotations

import os
import sys

from attnviz.cli import ablate as _ablate  # noqa: F401

# Command modules register themselves on import; each is a few lines over the library.
from attnviz.cli import analyses as _analyses  # noqa: F401
from attnviz.cli import attribute as _attribute  # noqa: F401
from attnviz.cli import batch as _batch  # noqa: F401
from attnviz.cli import extract as _extract  # noqa: F401
from attnviz.cli import generate as _generate  # noqa: F401
from attnviz.cli import heads as _heads  # noqa: F401
from attnviz.cli import models as _models  # noqa: F401
from attnviz.cli import patch as _patch  # noqa: F401
from attnviz.cli import pictures as _pictures  # noqa: F401
from attnviz.cli import serve as _serve  # noqa: F401
from attnviz.cli import view as _view  # noqa: F401
from attnviz.cli._app import app, command, fail, printable

__all__ = ["app", "command", "fail", "main"]


def main() -> None:
    """Console-script entry point: every failure is one `error:` line on stderr.

    Usage errors are handled by the app itself (cli/_app.py `Group`), so CliRunner sees the same.
    A full standard output is one line too; a closed one (`| head -1`) ends quietly (cli/_stdout.py).
    """
    from attnviz.cli._stdout import StdoutError, failed, guard

    guard()
    try:
        try:
            app()
        finally:
            sys.stdout.flush()  # what is still buffered fails here, inside the handlers below
    except StdoutError as exc:
        failed(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # an unexpected bug: still one line unless debugging
        if os.environ.get("ATTNVIZ_DEBUG"):
            raise
        message = printable(str(exc).splitlines()[0]) if str(exc) else ""
        print(
            f"error: unexpected {type(exc).__name__}: {message} (ATTNVIZ_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
