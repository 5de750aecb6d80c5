"""Progress on an interactive stderr: a rich bar fed by the library's `progress(done, total)` callbacks.

Shown only where the loading spinner is (cli/_options.py `spinner_wanted`): on a terminal, never
with --json or `quiet`. Elsewhere the callback is None, so the library does no extra work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from attnviz.cli._options import spinner_wanted

Progress = Callable[[int, int], None]


def stdout_terminal() -> bool:
    """Whether results go to a terminal (`generate` then streams its continuation there)."""
    import sys

    return sys.stdout.isatty()


@contextmanager
def progress_bar(label: str, unit: str = "", quiet: bool = False) -> Iterator[Progress | None]:
    """`with progress_bar("scan", "heads") as progress:` pass `progress` to the library call.

    Yields None (no bar) off a terminal; the bar is removed when the block ends.
    """

    if not spinner_wanted(quiet):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar

    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    bar = Bar(*columns, console=Console(stderr=True, force_terminal=True), transient=True)
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


@contextmanager
def stage(message: str, quiet: bool = False) -> Iterator[None]:
    """A spinner with `message` for a step the library cannot count (one forward pass, a page build)."""

    if not spinner_wanted(quiet):
        yield
        return
    from rich.console import Console

    with Console(stderr=True, force_terminal=True).status(message):
        yield
