"""Figures from arrays and labels: attention heatmaps, head grids, row entropy. Never loads a model.

Every function returns a matplotlib `Figure` (made without pyplot, drawn with Agg), so tests can
read its axes, tick labels and images, and nothing global is left behind. Masked cells (the future,
in causal models) are drawn hatched, never as zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

    from attnviz.extraction import Attention
    from attnviz.patterns import RowEntropy

DEFAULT_CMAP = "viridis"
DEFAULT_DPI = 150
OVERVIEW_DPI = 100
ANNOTATE_MAX = 30  # tokens: beyond this, numbers written in cells cannot be read
MAX_SIDE = 16.0  # inches: a figure grows with the text up to this, then labels are thinned
MAX_GRID = 30.0  # inches: the bound for grids of many panels
CELL = 0.3  # inches per token while the figure may still grow
FONT = 9.0
MIN_FONT = 6.0
LABEL_EVERY_PANEL = 24  # tokens: longer texts get labels on the outer panels of a grid only
LABEL_CHARS = 24  # longer tokens are cut with an ellipsis on the axes
MASK_HATCH = "////"
MASK_EDGE = "#b0b0b0"
MASKED_LABEL = "masked: future token (causal model)"
HIGHLIGHT = "#ff2d2d"
QUERY_LABEL = "query token (attending from)"
KEY_LABEL = "key token (attending to)"
WEIGHT_LABEL = "attention weight"


# -- small helpers ----------------------------------------------------------------------------
def new_figure(size: tuple[float, float], dpi: float, constrained: bool = True) -> Figure:
    """A Figure on an Agg canvas, outside pyplot (no global state, garbage-collected)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def colormap(name: str) -> Colormap:
    """A copy of a named colour map with masked cells transparent; InputError for unknown names."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise InputError(
            f"unknown colour map '{name}'; try viridis, magma, cividis, Blues or Greys"
        ) from None
    return cmap.with_extremes(bad=(0, 0, 0, 0))


def parse_vmax(value: str | float | None) -> float | None:
    """'auto' (or None) -> None (the largest weight shown); otherwise a positive number."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        out = float(value)
    except ValueError:
        raise InputError(f"bad --vmax '{value}': use a number like 1.0, or auto") from None
    if not math.isfinite(out) or out <= 0:
        raise InputError(f"bad --vmax '{value}': it must be a number above 0")
    return out


def parse_size(value: str | None) -> tuple[float, float] | None:
    """'8x6' or '8,6' (inches) or '8' (square) -> (width, height); None lets the figure size itself."""
    if value is None or not value.strip():
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or not all(math.isfinite(n) and 0.5 <= n <= 100 for n in nums):
        raise InputError(f"bad --size '{value}': use WIDTHxHEIGHT in inches, e.g. 8x6 (0.5-100 each)")
    return nums[0], nums[1]


def resolve_vmax(vmax: float | None, arrays: Sequence[np.ndarray], visible: np.ndarray | None) -> float:
    """The top of the colour scale: as given, else the largest visible value shown (so diffuse heads
    are not washed out)."""
    if vmax is not None:
        return float(vmax)
    top = 0.0
    for a in arrays:
        values = a[visible] if visible is not None else a
        if values.size:
            top = max(top, float(np.nanmax(values)))
    return top if top > 0 else 1.0


