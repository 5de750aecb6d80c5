"""Figures for `attnviz heads`: a layers x heads map coloured by role, and one of a score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnviz.heads.patterns import ROLE_NAMES
from attnviz.plots import _common  # `_common.save`: the one save, as tests spy on it
from attnviz.plots._common import DEFAULT_CMAP, DEFAULT_DPI, colormap, new_figure, text_inches, write_cells
from attnviz.plots.fonts import with_fonts

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from attnviz.heads.ablation import HeadScan

ROLE_COLOURS: dict[str, str] = {
    "self": "#4c72b0",
    "previous": "#dd8452",
    "next": "#c44e52",
    "first": "#55a868",
    "last_sep": "#8172b3",
    "punctuation": "#937860",
    "broad": "#da8bc3",
    "mixed": "#e5e5e5",
}
SHORT = {"previous": "prev", "punctuation": "punct", "last_sep": "sep", "mixed": ""}


def _grid(n_layers: int, n_heads: int, dpi: float, title: str) -> tuple[Figure, Axes]:
    width = min(max(4.0, 0.75 * n_heads + 2.5, text_inches(title)), 30)
    height = min(max(3.0, 0.42 * n_layers + 1.6), 30)
    fig = new_figure((width, height), dpi)
    return fig, fig.add_subplot()


def _axes(ax: Axes, layers: Sequence[int], heads: Sequence[int]) -> None:
    from attnviz.plots._common import layer_head_ticks

    layer_head_ticks(ax, layers, heads)


@with_fonts
def role_figure(
    roles: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    scores: np.ndarray | None = None,
    title: str | None = None,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """A layers x heads grid, one colour per role, each cell labelled with its role (and score)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    roles = np.asarray(roles)  # [layers, heads] role names
    scores = None if scores is None else np.asarray(scores, dtype=float)  # [layers, heads]
    index = {name: i for i, name in enumerate(ROLE_NAMES)}
    codes = np.vectorize(lambda r: index.get(str(r), index["mixed"]))(roles)  # [layers, heads]
    title = title or "head roles"
    fig, ax = _grid(len(layers), len(heads), dpi, title)
    cmap = ListedColormap([ROLE_COLOURS[name] for name in ROLE_NAMES])
    ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(ROLE_NAMES) - 0.5, aspect="auto")
    small = len(heads) > 16 or len(layers) > 24
    for li in range(roles.shape[0]):
        for hi in range(roles.shape[1]):
            role = str(roles[li, hi])
            label = SHORT.get(role, role)
            if scores is not None and role != "mixed":
                label += f"\n{scores[li, hi]:.2f}"
            if label:
                ax.text(hi, li, label, ha="center", va="center", fontsize=5 if small else 7)
    _axes(ax, layers, heads)
    present = [name for name in ROLE_NAMES if (roles == name).any()]
    ax.legend(
        handles=[Patch(color=ROLE_COLOURS[n], label=f"{n} ({int((roles == n).sum())})") for n in present],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    ax.set_title(title, parse_math=False)
    return fig


@with_fonts
def score_figure(
    values: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    title: str | None = None,
    label: str = "score",
    cmap: str = DEFAULT_CMAP,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """A layers x heads heatmap of one score (e.g. induction), each cell annotated when they fit."""
    values = np.asarray(values, dtype=float)  # [layers, heads]
    title = title or label
    fig, ax = _grid(len(layers), len(heads), dpi, title)
    cm = colormap(cmap)
    top = max(1e-9, float(np.nanmax(values)) if values.size else 0.0)
    image = ax.imshow(values, cmap=cm, vmin=0.0, vmax=top, aspect="auto")
    if len(heads) <= 16 and len(layers) <= 32:
        write_cells(ax, values, cm, top, fontsize=6)
    _axes(ax, layers, heads)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, parse_math=False)
    return fig


def role_map(
    roles: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | Path,
    scores: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Save `role_figure` to `path` (format from the extension)."""
    return _common.save(role_figure(roles, layers, heads, scores, title), path)


def score_map(
    values: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | Path,
    title: str | None = None,
    label: str = "score",
) -> Path:
    """Save `score_figure` to `path` (format from the extension)."""
    return _common.save(score_figure(values, layers, heads, title, label), path)


def effect_map(found: HeadScan, path: str | Path) -> Path:
    """Save the layers x heads heatmap of each head's ablation effect (|delta|, or the loss rise)."""
    label = "loss rise" if found.measure == "repeat-loss" else f"|delta {found.measure}|"
    title = f"{found.model}: effect of ablating each head ({found.mode}, {found.measure})"
    values = np.clip(found.effect, 0.0, None)
    return score_map(values, found.layers, found.heads, path, title=title, label=label)
