"""Attention -> one self-contained HTML page: data as escaped JSON, hand-written JS and CSS inline.

The page asks nothing of the network: its Content-Security-Policy allows only the inline script
whose hash it carries and inline styles, so a token that looks like markup is never run. Weights
travel quantised and deflated (`encode_weights`), only the layers and heads extracted; the word
level is merged by the page itself from a token -> word map.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError, param

if TYPE_CHECKING:
    from attnviz.analyses.transform import ViewOptions
    from attnviz.attention import Attention
    from attnviz.models.loading import LoadedModel

DEFAULT_MAX_MB = 25.0
BYTES_PER_WEIGHT = 0.22  # the page's encoding, measured on MiniLM at 512 tokens (causal models: less)
VIEWS = ("head", "matrix", "model", "text")
HTML_SUFFIXES = (".html", ".htm")


SCRIPTS = ("attnviz.js", "matrix.js", "overview.js")  # the explorer: the core first, then its views
ASSETS = (*SCRIPTS, "attnviz.css", "serve.js", "serve.html")


@cache
def asset(name: str) -> str:
    """A file of views/assets/, the only static files the explorer uses."""
    if name not in ASSETS:
        raise InputError(f"no such asset: {name}")
    return resources.files("attnviz.views").joinpath("assets", name).read_text(encoding="utf-8")


def script_hash(source: str) -> str:
    """The CSP source expression that allows exactly this inline script."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


def safe_json(data: Any) -> str:
    """JSON that can sit inside a <script> element: <, > and & escaped, so no text closes it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


QUANT_LEVELS = 63  # weights outside the first key column: 6-bit steps of the head's own top
ENCODING = "q6-deflate"


def _half(array: Any) -> str:
    """[..] float32 -> base64 of little-endian float16 (the JS decodes it)."""
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(array, dtype="<f2").tobytes()).decode("ascii")


def encode_weights(attn: Any) -> dict[str, Any]:
    """[layers, heads, q, k] -> the page's compact form, decoded by the page's script.

    The first key column (the sink of most heads) travels as float16; every other weight is
    rounded to one of QUANT_LEVELS + 1 steps of its head's largest weight outside that column
    (so the error is at most top / 126, under half a colour step of the auto scale), and the bytes
    are deflated (zlib) and base64-encoded. Attention is mostly near zero, so this shrinks ~10x.
    """
    import zlib

    import numpy as np

    attn = np.asarray(attn, dtype=np.float32)  # [layers, heads, q, k]
    first = attn[..., 0]  # [layers, heads, q]
    rest = attn.copy()
    rest[..., 0] = 0.0
    top = rest.max(axis=(-1, -2)) if rest.size else np.zeros(attn.shape[:2], np.float32)  # [layers, heads]
    safe = np.where(top > 0, top, 1.0)[..., None, None]
    codes = np.clip(np.rint(rest / safe * QUANT_LEVELS), 0, QUANT_LEVELS).astype(np.uint8)  # [l, h, q, k]
    packed = zlib.compress(codes.tobytes(), 6)
    return {
        "encoding": ENCODING,
        "steps": QUANT_LEVELS,
        "top": [float(x) for x in top.ravel()],
        "first": _half(first),
        "data": base64.b64encode(packed).decode("ascii"),
    }


def decode_weights(weights: dict[str, Any], shape: Sequence[int]) -> Any:
    """The page's weights back as float32 [layers, heads, q, k] (what the script draws; for tests)."""
    import zlib

    import numpy as np

    codes = np.frombuffer(zlib.decompress(base64.b64decode(weights["data"])), dtype=np.uint8)
    out = codes.reshape(shape).astype(np.float32)
    top = np.asarray(weights["top"], dtype=np.float32).reshape(shape[:2])
    out *= (top / weights["steps"])[..., None, None]
    first = np.frombuffer(base64.b64decode(weights["first"]), dtype="<f2").astype(np.float32)
    out[..., 0] = first.reshape(shape[:3])
    return out