def _cut(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def label_step(n: int, axis_inches: float, font: float = FONT) -> tuple[int, float]:
    """Show every `step`-th label at `fontsize` so labels of n cells in `axis_inches` never overlap."""
    if n <= 0:
        return 1, font
    room = axis_inches / n * 72 * 0.85  # points per cell a label may use
    if room >= font:
        return 1, font
    if room >= MIN_FONT:
        return 1, room
    step = math.ceil(MIN_FONT / room)
    return step, MIN_FONT


def _label_inches(labels: Sequence[str], font: float = FONT) -> float:
    longest = max((len(_cut(x)) for x in labels), default=1)
    return longest * font * 0.6 / 72 + 0.45


def _set_ticks(
    ax: Axes,
    rows: Sequence[str],
    cols: Sequence[str],
    axis_inches: tuple[float, float],
    highlight: Sequence[int] = (),
    show: tuple[bool, bool] = (True, True),
) -> None:
    """Token labels on both axes, thinned when there are too many to read; highlighted ones kept.

    `show` (rows, columns) False keeps the ticks but writes no labels (inner panels of a grid).
    """
    pairs = ((ax.yaxis, rows, axis_inches[1], show[0]), (ax.xaxis, cols, axis_inches[0], show[1]))
    for axis, labels, inches, shown in pairs:
        step, font = label_step(len(labels), inches)
        ticks = sorted(set(range(0, len(labels), step)) | {h for h in highlight if 0 <= h < len(labels)})
        axis.set_ticks(ticks)
        if not shown:
            axis.set_ticklabels([])
            continue
        axis.set_ticklabels([_cut(labels[i]) for i in ticks], fontsize=font, parse_math=False)
        for tick, label in zip(ticks, axis.get_ticklabels(), strict=True):
            if tick in highlight:
                label.set_color(HIGHLIGHT)
                label.set_fontweight("bold")
    ax.tick_params(axis="x", labelrotation=90, length=2)
    ax.tick_params(axis="y", length=2)


def _mask_patch(edge: str = MASK_EDGE) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor="white", edgecolor=edge, hatch=MASK_HATCH, label=MASKED_LABEL)


def draw_matrix(
    ax: Axes,
    matrix: np.ndarray,
    *,
    visible: np.ndarray | None,
    vmax: float,
    cmap: Colormap,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    cell_inches: float = CELL,
) -> AxesImage:
    """One [q, k] matrix on `ax`: masked cells hatched (not zero), optional numbers and outlines."""
    from matplotlib.patches import Rectangle

    matrix = np.asarray(matrix, dtype=np.float32)  # [q, k]
    n_q, n_k = matrix.shape
    masked = np.ma.masked_array(matrix, mask=~visible if visible is not None else False)
    if visible is not None and not visible.all():
        ax.add_patch(
            Rectangle(
                (-0.5, -0.5),
                n_k,
                n_q,
                facecolor="white",
                edgecolor=MASK_EDGE,
                hatch=MASK_HATCH,
                linewidth=0,
                zorder=0.5,
            )
        )
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=vmax, aspect="equal", zorder=1)
    ax.set_xlim(-0.5, n_k - 0.5)
    ax.set_ylim(n_q - 0.5, -0.5)
    if annotate:
        font = max(4.0, min(8.0, cell_inches * 72 * 0.32))
        for i in range(n_q):
            for j in range(n_k):
                if masked.mask is not np.ma.nomask and masked.mask[i, j]:
                    continue
                r, g, b, _ = cmap(min(1.0, float(matrix[i, j]) / vmax))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if dark else "black",
                    zorder=2,
                )
    for h in highlight:
        style = {"fill": False, "edgecolor": HIGHLIGHT, "linewidth": 1.4, "zorder": 3}
        if 0 <= h < n_q:
            ax.add_patch(Rectangle((-0.5, h - 0.5), n_k, 1, **style))
        if 0 <= h < n_k:
            ax.add_patch(Rectangle((h - 0.5, -0.5), 1, n_q, **style))
    return image


def _colorbar(fig: Figure, image: AxesImage, ax: Any, vmax: float, top: float, label: str) -> Any:
    bar = fig.colorbar(image, ax=ax, extend="max" if top > vmax * 1.0001 else "neither", shrink=0.9)
    bar.set_label(label)
    return bar


