"""Reading a run back: the per-head summary (streamed over the parts), its plots, the long table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.batch.store import HEADS_DIR, OUR_NAMES, TEXTS_DIR
from attnviz.errors import InputError
from attnviz.heads.patterns import PATTERNS

if TYPE_CHECKING:
    import pandas as pd


def summarise(outdir: str | Path) -> pd.DataFrame | None:
    """Per head: role (when pattern scores exist) and mean / std / count of every statistic.

    Streams the committed parts one at a time (Chan's parallel mean and variance), so memory does
    not grow with the corpus. Std is the sample standard deviation (NaN for fewer than 2 texts).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    ours = OUR_NAMES[HEADS_DIR]  # a user's stray part-1.parquet is not one of the run's parts
    parts = sorted(p for p in (Path(outdir) / HEADS_DIR).glob("part-*.parquet") if ours.fullmatch(p.name))
    if not parts:
        return None
    skip = {"text_id", "layer", "head", "n_tokens"}
    keys: np.ndarray | None = None  # [layer, head] pairs, sorted
    acc: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    log2_tokens, rows = 0.0, 0
    for path in parts:
        table = pq.read_table(path)
        log2_tokens += float(np.log2(np.maximum(table.column("n_tokens").to_numpy(), 1)).sum())
        rows += table.num_rows
        layer = table.column("layer").to_numpy().astype(np.int64)
        head = table.column("head").to_numpy().astype(np.int64)
        code = layer * 100_000 + head
        uniq, idx = np.unique(code, return_inverse=True)
        if keys is None:
            keys = uniq
        elif not np.array_equal(keys, uniq):
            merged = np.union1d(keys, uniq)
            remap = np.searchsorted(merged, keys)
            for name, (n0, m0, s0) in acc.items():
                n1, m1, s1 = (np.zeros(len(merged)) for _ in range(3))
                n1[remap], m1[remap], s1[remap] = n0, m0, s0
                acc[name] = (n1, m1, s1)
            keys = merged
        idx = np.searchsorted(keys, uniq)[idx]
        size = len(keys)
        for name in table.column_names:
            if name in skip:
                continue
            x = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            ok = ~np.isnan(x)
            n_b = np.bincount(idx[ok], minlength=size).astype(np.float64)
            sum_b = np.bincount(idx[ok], weights=x[ok], minlength=size)
            mean_b = np.divide(sum_b, n_b, out=np.zeros(size), where=n_b > 0)
            m2_b = np.bincount(idx[ok], weights=(x[ok] - mean_b[idx[ok]]) ** 2, minlength=size)
            if name not in acc:
                acc[name] = (n_b, mean_b, m2_b)
                continue
            n_a, mean_a, m2_a = acc[name]
            n = n_a + n_b
            delta = mean_b - mean_a
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(
                    n > 0, mean_a + delta * np.divide(n_b, n, out=np.zeros(size), where=n > 0), 0.0
                )
                m2 = m2_a + m2_b + delta**2 * np.divide(n_a * n_b, n, out=np.zeros(size), where=n > 0)
            acc[name] = (n, mean, m2)
    assert keys is not None
    frame: dict[str, Any] = {"layer": keys // 100_000, "head": keys % 100_000}
    means: dict[str, np.ndarray] = {}
    for name, (n, mean, m2) in acc.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(n > 1, np.sqrt(m2 / np.maximum(n - 1, 1)), np.nan)
        means[name] = np.where(n > 0, mean, np.nan)
        frame[f"{name}_mean"] = means[name]
        frame[f"{name}_std"] = std
        frame[f"{name}_count"] = n.astype(np.int64)
    out = pd.DataFrame(frame)
    if all(f"pattern_{p}" in means for p in PATTERNS):
        from attnviz.heads.patterns import role_of

        out.insert(2, "role", role_of({p: means[f"pattern_{p}"] for p in PATTERNS}))
    out.attrs["mean_log2_tokens"] = log2_tokens / max(rows, 1)  # the typical uniform-entropy bound
    return out


def summary_plots(summary: pd.DataFrame, folder: Path, title: str) -> list[Path]:
    """Layers x heads maps of mean entropy and of role (when those statistics were kept)."""
    layers = sorted(int(v) for v in summary["layer"].unique())
    heads = sorted(int(v) for v in summary["head"].unique())
    grid = summary.set_index(["layer", "head"]).reindex(
        [(la, h) for la in layers for h in heads]
    )  # every (layer, head) in order, even if a part lacked one

    def values(column: str) -> np.ndarray:
        return grid[column].to_numpy().reshape(len(layers), len(heads))

    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    if "entropy_mean" in grid:
        from attnviz.plots import entropy_grid, save

        bound = float(summary.attrs.get("mean_log2_tokens", 0.0))
        fig = entropy_grid(
            values("entropy_mean"), layers, heads, bound=bound, title=f"mean row entropy ({title})"
        )
        out.append(save(fig, folder / "entropy.png"))
    if "role" in grid:
        from attnviz.plots.roles import role_map

        roles = values("role").astype(str)
        best = np.zeros(roles.shape)
        for name in PATTERNS:
            mask = roles == name
            best[mask] = values(f"pattern_{name}_mean")[mask]
        out.append(role_map(roles, layers, heads, folder / "role.png", best, f"head roles ({title})"))
    return out


def read_results(outdir: str | Path, texts: bool = False) -> pd.DataFrame:
    """The long table of a run (the same as `pandas.read_parquet(outdir)`), optionally with texts."""
    import pandas as pd

    outdir = Path(outdir)
    if not list((outdir / HEADS_DIR).glob("part-*.parquet")):
        raise InputError(f"{outdir} holds no attnviz batch results")
    frame = pd.read_parquet(outdir / HEADS_DIR)
    if texts:
        if not (outdir / TEXTS_DIR).is_dir():
            raise InputError(f"{outdir} has no texts table (the run was made with texts = false)")
        side = pd.read_parquet(outdir / TEXTS_DIR, columns=["text_id", "line", "text"])
        frame = frame.merge(side, on="text_id", how="left")
    return frame
