"""Test helpers: check a written figure by its data, not by the file existing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def cli_ok(args: list[str], **kwargs: Any) -> Any:
    """Run the CLI in-process; it must succeed (the output is shown when it does not)."""
    from typer.testing import CliRunner

    from attnviz.cli import app

    result = CliRunner().invoke(app, args, **kwargs)
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result: Any, *needles: str) -> str:
    """A failed run: exit code 2 and one `error: ...` line on stderr holding every needle."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def saved_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record every figure written through `attnviz.plots.save` (the one save): file name -> Figure."""
    from attnviz import plots

    real = plots.save
    saved: dict[str, Any] = {}

    def spy(fig: Any, path: str | Path, dpi: float | None = None) -> Path:
        saved[Path(path).name] = fig
        return real(fig, path, dpi)

    monkeypatch.setattr(plots, "save", spy)
    monkeypatch.setattr(plots._common, "save", spy)  # what plots' own save_* helpers call
    return saved


def image_values(fig: Any) -> np.ndarray:
    """The array drawn by the figure's first image (a heatmap's or a grid's cells)."""
    images = [im for ax in fig.axes if ax.get_label() != "<colorbar>" for im in ax.get_images()]
    assert images, "the figure draws no image"
    return np.ma.filled(np.ma.asarray(images[0].get_array()).astype(float), np.nan)


def tick_labels(fig: Any, axis: str) -> list[str]:
    """Tick labels of the axes holding the first image ('x' or 'y')."""
    ax = next(ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>")
    return [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")()]


def figure_text(fig: Any) -> str:
    """Every text the figure draws (titles, labels, cell annotations), one per line."""
    from matplotlib.text import Text

    return "\n".join(t.get_text() for t in fig.findobj(Text))


def assert_png_of(path: Path, fig: Any) -> None:
    """A real PNG whose pixel size is the figure's size at its dpi (what `plots.save` writes)."""
    from matplotlib.image import imread

    pixels = imread(path)  # [height, width, channels]
    width, height = fig.get_size_inches() * fig.dpi
    assert pixels.shape[:2] == (int(height), int(width)), (pixels.shape, width, height)
    assert pixels.std() > 0  # not a blank canvas


def assert_svg_of(path: Path, fig: Any) -> None:
    """An SVG whose declared size is the figure's size in points."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    width, height = fig.get_size_inches() * 72
    assert root.get("width") == f"{width:g}pt" and root.get("height") == f"{height:g}pt", root.attrib
