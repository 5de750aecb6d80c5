"""Test helpers: a model-free Attention, and checking a written figure by its data, not by the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DEMO_TOKENS = ("[CLS]", "em", "##ily", "went", "to", "paris", "[SEP]")


def synthetic(
    tokens: tuple[str, ...] | None = None,
    special: tuple[bool, ...] | None = None,
    layers: int = 2,
    heads: int = 3,
    causal: bool = False,
    seed: int = 0,
    text: str | None = None,
) -> Any:
    """Random row-stochastic attention without a model (causal: the future is exactly 0).

    Without `tokens`: [CLS] em ##ily went to paris [SEP], with its words, spans and special flags.
    """
    from attnviz.attention import Attention

    if tokens is None:
        tokens = DEMO_TOKENS
        words: tuple[str, ...] = ("emily", "went", "to", "paris")
        word_ids: tuple[int | None, ...] = (None, 0, 0, 1, 2, 3, None)
        spans = ((0, 0), (0, 2), (2, 5), (6, 10), (11, 13), (14, 19), (0, 0))
        special = special or (True, False, False, False, False, False, True)
        text = text or "emily went to paris"
    else:
        words, word_ids, spans = (), tuple(None for _ in tokens), tuple((0, 0) for _ in tokens)
    rng = np.random.default_rng(seed)
    n = len(tokens)
    raw = rng.random((layers, heads, n, n)) ** 3
    if causal:
        raw *= np.tril(np.ones((n, n)))
    attn = (raw / raw.sum(-1, keepdims=True)).astype(np.float32)
    return Attention(
        model="synthetic",
        kind="decoder" if causal else "encoder",
        text=text or "synthetic",
        tokens=tokens,
        spans=spans,
        word_ids=word_ids,
        words=words,
        special=special or tuple(False for _ in tokens),
        layers=tuple(range(layers)),
        heads=tuple(range(heads)),
        attn=attn,
        causal=causal,
    )


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


def ok(*args: str, stdin: str | None = None) -> Any:
    """`cli_ok` with the arguments spelled out: `ok("heatmap", TEXT, "--layer", "1")`."""
    return cli_ok(list(args), input=stdin)


def bad(*args: str, match: str, stdin: str | None = None) -> str:
    """Bad input: `one_line_error`, its line matching the regular expression `match`; returns the line."""
    import re

    from typer.testing import CliRunner

    from attnviz.cli import app

    line = one_line_error(CliRunner().invoke(app, list(args), input=stdin))
    assert re.search(match, line), line
    return line


def crafted(good: Path, change: Any, arrays: dict | None = None) -> Path:
    """A crafted copy of a saved .npz result (`good`): its metadata changed by `change(meta)`, its
    arrays replaced by `arrays` if given; for the load-validation tests of every result type."""
    import json

    with np.load(good, allow_pickle=False) as data:
        meta = json.loads(str(data["metadata"]))
        stored = {k: data[k] for k in data.files if k != "metadata"}
    change(meta)
    path = good.with_name("crafted.npz")
    np.savez(path, metadata=np.array(json.dumps(meta)), **(arrays if arrays is not None else stored))
    return path


class SavedFigures(list):
    """What the `figures` fixture (the one spy on `attnviz.plots.save`) records: (figure, path)
    pairs in save order; a file name as index gives the last figure saved under that name."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            found = [fig for fig, path in self if Path(path).name == key]
            if not found:
                raise KeyError(f"no figure was saved as {key} (saved: {[Path(p).name for _, p in self]})")
            return found[-1]
        return super().__getitem__(key)


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
