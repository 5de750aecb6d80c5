"""Figures for the analyses: rollout, minimal-pair changes, head clusters. Never loads a model.

Built on `attnviz.plots` (its Agg figures, colour maps, tick thinning and `save`); the cluster map
is seaborn's `clustermap`, drawn on its own figure and closed by `save_clustermap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError
from attnviz.outputs import refuse_link
from attnviz.plots import _common  # `_common.save`: the one save, as tests spy on it
from attnviz.plots._common import (
    DEFAULT_CMAP,
    DEFAULT_DPI,
    KEY_LABEL,
    MAX_SIDE,
    QUERY_LABEL,
    colormap,
    draw_matrix,
    label_step,
    layer_head_ticks,
    new_figure,
    quoted,
    with_text,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from attnviz.analyses.cluster import HeadDistances
    from attnviz.analyses.compare import Comparison
    from attnviz.analyses.rollout import Rollout
    from attnviz.attention import Attention

DIVERGING = "RdBu_r"
ROLE_MARKERS = {
    "self": "o",
    "previous": "<",
    "next": ">",
    "first": "^",
    "last_sep": "v",
    "punctuation": "P",
    "broad": "s",
    "mixed": "X",
}


def _ticks(ax: Axes, labels: Sequence[str], axis: str, inches: float) -> None:
    step, font = label_step(len(labels), inches)
    ticks = list(range(0, len(labels), step))
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_ticks(ticks)
    target.set_ticklabels([labels[i] for i in ticks], fontsize=font, parse_math=False)
    if axis == "x":
        ax.tick_params(axis="x", labelrotation=90, length=2)


def _side(n: int) -> float:
    return min(MAX_SIDE * 0.6, max(3.5, n * 0.3))


# -- rollout ------------------------------------------------------------------------------------
def rollout_figure(
    ro: Rollout, token: int = 0, *, cmap: str = DEFAULT_CMAP, dpi: float = DEFAULT_DPI
) -> Figure:
    """The rollout matrix as a heatmap, and one output token's row as bars over the input tokens."""
    n = len(ro.labels)
    side = _side(n)
    fig = new_figure((side * 2 + 2.5, side + 1.8), dpi)
    heat, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    visible = np.tril(np.ones((n, n), dtype=bool)) if ro.causal else None
    image = draw_matrix(heat, ro.matrix, visible=visible, vmax=float(ro.matrix.max()), cmap=colormap(cmap))
    _ticks(heat, ro.labels, "y", side)
    _ticks(heat, ro.labels, "x", side)
    heat.set_ylabel("output position (after the last layer)")
    heat.set_xlabel("input token")
    heat.set_title("rollout R")
    fig.colorbar(image, ax=heat, shrink=0.85).set_label("share of the input reaching the output")
    row = ro.row(token)
    bars.bar(np.arange(n), row, color="#3b6ea8")
    bars.set_xlim(-0.5, n - 0.5)
    _ticks(bars, ro.labels, "x", side)
    bars.set_ylabel("rollout weight")
    bars.set_title(f"row of '{ro.labels[token]}' (@{token})")
    fig.suptitle(with_text(ro.title, ro.text), fontsize=10, parse_math=False)
    return fig


# -- compare ------------------------------------------------------------------------------------
def change_figure(cmp: Comparison, *, cmap: str = "magma", dpi: float = DEFAULT_DPI) -> Figure:
    """Layers x heads map of the change (mean JS divergence, bits) between the two texts."""
    n_layers, n_heads = cmp.change.shape
    fig = new_figure((max(4.5, n_heads * 0.45 + 2.2), max(3.0, n_layers * 0.45 + 1.6)), dpi)
    ax = fig.add_subplot()
    image = ax.imshow(cmp.change, cmap=colormap(cmap), vmin=0.0, aspect="auto")
    layer_head_ticks(ax, cmp.layers, cmp.heads)
    ax.set_title(
        f"{cmp.model} · change per head (JS divergence, bits)\n{_both(cmp)}", fontsize=10, parse_math=False
    )
    fig.colorbar(image, ax=ax, shrink=0.9).set_label("mean JS divergence over aligned tokens")
    return fig