# -- attention heatmaps ------------------------------------------------------------------------
def heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
) -> Figure:
    """One head: queries as rows ("attending from"), keys as columns ("attending to")."""
    cols = rows if cols is None else cols
    matrix = np.asarray(matrix)  # [q, k]
    n_q, n_k = matrix.shape
    margin = _label_inches(list(rows) + list(cols))
    if size is None:
        size = (
            min(MAX_SIDE, max(5.0, n_k * CELL + margin + 1.6)),
            min(MAX_SIDE, max(4.0, n_q * CELL + margin + 0.7)),
        )
    side = min(size[0] - margin - 1.6, size[1] - margin - 0.7)
    axis_inches = (max(1.0, side), max(1.0, side))
    fig = new_figure(size, dpi)
    ax = fig.add_subplot()
    top = resolve_vmax(None, [matrix], visible)
    scale = resolve_vmax(vmax, [matrix], visible)
    cm = colormap(cmap)
    image = draw_matrix(
        ax,
        matrix,
        visible=visible,
        vmax=scale,
        cmap=cm,
        annotate=annotate and max(n_q, n_k) <= ANNOTATE_MAX,
        highlight=highlight,
        cell_inches=axis_inches[0] / max(n_q, n_k),
    )
    _set_ticks(ax, rows, cols, axis_inches, highlight)
    ax.set_ylabel(QUERY_LABEL)
    ax.set_xlabel(KEY_LABEL)
    if title:
        ax.set_title(title)
    _colorbar(fig, image, ax, scale, top, WEIGHT_LABEL)
    if visible is not None and not visible.all():
        fig.legend(handles=[_mask_patch()], loc="outside lower right", fontsize=8)
    return fig


def heatmap_panels(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    ncols: int | None = None,
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
) -> Figure:
    """A few heads side by side (or a layer's heads in a grid), one shared colour scale."""
    cols = rows if cols is None else cols
    n = len(panels)
    if ncols is None:
        ncols = n if n <= 4 else (4 if n <= 16 else 6)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    n_q, n_k = np.asarray(panels[0]).shape
    margin = _label_inches(list(rows) + list(cols))
    if size is None:
        panel = min(max(2.2, max(n_q, n_k) * 0.22), 4.5)
        width = ncols * (panel + margin) + 1.2
        height = nrows * (panel + margin) + 0.9
        shrink = min(1.0, MAX_GRID / width, MAX_GRID / height)
        size = (width * shrink, height * shrink)
    panel = max(0.8, min(size[0] / ncols - margin, (size[1] - 0.9) / nrows - margin))
    fig = new_figure(size, dpi)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    top = resolve_vmax(None, panels, visible)
    scale = resolve_vmax(vmax, panels, visible)
    cm = colormap(cmap)
    image = None
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_axis_off()
            continue
        image = draw_matrix(
            ax,
            panels[k],
            visible=visible,
            vmax=scale,
            cmap=cm,
            annotate=annotate and max(n_q, n_k) <= annotate_limit(1, n),
            highlight=highlight,
            cell_inches=panel / max(n_q, n_k),
        )
        left, bottom = k % ncols == 0, k + ncols >= n
        every = max(n_q, n_k) <= LABEL_EVERY_PANEL
        _set_ticks(ax, rows, cols, (panel, panel), highlight, (every or left, every or bottom))
        ax.set_title(titles[k], fontsize=10)
        if left:
            ax.set_ylabel(QUERY_LABEL, fontsize=8)
        if bottom:
            ax.set_xlabel(KEY_LABEL, fontsize=8)
    if title:
        fig.suptitle(title)
    assert image is not None
    _colorbar(fig, image, axes[:n].tolist(), scale, top, WEIGHT_LABEL)
    if visible is not None and not visible.all():
        fig.legend(handles=[_mask_patch()], loc="outside lower right", fontsize=8)
    return fig


