"""The generation heatmap: each new token's row (what the step that wrote it read), from arrays.

Rows are the new tokens, columns the context (or, for cross-attention, the source); cells past a
row's end are hatched (the step could not see them) and a dashed line marks where the prompt ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError, param
from attnviz.plots._common import (
    CELL,
    DEFAULT_CMAP,
    DEFAULT_DPI,
    HIGHLIGHT,
    MAX_SIDE,
    label_inches,
    token_ticks,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROW_LABEL = "new token (row: the step that wrote it)"
PROMPT_END_LABEL = "end of the prompt"


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

    from attnviz.plots.heatmaps import heatmap

    matrix = np.asarray(matrix, dtype=np.float32)  # [new, context]
    n_new, width = matrix.shape
    if len(new_labels) != n_new or len(context_labels) != width:
        raise InputError(
            f"labels ({len(new_labels)} x {len(context_labels)}) do not fit a {n_new} x {width} matrix"
        )
    visible = None if cross else step_visible(n_new, width, prompt_length)
    fig = heatmap(
        matrix,
        list(new_labels),
        list(context_labels),
        visible=visible,
        title=title,
        vmax=vmax,
        cmap=cmap,
        annotate=annotate,
        dpi=dpi,
        size=size,
        text=text,
    )
    ax = fig.axes[0]
    # heatmap() thins both axes' labels as for a square; a wide context gets its own room
    room = min(width * CELL, MAX_SIDE - label_inches(list(new_labels)) - 1.6)
    token_ticks(ax.xaxis, list(context_labels), max(1.0, room))
    ax.tick_params(axis="x", labelrotation=90, length=2)
    ax.set_ylabel(ROW_LABEL)
    ax.set_xlabel(
        "source token (the prompt, read by cross-attention)" if cross else "context token (attending to)"
    )
    if not cross and 0 < prompt_length < width:
        ax.axvline(prompt_length - 0.5, color=HIGHLIGHT, linestyle="--", linewidth=1.4, zorder=4)
        handle = Line2D([], [], color=HIGHLIGHT, linestyle="--", label=PROMPT_END_LABEL)
        ax.legend(handles=[handle], loc="upper right", fontsize=8, framealpha=0.9)
    return fig


def generation_picture(gen0: Any, stream: str = "self", **style: Any) -> Figure:
    """A Generation's heatmap: one recorded head (or, with several, their mean, said in the title)."""
    from attnviz.generation.transform import pooled
    from attnviz.selection import format_indices

    if stream not in ("self", "cross"):
        raise InputError(f"unknown {param('stream')} '{stream}': use self or cross")
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
