"""The few exception types the CLI turns into one-line messages (exit code 2).

A message names the parameters it is about with `param()`, not with a command-line flag: a Python
caller never typed `--threshold`. Each caller shows them in its own words: `str(exc)` gives the
Python keyword (`threshold`, `truncate=True`), the CLI the flag (`--threshold`, `--truncate`) and
the server the query parameter (`parameter threshold`, `truncate=1`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_OPEN, _SEP, _CLOSE = "\ue000", "\ue001", "\ue002"  # private-use characters: never in our own text
_MARK = re.compile(f"{_OPEN}([^{_SEP}]*){_SEP}([^{_SEP}]*){_SEP}([01]){_SEP}([^{_CLOSE}]*){_CLOSE}")
_UNSET = object()


@dataclass(frozen=True)
class Param:
    """A parameter named in a message: its Python keyword, its flag, and the value suggested, if any."""

    name: str  # the keyword of the library function (and the server's query parameter)
    flag: str  # the command line's spelling, `--max-new-tokens`
    has_value: bool
    value: str  # the value's repr (a string keeps its quotes), when has_value


def param(name: str, value: object = _UNSET, *, flag: str | None = None) -> str:
    """Name a parameter inside an error message, with an optional value to suggest.

    `flag` is the command line's spelling when it is not `--` + name with dashes: a boolean value
    takes the flag that means it (`param("special", False, flag="--no-special")`).
    """
    shown = "" if value is _UNSET else repr(value)
    spelled = flag or "--" + name.replace("_", "-")
    return f"{_OPEN}{name}{_SEP}{spelled}{_SEP}{int(value is not _UNSET)}{_SEP}{shown}{_CLOSE}"


def python_terms(p: Param) -> str:
    """`threshold`, `truncate=True`, `model='minilm'`: what a Python caller writes."""
    return f"{p.name}={p.value}" if p.has_value else p.name


def _typed(value: str) -> str:
    """A value's repr as typed in a shell or a query string: no quotes, a list as `0,5`."""
    if value[:1] in "'\"" and value[-1:] == value[:1]:
        return value[1:-1]
    if value[:1] in "[(" and value[-1:] in "])":
        return ",".join(part.strip() for part in value[1:-1].split(",") if part.strip())
    return value


def cli_terms(p: Param) -> str:
    """`--threshold`, `--truncate`, `--model minilm`, `--layers 0,5`: what a shell user types."""
    if not p.has_value or p.value in ("True", "False"):
        return p.flag
    return f"{p.flag} {_typed(p.value)}"


def api_terms(p: Param) -> str:
    """`parameter threshold`, `truncate=1`, `model=minilm`: what the server's query string takes."""
    if not p.has_value:
        return f"parameter {p.name}"
    return f"{p.name}={_typed({'True': '1', 'False': '0'}.get(p.value, p.value))}"


def render(message: str, terms: Callable[[Param], str] = python_terms) -> str:
    """A message with every `param()` in it spelled by `terms`."""

    def one(m: re.Match[str]) -> str:
        return terms(Param(m.group(1), m.group(2), m.group(3) == "1", m.group(4)))

    return _MARK.sub(one, message)


def check_seed(seed: object) -> int:
    """A random seed as every command takes it: a whole number from 0 to 2**64 - 1 (torch's and
    numpy's generators take 64 bits; a negative one numpy refuses). InputError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise InputError(f"{param('seed')} {seed}: use a whole number from 0 to 2**64 - 1")
    return seed


class AttnvizError(Exception):
    """Base class: a problem the user can act on; the message is one line.

    `args[0]` keeps the message as written (with its `param()` marks, so it crosses processes and
    wrappers intact); `str()` spells the parameters as Python keywords, `render()` as asked.
    """

    @property
    def message(self) -> str:
        """The message as written, to build a longer one from (`f"{exc.message}; ..."`)."""
        return str(self.args[0]) if self.args else ""

    def render(self, terms: Callable[[Param], str] = python_terms) -> str:
        """The first line of the message, parameters spelled by `terms` (or the class name)."""
        text = render(self.message, terms).strip()
        return text.splitlines()[0] if text else type(self).__name__

    def __str__(self) -> str:
        return render(self.message) if len(self.args) <= 1 else super().__str__()


class ModelNotFoundError(AttnvizError):
    """Unknown alias, missing folder, uncached hub id while offline, or package not installed."""


class DeviceError(AttnvizError):
    """The requested device or dtype cannot be used here."""


class InputError(AttnvizError):
    """Bad text, token, layer or head selection, or file."""


class TokenNotFoundError(InputError):
    """A word asked for is not in the text; the message lists the tokens that are."""


class TextTooLongError(InputError):
    """The text is longer than the model's maximum and `truncate` was not given."""
