"""Figures for `attnviz attribute` and `attnviz lens`.

Attribution: a layers x heads map of each head's direct contribution (diverging, centred on 0: red
pushes the answer up, blue down), beside bars for each layer's MLP and for the embeddings, biases
and whatever a softcap leaves. Lens: the classic grid of stages x positions, each cell showing its
top token, shaded by that token's probability. Never loads a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnviz.plots import _common  # `_common.save`: the one save, as tests spy on it
from attnviz.plots._common import DEFAULT_DPI, colormap, cut, new_figure, text_inches, token_ticks, with_text
from attnviz.plots.fonts import with_fonts

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from attnviz.analyses.attribution import Attribution
    from attnviz.analyses.lens import Lens

DIVERGING = "RdBu_r"
LENS_CMAP = "Blues"


def _what(result: Attribution) -> str:
    what = f"'{result.answer}'" + (f" - '{result.wrong}'" if result.wrong is not None else "")
    return f"{result.model}: direct logit attribution of {what} (logit {result.logit:+.3f})"


@with_fonts
def attribution_figure(result: Attribution, dpi: float = DEFAULT_DPI) -> Figure:
    """Heads map (diverging, centred on 0), the MLP of each layer, and the other components as bars."""
    heads = result.head_map()
    maps = [("heads", heads)] + (
        [("cross-attention heads", result.head_map(cross=True))] if result.has_cross else []
    )
    mlp, others = result.mlp, result.others
    top = max(1e-9, float(np.abs(result.values).max()))
    title = with_text(_what(result), result.text)
    n_layers, n_heads = heads.shape
    width = min(max(6.0, 0.5 * n_heads * len(maps) + 4.5, text_inches(title)), 30)
    height = min(max(4.0, 0.22 * n_layers + 2.2), 30)
    fig = new_figure((width, height), dpi)
    grid = fig.add_gridspec(
        2, len(maps) + 1, width_ratios=[*([max(2, n_heads)] * len(maps)), 3], height_ratios=[4, 1]
    )
    cmap = colormap(DIVERGING)
    image = None
    for i, (name, values) in enumerate(maps):
        ax = fig.add_subplot(grid[:, i])
        image = ax.imshow(values, cmap=cmap, vmin=-top, vmax=top, aspect="auto")
        ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)], fontsize=7)
        step = max(1, n_layers // 16)
        ax.set_yticks(
            range(0, n_layers, step), [str(layer) for layer in range(0, n_layers, step)], fontsize=7
        )
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name, fontsize=9)
        for layer, head in _strongest(values, 5):
            v = values[layer, head]
            colour = "white" if abs(v) > 0.6 * top else "black"  # readable on the dark ends of the map
            ax.text(head, layer, f"{v:+.2f}", ha="center", va="center", fontsize=6, color=colour)
    bars = fig.add_subplot(grid[0, -1])
    bars.barh(range(n_layers), mlp, color=[cmap(0.5 + 0.5 * v / top) for v in mlp])
    bars.set_ylim(n_layers - 0.5, -0.5)
    bars.axvline(0, color="#888888", linewidth=0.6)
    bars.set_title("MLP", fontsize=9)
    bars.tick_params(labelsize=7)
    rest = fig.add_subplot(grid[1, -1])
    names = list(others)
    rest.barh(
        range(len(names)),
        [others[n] for n in names],
        color=[cmap(0.5 + 0.5 * others[n] / top) for n in names],
    )
    rest.set_yticks(range(len(names)), names, fontsize=7)
    rest.set_ylim(len(names) - 0.5, -0.5)
    rest.axvline(0, color="#888888", linewidth=0.6)
    rest.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=bars, label="logit contribution", shrink=0.9)
    fig.suptitle(title, fontsize=10)
    return fig


def _strongest(values: np.ndarray, k: int) -> list[tuple[int, int]]:
    order = np.argsort(-np.abs(values), axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(o, values.shape)) for o in order]  # type: ignore[misc]


@with_fonts
def lens_figure(result: Lens, dpi: float = DEFAULT_DPI) -> Figure:
    """Stages (rows, embeddings at the bottom) x positions: the top token, shaded by its probability."""
    probs = result.top_probs[:, :, 0][::-1]  # [stages, positions], last layer on top
    labels = result.top_labels()[::-1]
    stages = list(result.stages)[::-1]
    n_stages, n = probs.shape
    title = with_text(f"{result.model}: logit lens, top token after each layer", result.text)
    cell_w = 0.62
    width = min(max(5.0, cell_w * n + 1.8, text_inches(title)), 40)
    height = min(max(3.5, 0.24 * n_stages + 2.2), 40)
    fig = new_figure((width, height), dpi)
    ax = fig.add_subplot()
    cmap = colormap(LENS_CMAP)
    image = ax.imshow(probs, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    font = 6.0 if n_stages <= 40 else 4.5
    for i in range(n_stages):
        for j in range(n):
            dark = probs[i, j] > 0.55
            ax.text(j, i, cut(labels[i][j], 8), ha="center", va="center", fontsize=font,
                    color="white" if dark else "black", parse_math=False)  # fmt: skip
    token_ticks(ax.xaxis, list(result.tokens), width - 1.8)
    ax.tick_params(axis="x", labelrotation=90, length=2)
    step = max(1, n_stages // 32)
    ax.set_yticks(range(0, n_stages, step), [stages[i] for i in range(0, n_stages, step)], fontsize=7)
    ax.set_xlabel("position (the token each column predicts after)")
    ax.set_ylabel("stage")
    fig.colorbar(image, ax=ax, label="probability of the top token", shrink=0.8)
    ax.set_title(title, fontsize=10, parse_math=False)
    return fig


def attribution_map(result: Attribution, path: str | Path) -> Path:
    """Save `attribution_figure` to `path` (format from the extension)."""
    return _common.save(attribution_figure(result), path)


def lens_map(result: Lens, path: str | Path) -> Path:
    """Save `lens_figure` to `path` (format from the extension)."""
    return _common.save(lens_figure(result), path)
