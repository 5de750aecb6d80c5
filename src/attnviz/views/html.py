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
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError, param
from attnviz.outputs import OUTPUT_DIR, atomic_output, default_name, refuse_link, reserve, slug
from attnviz.selection import resolve_indices
from attnviz.tokens import word_units

if TYPE_CHECKING:
    from attnviz.analyses.transform import ViewOptions
    from attnviz.attention import Attention
    from attnviz.models.loading import LoadedModel

DEFAULT_MAX_MB = 25.0
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


def _top(head: Any) -> float:
    """A head's largest weight outside the first key column: its codes' scale."""
    rest = head[..., 1:]
    return float(rest.max()) if rest.size else 0.0


def _codes(head: Any, out: Any, work: Any, top: float) -> None:
    """Rows of one head [q, k] -> their uint8 codes in `out` (first key column 0), steps of `top`.

    `work` is a float32 buffer of the rows' shape: no array of the whole attention is made.
    """
    import numpy as np

    np.divide(head, top if top > 0 else 1.0, out=work, dtype=np.float32)
    np.multiply(work, QUANT_LEVELS, out=work)
    work[:, 0] = 0.0
    np.rint(work, out=work)
    np.clip(work, 0, QUANT_LEVELS, out=work)
    out[...] = work  # float -> uint8, in place


def _head_order(shape: Sequence[int]) -> Any:
    """(layer, head) pairs in the order the page stores them."""
    return ((layer, h) for layer in range(shape[0]) for h in range(shape[1]))


