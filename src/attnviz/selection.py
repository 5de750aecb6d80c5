"""Layer and head selections: one parser and one rule for every command and every config file.

`parse_indices` reads what a user wrote (`"0,5,10"`, `"1-3"`, `"-1"`, `[0, 2]`, `"all"`) before any
model is loaded; `resolve_indices` checks the result against a loaded model's counts. Negative
numbers count from the end (`-1` is the last layer) everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from attnviz.errors import InputError, param

_PART = re.compile(r"(-?\d+)(?:-(-?\d+))?")


MAX_RANGE = 1 << 16  # far above any model's layers or heads


def _where(option: str, source: str | None) -> str:
    """A config file's key as written there; otherwise the parameter, spelled by whoever shows it."""
    return f"{option} in {source}" if source else param(option)


def parse_indices(value: Any, option: str, source: str | None = None) -> tuple[int, ...] | None:
    """A selection as written -> a tuple of indices in the order given; None (or "all") means all.

    `option` names the parameter (`layers`, `heads`) and `source` the config file, for the message.
    Empty lists, words (`a,b`) and reversed ranges (`3-1`) are errors, the same in every command.
    """
    where = _where(option, source)
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(f"bad {where} value {value!r}: use numbers like 0,5,10 or 1-3")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list | tuple):
        if not value:
            raise InputError(f'{where} is an empty list: leave it out (or say "all") to keep all')
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InputError(f"bad {where} value {list(value)!r}: use whole numbers like [0, 5, 10]")
        return tuple(value)
    if not isinstance(value, str):
        raise InputError(f"bad {where} value {value!r}: use numbers like 0,5,10 or 1-3")
    text = value.strip()
    if text == "all":
        return None
    if not text:
        raise InputError(f"{where} is empty: leave it out (or say all) to keep all")
    out: list[int] = []
    for part in text.split(","):
        m = _PART.fullmatch(part.strip())
        if m is None:
            raise InputError(f"bad {where} value '{value}': use numbers like 0,5,10 or 1-3")
        lo = int(m.group(1))
        if m.group(2) is None:
            out.append(lo)
            continue
        hi = int(m.group(2))
        if (lo < 0) == (hi < 0) and lo > hi:
            raise InputError(f"bad {where} range '{part.strip()}': write it low to high ({hi}-{lo})")
        if abs(hi - lo) >= MAX_RANGE:  # `0-99999999999` would fill the memory before any check
            raise InputError(f"bad {where} range '{part.strip()}': more indices than any model has")
        out.extend(range(lo, hi + 1))
    return tuple(out)


def resolve_indices(values: Sequence[int] | None, count: int, what: str, model: str) -> list[int] | None:
    """Check indices against a model (negative counts from the end) -> sorted, unique; None = all."""
    if values is None:
        return None
    out: list[int] = []
    for v in values:
        if not -count <= v < count:
            raise InputError(f"{what} {v} is out of range: {model} has {what}s 0-{count - 1}")
        out.append(v % count)
    if not out:
        raise InputError(f"no {what}s selected")
    return sorted(set(out))


def format_indices(values: Sequence[int]) -> str:
    """Layer or head indices as people write them: [0, 1, 2, 3, 5, 7, 8, 9] -> '0-3, 5, 7-9'.

    Runs of three or more consecutive values become `a-b`; everything else is listed, so the text
    never claims an index that is not there ([0, 2, 4] stays '0, 2, 4').
    """
    vals = [int(v) for v in values]
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{vals[i]}-{vals[j]}")
        else:
            parts.extend(str(v) for v in vals[i : j + 1])
        i = j + 1
    return ", ".join(parts)
