"""The Typer app and the `command` decorator that every command module registers with.

Kept apart from `cli/__init__.py` so command modules import this leaf, never the package that
imports them (no import cycle).
"""

from __future__ import annotations

import functools
import os
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
