"""Attention heatmaps: one head, a few heads side by side, and the whole model at a glance.

Every function returns a matplotlib `Figure` (made without pyplot, drawn with Agg), so tests can
read its axes, tick labels and images, and nothing global is left behind. Masked cells (the future,
in causal models) are drawn hatched, never as zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from attnviz.errors import InputError, param
from attnviz.plots._common import (
    ANNOTATE_MAX,
    CELL,
    DEFAULT_CMAP,
    DEFAULT_DPI,
    KEY_LABEL,
    LABEL_EVERY_PANEL,
    MAX_GRID,
    MAX_SIDE,
    OVERVIEW_DPI,
    QUERY_LABEL,
    SUBTITLE_COLOUR,
    WEIGHT_LABEL,
    colorbar,
    colormap,
    draw_matrix,
    label_inches,
    mask_patch,
    new_figure,
    parse_scale,
    quoted,
    readable_scale,
    resolve_scale,
    resolve_vmax,
    set_ticks,
    sink_key,
    text_inches,
    with_text,
)
from attnviz.plots.fonts import with_fonts
from attnviz.selection import format_indices

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from attnviz.attention import Attention
    from attnviz.heads.search import HeadSearch

OVERVIEW_PANEL = 1.25  # inches: a panel of the whole-model overview, unless the text needs more
OVERVIEW_MAX = 50.0  # inches: an overview that needs more (a long text, many heads) is refused
OVERVIEW_ASPECT = 1.5  # width / height the overview's blocks of layers are wrapped towards
# --weighting norm draws ||alpha f(x)|| (Kobayashi et al. 2020): a vector norm, not a probability
NORM_LABEL = "norm-weighted attention ‖α·f(x)‖ (not a probability)"
OVERVIEW_NOTE = "each panel: rows = query tokens (attending from), columns = key tokens (attending to)"


# -- one head and a few ----------------------------------------------------------------------
@with_fonts
def heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    vmax: str | float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
    text: str | None = None,
    sink: tuple[int, str] | None = None,
    label: str = WEIGHT_LABEL,
) -> Figure:
    """One head: queries as rows ("attending from"), keys as columns ("attending to").

    `text` (shortened, quoted) is written above the title, so a saved picture says what was read.
    """
    cols = rows if cols is None else cols
    matrix = np.asarray(matrix)  # [q, k]
    n_q, n_k = matrix.shape
    margin = label_inches(list(rows) + list(cols))
    extra = 0.3 if text else 0.0
    if size is None:
        size = (
            max(
                min(MAX_SIDE, max(5.0, n_k * CELL + margin + 1.6)),
                text_inches(title),
                text_inches(quoted(text), 9),
            ),
            min(MAX_SIDE, max(4.0, n_q * CELL + margin + 0.7 + extra)),
        )
    side = min(size[0] - margin - 1.6, size[1] - margin - 0.7 - extra)
    axis_inches = (max(1.0, side), max(1.0, side))
    fig = new_figure(size, dpi)
    ax = fig.add_subplot()
    top = resolve_vmax(None, [matrix], visible)
    cs = resolve_scale(vmax, [matrix], visible, *(sink or (None,)))
    image = draw_matrix(
        ax,
        matrix,
        visible=visible,
        vmax=cs.vmax,
        scale=cs,
        cmap=colormap(cmap),
        annotate=annotate and max(n_q, n_k) <= ANNOTATE_MAX,
        highlight=highlight,
        cell_inches=axis_inches[0] / max(n_q, n_k),
    )
    set_ticks(ax, rows, cols, axis_inches, highlight)
    ax.set_ylabel(QUERY_LABEL)
    ax.set_xlabel(KEY_LABEL)
    if title:
        ax.set_title(title, parse_math=False)
    if text:
        fig.suptitle(quoted(text), fontsize=9, color=SUBTITLE_COLOUR, parse_math=False)
    colorbar(fig, image, ax, cs.vmax, top, cs.label(label))
    if visible is not None and not visible.all():
        fig.legend(handles=[mask_patch()], loc="outside lower right", fontsize=8)
    return fig


@with_fonts
def heatmap_panels(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    ncols: int | None = None,
    vmax: str | float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
    sink: tuple[int, str] | None = None,
    label: str = WEIGHT_LABEL,
) -> Figure:
    """A few heads side by side (or a layer's heads in a grid), one shared colour scale."""
    cols = rows if cols is None else cols
    n = len(panels)
    if ncols is None:
        ncols = n if n <= 4 else (4 if n <= 16 else 6)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    n_q, n_k = np.asarray(panels[0]).shape
    margin = label_inches(list(rows) + list(cols))
    head_room = 0.9 + 0.25 * title.count("\n")
    if size is None:
        panel = min(max(2.2, max(n_q, n_k) * 0.22), 4.5)
        width = max(ncols * (panel + margin) + 1.2, text_inches(title))
        height = nrows * (panel + margin) + head_room
        shrink = min(1.0, MAX_GRID / width, MAX_GRID / height)
        size = (width * shrink, height * shrink)
    panel = max(0.8, min(size[0] / ncols - margin, (size[1] - head_room) / nrows - margin))
    fig = new_figure(size, dpi)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    top = resolve_vmax(None, panels, visible)
    cs = resolve_scale(vmax, panels, visible, *(sink or (None,)))
    cm = colormap(cmap)
    every = max(n_q, n_k) <= LABEL_EVERY_PANEL
    for ax in axes[n:]:
        ax.set_axis_off()
    for k, ax in enumerate(axes[:n]):
        image = draw_matrix(
            ax,
            panels[k],
            visible=visible,
            vmax=cs.vmax,
            scale=cs,
            cmap=cm,
            annotate=annotate and max(n_q, n_k) <= annotate_limit(1, n),
            highlight=highlight,
            cell_inches=panel / max(n_q, n_k),
        )
        left, bottom = k % ncols == 0, k + ncols >= n
        set_ticks(ax, rows, cols, (panel, panel), highlight, (every or left, every or bottom))
        ax.set_title(titles[k], fontsize=10)
        if left:
            ax.set_ylabel(QUERY_LABEL, fontsize=8)
        if bottom:
            ax.set_xlabel(KEY_LABEL, fontsize=8)
    if title:
        fig.suptitle(title, parse_math=False)
    colorbar(fig, image, axes[:n].tolist(), cs.vmax, top, cs.label(label))
    if visible is not None and not visible.all():
        fig.legend(handles=[mask_patch()], loc="outside lower right", fontsize=8)
    return fig


# -- the whole model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OverviewLayout:
    """Where the panels of a layers x heads overview go: blocks of layers wrapped side by side, so a
    deep model is not drawn as a thin strip."""

    n_layers: int
    n_heads: int
    blocks: int  # groups of layers drawn side by side
    panel: float  # inches
    size: tuple[float, float]  # inches
    left: float = 0.35
    right: float = 1.2  # room for the colour bar
    top: float = 1.05  # the title, the text and the note
    bottom: float = 0.5  # room for the mask legend
    gap_x: float = 0.08
    gap_y: float = 0.24  # room for the panel titles
    block_gap: float = 0.4

    @property
    def rows(self) -> int:
        return math.ceil(self.n_layers / self.blocks)

    def grid_inches(self, panel: float) -> tuple[float, float]:
        width = self.blocks * self.n_heads * (panel + self.gap_x) + (self.blocks - 1) * self.block_gap
        return width, self.rows * (panel + self.gap_y)

    def origin(self, li: int, hi: int) -> tuple[float, float]:
        """The lower-left corner (inches from the figure's lower left) of layer li, head hi."""
        block, row = divmod(li, self.rows)
        x = self.left + (block * self.n_heads + hi) * (self.panel + self.gap_x) + block * self.block_gap
        y = self.size[1] - self.top - (row + 1) * (self.panel + self.gap_y) + self.gap_y
        return x, y


def overview_layout(
    n_layers: int,
    n_heads: int,
    n_tokens: int,
    dpi: float,
    size: tuple[float, float] | None = None,
    min_width: float = 0.0,
) -> OverviewLayout:
    """Choose blocks and panel size: at least one pixel per token, wrapped towards a 3:2 page.

    InputError when a long text would need a picture over OVERVIEW_MAX inches: draw one layer instead.
    """
    base = OverviewLayout(n_layers, n_heads, 1, OVERVIEW_PANEL, (1.0, 1.0))
    panel = max(OVERVIEW_PANEL, n_tokens / dpi)

    def aspect(blocks: int) -> float:
        trial = OverviewLayout(n_layers, n_heads, blocks, panel, (1.0, 1.0))
        w, h = trial.grid_inches(panel)
        return abs(math.log((w + base.left + base.right) / (h + base.top + base.bottom) / OVERVIEW_ASPECT))

    blocks = min(range(1, n_layers + 1), key=aspect)
    trial = OverviewLayout(n_layers, n_heads, blocks, panel, (1.0, 1.0))
    if size is None:
        w, h = trial.grid_inches(panel)
        size = (w + trial.left + trial.right, h + trial.top + trial.bottom)
        if max(size) > OVERVIEW_MAX:
            raise InputError(
                f"the whole-model overview of {n_tokens} tokens ({n_layers} layers x {n_heads} heads) "
                f"would be {size[0] * dpi:.0f}x{size[1] * dpi:.0f} px; "
                f"draw one layer with {param('layer')} N "
                f"(or pick fewer {param('layers')}/{param('heads')}, or a shorter text)"
            )
        extra = max(0.0, min_width - size[0])  # a long title: widen, and centre the grid under it
        size = (size[0] + extra, size[1])
        return OverviewLayout(n_layers, n_heads, blocks, panel, size, left=trial.left + extra / 2)
    w1, h1 = trial.grid_inches(1.0)
    w0, h0 = trial.grid_inches(0.0)
    room = min(
        (size[0] - trial.left - trial.right - w0) / (w1 - w0),
        (size[1] - trial.top - trial.bottom - h0) / (h1 - h0),
    )
    return OverviewLayout(n_layers, n_heads, blocks, max(0.1, room), size)


@with_fonts
def overview(
    attn: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    vmax: str | float | None = None,
    cmap: str = DEFAULT_CMAP,
    dpi: float = OVERVIEW_DPI,
    size: tuple[float, float] | None = None,
    sink: tuple[int, str] | None = None,
    label: str = WEIGHT_LABEL,
) -> Figure:
    """The whole model at a glance: a layers x heads grid of small heatmaps, each titled "L1 H5".

    Small enough to spot diagonal, previous-token and [CLS]/[SEP]-column heads at once; no tick
    labels (rows are queries, columns keys, as in the single-head picture). Panels grow so every
    token gets a pixel; deep models wrap their layers into side-by-side blocks.
    """
    attn = np.asarray(attn)  # [layers, heads, q, k]
    nl, nh, n_q, n_k = attn.shape
    lay = overview_layout(nl, nh, max(n_q, n_k), dpi, size, text_inches(title))
    width, height = lay.size
    fig = new_figure(lay.size, dpi, constrained=False)
    flat = [attn[li, hi] for li in range(nl) for hi in range(nh)]
    top = resolve_vmax(None, flat, visible)
    if parse_scale(vmax, "vmax") == "auto":  # many small panels: linear, or log where linear shows nothing
        cs = readable_scale(flat, visible, *(sink or (None,)))
    else:
        cs = resolve_scale(vmax, flat, visible, *(sink or (None,)))
    cm = colormap(cmap)
    font = max(7.0, min(9.0, lay.panel * 72 * 0.12))
    for li, layer in enumerate(layers):
        for hi, head in enumerate(heads):
            x, y = lay.origin(li, hi)
            ax = fig.add_axes((x / width, y / height, lay.panel / width, lay.panel / height))
            image = draw_matrix(ax, attn[li, hi], visible=visible, vmax=cs.vmax, cmap=cm, scale=cs)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            ax.set_title(f"L{layer} H{head}", fontsize=font, pad=2)
    if title:
        fig.suptitle(title, y=1 - 0.12 / height, va="top", fontsize=12, parse_math=False)
    fig.text(0.5, 1 - 0.78 / height, OVERVIEW_NOTE, ha="center", va="top", fontsize=8, color=SUBTITLE_COLOUR)
    grid_h = lay.grid_inches(lay.panel)[1] - lay.gap_y
    bar_h = min(grid_h, 6.0)
    bar_y = height - lay.top - grid_h / 2 - bar_h / 2  # centred on the grid
    cax = fig.add_axes(((width - lay.right + 0.2) / width, bar_y / height, 0.18 / width, bar_h / height))
    bar = fig.colorbar(image, cax=cax, extend="max" if top > cs.vmax * 1.0001 else "neither")
    bar.set_label(cs.label(label))
    if visible is not None and not visible.all():
        fig.legend(
            handles=[mask_patch()], loc="lower right", bbox_to_anchor=(1, 0), fontsize=7, frameon=False
        )
    return fig


def annotate_limit(n_layers: int, n_heads: int, average: bool = False) -> int:
    """How many tokens a view can write numbers for: 0 in the whole-model overview."""
    if n_layers == 1 and (average or n_heads == 1):
        return ANNOTATE_MAX
    if n_layers > 1 and n_heads > 1 and not average:
        return 0
    return ANNOTATE_MAX // 2


# -- from an Attention ------------------------------------------------------------------------
def attention_figure(
    att: Attention,
    *,
    average: bool = False,
    vmax: str | float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    dpi: float | None = None,
    size: tuple[float, float] | None = None,
) -> Figure:
    """The right picture for what was extracted: one head, a few heads, a layer, or the whole model.

    The selection is `att.layers` x `att.heads`; `average` draws the mean over those heads per layer.
    The text (shortened) is in every title.
    """
    labels = att.labels
    level = " (words)" if att.level == "word" else ""
    sink = sink_key([att.attn], labels, att.special, att.causal)
    found = (sink, f"'{labels[sink]}'") if sink is not None else None
    style = {"visible": att.visible(), "vmax": vmax, "cmap": cmap, "size": size, "sink": found}
    style["label"] = NORM_LABEL if att.weighting == "norm" else WEIGHT_LABEL
    many = {"annotate": annotate, "highlight": highlight, "dpi": dpi or DEFAULT_DPI, **style}
    layers, heads = list(att.layers), list(att.heads)
    if average:
        means = att.attn.mean(axis=1)  # [layers, q, k]
        what = f"mean of {len(heads)} heads" if len(heads) > 1 else f"head {heads[0]}"
        if len(layers) == 1:
            title = f"{att.model} · layer {layers[0]} · {what}{level}"
            return heatmap(means[0], labels, title=title, text=att.text, **many)
        titles = [f"layer {layer}" for layer in layers]
        title = with_text(f"{att.model} · {what} per layer{level}", att.text)
        return heatmap_panels(list(means), titles, labels, title=title, **many)
    if len(layers) == 1 and len(heads) == 1:
        title = f"{att.model} · layer {layers[0]} · head {heads[0]}{level}"
        return heatmap(att.attn[0, 0], labels, title=title, text=att.text, **many)
    if len(layers) == 1:
        titles = [f"head {h}" for h in heads]
        where = "pooled layers" if att.pooled_layers is not None else f"layer {layers[0]}"
        title = with_text(f"{att.model} · {where} · heads {format_indices(heads)}{level}", att.text)
        return heatmap_panels(list(att.attn[0]), titles, labels, title=title, **many)
    if len(heads) == 1:
        titles = [f"layer {layer}" for layer in layers]
        who = "pooled heads" if att.pooled_heads is not None else f"head {heads[0]}"
        title = with_text(f"{att.model} · {who} in every layer{level}", att.text)
        return heatmap_panels(list(att.attn[:, 0]), titles, labels, title=title, **many)
    what = f"{len(layers)} layers x {len(heads)} heads · {att.n_tokens} {att.level}s"
    title = with_text(f"{att.model} · {what}", att.text)
    return overview(att.attn, layers, heads, title=title, dpi=dpi or OVERVIEW_DPI, **style)


def cross_figure(
    att: Attention,
    layer: int,
    head: int,
    *,
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    dpi: float | None = None,
    size: tuple[float, float] | None = None,
) -> Figure:
    """One head's cross-attention of an encoder-decoder model: decoder tokens (rows) read encoder tokens."""
    if att.cross is None or att.decoder is None:
        raise InputError(f"{att.model} has no cross-attention: only encoder-decoder models do")
    matrix = att.cross[att.layer_pos(layer), att.head_pos(head)]  # [decoder q, encoder k]
    return heatmap(
        matrix,
        att.decoder.labels,
        att.labels,
        title=f"{att.model} · cross-attention · layer {layer} · head {head}",
        vmax=vmax,
        cmap=cmap,
        annotate=annotate,
        dpi=dpi or DEFAULT_DPI,
        size=size,
        text=att.text,
    )


def search_figure(result: HeadSearch, att: Attention) -> Figure:
    """`find_heads`' best head on the first text it used, A's and B's tokens outlined.

    `att`: that text's attention, as ranked (`texts[result.used[0]]`, same layers, heads, options).
    """
    best = result.best
    ua, ub = result.units[0]
    notes = "".join(f" · {n}" for n in att.notes)
    return heatmap(
        att.head(best.layer, best.head),
        att.labels,
        visible=att.visible(),
        highlight=sorted({*ua.tokens, *ub.tokens}),
        text=att.text,
        title=f"{att.model} · layer {best.layer} · head {best.head}: "
        f"{ua.label} ↔ {ub.label} (score {best.score:.3f}){notes}",
    )
