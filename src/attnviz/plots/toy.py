"""The toy's figure (seed 000): every head's heatmap, and each head's row entropy per token."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from attnviz.plots._common import (
    ANNOTATE_MAX,
    DEFAULT_CMAP,
    DEFAULT_DPI,
    KEY_LABEL,
    MAX_GRID,
    QUERY_LABEL,
    WEIGHT_LABEL,
    colorbar,
    colormap,
    draw_matrix,
    label_inches,
    mask_patch,
    new_figure,
    resolve_scale,
    resolve_vmax,
    set_ticks,
    sink_key,
    text_inches,
    token_ticks,
    with_text,
)
from attnviz.plots.entropy import ENTROPY_LABEL, bound_line
from attnviz.plots.fonts import with_fonts

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

ENTROPY_HEIGHT = 3.4  # inches for the entropy plot under the heatmaps
ENTROPY_TITLE = "row entropy: low = peaky (one or few keys), at the line = uniform"


@with_fonts
def toy_figure(
    weights: np.ndarray,
    entropy: np.ndarray,
    bound: np.ndarray,
    labels: Sequence[str],
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    vmax: str | float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
) -> Figure:
    """Seed 000's two plots for every head: the attention heatmaps side by side (shared scale), and
    the row entropy of each head against the uniform bound, so heads that specialise stand out.

    The tokens (shortened) are quoted under the title; the mask legend sits with the entropy plot.
    """
    weights = np.asarray(weights)  # [heads, q, k]
    entropy = np.asarray(entropy)  # [heads, q]
    nh, n, _ = weights.shape
    ncols = min(nh, 4)
    nrows = math.ceil(nh / ncols)
    margin = label_inches(labels)
    title = with_text(title, " ".join(labels))
    head_room = 0.5 + 0.25 * title.count("\n")
    if size is None:
        panel = min(max(2.4, n * 0.25), 5.0)
        width = min(MAX_GRID, ncols * (panel + margin) + 1.4)
        height = nrows * (panel + margin) + head_room + 0.3 + ENTROPY_HEIGHT
        size = (max(width, 7.0, text_inches(title)), min(MAX_GRID, height))
    panel = max(0.8, size[0] / ncols - margin - 0.3)
    fig = new_figure(size, dpi)
    if title:
        fig.suptitle(title, parse_math=False)
    top_fig, bottom_fig = fig.subfigures(
        2, 1, height_ratios=[max(1.0, size[1] - ENTROPY_HEIGHT), ENTROPY_HEIGHT]
    )
    axes = np.atleast_1d(top_fig.subplots(nrows, ncols, squeeze=False)).ravel()
    causal = visible is not None and not visible.all()
    sink = sink_key(list(weights), labels, [False] * n, causal)
    cs = resolve_scale(vmax, list(weights), visible, sink, f"'{labels[0]}'")
    top = resolve_vmax(None, list(weights), visible)
    cm = colormap(cmap)
    for ax in axes[nh:]:
        ax.set_axis_off()
    for h, ax in enumerate(axes[:nh]):
        image = draw_matrix(
            ax,
            weights[h],
            visible=visible,
            vmax=cs.vmax,
            scale=cs,
            cmap=cm,
            annotate=annotate and n <= ANNOTATE_MAX // 2,
            cell_inches=panel / n,
        )
        set_ticks(ax, labels, labels, (panel, panel))
        ax.set_title(f"head {h}", fontsize=10)
        if h % ncols == 0:
            ax.set_ylabel(QUERY_LABEL, fontsize=8)
        ax.set_xlabel(KEY_LABEL, fontsize=8)
    colorbar(top_fig, image, axes[:nh].tolist(), cs.vmax, top, cs.label(WEIGHT_LABEL))
    ax = bottom_fig.add_subplot()
    _entropy_bars(ax, entropy, bound, labels, cm, size[0] - 1.5)
    if visible is not None and not visible.all():
        ax.legend(handles=[*ax.get_legend_handles_labels()[0], mask_patch()], **_legend_style(nh + 2))
    return fig


def _legend_style(entries: int) -> dict:
    return {"fontsize": 7, "ncols": min(entries, 5), "loc": "upper left", "framealpha": 0.95}


def _entropy_bars(
    ax: Axes, entropy: np.ndarray, bound: np.ndarray, labels: Sequence[str], cm: Colormap, inches: float
) -> None:
    """Grouped bars, one colour per head, under the uniform bound."""
    nh, n = entropy.shape
    x = np.arange(n)
    width = 0.8 / nh
    colors = [cm(0.15 + 0.7 * h / max(1, nh - 1)) if nh > 1 else "#3b6ea8" for h in range(nh)]
    for h in range(nh):
        ax.bar(x - 0.4 + width * (h + 0.5), entropy[h], width=width, color=colors[h], label=f"head {h}")
    bound_line(ax, bound)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, max(1.0, float(np.max(bound))) * 1.3)
    token_ticks(ax.xaxis, labels, inches)
    ax.set_ylabel(ENTROPY_LABEL)
    ax.set_xlabel(QUERY_LABEL)
    ax.set_title(ENTROPY_TITLE, fontsize=10)
    ax.legend(**_legend_style(nh + 1))
