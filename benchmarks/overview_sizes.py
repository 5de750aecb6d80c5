"""Whole-model overview: picture size and time to draw and save, for short and long texts.

    PYTHONPATH=src python benchmarks/overview_sizes.py

Synthetic attention (random rows summing to 1), no model: only the drawing is measured.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from attnviz import plots
from attnviz.errors import InputError

CASES = ((6, 12, 12), (6, 12, 363), (6, 12, 512), (30, 9, 12), (30, 9, 256), (30, 9, 363))


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for layers, heads, n in CASES:
            attn = rng.random((layers, heads, n, n), dtype=np.float32)  # [layers, heads, q, k]
            attn /= attn.sum(axis=-1, keepdims=True)
            start = time.perf_counter()
            try:
                fig = plots.overview(attn, range(layers), range(heads), title=f"{layers}x{heads}, {n} tokens")
            except InputError as exc:
                print(f"{layers:>2} layers x {heads:>2} heads, {n:>3} tokens: refused ({exc})")
                continue
            path = plots.save(fig, Path(tmp) / "o.png")
            took = time.perf_counter() - start
            width, height = fig.canvas.get_width_height()
            size = path.stat().st_size / 1e6
            what = f"{layers:>2} layers x {heads:>2} heads, {n:>3} tokens"
            print(f"{what}: {width}x{height} px, {took:.1f} s, {size:.1f} MB")


if __name__ == "__main__":
    main()