def pair_figure(
    cmp: Comparison, layer: int, head: int, *, cmap: str = DEFAULT_CMAP, dpi: float = DEFAULT_DPI
) -> Figure:
    """One head on both texts (aligned tokens, rows renormalised) and A - B centred on 0."""
    a, b = cmp.pair(layer, head)
    diff = a - b
    n = len(cmp.labels_a)
    side = _side(n)
    fig = new_figure((side * 3 + 3.5, side + 1.8), dpi)
    axes = fig.subplots(1, 3)
    visible = cmp.visible()
    top = float(max(a.max(), b.max()))
    for ax, matrix, labels, title in (
        (axes[0], a, cmp.labels_a, "text A"),
        (axes[1], b, cmp.labels_b, "text B"),
    ):
        image = draw_matrix(ax, matrix, visible=visible, vmax=top, cmap=colormap(cmap))
        _ticks(ax, labels, "y", side)
        _ticks(ax, labels, "x", side)
        ax.set_title(title)
        ax.set_ylabel(QUERY_LABEL)
        ax.set_xlabel(KEY_LABEL)
    fig.colorbar(image, ax=axes[:2].tolist(), shrink=0.85).set_label(
        "attention weight (aligned, renormalised)"
    )
    bound = float(np.abs(diff).max()) or 1.0
    shown = np.ma.masked_array(diff, mask=~visible) if visible is not None else diff
    image = axes[2].imshow(shown, cmap=colormap(DIVERGING), vmin=-bound, vmax=bound, aspect="equal")
    labels = [f"{x}/{y}" if x != y else x for x, y in zip(cmp.labels_a, cmp.labels_b, strict=True)]
    _ticks(axes[2], labels, "y", side)
    _ticks(axes[2], labels, "x", side)
    axes[2].set_title("A - B")
    fig.colorbar(image, ax=axes[2], shrink=0.85).set_label("difference (0: unchanged)")
    li, hi = cmp.layers.index(layer), cmp.heads.index(head)
    fig.suptitle(
        f"{cmp.model} · layer {layer} · head {head} · change {cmp.change[li, hi]:.3f} bits\n{_both(cmp)}",
        fontsize=10,
        parse_math=False,
    )
    return fig


def _both(cmp: Comparison, chars: int = 50) -> str:
    """The two texts compared, one per title line; long ones start a little before they differ."""
    a, b = " ".join(cmp.text_a.split()), " ".join(cmp.text_b.split())
    if max(len(a), len(b)) > chars:
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        start = a.rfind(" ", 0, max(0, same - 20)) + 1  # keep a few words of shared context
        if start > 0:
            a, b = "…" + a[start:], "…" + b[start:]
    return f"A {quoted(a, chars)}\nB {quoted(b, chars)}"