def encode_weights(attn: Any) -> dict[str, Any]:
    """[layers, heads, q, k] -> the page's compact form, decoded by the page's script.

    The first key column (the sink of most heads) travels as float16; every other weight is
    rounded to one of QUANT_LEVELS + 1 steps of its head's largest weight outside that column
    (so the error is at most top / 126, under half a colour step of the auto scale), and the bytes
    are deflated (zlib) and base64-encoded. Attention is mostly near zero, so this shrinks ~10x.
    Encoded one head at a time, streamed through one deflate: the memory it needs beyond `attn`
    is one head's codes and the compressed page.
    """
    import zlib

    import numpy as np

    attn = np.asarray(attn)  # [layers, heads, q, k], float32 as extracted (any float is read per head)
    n_q, n_k = attn.shape[-2:]
    tops = np.zeros(attn.shape[:2], np.float32)  # [layers, heads]
    work = np.empty((n_q, n_k), np.float32)
    codes = np.empty((n_q, n_k), np.uint8)
    deflate = zlib.compressobj(6)
    chunks = []
    for layer, h in _head_order(attn.shape):
        head = np.asarray(attn[layer, h], dtype=np.float32)
        tops[layer, h] = top = _top(head)
        _codes(head, codes, work, top)
        chunks.append(deflate.compress(codes))
    chunks.append(deflate.flush())
    packed = b"".join(chunks)
    del chunks
    return {
        "encoding": ENCODING,
        "steps": QUANT_LEVELS,
        "top": [float(x) for x in tops.ravel()],
        "first": _half(attn[..., 0]),
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

    if att.level != "token" or not att.word_ids:
        return None
    labels, unit_of = word_units(att.tokens, att.word_ids, att.words)  # as `to_words` merges them
    special = [True] * len(labels)
    for u, wid in zip(unit_of, att.word_ids, strict=True):
        special[u] = wid is None
    if labels == att.labels:
        return None
    return {"unit": unit_of, "tokens": labels, "special": special}


SAMPLE_HEADS = 12  # heads encoded to estimate a page, spread over the layers
SAMPLE_CODES = 1 << 20  # codes encoded per sampled head (8 blocks of whole rows), at most
LEAST_ROW_BYTES = 16  # a head's row on a page, at the least (smollm2 at 1,882 tokens: 34; MiniLM: more)


@cache
def _code_bytes() -> int:
    """The page's fixed part: its script, styles and markup."""
    return sum(len(asset(name).encode()) for name in (*SCRIPTS, "attnviz.css")) + 1500


def _sampled_codes(attn: Any) -> float:
    """About how many deflated bytes every head's codes take: a few heads, in blocks of rows."""
    import zlib

    import numpy as np

    n_layers, n_heads, n_q, n_k = attn.shape
    count = n_layers * n_heads
    if count == 0 or n_q == 0:
        return 0.0
    picks = sorted({int(x) for x in np.linspace(0, count - 1, min(count, SAMPLE_HEADS)).round()})
    block = max(1, min(n_q, SAMPLE_CODES // (8 * max(n_k, 1))))
    starts = sorted({int(x) for x in np.linspace(0, n_q - block, 8).round()}) if 8 * block < n_q else [0]
    rows = np.concatenate([np.arange(a, min(n_q, a + block)) for a in starts])
    work = np.empty((len(rows), n_k), np.float32)
    codes = np.empty((len(rows), n_k), np.uint8)
    total = 0
    for k in picks:
        head = np.asarray(attn[k // n_heads, k % n_heads], dtype=np.float32)
        _codes(head[rows], codes, work, _top(head))
        total += len(zlib.compress(codes, 6))
    return total / len(picks) * count * n_q / len(rows)


def estimate_bytes(att: Attention, meta: dict[str, Any] | None = None) -> int:
    """About how big the page for `att` will be, without encoding it: a few heads spread over the
    layers are encoded (blocks of their rows, up to a megabyte of codes each) and their deflated
    size scaled to every head; the float16 first column, the tokens and the code are counted as
    they are. Within 1.5x of the real size (tests/test_views.py); `page_data` checks the real one."""
    base64_of = lambda size: 4 * ((int(size) + 2) // 3)  # noqa: E731
    layers, heads, n_q = att.attn.shape[:3]
    meta = page_meta(att) if meta is None else meta
    return (
        base64_of(_sampled_codes(att.attn))
        + base64_of(2 * layers * heads * n_q)  # the first key column, float16
        + 14 * layers * heads  # each head's top, as JSON
        + len(safe_json(meta).encode())
        + _code_bytes()
    )


def least_bytes(n_layers: int, n_heads: int, n: int) -> int:
    """How big an n-token page will be at the least, before any attention is known (the early check)."""
    return n_layers * n_heads * n * LEAST_ROW_BYTES + _code_bytes()


ALLOW = f"allow it with {param('max_mb')}, or explore it through `attnviz serve`"  # a page in a file


def _mb(size: float) -> str:
    mb = size / 1e6
    return f"{mb:.0f}" if mb >= 10 else f"{mb:.1f}" if mb >= 1 else f"{mb:.2f}"


def check_page_options(view: str = "head", max_mb: float | None = DEFAULT_MAX_MB) -> None:
    """InputError for a view the page lacks, or a size limit that is not above 0 (NaN too)."""
    if view not in VIEWS:
        raise InputError(f"unknown {param('view')} '{view}': use {', '.join(VIEWS)}")
    if max_mb is not None and not max_mb > 0:
        raise InputError(f"bad {param('max_mb')} {max_mb}: use a size above 0 megabytes")


def check_page_size(
    size: float, shape: tuple[int, ...], max_mb: float, allow: str = ALLOW, least: bool = False
) -> None:
    """Refuse a page of about `size` bytes over `max_mb`, saying how to narrow it ([layers, heads, n, n]).

    `allow`: the other way out, where the caller has one (the server: one head at a time).
    `least`: `size` is what the page takes at the least (the early check, before the forward pass).
    """
    if size > max_mb * 1e6:
        layers, heads, n = shape[:3]
        about = "at least about" if least else "about"
        raise InputError(
            f"the page would be {about} {_mb(size)} MB ({n} tokens x {layers} layers x {heads} heads, "
            f"about {_mb(size / layers)} MB a layer); "
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

    Compression varies with the attention, so this refuses only a page whose least size
    (`least_bytes`) is over `max_mb`; `page_data` estimates, then checks, the page itself.
    """
    check_page_options(max_mb=max_mb)
    if max_mb is None:
        return
    from attnviz.extraction import tokenize

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
    check_page_size(least_bytes(n_layers, n_heads, n), (n_layers, n_heads, n), max_mb, least=True)


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
    check_page_options(max_mb=max_mb)
    data = page_meta(att, level=level, scale=scale)
    if max_mb is not None:  # clearly too big (the estimate is within 1.5x): not encoded
        estimate = estimate_bytes(att, data)
        if estimate > 1.5 * max_mb * 1e6:
            check_page_size(estimate, att.attn.shape, max_mb, allow)
    rest = len(safe_json(data).encode()) + _code_bytes()
    data["weights"] = w = encode_weights(att.attn)
    if max_mb is not None:  # the page's real size, to a few bytes
        size = rest + len(w["data"]) + len(w["first"]) + len(safe_json(w["top"])) + 80
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
    check_page_options(view, max_mb)
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

    if output is not None:
        refuse_link(output)
    if output is not None and not output.is_dir() and output.suffix.lower() not in HTML_SUFFIXES:
        raise InputError(f"output {output} should end with .html")


def write_html(page: str, path: Path) -> Path:
    try:
        with atomic_output(path) as tmp:  # refuses a symbolic link rather than write through it
            tmp.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