def overview(
    attn: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    dpi: float = OVERVIEW_DPI,
    size: tuple[float, float] | None = None,
) -> Figure:
    """The whole model at a glance: a layers x heads grid of small heatmaps, each titled "L1 H5".

    Small enough to spot diagonal, previous-token and [CLS]/[SEP]-column heads at once; no tick
    labels (rows are queries, columns keys, as in the single-head picture).
    """
    attn = np.asarray(attn)  # [layers, heads, q, k]
    nl, nh = attn.shape[:2]
    left, right, top_m, bottom, gap_x, gap_y = 0.35, 1.1, 0.75, 0.45, 0.08, 0.22
    if size is None:
        panel = min(1.25, (MAX_GRID - left - right) / nh - gap_x, (MAX_GRID - top_m - bottom) / nl - gap_y)
        panel = max(0.45, panel)
        size = (left + right + nh * (panel + gap_x), top_m + bottom + nl * (panel + gap_y))
    width, height = size
    panel = max(0.1, min((width - left - right) / nh - gap_x, (height - top_m - bottom) / nl - gap_y))
    fig = new_figure(size, dpi, constrained=False)
    top = resolve_vmax(None, [attn.reshape(-1, *attn.shape[2:])[i] for i in range(nl * nh)], visible)
    scale = resolve_vmax(vmax, [attn.reshape(-1, *attn.shape[2:])[i] for i in range(nl * nh)], visible)
    cm = colormap(cmap)
    font = max(4.0, min(8.0, panel * 72 * 0.14))
    image = None
    for li, layer in enumerate(layers):
        for hi, head in enumerate(heads):
            x = left + hi * (panel + gap_x)
            y = height - top_m - (li + 1) * (panel + gap_y) + gap_y
            ax = fig.add_axes((x / width, y / height, panel / width, panel / height))
            image = draw_matrix(ax, attn[li, hi], visible=visible, vmax=scale, cmap=cm)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            ax.set_title(f"L{layer} H{head}", fontsize=font, pad=2)
    if title:
        fig.suptitle(title, y=1 - 0.15 / height, va="top")
    fig.text(
        0.5,
        1 - 0.45 / height,
        "each panel: rows = query tokens (attending from), columns = key tokens (attending to)",
        ha="center",
        va="top",
        fontsize=8,
        color="#444444",
    )
    low = height - top_m - nl * (panel + gap_y) + gap_y  # bottom edge of the last row
    low = max(low, height - top_m - 6.0)  # a tall grid gets a colour bar of readable length
    cax = fig.add_axes(
        ((width - right + 0.25) / width, low / height, 0.18 / width, (height - top_m - low) / height)
    )
    assert image is not None
    bar = fig.colorbar(image, cax=cax, extend="max" if top > scale * 1.0001 else "neither")
    bar.set_label(WEIGHT_LABEL)
    if visible is not None and not visible.all():
        fig.legend(handles=[_mask_patch()], loc="lower right", fontsize=7, frameon=False)
    return fig


def annotate_limit(n_layers: int, n_heads: int, average: bool = False) -> int:
    """How many tokens a view can write numbers for: 0 in the whole-model overview."""
    if n_layers == 1 and (average or n_heads == 1):
        return ANNOTATE_MAX
    if n_layers > 1 and n_heads > 1 and not average:
        return 0
    return ANNOTATE_MAX // 2


def attention_figure(
    att: Attention,
    *,
    average: bool = False,
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    dpi: float | None = None,
    size: tuple[float, float] | None = None,
) -> Figure:
    """The right picture for what was extracted: one head, a few heads, a layer, or the whole model.

    The selection is `att.layers` x `att.heads`; `average` draws the mean over those heads per layer.
    """
    labels = att.labels
    visible = att.visible()
    level = " (words)" if att.level == "word" else ""
    style = {"visible": visible, "vmax": vmax, "cmap": cmap, "size": size}
    many = {"annotate": annotate, "highlight": highlight, "dpi": dpi or DEFAULT_DPI, **style}
    layers, heads = list(att.layers), list(att.heads)
    head_list = _ranges(heads)
    if average:
        means = att.attn.mean(axis=1)  # [layers, q, k]
        what = f"mean of {len(heads)} heads" if len(heads) > 1 else f"head {heads[0]}"
        if len(layers) == 1:
            title = f"{att.model} · layer {layers[0]} · {what}{level}"
            return heatmap(means[0], labels, title=title, **many)
        titles = [f"layer {layer}" for layer in layers]
        return heatmap_panels(
            list(means), titles, labels, title=f"{att.model} · {what} per layer{level}", **many
        )
    if len(layers) == 1 and len(heads) == 1:
        title = f"{att.model} · layer {layers[0]} · head {heads[0]}{level}"
        return heatmap(att.attn[0, 0], labels, title=title, **many)
    if len(layers) == 1:
        titles = [f"head {h}" for h in heads]
        title = f"{att.model} · layer {layers[0]} · heads {head_list}{level}"
        return heatmap_panels(list(att.attn[0]), titles, labels, title=title, **many)
    if len(heads) == 1:
        titles = [f"layer {layer}" for layer in layers]
        title = f"{att.model} · head {heads[0]} in every layer{level}"
        return heatmap_panels(list(att.attn[:, 0]), titles, labels, title=title, **many)
    title = f"{att.model} · {len(layers)} layers x {len(heads)} heads · {att.n_tokens} {att.level}s{level}"
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
    from attnviz.errors import InputError

    if att.cross is None or att.decoder is None:
        raise InputError(f"{att.model} has no cross-attention: only encoder-decoder models do")
    matrix = att.cross[att.layer_pos(layer), att.head_pos(head)]  # [decoder q, encoder k]
    title = f"{att.model} · cross-attention · layer {layer} · head {head}"
    return heatmap(
        matrix,
        att.decoder.labels,
        att.labels,
        title=title,
        vmax=vmax,
        cmap=cmap,
        annotate=annotate,
        dpi=dpi or DEFAULT_DPI,
        size=size,
    )