# -- cluster ------------------------------------------------------------------------------------
def cluster_map(dist: HeadDistances, *, cmap: str = "viridis_r") -> Any:
    """Seaborn clustermap of the head distances (average linkage on the precomputed distances);
    the side colours are the layers, with a legend, in the colours of `embedding_figure`."""
    import pandas as pd
    import seaborn as sns
    from matplotlib.patches import Patch

    labels = dist.labels
    frame = pd.DataFrame(dist.matrix, index=labels, columns=labels)
    link = dist.linkage()
    side = min(24.0, max(6.0, len(labels) * 0.14 + 3))
    palette = layer_colours(dist.layers)
    side_colours = [palette[layer] for layer in dist.head_layers]
    grid = sns.clustermap(
        frame,
        row_linkage=link,
        col_linkage=link,
        cmap=cmap,
        figsize=(side, side),
        row_colors=side_colours,
        col_colors=side_colours,
        xticklabels=True,
        yticklabels=True,
        cbar_kws={"label": "mean JS divergence (bits)"},
        cbar_pos=(0.02, 0.74, 0.03, 0.16),  # below the title's band
    )
    font = max(3.0, min(8.0, 500 / max(1, len(labels))))
    grid.ax_heatmap.tick_params(labelsize=font)
    # the grid leaves a band on the right for the layer legend (beside the row labels, off the
    # dendrograms) and one at the top for the title (never touching the picture's edge)
    grid.gs.update(top=CLUSTER_TOP, right=CLUSTER_RIGHT)
    handles = [Patch(facecolor=colour, label=f"L{layer}") for layer, colour in palette.items()]
    grid.figure.legend(
        handles=handles,
        title="layer",
        loc="upper right",
        bbox_to_anchor=(0.995, CLUSTER_TOP),
        ncols=max(1, -(-len(handles) // 16)),
        fontsize=6,
        title_fontsize=7,
        frameon=False,
    )
    grid.figure.suptitle(
        f"{dist.model} · head distances over {dist.texts} texts (side colours: layer)",
        y=1 - 0.25 / side,
        va="top",
    )
    return grid


CLUSTER_TOP = 0.91  # of the clustermap's height: the grid's top, below the title
CLUSTER_RIGHT = 0.86  # of its width: the grid's right edge, the layer legend beyond it


def layer_colours(layers: Sequence[int]) -> dict[int, Any]:
    """One RGBA colour per layer, the same in the clustermap and the MDS map (tab10 up to ten)."""
    from matplotlib import colormaps

    distinct = sorted(set(layers))
    if len(distinct) <= 10:
        cm = colormaps["tab10"]
        return {layer: cm(i) for i, layer in enumerate(distinct)}
    cm = colormaps["turbo"]
    return {layer: cm(i / (len(distinct) - 1)) for i, layer in enumerate(distinct)}


def save_clustermap(grid: Any, path: str | Path, dpi: float | None = None) -> Path:
    """Save a clustermap and close its pyplot figure (seaborn draws through pyplot)."""
    import matplotlib.pyplot as plt

    try:
        return _common.save(grid.figure, path, dpi=dpi or 100)
    finally:
        plt.close(grid.figure)


CLUSTER_FILES = ("distances.csv", "clustermap.png", "embedding.png")


def cluster_folder(folder: str | Path) -> Path:
    """The output folder made, and its files refused if they are links: before the texts run."""

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    for name in CLUSTER_FILES:
        refuse_link(folder / name)
    return folder


def save_cluster(dist: HeadDistances, folder: str | Path) -> list[Path]:
    """`attnviz cluster`'s output folder: the distances as CSV, the clustermap and the MDS map."""
    folder = cluster_folder(folder)
    csv_name, map_name, mds_name = CLUSTER_FILES
    files = [dist.to_csv(folder / csv_name)]
    files.append(save_clustermap(cluster_map(dist), folder / map_name))
    files.append(_common.save(embedding_figure(dist), folder / mds_name))
    return files


def embedding_figure(dist: HeadDistances, *, dpi: float = DEFAULT_DPI) -> Figure:
    """Classical MDS of the head distances: colour = layer (as in the clustermap), marker = role."""
    from matplotlib.lines import Line2D

    coords = dist.embedding(2)
    fig = new_figure((8.0, 6.5), dpi)
    ax = fig.add_subplot()
    palette = layer_colours(dist.layers)
    colours = np.array([palette[layer] for layer in dist.head_layers])
    roles = np.array(dist.roles)
    present = [r for r in ROLE_MARKERS if (roles == r).any()]
    for role in present:
        sel = roles == role
        ax.scatter(
            coords[sel, 0],
            coords[sel, 1],
            c=colours[sel],
            marker=ROLE_MARKERS[role],
            s=46,
            edgecolors="black",
            linewidths=0.4,
        )
    handles = [
        Line2D([], [], marker=ROLE_MARKERS[r], linestyle="", color="grey", markeredgecolor="black", label=r)
        for r in present
    ]
    ax.add_artist(ax.legend(handles=handles, title="role", fontsize=8, loc="upper left"))
    layer_handles = [
        Line2D([], [], marker="o", linestyle="", color=colour, markeredgecolor="black", label=f"L{layer}")
        for layer, colour in palette.items()
    ]
    fig.legend(
        handles=layer_handles,
        title="layer",
        loc="outside right upper",
        ncols=max(1, -(-len(layer_handles) // 16)),
        fontsize=7,
    )
    ax.set_xlabel("MDS 1")
    ax.set_ylabel("MDS 2")
    ax.set_title(f"{dist.model} · heads placed by attention similarity ({dist.texts} texts)", fontsize=10)
    if len(dist.labels) <= 150:
        _point_labels(fig, ax, coords, dist.labels)
    return fig


def _point_labels(fig: Figure, ax: Any, coords: np.ndarray, labels: Sequence[str]) -> None:
    """Name the points whose labels do not pile up: outermost first, a label that would overlap one
    already placed (or leave the axes) is left out, so every name shown can be read."""
    order = np.argsort(-np.linalg.norm(coords - coords.mean(0), axis=1), kind="stable")
    fig.canvas.draw()  # the final layout, so label boxes are where they will be saved
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed: list[Any] = []
    for i in order:
        text = ax.annotate(labels[i], tuple(coords[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        box = text.get_window_extent(renderer)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        if not inside or any(box.overlaps(other) for other in placed):
            text.remove()
        else:
            placed.append(box)


# -- norm weighting -----------------------------------------------------------------------------
def weighting_figure(
    att: Attention,
    weighted: Attention,
    layer: int,
    head: int,
    *,
    cmap: str = DEFAULT_CMAP,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """One head as attention weights and as norm-weighted contributions, each on its own scale."""
    labels = att.labels
    n = len(labels)
    side = _side(n)
    fig = new_figure((side * 2 + 3.5, side + 1.8), dpi)
    axes = fig.subplots(1, 2)
    visible = att.visible() if att.causal else None
    for ax, source, title, bar in (
        (axes[0], att, "attention weights α", "attention weight"),
        (axes[1], weighted, "norm-weighted ||α f(x)||", "contribution norm"),
    ):
        matrix = source.head(layer, head)
        image = draw_matrix(ax, matrix, visible=visible, vmax=float(matrix.max()) or 1.0, cmap=colormap(cmap))
        _ticks(ax, labels, "y", side)
        _ticks(ax, labels, "x", side)
        ax.set_title(title)
        ax.set_ylabel(QUERY_LABEL)
        ax.set_xlabel(KEY_LABEL)
        fig.colorbar(image, ax=ax, shrink=0.85).set_label(bar)
    fig.suptitle(f"{att.model} · layer {layer} · head {head}: weight vs value-weighted norm", fontsize=10)
    return fig


# -- aggregated / special-free attention --------------------------------------------------------
def derived_title(att: Attention) -> str:
    """A title that says what was done: pooled heads or layers, special tokens hidden, norm weights."""
    notes = list(att.notes)
    pooled_l = att.pooled_layers
    pooled_h = att.pooled_heads
    where = []
    if pooled_l is None:
        where.append(f"layer {att.layers[0]}" if len(att.layers) == 1 else f"{len(att.layers)} layers")
    if pooled_h is None:
        where.append(f"head {att.heads[0]}" if len(att.heads) == 1 else f"{len(att.heads)} heads")
    return " · ".join([att.model, *where, *notes])


def derived_figure(att: Attention, **style: Any) -> Figure:
    """`plots.attention_figure`, titled with how the attention was derived (so a figure never lies)."""
    from attnviz.plots.heatmaps import attention_figure

    fig = attention_figure(att, **style)
    panels = [a for a in fig.axes if a.get_images()]
    if len(panels) == 1:
        panels[0].set_title(derived_title(att), fontsize=9)
    elif att.notes:
        fig.suptitle(f"{fig.get_suptitle()}\n{'; '.join(att.notes)}".strip())
    return fig
