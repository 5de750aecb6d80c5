"""The `attnviz` command line: parse arguments, call the library, print.

Library errors become one `error: ...` line on stderr and exit code 2; set ATTNVIZ_DEBUG=1 for the
traceback. Commands import heavy libraries only when they run, so `--help` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from attnviz import __version__

app = typer.Typer(
    name="attnviz",
    help="See what a transformer attends to: extract, draw and rank attention heads.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line to stderr; the caller raises the returned Exit."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command`, with library errors turned into one line and exit code 2."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            from attnviz.errors import AttnvizError

            try:
                return fn(*a, **kw)
            except AttnvizError as exc:
                if os.environ.get("ATTNVIZ_DEBUG"):
                    raise
                raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
            except KeyboardInterrupt:
                raise fail("interrupted", 130) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """See what a transformer attends to."""


# Command modules register themselves on import; each is a few lines over the library.
from attnviz.cli import batch as _batch  # noqa: E402,F401
from attnviz.cli import extract as _extract  # noqa: E402,F401
from attnviz.cli import heads as _heads  # noqa: E402,F401
from attnviz.cli import models as _models  # noqa: E402,F401
from attnviz.cli import pictures as _pictures  # noqa: E402,F401


def main() -> None:
    """Console-script entry point: every failure is one `error:` line on stderr."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: bad option values, unknown options...
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # an unexpected bug: still one line unless debugging
        if os.environ.get("ATTNVIZ_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"error: unexpected {type(exc).__name__}: {message} (ATTNVIZ_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