def _ranges(values: Sequence[int]) -> str:
    if len(values) > 2 and list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


# -- row entropy -------------------------------------------------------------------------------
ENTROPY_LABEL = "row entropy (bits)"
BOUND_LABEL = "uniform attention: log2(visible keys)"


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
) -> Figure:
    """Each query token's row entropy in bits, with the uniform-attention bound for reference.

    Low bars: the token attends to one or a few keys; bars at the line: it spreads evenly.
    """
    entropy = np.asarray(entropy, dtype=float)  # [q]
    bound = np.asarray(bound, dtype=float)  # [q]
    n = len(entropy)
    margin = _label_inches(labels)
    if ax is None:
        if size is None:
            size = (min(MAX_SIDE * 1.25, max(6.0, n * 0.28 + 1.5)), 3.2 + margin)
        fig = new_figure(size, dpi)
        ax = fig.add_subplot()
        width = size[0] - 1.2
    else:
        fig = ax.figure
        width = ax.get_position().width * fig.get_figwidth()
    x = np.arange(n)
    ax.bar(x, entropy, width=0.8, color="#3b6ea8", label="row entropy", zorder=2)
    ax.step(
        np.concatenate([[-0.5], x + 0.5]),
        np.concatenate([[bound[0] if n else 0.0], bound]),
        where="pre",
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=BOUND_LABEL,
        zorder=3,
    )
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, max(1.0, float(bound.max()) if n else 1.0) * 1.12)
    step, font = label_step(n, width)
    ticks = sorted(set(range(0, n, step)) | {h for h in highlight if 0 <= h < n})
    ax.set_xticks(ticks)
    ax.set_xticklabels([_cut(labels[i]) for i in ticks], fontsize=font, rotation=90, parse_math=False)
    for tick, label in zip(ticks, ax.get_xticklabels(), strict=True):
        if tick in highlight:
            label.set_color(HIGHLIGHT)
            label.set_fontweight("bold")
    ax.set_ylabel(ENTROPY_LABEL)
    ax.set_xlabel(QUERY_LABEL)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.95)
    if title:
        ax.set_title(title)
    return fig


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
        size = (max(5.0, nh * cell + 2.6), max(3.0, nl * cell + 1.6))
    fig = new_figure(size, dpi)
    ax = fig.add_subplot()
    cm = colormap(cmap)
    top = max(bound, float(values.max()) if values.size else 0.0, 1e-6)
    image = ax.imshow(values, cmap=cm, vmin=0.0, vmax=top, aspect="auto")
    ax.set_xticks(range(nh), [f"H{h}" for h in heads], fontsize=8)
    ax.set_yticks(range(nl), [f"L{layer}" for layer in layers], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    cell_pts = min(size[0] / max(nh, 1), size[1] / max(nl, 1)) * 72
    if annotate and cell_pts >= 14:
        for i in range(nl):
            for j in range(nh):
                r, g, b, _ = cm(values[i, j] / top)
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=min(8.0, cell_pts * 0.3),
                    color="white" if dark else "black",
                )
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label("mean row entropy (bits); the top is uniform attention")
    if title:
        ax.set_title(title)
    return fig


