"""Figures for `attnviz heads`: a layers x heads map coloured by role, and one of a score.

Arrays and labels in, a file out; never a model. Built on plots.py's figure and save helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnviz.errors import InputError
from attnviz.patterns import ROLE_NAMES

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
_SHORT = {"previous": "prev", "punctuation": "punct", "last_sep": "sep", "mixed": ""}


def _figure(n_layers: int, n_heads: int) -> tuple[Any, Any]:
    """A pyplot-free figure (plots.new_figure), sized to the grid."""
    from attnviz.plots import new_figure

    width = min(max(4.0, 0.75 * n_heads + 2.5), 30)
    height = min(max(3.0, 0.42 * n_layers + 1.6), 30)
    fig = new_figure((width, height), 150)
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | Path) -> Path:
    """Write through plots.save (format from the extension, reproducible metadata)."""
    from attnviz.plots import save

    path = Path(path)
    if path.parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return save(fig, path)


def _axes(ax: Any, layers: Sequence[int], heads: Sequence[int]) -> None:
    ax.set_xticks(range(len(heads)), [str(h) for h in heads])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")


def role_map(
    roles: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | Path,
    scores: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Save a layers x heads grid, one colour per role, each cell labelled with its role (and score)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    roles = np.asarray(roles)
    index = {name: i for i, name in enumerate(ROLE_NAMES)}
    codes = np.vectorize(lambda r: index.get(str(r), index["mixed"]))(roles)  # [layers, heads]
    fig, ax = _figure(len(layers), len(heads))
    cmap = ListedColormap([ROLE_COLOURS[name] for name in ROLE_NAMES])
    ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(ROLE_NAMES) - 0.5, aspect="auto")
    small = len(heads) > 16 or len(layers) > 24
    for li in range(roles.shape[0]):
        for hi in range(roles.shape[1]):
            role = str(roles[li, hi])
            label = _SHORT.get(role, role)
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
    ax.set_title(title or "head roles")
    return _save(fig, path)


def score_map(
    values: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | Path,
    title: str | None = None,
    label: str = "score",
) -> Path:
    """Save a layers x heads heatmap of one score (e.g. induction), each cell annotated."""
    values = np.asarray(values, dtype=float)
    fig, ax = _figure(len(layers), len(heads))
    im = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(values.max())), aspect="auto")
    if len(heads) <= 16 and len(layers) <= 32:
        for li in range(values.shape[0]):
            for hi in range(values.shape[1]):
                v = values[li, hi]
                colour = "black" if v > 0.6 * values.max() else "white"
                ax.text(hi, li, f"{v:.2f}", ha="center", va="center", fontsize=6, color=colour)
    _axes(ax, layers, heads)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title or label)
    return _save(fig, path)