def _word_map(att: Attention) -> dict[str, Any] | None:
    """How the page merges tokens into words itself (so the word level costs no weights): each
    token's unit, and the units' labels (the text's own words, so an uncased model's words keep
    their case); None when the word level would be the token level."""
    from attnviz.tokens import word_units

    if att.level != "token" or not att.word_ids:
        return None
    _, unit_of = word_units(att.tokens, att.word_ids, att.words)
    one = replace(att, attn=att.attn[:1, :1], layers=att.layers[:1], heads=att.heads[:1], qkv=None)
    words = replace(one, cross=None, decoder=None).to_words()  # labels and flags as `--words` has them
    if words.labels == att.labels:
        return None
    return {"unit": unit_of, "tokens": words.labels, "special": [bool(s) for s in words.special]}


def estimate_bytes(att: Attention) -> int:
    """About how big the page for `att` will be before encoding it (measured: ~0.22 bytes a weight
    on MiniLM at 512 tokens), plus the code; the real size is checked after encoding."""
    return int(att.attn.size * BYTES_PER_WEIGHT) + 60_000


ALLOW = f"allow it with {param('max_mb')}, or explore it through `attnviz serve`"  # a page in a file


def check_page_size(size: float, shape: tuple[int, ...], max_mb: float, allow: str = ALLOW) -> None:
    """Refuse a page of about `size` bytes over `max_mb`, saying how to narrow it ([layers, heads, n, n]).

    `allow`: the other way out, where the caller has one (the server: one head at a time).
    """
    if size > max_mb * 1e6:
        layers, heads, n = shape[:3]
        raise InputError(
            f"the page would be about {size / 1e6:.0f} MB ({n} tokens x {layers} layers x {heads} heads, "
            f"about {size / layers / 1e6:.1f} MB a layer); "
            f"narrow it with {param('layers')} (e.g. {param('layers', [0])}) "
            f"or {param('heads')}, {allow}"
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

    Compression varies with the attention, so only a page estimated at over twice `max_mb` is
    refused here; `page_data` checks the encoded page itself.
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
    size = n_layers * n_heads * n * n * BYTES_PER_WEIGHT + 60_000
    if size > 2 * max_mb * 1e6:
        check_page_size(size, (n_layers, n_heads, n), max_mb)


def page_meta(att: Attention, *, level: str = "token", scale: str = "auto") -> dict[str, Any]:
    """Everything the page's script reads except the weights: tokens, flags, the word map."""
    from attnviz.plots._common import parse_scale

    scale = str(parse_scale(scale)) if scale != "1" else "1"
    if level not in ("token", "word"):
        raise InputError(f"unknown level '{level}': use token or word")
    if att.attn.ndim != 4:
        raise InputError("the explorer needs attention shaped [layers, heads, q, k]")
    words = _word_map(att)
    cut = [f"{att.truncated} tokens were cut to fit the model's limit"] if att.truncated else []
    note = "; ".join([*cut, *att.notes])  # how the attention was made: pooled, hidden specials, norms
    return {
        "version": 2,
        "model": att.model,
        "kind": att.kind,
        "text": att.text,
        "causal": bool(att.causal),
        "layers": [int(x) for x in att.layers],
        "heads": [int(x) for x in att.heads],
        "level": "word" if level == "word" and words is not None else att.level,
        "scale": scale,
        "note": note,
        "tokens": att.labels,
        "special": [bool(s) for s in att.special],
        "spans": [[int(a), int(b)] for a, b in att.spans] if att.spans else None,
        "words": words,
        "n": att.n_tokens,
    }


def page_data(
    att: Attention,
    *,
    level: str = "token",
    scale: str = "auto",
    max_mb: float | None = DEFAULT_MAX_MB,
    allow: str = ALLOW,
) -> dict[str, Any]:
    """What the page's script reads: `page_meta` and the weights in their compact encoding.

    A page that would pass `max_mb` is refused with the way to narrow it.
    """
    data = page_meta(att, level=level, scale=scale)
    if max_mb is not None and estimate_bytes(att) > 2 * max_mb * 1e6:  # clearly too big: not encoded
        check_page_size(estimate_bytes(att), att.attn.shape, max_mb, allow)
    data["weights"] = encode_weights(att.attn)
    if max_mb is not None:
        size = len(data["weights"]["data"]) + len(data["weights"]["first"]) + 60_000
        check_page_size(size, att.attn.shape, max_mb, allow)
    return data


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
    script = "\n".join(asset(name) for name in SCRIPTS)
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
