"""Fonts that draw every token: DejaVu Sans, then Noto Sans CJK, then Symbola for emoji.

matplotlib (>= 3.6) falls back glyph by glyph along the `font.family` list. The colour emoji font
(Noto Color Emoji) is a bitmap font that Agg cannot draw, so emoji come from the monochrome Symbola.
A font that is not installed is simply left out of the chain (no "font not found" message), and
matplotlib's "Glyph missing" warning is silenced while attnviz builds and saves a figure: a glyph
no installed font has is drawn as a box, never a message on stderr.
"""

from __future__ import annotations

import glob
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

BASE = "DejaVu Sans"
FALLBACKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (family name, files to register when matplotlib's cache does not know it yet)
    (
        "Noto Sans CJK JP",
        (
            "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
            "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
            "/usr/share/fonts/**/NotoSansCJK-Regular.ttc",
            "/usr/share/fonts/**/NotoSansCJKjp-Regular.otf",
        ),
    ),
    (
        "Symbola",
        (
            "/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
            "/usr/share/fonts/**/Symbola*.ttf",
        ),
    ),
)
GLYPH_MISSING = r"Glyph \d+ .*missing from (current )?font"

_chain: list[str] | None = None
F = TypeVar("F", bound=Callable[..., Any])


def font_chain() -> list[str]:
    """The `font.family` list: DejaVu Sans and whichever fallbacks are installed (found once)."""
    global _chain
    if _chain is None:
        from matplotlib import font_manager

        known = {f.name for f in font_manager.fontManager.ttflist}
        chain = [BASE]
        for name, patterns in FALLBACKS:
            if name not in known:
                for path in dict.fromkeys(
                    p for pattern in patterns for p in sorted(glob.glob(pattern, recursive=True))
                ):
                    try:
                        font_manager.fontManager.addfont(path)
                    except (OSError, RuntimeError, ValueError):
                        continue
                known = {f.name for f in font_manager.fontManager.ttflist}
            if name in known:
                chain.append(name)
        logging.getLogger("matplotlib.font_manager").addFilter(_QuietFallbacks(chain[1:]))
        _chain = chain
    return list(_chain)


class _QuietFallbacks(logging.Filter):
    """Drops matplotlib's "Failed to find font weight bold for Symbola" notes: a fallback font with
    no bold face is drawn regular, which is what we want, and nothing should reach stderr."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = tuple(names)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        weight_note = str(record.msg).startswith("findfont: Failed to find font weight")
        return not (weight_note and len(args) > 1 and args[1] in self.names)


@contextmanager
def fonts() -> Iterator[None]:
    """Text made (or drawn) inside uses the fallback chain; matplotlib's global settings are untouched."""
    import matplotlib

    with matplotlib.rc_context({"font.family": font_chain()}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=GLYPH_MISSING, category=UserWarning)
        yield


def with_fonts(function: F) -> F:
    """Build a figure inside `fonts()`, so its titles and tick labels get the fallback chain."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with fonts():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
