"""Clusters of heads (Clark et al. 2019): heads that attend alike sit close together.

The distance between two heads is the mean over query tokens of the Jensen-Shannon divergence
(base 2) between their attention rows, averaged over texts. Texts stream through one at a time, so
a thousand texts cost the memory of one; pattern roles (`attnviz heads`) are scored in the same pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.attention import Attention
from attnviz.errors import InputError, param
from attnviz.extraction import extract_stream
from attnviz.heads.patterns import head_patterns
from attnviz.outputs import atomic_output
from attnviz.selection import format_indices

if TYPE_CHECKING:
    from attnviz.heads.patterns import PatternTable
    from attnviz.models.loading import LoadedModel


@dataclass(frozen=True)
class HeadDistances:
    """Mean JS divergence between every pair of heads over a set of texts, and each head's role."""

    model: str
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    matrix: np.ndarray  # [layers*heads, layers*heads] float64, symmetric, zero diagonal, in [0, 1]
    texts: int
    roles: tuple[str, ...]  # per head (layer-major), from the pattern scores of the same texts

    @property
    def labels(self) -> list[str]:
        """L0H0, L0H1, ... in the matrix's (layer-major) order."""
        return [f"L{layer}H{head}" for layer in self.layers for head in self.heads]

    @property
    def head_layers(self) -> list[int]:
        return [layer for layer in self.layers for _ in self.heads]

    def to_csv(self, path: str | Path) -> Path:
        """A heads x heads CSV with labelled rows and columns."""
        import csv

        path = Path(path)
        with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["head", *self.labels])
            for label, row in zip(self.labels, self.matrix, strict=True):
                writer.writerow([label, *(f"{v:.6f}" for v in row)])
        return path

    def embedding(self, dims: int = 2) -> np.ndarray:
        """Classical (Torgerson) MDS of the distances: [heads, dims]."""
        return classical_mds(self.matrix, dims)

    def linkage(self) -> np.ndarray:
        """Average linkage on the distances: the tree the clustermap draws and `groups` cuts."""
        from scipy.cluster.hierarchy import linkage
        from scipy.spatial.distance import squareform

        condensed = squareform(np.clip((self.matrix + self.matrix.T) / 2, 0, None), checks=False)
        return linkage(condensed, method="average")

    def groups(self, k: int | None = None) -> tuple[HeadGroup, ...]:
        """The clustermap's tree cut into `k` groups (default about sqrt(heads / 2)), largest first."""
        from scipy.cluster.hierarchy import fcluster

        n = len(self.matrix)
        k = default_groups(n) if k is None else k
        check_groups(k, n)
        ids = fcluster(self.linkage(), t=k, criterion="maxclust") if n > 1 else np.ones(1, dtype=int)
        labels, layers = self.labels, self.head_layers
        out = []
        for gid in np.unique(ids):
            members = np.flatnonzero(ids == gid)
            inner = self.matrix[np.ix_(members, members)]
            spread = float(inner.sum() / (len(members) * (len(members) - 1))) if len(members) > 1 else 0.0
            roles: dict[str, int] = {}
            for m in members:
                roles[self.roles[m]] = roles.get(self.roles[m], 0) + 1
            out.append(
                HeadGroup(
                    heads=tuple(labels[m] for m in members),
                    layers=tuple(sorted({layers[m] for m in members})),
                    roles=tuple(sorted(roles.items(), key=lambda kv: (-kv[1], kv[0]))),
                    spread=spread,
                )
            )
        return tuple(sorted(out, key=lambda g: (-len(g.heads), g.spread)))

    def nearest(self, top: int = 10) -> list[dict[str, Any]]:
        """The closest pairs of distinct heads, for the `--json` output."""
        n = len(self.matrix)
        iu = np.triu_indices(n, 1)
        order = np.argsort(self.matrix[iu], kind="stable")[:top]
        labels = self.labels
        return [
            {"a": labels[iu[0][k]], "b": labels[iu[1][k]], "distance": float(self.matrix[iu][k])}
            for k in order
        ]


@dataclass(frozen=True)
class HeadGroup:
    """Heads that attend alike: one branch of the clustermap's tree."""

    heads: tuple[str, ...]  # L0H0, ... in layer-major order
    layers: tuple[int, ...]  # the layers its heads come from
    roles: tuple[tuple[str, int], ...]  # (role, heads) from `attnviz heads`, most common first
    spread: float  # mean JS divergence between its heads (bits; 0 for a single head)

    def as_dict(self) -> dict[str, Any]:
        return {
            "heads": list(self.heads),
            "layers": list(self.layers),
            "roles": dict(self.roles),
            "spread": round(self.spread, 6),
        }

    def describe(self) -> str:
        """One line: size, layers, roles and spread (what `attnviz cluster` prints per group)."""
        span = _span(self.layers)
        roles = ", ".join(f"{role} {n}" for role, n in self.roles)
        size = f"{len(self.heads)} head{'s' if len(self.heads) != 1 else ''}"
        alone = len(self.heads) == 1
        return f"{size}, {span}, {roles}" + ("" if alone else f"; mean distance {self.spread:.3f} bits")


