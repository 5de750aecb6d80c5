"""A Generation -> one self-contained HTML page: the explorer's generation mode.

Its own script (assets/generation.js) and styles, the data as escaped JSON with the weights as
base64 float16, and the same Content-Security-Policy as the explorer: no network, only this script.
"""

from __future__ import annotations

import html
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError, param
from attnviz.outputs import atomic_output, check_parent, write_error
from attnviz.tokens import SPLIT
from attnviz.views.html import _half, csp, safe_json

if TYPE_CHECKING:
    from attnviz.generation.run import Generation

DEFAULT_MAX_MB = 25.0
VIEW = param("path", flag="--view")  # the page's path: `generate --view` on the command line
STYLE = """
body { font: 15px/1.6 system-ui, sans-serif; margin: 1.2em; color: #222; }
.gen-bar { display: flex; gap: 1em; align-items: center; flex-wrap: wrap; margin-bottom: .6em; }
.gen-note, .gen-caption { color: #555; font-size: 13px; margin: .4em 0 .2em; }
.gen-text { white-space: pre-wrap; overflow-wrap: anywhere; border: 1px solid #ddd; border-radius: 4px;
  padding: .5em; max-width: 60em; }
.gen-tok { border-radius: 3px; }
.gen-new { font-weight: 600; cursor: pointer; }
.gen-special { color: #888; }
.gen-box { font-size: 11px; color: #666; border: 1px solid #ccc; padding: 0 2px; margin: 0 1px; }
.gen-query { outline: 2px solid #1a5fb4; }
.gen-top { font-family: ui-monospace, monospace; font-size: 13px; }
"""


@cache
def _script() -> str:
    return resources.files("attnviz.views").joinpath("assets", "generation.js").read_text(encoding="utf-8")


def generation_data(gen: Generation, max_mb: float | None = DEFAULT_MAX_MB) -> dict[str, Any]:
    """What the page's script reads; InputError when the weights would make the page too large."""

    size = 2 * (gen.attn.size + (gen.cross.size if gen.cross is not None else 0)) * 4 / 3
    if max_mb is not None and size > max_mb * 1e6:
        raise InputError(
            f"the page would hold {size / 1e6:.0f} MB of weights (limit {max_mb:g} MB): record fewer "
            f"{param('layers')} or {param('heads')}, or fewer {param('max_new_tokens')}"
        )
    decoder_prompt = "" if gen.kind == "encoder-decoder" else gen.prompt  # its context: a start token
    pieces, gaps, boxed = layout(
        gen.labels, gen.special, [(decoder_prompt, gen.prompt_length), (gen.text, None)]
    )
    source = (
        layout(gen.source_labels, gen.source_special, [(gen.prompt, None)]) if gen.source_tokens else None
    )
    return {
        "model": gen.model,
        "prompt": gen.prompt,
        "text": gen.text,
        "tokens": gen.labels,
        "pieces": pieces,
        "gaps": gaps,
        "boxed": boxed,
        "special": [bool(s) for s in gen.special],
        "prompt_length": gen.prompt_length,
        "new": gen.n_new,
        "layers": list(gen.layers),
        "heads": list(gen.heads),
        "self": _half(gen.attn),
        "source": gen.source_labels,
        "source_pieces": source[0] if source else [],
        "source_gaps": source[1] if source else [],
        "source_boxed": source[2] if source else [],
        "source_special": [bool(s) for s in gen.source_special],
        "cross": _half(gen.cross) if gen.cross is not None else None,
        "notes": list(gen.notes),
    }


_ESCAPED = (("\\n", "\n"), ("\\t", "\t"), ("\\r", "\r"), ("␣", " "))  # how labels show whitespace


