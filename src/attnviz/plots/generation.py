"""The generation heatmap: each new token's row (what the step that wrote it read), from arrays.

Rows are the new tokens, columns the context (or, for cross-attention, the source); cells past a
row's end are hatched (the step could not see them) and a dashed line marks where the prompt ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError, param
from attnviz.generation.transform import check_stream, pooled
from attnviz.plots._common import (
    CELL,
    DEFAULT_CMAP,
    DEFAULT_DPI,
    HIGHLIGHT,
    MAX_SIDE,
    label_inches,
    quoted,
    sink_key,
    text_inches,
    token_ticks,
    with_text,
)
from attnviz.plots.heatmaps import heatmap
from attnviz.selection import format_indices

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROW_LABEL = "new token (row: the step that wrote it)"
PROMPT_END_LABEL = "end of the prompt"
ROW_LABELS = (ROW_LABEL, "new token\n(the step that wrote it)", "new token")  # longest that fits
MIN_ROWS_INCHES = 1.6  # a few rows still get this much height (their label must fit beside them)


SOURCE_LABELS = (
    "source token (the prompt, read by cross-attention)",
    "source token\n(the prompt, read by cross-attention)",
    "source token",
)
CONTEXT_LABELS = ("context token (attending to)", "context token\n(attending to)", "context token")


def row_label(axis_inches: float, fontsize: float = 10.0, labels: tuple[str, ...] = ROW_LABELS) -> str:
    """The y label (or x label, given its `labels`), the longest that is no longer than the axis it
    names, so it never runs into the title or out of the picture."""
    for label in labels:
        if max(len(line) for line in label.split("\n")) * fontsize * 0.6 / 72 <= axis_inches:
            return label
    return labels[-1]


def step_visible(n_new: int, width: int, prompt_length: int) -> np.ndarray:
    """[new, width] bool: step t saw the context's first prompt_length + t tokens."""
    return np.arange(width)[None, :] < (prompt_length + np.arange(n_new))[:, None]


def generation_figure(
    matrix: np.ndarray,
    new_labels: Sequence[str],
    context_labels: Sequence[str],
    prompt_length: int,
    *,
    cross: bool = False,
    title: str = "",
    text: str | None = None,
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
) -> Figure:
    """matrix: [new, context] (or [new, source] when `cross`); the prompt/continuation boundary marked."""
    from matplotlib.lines import Line2D

    matrix = np.asarray(matrix, dtype=np.float32)  # [new, context]
    n_new, width = matrix.shape
    if len(new_labels) != n_new or len(context_labels) != width:
        raise InputError(
            f"labels ({len(new_labels)} x {len(context_labels)}) do not fit a {n_new} x {width} matrix"
        )
    visible = None if cross else step_visible(n_new, width, prompt_length)
    rows, cols = list(new_labels), list(context_labels)
    # the auto scale leaves out the sink, as heatmap's does: a decoder's first key, a source's [CLS]/<s>
    sink = sink_key([matrix], cols, (), causal=not cross)
    size, axis = (size, None) if size is not None else _size(n_new, width, rows + cols, title, text)
    fig = heatmap(
        matrix,
        rows,
        cols,
        visible=visible,
        title=title,
        vmax=vmax,
        cmap=cmap,
        annotate=annotate,
        dpi=dpi,
        size=size,
        text=text,
        sink=(sink, cols[sink]) if sink is not None else None,
    )
    ax = fig.axes[0]
    if title:  # the title over the whole figure (sized for it), never over the y label beside the axes
        ax.set_title("")
        fig.suptitle(with_text(wrap_title(title, fig.get_figwidth()), text), fontsize=11, parse_math=False)
    # heatmap() thins both axes' labels as for a square; rows and a wide context get their own room
    room = axis or (min(width * CELL, MAX_SIDE - label_inches(rows) - 1.6), None)
    token_ticks(ax.xaxis, cols, max(1.0, room[0]))
    if room[1] is not None:
        token_ticks(ax.yaxis, rows, max(1.0, room[1]))
    ax.tick_params(axis="x", labelrotation=90, length=2)
    ax.set_ylabel(row_label(room[1] if room[1] is not None else MAX_SIDE))
    ax.set_xlabel(row_label(room[0] + 0.8, labels=SOURCE_LABELS if cross else CONTEXT_LABELS))
    if not cross and 0 < prompt_length < width:
        ax.axvline(prompt_length - 0.5, color=HIGHLIGHT, linestyle="--", linewidth=1.4, zorder=4)
        handle = Line2D([], [], color=HIGHLIGHT, linestyle="--", label=PROMPT_END_LABEL)
        ax.legend(handles=[handle], loc="upper right", fontsize=8, framealpha=0.9)
    return fig


def _size(
    n_new: int, width: int, labels: list[str], title: str, text: str | None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Figure inches shaped like the matrix (cells square, no empty band above and below), and the
    axes' inches: a 100-token continuation over a 120-token context is a wide, shorter picture. A
    long title is wrapped to the figure (`wrap_title`), never the reason the cells grow."""
    margin = label_inches(labels)
    cell = min(CELL, (MAX_SIDE - margin - 1.6) / width, (MAX_SIDE - margin - 1.2) / n_new)
    cell = max(cell, min(2 * CELL, MIN_ROWS_INCHES / n_new, (MAX_SIDE - margin - 1.6) / width))  # few rows
    wide = max(5.0, width * cell + margin + 1.6, text_inches(quoted(text), 11))
    cell = (wide - margin - 1.6) / width  # the axes fill the width: the height follows from it
    axis = (width * cell, n_new * cell)
    lines = wrap_title(title, wide).count("\n") + 1 if title else 0
    heading = 0.22 * (lines + bool(text))
    return (wide, min(MAX_SIDE, max(3.2, axis[1] + margin + 1.1 + heading))), axis


def wrap_title(title: str, inches: float, fontsize: float = 11.0) -> str:
    """`title` broken at its ' · ' separators (else at spaces) into lines no wider than `inches`."""
    import textwrap

    chars = max(20, int((inches - 0.4) * 72 / (fontsize * 0.6)))
    lines: list[str] = []
    for part in title.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= chars:
            lines[-1] += " · " + part
        else:
            lines.extend(textwrap.wrap(part, chars, break_long_words=True) or [""])
    return "\n".join(lines)


def generation_picture(gen0: Any, stream: str = "self", **style: Any) -> Figure:
    """A Generation's heatmap: one recorded head (or, with several, their mean, said in the title)."""

    check_stream(stream)
    if gen0.n_new == 0:
        hint = param("hide_special", True, flag="--no-special")
        raise InputError(f"no new token is left to draw (were they all special tokens? drop {hint})")
    gen = gen0
    if len(gen0.layers) * len(gen0.heads) > 1:
        gen = pooled(gen0, "mean", "both")
    arr = gen.cross if stream == "cross" else gen.attn
    if arr is None:
        raise InputError(f"{gen0.model} is not an encoder-decoder model: it has no cross-attention")
    who = (
        gen.notes[-1]
        if gen.notes
        else f"layer {format_indices(gen.layers)} · head {format_indices(gen.heads)}"
    )
    what = "cross-attention" if stream == "cross" else "while generating"
    cols = gen0.source_labels if stream == "cross" else gen.labels
    return generation_figure(
        arr[0, 0],
        gen.new_labels,
        cols,
        gen.prompt_length,
        cross=stream == "cross",
        title=f"{gen0.model} · {what} · {who}",
        text=gen0.prompt,
        **style,
    )
