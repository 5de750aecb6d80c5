"""One printer for every command's result: JSON on `--json`, the command's own text otherwise.

Modelled on the `hf` CLI's shared `out.result`: a command hands over its result object (or a list
of them) and how to show it as text; the JSON side is always the same, the object's `as_dict()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from attnviz.cli._options import print_json


def as_data(obj: Any) -> Any:
    """What `--json` prints for `obj`: its `as_dict()`, a dataclass's fields, a path as text; lists,
    tuples and dicts item by item (keys keep their order). Anything else is printed as it is."""
    if hasattr(obj, "as_dict"):
        return as_data(obj.as_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {key: as_data(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [as_data(item) for item in obj]
    return obj


def print_result(
    obj: Any,
    as_json: bool,
    text: Callable[[], Any] | str | Sequence[str] | None = None,
    *,
    summary: str | None = None,
    **extra: Any,
) -> None:
    """Print one command's result.

    With `as_json`: `obj` as data (`as_data`), with `extra` keys added at the end (a written file's
    path, say), as one JSON document on stdout; `summary` goes to stderr, so stdout stays JSON.
    Otherwise: `text` (a function that prints, one string, or lines), then `summary`, on stdout.
    """
    if as_json:
        data = as_data(obj)
        if extra:
            data = {**data, **as_data(extra)}
        print_json(data)
        if summary is not None:
            typer.echo(summary, err=True)
        return
    if callable(text):
        text()
    elif isinstance(text, str):
        typer.echo(text)
    elif text is not None:
        for line in text:
            typer.echo(line)
    if summary is not None:
        typer.echo(summary)
