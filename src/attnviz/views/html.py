"""Attention -> one self-contained HTML page: data as escaped JSON, hand-written JS and CSS inline.

The page asks nothing of the network: its Content-Security-Policy allows only the inline script
whose hash it carries and inline styles, so a token that looks like markup is never run. Weights
travel as base64 float16 (2 bytes each), and only the layers and heads extracted.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from attnviz.analyses.transform import ViewOptions
    from attnviz.attention import Attention
    from attnviz.models import LoadedModel

DEFAULT_MAX_MB = 25.0
SCALES = ("auto", "1")
VIEWS = ("head", "matrix", "model")
HTML_SUFFIXES = (".html", ".htm")


@cache
def asset(name: str) -> str:
    """A file of views/assets/, the only static files the explorer uses."""
    if name not in ("attnviz.js", "attnviz.css", "serve.js", "serve.html"):
        raise InputError(f"no such asset: {name}")
    return resources.files("attnviz.views").joinpath("assets", name).read_text(encoding="utf-8")


def script_hash(source: str) -> str:
    """The CSP source expression that allows exactly this inline script."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


def safe_json(data: Any) -> str:
    """JSON that can sit inside a <script> element: <, > and & escaped, so no text closes it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _half(array: Any) -> str:
    """[..] float32 -> base64 of little-endian float16 (the JS decodes it)."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(array, dtype="<f2").tobytes()).decode("ascii")


def _level(att: Attention) -> dict[str, Any]:
    return {
        "tokens": att.labels,
        "special": [bool(s) for s in att.special],
        "shape": list(att.attn.shape),
        "weights": _half(att.attn),
    }


def _levels(att: Attention) -> list[Attention]:
    """The token level, and the word level when merging changes anything."""
    if att.level != "token":
        return [att]
    words = att.to_words()
    return [att, words] if words.tokens != att.tokens else [att]


