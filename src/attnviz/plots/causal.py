"""Pictures of patching: a diverging map centred on 0 (rows x columns), with the top units listed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnviz.heads.patching import unit_name
from attnviz.plots import _common

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from attnviz.heads.patching import Patching

DIVERGING = "RdBu_r"  # red: towards the clean run, blue: away from it


def patching_figure(result: Patching, top: int = 8, dpi: float = 150) -> Figure:
    """The effect (0 = corrupt run, 1 = clean run) of patching each unit, minus 1 when noising; a
    positions axis is summed away (its largest cells are still listed)."""

    eff = np.nan_to_num(np.asarray(result.effect, dtype=float))
    label = "effect (0 corrupt, 1 clean)"
    if result.noising:  # the clean run is the baseline: show what each patch takes away from it
        eff, label = eff - 1.0, "effect - 1 (0: the clean run unchanged)"
    grid = eff if eff.ndim == 2 else eff.sum(-1)
    if result.unit == "resid":
        grid, rows, cols = eff, list(result.rows), [f"{i} {t}" for i, t in enumerate(result.positions)]
    else:
        rows, cols = list(result.rows), list(result.columns)
    n_rows, n_cols = grid.shape
    width = min(14.0, 3.2 + 0.42 * n_cols)
    height = min(10.0, 1.6 + 0.2 * n_rows)
    fig = _common.new_figure((width + 2.6, max(3.0, height)), dpi)
    ax, side = fig.subplots(1, 2, width_ratios=[width, 2.6])
    vmax = max(1e-9, float(np.abs(grid).max()))
    image = ax.imshow(grid, cmap=_common.colormap(DIVERGING), vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_yticks(range(n_rows), rows, fontsize=7)
    ax.set_xticks(range(n_cols), cols, fontsize=7, rotation=90 if result.unit == "resid" else 0)
    ax.set_ylabel("layer")
    ax.set_xlabel({"heads": "head", "layer": "output", "resid": "position"}[result.unit])
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    mode = "noising" if result.noising else "denoising"
    ax.set_title(_common.cut(f"{result.model}: {mode} {result.unit}, {result.metric}", 80), parse_math=False)
    side.axis("off")
    lines = [f"{unit_name(result, idx)}  {value:+.2f}" for idx, value in result.top(top)]
    side.text(0, 1, "top units\n" + "\n".join(lines), va="top", family="monospace", fontsize=8)
    return fig


def patching_map(result: Patching, path: str | Path, top: int = 8) -> Path:
    """Save `patching_figure` to `path` (png, svg or pdf from the extension)."""
    return _common.save(patching_figure(result, top), path)