def _candidates(label: str) -> list[str]:
    """What a label may stand for in the text: itself with its whitespace marks read back, as
    written, or without the split marks of a character shared by pieces ('巴…' '…巴…' '…巴': the
    first piece takes the whole character, the others nothing)."""

    def unescape(s: str) -> str:
        for shown, char in _ESCAPED:
            s = s.replace(shown, char)
        return s

    out = [unescape(label), label]
    if SPLIT in label:
        core = label[2:] if label.startswith(SPLIT) and len(label) > 1 else label
        out.append(unescape(core.removesuffix(SPLIT)))
    if re.fullmatch(r"(\\x[0-9a-f]{2})+", label):  # bytes that spell no character: decoded as U+FFFD
        out.append("\ufffd" * (len(label) // 4))
    return out


SKIP = 8  # characters a token may skip after one not found (an <unk>'s emoji, say)


def _find(text: str, at: int, piece: str, skip: bool = False) -> int | None:
    """Where `piece` starts in `text` at or after `at`, with only whitespace skipped (or, `skip`,
    up to SKIP characters of any kind); None if not."""
    start = at
    while True:
        if text.startswith(piece, at):
            return at
        if at >= len(text) or not text[at].isspace():
            break
        at += 1
    if skip and piece:
        found = text.find(piece, start, start + SKIP + len(piece))
        return found if found >= 0 else None
    return None


def layout(
    labels: list[str], special: list[bool], segments: list[tuple[str, int | None]]
) -> tuple[list[str], list[str], list[bool]]:
    """Tokens placed on the text they came from, so the page keeps its spaces and line breaks.

    `segments`: (text, how many tokens it covers; None: the rest), e.g. the prompt's tokens on the
    prompt, then the new tokens on the continuation. Returns each token's piece of the text, the
    text between it and the token before (spaces, newlines), and whether it is shown as a box
    instead (a special token, or one whose text is not found there, e.g. a chat template's): its
    piece is then its label. What a segment has after its last token goes in the next gap; the
    last segment's rest in one more gap at the end.
    """
    pieces: list[str] = []
    gaps: list[str] = []
    boxed: list[bool] = []
    i, rest = 0, ""
    for text, count in segments:
        end = len(labels) if count is None else min(len(labels), i + count)
        at = 0
        for k in range(i, end):
            found, lost = None, k > i and boxed[-1]  # after a box (an <unk>): its text may lie between
            for piece in [] if special[k] else _candidates(labels[k]):
                start = _find(text, at, piece, skip=lost)
                if start is not None:
                    found = (start, piece)
                    break
            if found is None:
                pieces.append(labels[k])
                gaps.append(rest if k == i else "")
                boxed.append(True)
                continue
            start, piece = found
            gaps.append((rest if k == i else "") + text[at:start])
            pieces.append(piece)
            boxed.append(False)
            at = start + len(piece)
        rest = (rest if end == i else "") + text[at:]
        i = end
    gaps.append(rest)
    return pieces, gaps, boxed


def render_generation_html(gen: Generation, max_mb: float | None = DEFAULT_MAX_MB) -> str:
    """The whole page: open it from file:// with the network off."""

    script = _script()
    payload = safe_json(generation_data(gen, max_mb))
    title = html.escape(f"attnviz · {gen.model} · {gen.prompt[:60]}")
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{csp(script)}">\n'
        '<meta name="referrer" content="no-referrer">\n<link rel="icon" href="data:,">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        '<div id="attnviz-root"></div>\n'
        f'<script type="application/json" id="attnviz-generation">{payload}</script>\n'
        f"<script>{script}</script>\n</body>\n</html>\n"
    )


def check_view_output(path: Path | None) -> None:
    """Fail on a bad page path (`generate --view`) before a model loads."""

    if path is None:
        return
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{VIEW} {path} should end with .html")
    check_parent(path, VIEW)


def write_generation_html(gen: Generation, path: str | Path, max_mb: float | None = DEFAULT_MAX_MB) -> Path:
    """Write the page atomically."""

    path = Path(path)
    check_view_output(path)
    page = render_generation_html(gen, max_mb)
    try:
        with atomic_output(path) as tmp:
            tmp.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(write_error(path, exc, f"choose another {VIEW}")) from exc
    return path