def estimate_bytes(att: Attention) -> int:
    """About how big the page for `att` will be: base64 float16 per level, plus the code."""
    return sum(a.attn.size * 2 * 4 // 3 for a in _levels(att)) + 40_000


def check_page_size(size: int, shape: tuple[int, ...], max_mb: float) -> None:
    """Refuse a page of `size` bytes over `max_mb`, saying how to narrow it ([layers, heads, n, n])."""
    if size > max_mb * 1e6:
        layers, heads, n = shape[:3]
        per_layer = size / layers / 1e6
        raise InputError(
            f"the page would be about {size / 1e6:.0f} MB ({n} tokens x {layers} layers x {heads} "
            f"heads, about {per_layer:.1f} MB a layer); narrow it with --layers (e.g. --layers 0) "
            f"or --heads, or allow it with --max-mb"
        )


def check_page_fits(
    loaded: LoadedModel,
    text: str,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    options: ViewOptions | None = None,
    truncate: bool = False,
    max_mb: float | None = DEFAULT_MAX_MB,
) -> None:
    """Refuse a page too large from the text's token count, before the forward pass is paid for.

    Counts the token level only (a word level adds to it), so `page_data` checks the page again.
    """
    if max_mb is None:
        return
    from attnviz.extraction import tokenize
    from attnviz.selection import resolve_indices

    enc = tokenize(loaded, [text], truncate=truncate)
    hidden = sum(enc.special[0]) if options is not None and options.hide_special else 0
    n = enc.lengths[0] - hidden
    n_layers = len(
        resolve_indices(layers, loaded.num_layers, "layer", loaded.name) or [0] * loaded.num_layers
    )
    n_heads = loaded.capture.num_heads
    n_heads = len(resolve_indices(heads, n_heads, "head", loaded.name) or [0] * n_heads)
    if options is not None and options.aggregate is not None:
        n_heads = 1 if options.over in ("heads", "both") else n_heads
        n_layers = 1 if options.over in ("layers", "both") else n_layers
    size = n_layers * n_heads * n * n * 2 * 4 // 3 + 40_000
    check_page_size(size, (n_layers, n_heads, n), max_mb)


def page_data(
    att: Attention, *, level: str = "token", scale: str = "auto", max_mb: float | None = DEFAULT_MAX_MB
) -> dict[str, Any]:
    """What the page's script reads: tokens, flags and weights of the token and word levels.

    A page that would pass `max_mb` is refused with the way to narrow it.
    """
    if scale not in SCALES:
        raise InputError(f"unknown colour scale '{scale}': use auto or 1")
    if level not in ("token", "word"):
        raise InputError(f"unknown level '{level}': use token or word")
    if att.attn.ndim != 4:
        raise InputError("the explorer needs attention shaped [layers, heads, q, k]")
    shown = _levels(att)
    if max_mb is not None:
        size = sum(a.attn.size * 2 * 4 // 3 for a in shown) + 40_000
        check_page_size(size, att.attn.shape, max_mb)
    levels = {a.level: _level(a) for a in shown}
    cut = [f"{att.truncated} tokens were cut to fit the model's limit"] if att.truncated else []
    note = "; ".join([*cut, *att.notes])  # how the attention was made: pooled, hidden specials, norms
    return {
        "version": 1,
        "model": att.model,
        "kind": att.kind,
        "text": att.text,
        "causal": bool(att.causal),
        "layers": [int(x) for x in att.layers],
        "heads": [int(x) for x in att.heads],
        "level": level if level in levels else next(iter(levels)),
        "scale": scale,
        "note": note,
        "levels": levels,
    }


def csp(script: str) -> str:
    """No network of any kind: only this page's inline script (by hash) and inline styles run."""
    return (
        "default-src 'none'; "
        f"script-src {script_hash(script)}; "
        "style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'"
    )


def render_html(
    att: Attention,
    *,
    level: str = "token",
    scale: str = "auto",
    view: str = "head",
    max_mb: float | None = DEFAULT_MAX_MB,
) -> str:
    """The whole explorer page for `att`: open it from file:// with the network off."""
    if view not in VIEWS:
        raise InputError(f"unknown view '{view}': use {', '.join(VIEWS)}")
    data = page_data(att, level=level, scale=scale, max_mb=max_mb)
    data["view"] = view
    script = asset("attnviz.js")
    title = html.escape(f"attnviz · {att.model} · {att.text[:60]}")
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{csp(script)}">\n'
        '<meta name="referrer" content="no-referrer">\n<link rel="icon" href="data:,">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>\n{asset('attnviz.css')}</style>\n</head>\n<body>\n"
        '<div id="attnviz-root"></div>\n'
        f'<script type="application/json" id="attnviz-data">{safe_json(data)}</script>\n'
        f"<script>{script}</script>\n</body>\n</html>\n"
    )


def output_path(output: Path | None, text: str, model: str) -> Path:
    """`-o` checked (an .html file or a folder), or a fresh name under outputs/ that never overwrites."""
    from attnviz.outputs import OUTPUT_DIR, default_name, refuse_link, reserve, slug

    name = default_name("view", slug(text), Path(model).name, ext="html")
    if output is None:
        return reserve(OUTPUT_DIR, name)
    refuse_link(output)
    if output.is_dir():
        return reserve(output, name)
    if output.suffix.lower() not in HTML_SUFFIXES:
        raise InputError(f"output {output} should end with .html")
    parent = output.parent if str(output.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {output}: permission denied in {parent}")
    return output


def check_output(output: Path | None) -> None:
    """Fail on a bad `-o` before a model loads."""
    from attnviz.outputs import refuse_link

    if output is not None:
        refuse_link(output)
    if output is not None and not output.is_dir() and output.suffix.lower() not in HTML_SUFFIXES:
        raise InputError(f"output {output} should end with .html")


def write_html(page: str, path: Path) -> Path:
    from attnviz.outputs import atomic_output

    try:
        with atomic_output(path) as tmp:  # refuses a symbolic link rather than write through it
            tmp.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
