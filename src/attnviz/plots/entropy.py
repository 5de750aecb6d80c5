"""Row entropy figures: one head's bars against the uniform bound, and a layers x heads map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from attnviz.plots._common import (
    DEFAULT_DPI,
    MAX_SIDE,
    QUERY_LABEL,
    SUBTITLE_COLOUR,
    colormap,
    label_inches,
    layer_head_ticks,
    new_figure,
    quoted,
    text_inches,
    token_ticks,
    with_text,
    write_cells,
)
from attnviz.plots.fonts import with_fonts

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from attnviz.heads.patterns import RowEntropy

ENTROPY_LABEL = "row entropy (bits)"
BOUND_LABEL = "uniform attention: log2(visible keys)"
LEGEND_ROOM = 1.4  # the y axis reaches this times the bound: the top band holds the legend


def bound_line(ax: Axes, bound: np.ndarray) -> None:
    """The uniform-attention bound as a dashed step line over the query positions."""
    bound = np.asarray(bound, dtype=float)  # [q]
    x = np.arange(len(bound))
    ax.step(
        np.concatenate([[-0.5], x + 0.5]),
        np.concatenate([[bound[0] if len(bound) else 0.0], bound]),
        where="pre",
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=BOUND_LABEL,
        zorder=3,
    )


@with_fonts
def entropy_bars(
    entropy: np.ndarray,
    bound: np.ndarray,
    labels: Sequence[str],
    *,
    title: str = "",
    highlight: Sequence[int] = (),
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
    ax: Axes | None = None,
    text: str | None = None,
) -> Figure:
    """Each query token's row entropy in bits, with the uniform-attention bound for reference.

    Low bars: the token attends to one or a few keys; bars at the line: it spreads evenly.
    """
    entropy = np.asarray(entropy, dtype=float)  # [q]
    bound = np.asarray(bound, dtype=float)  # [q]
    n = len(entropy)
    margin = label_inches(labels)
    if ax is None:
        if size is None:
            width = max(min(MAX_SIDE * 1.25, max(6.0, n * 0.28 + 1.5)), text_inches(title))
            size = (max(width, text_inches(quoted(text), 9)), 3.2 + margin + (0.3 if text else 0))
        fig = new_figure(size, dpi)
        ax = fig.add_subplot()
        width = size[0] - 1.2
        if text:
            fig.suptitle(quoted(text), fontsize=9, color=SUBTITLE_COLOUR, parse_math=False)
    else:
        fig = ax.figure
        width = ax.get_position().width * fig.get_figwidth()
    ax.bar(np.arange(n), entropy, width=0.8, color="#3b6ea8", label="row entropy", zorder=2)
    bound_line(ax, bound)
    ax.set_xlim(-0.5, n - 0.5)
    # headroom above the bound for the one-row legend: it never covers the dashed line or a bar
    ax.set_ylim(0, max(1.0, float(bound.max()) if n else 1.0) * LEGEND_ROOM)
    token_ticks(ax.xaxis, labels, width, highlight)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_ylabel(ENTROPY_LABEL)
    ax.set_xlabel(QUERY_LABEL)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(loc="upper left", ncols=2, fontsize=8, framealpha=0.95, borderaxespad=0.3)
    if title:
        ax.set_title(title, parse_math=False)
    return fig


@with_fonts
def entropy_grid(
    values: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    *,
    bound: float,
    title: str = "",
    cmap: str = "magma",
    annotate: bool = True,
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
) -> Figure:
    """Mean row entropy of every head, layers as rows and heads as columns; the colour scale runs
    from 0 (every query on one key) to the uniform bound (every query spread evenly)."""
    values = np.asarray(values, dtype=float)  # [layers, heads]
    nl, nh = values.shape
    if size is None:
        cell = min(0.55, max(0.25, 14.0 / max(nh, nl)))
        width = max(5.0, nh * cell + 2.6, text_inches(title))
        size = (width, max(3.0, nl * cell + 1.6 + 0.25 * title.count("\n")))
    fig = new_figure(size, dpi)
    ax = fig.add_subplot()
    cm = colormap(cmap)
    top = max(bound, float(np.nanmax(values)) if values.size else 0.0, 1e-6)
    image = ax.imshow(values, cmap=cm, vmin=0.0, vmax=top, aspect="auto")
    layer_head_ticks(ax, layers, heads)
    cell_pts = min(size[0] / max(nh, 1), size[1] / max(nl, 1)) * 72
    if annotate and cell_pts >= 14:
        write_cells(ax, values, cm, top, fmt="{:.1f}", fontsize=min(8.0, cell_pts * 0.3))
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label("mean row entropy (bits)\ntop: uniform attention")
    if title:
        ax.set_title(title, parse_math=False)
    return fig


def entropy_figure(
    ent: RowEntropy,
    *,
    cmap: str | None = None,
    highlight: Sequence[int] = (),
    dpi: float | None = None,
    size: tuple[float, float] | None = None,
    text: str | None = None,
    note: str = "",
) -> Figure:
    """One head: bars per query token; several: a layers x heads heatmap of mean row entropy.

    `text` (the analysed text, shortened) goes in the title; so does `note` (how the rows were changed,
    e.g. "special tokens hidden, rows renormalised").
    """
    level = " (words)" if ent.level == "word" else ""
    level += f" · {note}" if note else ""
    if len(ent.layers) == 1 and len(ent.heads) == 1:
        mean = float(ent.mean[0, 0])
        title = (
            f"{ent.model} · layer {ent.layers[0]} · head {ent.heads[0]}{level} · "
            f"mean row entropy {mean:.2f} bits"
        )
        return entropy_bars(
            ent.entropy[0, 0],
            ent.bound,
            ent.labels,
            title=title,
            highlight=highlight,
            dpi=dpi or DEFAULT_DPI,
            size=size,
            text=text,
        )
    title = (
        f"{ent.model} · mean row entropy per head{level} · {len(ent.labels)} {ent.level}s "
        f"(uniform: {ent.bound.mean():.2f} bits)"
    )
    return entropy_grid(
        ent.mean,
        ent.layers,
        ent.heads,
        bound=float(ent.bound.mean()),
        title=with_text(title, text),
        cmap=cmap or "magma",
        dpi=dpi or DEFAULT_DPI,
        size=size,
    )