# -- the toy ---------------------------------------------------------------------------------
def toy_figure(
    weights: np.ndarray,
    entropy: np.ndarray,
    bound: np.ndarray,
    labels: Sequence[str],
    *,
    visible: np.ndarray | None = None,
    title: str = "",
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
    annotate: bool = False,
    dpi: float = DEFAULT_DPI,
    size: tuple[float, float] | None = None,
) -> Figure:
    """Seed 000's two plots for every head: the attention heatmaps side by side (shared scale), and
    the row entropy of each head against the uniform bound, so heads that specialise stand out."""
    weights = np.asarray(weights)  # [heads, q, k]
    entropy = np.asarray(entropy)  # [heads, q]
    nh, n, _ = weights.shape
    ncols = min(nh, 4)
    nrows = math.ceil(nh / ncols)
    margin = _label_inches(labels)
    if size is None:
        panel = min(max(2.4, n * 0.25), 5.0)
        width = min(MAX_GRID, ncols * (panel + margin) + 1.4)
        size = (max(width, 7.0), min(MAX_GRID, nrows * (panel + margin) + 0.8 + 3.4))
    panel = max(0.8, size[0] / ncols - margin - 0.3)
    fig = new_figure(size, dpi)
    top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[max(1.0, size[1] - 3.4), 3.4])
    axes = np.atleast_1d(top_fig.subplots(nrows, ncols, squeeze=False)).ravel()
    scale = resolve_vmax(vmax, list(weights), visible)
    top = resolve_vmax(None, list(weights), visible)
    cm = colormap(cmap)
    image = None
    for h, ax in enumerate(axes):
        if h >= nh:
            ax.set_axis_off()
            continue
        image = draw_matrix(
            ax,
            weights[h],
            visible=visible,
            vmax=scale,
            cmap=cm,
            annotate=annotate and n <= ANNOTATE_MAX // 2,
            cell_inches=panel / n,
        )
        _set_ticks(ax, labels, labels, (panel, panel))
        ax.set_title(f"head {h}", fontsize=10)
        if h % ncols == 0:
            ax.set_ylabel(QUERY_LABEL, fontsize=8)
        ax.set_xlabel(KEY_LABEL, fontsize=8)
    assert image is not None
    _colorbar(top_fig, image, axes[:nh].tolist(), scale, top, WEIGHT_LABEL)
    if visible is not None and not visible.all():
        top_fig.legend(handles=[_mask_patch()], loc="outside lower right", fontsize=8)
    if title:
        top_fig.suptitle(title)
    ax = bottom_fig.add_subplot()
    x = np.arange(n)
    width = 0.8 / nh
    colors = [cm(0.15 + 0.7 * h / max(1, nh - 1)) if nh > 1 else "#3b6ea8" for h in range(nh)]
    for h in range(nh):
        ax.bar(x - 0.4 + width * (h + 0.5), entropy[h], width=width, color=colors[h], label=f"head {h}")
    ax.step(
        np.concatenate([[-0.5], x + 0.5]),
        np.concatenate([[bound[0]], bound]),
        where="pre",
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=BOUND_LABEL,
    )
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, max(1.0, float(np.max(bound))) * 1.3)
    step, font = label_step(n, size[0] - 1.5)
    ax.set_xticks(range(0, n, step), [labels[i] for i in range(0, n, step)], fontsize=font, parse_math=False)
    ax.set_ylabel(ENTROPY_LABEL)
    ax.set_xlabel(QUERY_LABEL)
    ax.set_title("row entropy: low = peaky (one or few keys), at the line = uniform", fontsize=10)
    ax.legend(fontsize=7, ncols=min(nh + 1, 5), loc="upper left", framealpha=0.95)
    return fig


# -- files ----------------------------------------------------------------------------------
def save(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Write a figure; the format comes from the extension (png, svg, pdf)."""
    from attnviz.outputs import image_format

    path = Path(path)
    fmt = image_format(path)
    metadata: dict[str, Any] = {
        "png": {"Software": None},
        "svg": {"Date": None},
        "pdf": {"CreationDate": None},
    }[fmt]
    try:
        fig.savefig(path, format=fmt, dpi=dpi or fig.dpi, metadata=metadata)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def entropy_figure(
    ent: RowEntropy,
    *,
    cmap: str | None = None,
    highlight: Sequence[int] = (),
    dpi: float | None = None,
    size: tuple[float, float] | None = None,
) -> Figure:
    """One head: bars per query token; several: a layers x heads heatmap of mean row entropy."""
    level = " (words)" if ent.level == "word" else ""
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
        title=title,
        cmap=cmap or "magma",
        dpi=dpi or DEFAULT_DPI,
        size=size,
    )