def check_enough_texts(n: int) -> None:
    """Clustering compares heads across texts: InputError for fewer than two (the one copy)."""
    if n < 2:
        raise InputError(f"clustering needs at least two texts, got {n}")


def _span(layers: Sequence[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {format_indices(layers)}"


def default_groups(heads: int) -> int:
    """About sqrt(heads / 2) groups: 6 for MiniLM's 72 heads, 2 for a handful; never more than heads."""
    return max(1, min(heads, round((heads / 2) ** 0.5)))


def classical_mds(distances: np.ndarray, dims: int = 2) -> np.ndarray:
    """Torgerson MDS: double-centre the squared distances and keep the top eigenvectors."""
    d2 = np.asarray(distances, dtype=np.float64) ** 2
    n = len(d2)
    centre = np.eye(n) - np.ones((n, n)) / n
    b = -0.5 * centre @ d2 @ centre
    values, vectors = np.linalg.eigh(b)
    order = np.argsort(values)[::-1][:dims]
    return vectors[:, order] * np.sqrt(np.maximum(values[order], 0.0))


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log2(np.where(x > 0, x, 1.0)), 0.0)


def pairwise_js(rows: np.ndarray) -> np.ndarray:
    """[heads, q, k] rows -> [heads, heads]: mean over q of the JS divergence between two heads."""
    rows = rows.astype(np.float64)
    neg_entropy = _xlogx(rows).sum(axis=-1)  # [heads, q]
    n = len(rows)
    out = np.zeros((n, n))
    for a in range(n):
        mid = (rows[a][None] + rows[a:]) / 2  # [n - a, q, k]
        js = 0.5 * (neg_entropy[a][None] + neg_entropy[a:]) - _xlogx(mid).sum(axis=-1)
        out[a, a:] = np.clip(js, 0.0, 1.0).mean(axis=-1)
    out = np.triu(out, 1)
    return out + out.T


class _Accumulator:
    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.first: Attention | None = None
        self.n = 0

    def feed(self, atts: Iterable[Attention]) -> Iterator[Attention]:
        for att in atts:
            if att.level != "token":
                raise InputError("clustering needs token-level attention (extract without words=True)")
            if self.first is None:
                self.first = att
            elif att.layers != self.first.layers or att.heads != self.first.heads:
                raise InputError("all texts must be extracted with the same layers and heads")
            flat = att.attn.reshape(-1, att.n_tokens, att.n_tokens)  # [layers*heads, q, k]
            d = pairwise_js(flat)
            self.total = d if self.total is None else self.total + d
            self.n += 1
            yield att


def head_distances(atts: Iterable[Attention]) -> HeadDistances:
    """Distances between heads averaged over extracted texts (at least two)."""

    acc = _Accumulator()
    table: PatternTable = head_patterns(acc.feed(atts))
    check_enough_texts(acc.n)
    assert acc.first is not None and acc.total is not None  # two texts were fed
    return HeadDistances(
        model=acc.first.model,
        layers=tuple(acc.first.layers),
        heads=tuple(acc.first.heads),
        matrix=acc.total / acc.n,
        texts=acc.n,
        roles=tuple(str(r) for r in table.roles.reshape(-1)),
    )


def check_groups(k: int | None, n: int | None = None) -> None:
    """InputError for fewer than one group of heads, or (when the `n` heads are known) more than n."""
    if k is not None and k < 1:
        raise InputError(f"bad {param('groups')} {k}: use 1 or more")
    if k is not None and n is not None and k > n:
        raise InputError(f"cannot cut {n} heads into {k} groups: ask for 1 to {n}")


def cluster_texts(
    texts: Sequence[str],
    model: str | LoadedModel | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    truncate: bool = False,
    batch_size: int = 16,
    device: str | None = "auto",
    dtype: str | None = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> HeadDistances:
    """Run texts through the model, `batch_size` at a time, and return the head distances.

    `progress(done, total)` is called with the texts done so far (from (0, total) on).
    """

    texts = list(texts)
    check_enough_texts(len(texts))
    atts = extract_stream(
        texts,
        model,
        layers=layers,
        heads=heads,
        truncate=truncate,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )
    if progress is not None:
        atts = _counted(atts, len(texts), progress)
    return head_distances(atts)


def _counted(
    atts: Iterable[Attention], total: int, progress: Callable[[int, int], None]
) -> Iterator[Attention]:
    progress(0, total)
    for done, att in enumerate(atts, 1):
        yield att
        progress(done, total)
