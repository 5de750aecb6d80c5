"""The five steps of attention for one head, kept one by one so a learner can follow them:

    scores = Q K^T  ->  scaled = scores * scale  ->  masked = scaled + bias (-inf: the future)
    ->  weights = softmax(masked) per row  ->  output = weights V

`five_steps` is used by the toy (made-up vectors, toy.py) and by `explain` (a real model's captured
query, key and value vectors, explain.py); `format_steps` and `format_focus` print them as tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnviz.errors import InputError, param


@dataclass(frozen=True)
class Steps:
    """softmax(Q K^T * scale + bias) V, one step at a time, in float64."""

    q: np.ndarray  # [q, d]
    k: np.ndarray  # [k, d]
    v: np.ndarray  # [k, d]
    scale: float  # what scores are multiplied by: 1/sqrt(d_k), over any temperature
    bias: np.ndarray  # [q, k] additive: 0 visible, -inf masked, plus any position bias
    scores: np.ndarray  # [q, k] step 1: Q K^T
    scaled: np.ndarray  # [q, k] step 2: scores * scale
    masked: np.ndarray  # [q, k] step 3: scaled + bias
    weights: np.ndarray  # [q, k] step 4: softmax of each row
    output: np.ndarray  # [q, d] step 5: weights @ V

    @property
    def d_k(self) -> int:
        return int(self.q.shape[-1])

    @property
    def row_sums(self) -> np.ndarray:
        return self.weights.sum(axis=-1)

    def visible(self) -> np.ndarray:
        """[q, k] bool: keys each query may see (finite after masking)."""
        return np.isfinite(self.bias)

    @property
    def causal(self) -> bool:
        return not self.visible().all()

    @property
    def position_bias(self) -> bool:
        """Whether the bias adds more than a mask (T5-style relative position bias)."""
        finite = self.bias[np.isfinite(self.bias)]
        return bool(finite.size and np.abs(finite).max() > 0)

    def to_dict(self, labels: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready: -inf becomes None (JSON has no infinity)."""

        def clean(a: np.ndarray) -> list[Any]:
            return np.where(np.isfinite(a), np.round(a, 8), np.nan).astype(object).tolist()

        def nulls(x: Any) -> Any:
            if isinstance(x, list):
                return [nulls(y) for y in x]
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "tokens": list(labels) if labels is not None else None,
            "d_k": self.d_k,
            "scale": self.scale,
            "scores": nulls(clean(self.scores)),
            "scaled": nulls(clean(self.scaled)),
            "masked": nulls(clean(self.masked)),
            "weights": nulls(clean(self.weights)),
            "row_sums": nulls(clean(self.row_sums)),
            "output": nulls(clean(self.output)),
        }


def five_steps(
    q: Any,
    k: Any,
    v: Any,
    *,
    scale: float | None = None,
    bias: Any = None,
    causal: bool = False,
) -> Steps:
    """Scaled dot-product attention for one head, keeping every step (seed 002).

    `scale` defaults to 1/sqrt(d_k); `bias` [q, k] is added after scaling (-inf hides a key);
    `causal` also hides every key after the query. A row with no visible key gets zero weights.
    """
    import torch

    Q = torch.as_tensor(np.asarray(q), dtype=torch.float64)  # [q, d]
    K = torch.as_tensor(np.asarray(k), dtype=torch.float64)  # [k, d]
    V = torch.as_tensor(np.asarray(v), dtype=torch.float64)  # [k, d_v]
    if Q.ndim != 2 or K.ndim != 2 or V.ndim != 2 or Q.shape[1] != K.shape[1] or K.shape[0] != V.shape[0]:
        raise InputError(
            f"shapes do not fit attention: q {tuple(Q.shape)}, k {tuple(K.shape)}, v {tuple(V.shape)}"
        )
    n_q, n_k = Q.shape[0], K.shape[0]
    if scale is None:
        scale = 1.0 / math.sqrt(Q.shape[1])
    B = torch.zeros((n_q, n_k), dtype=torch.float64)  # [q, k]
    if bias is not None:
        B = B + torch.as_tensor(np.asarray(bias), dtype=torch.float64).reshape(n_q, n_k)
    if causal:
        future = torch.ones((n_q, n_k), dtype=torch.bool).triu(diagonal=1 + n_k - n_q)
        B = B.masked_fill(future, float("-inf"))
    scores = Q @ K.T  # [q, k]
    scaled = scores * scale
    masked = scaled + B
    weights = torch.softmax(masked, dim=-1).nan_to_num(0.0)  # all-masked rows: 0, not NaN
    output = weights @ V  # [q, d_v]
    return Steps(
        q=Q.numpy(),
        k=K.numpy(),
        v=V.numpy(),
        scale=float(scale),
        bias=B.numpy(),
        scores=scores.numpy(),
        scaled=scaled.numpy(),
        masked=masked.numpy(),
        weights=weights.numpy(),
        output=output.numpy(),
    )


# -- printing the steps -------------------------------------------------------------------
def check_decimals(decimals: int) -> int:
    """InputError unless 0 <= decimals <= 10 (the tables' widths are made for that); returns it."""
    if isinstance(decimals, bool) or not isinstance(decimals, (int, np.integer)) or not 0 <= decimals <= 10:
        raise InputError(f"bad {param('decimals')} {decimals}: use 0-10")
    return decimals


def _fmt(v: float, decimals: int) -> str:
    if v == float("-inf"):
        return "-inf"
    if math.isnan(v):
        return "nan"
    return f"{v:.{decimals}f}"


def _short(label: str, width: int) -> str:
    label = label.replace("\n", "\\n")
    return label if len(label) <= width else label[: width - 1] + "…"


def format_matrix(
    m: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    decimals: int = 4,
    sums: np.ndarray | None = None,
    indent: str = "  ",
) -> str:
    """An aligned text table with row and column labels; -inf printed as -inf."""
    cells = [[_fmt(float(x), decimals) for x in row] for row in np.asarray(m)]
    width = max([len(c) for row in cells for c in row] + [6])
    width = max(width, min(10, max((len(c) for c in cols), default=0)))
    row_w = min(14, max((len(r) for r in rows), default=1))
    head = " " * row_w + " " + " ".join(f"{_short(c, width):>{width}}" for c in cols)
    if sums is not None:
        head += f"  {'sum':>{decimals + 3}}"
    lines = [indent + head.rstrip()]
    for i, row in enumerate(cells):
        line = f"{_short(rows[i], row_w):>{row_w}} " + " ".join(f"{c:>{width}}" for c in row)
        if sums is not None:
            line += f"  {sums[i]:>{decimals + 3}.{decimals}f}"
        lines.append(indent + line)
    return "\n".join(lines)


def _dims(n: int, max_dims: int) -> tuple[int, str]:
    shown = n if max_dims <= 0 else min(n, max_dims)
    note = f" (first {shown} of {n} dims)" if shown < n else ""
    return shown, note


def mask_note(steps: Steps) -> str:
    parts = []
    if steps.causal:
        parts.append("future keys set to -inf, so softmax gives them weight 0")
    else:
        parts.append("nothing to mask: every query sees every key")
    if steps.position_bias:
        parts.append("plus the model's position bias")
    return "; ".join(parts)


def format_steps(
    steps: Steps,
    labels: Sequence[str],
    *,
    title: str = "",
    decimals: int = 4,
    max_dims: int = 8,
) -> str:
    """The five steps as labelled tables, the way seed 002 prints them."""
    check_decimals(decimals)
    n_q, n_k, d = steps.scores.shape[0], steps.scores.shape[1], steps.d_k
    d_v = steps.v.shape[1]
    shown, note = _dims(d_v, max_dims)
    dim_labels = [f"d{i}" for i in range(shown)]
    scale_note = f"x {steps.scale:.4g}"
    if abs(steps.scale * math.sqrt(d) - 1) < 1e-9:
        scale_note += f"  (= / sqrt(d_k) = / sqrt({d}) = / {math.sqrt(d):.4f})"
    else:
        scale_note += f"  (sqrt(d_k) = {math.sqrt(d):.4f})"
    out = []
    if title:
        out += [title, "=" * len(title), ""]
    out += [
        f"Step 1 · raw scores  S = Q K^T   [{n_q}, {d}] @ [{d}, {n_k}] = [{n_q}, {n_k}]",
        "  Row i, column j: how well query i matches key j (a dot product).",
        format_matrix(steps.scores, labels, labels, decimals=decimals),
        "",
        f"Step 2 · scaled  S {scale_note}",
        "  Keeps scores in a range where softmax is not saturated.",
        format_matrix(steps.scaled, labels, labels, decimals=decimals),
        "",
        f"Step 3 · masked  ({mask_note(steps)})",
        format_matrix(steps.masked, labels, labels, decimals=decimals),
        "",
        "Step 4 · softmax  A = softmax(masked), row by row: each row sums to 1",
        format_matrix(steps.weights, labels, labels, decimals=decimals, sums=steps.row_sums),
        "",
        f"Step 5 · weighted sum of values  O = A V   [{n_q}, {n_k}] @ [{n_k}, {d_v}] = [{n_q}, {d_v}]{note}",
        "  Each output row is an average of the value vectors, weighted by that row of A.",
        format_matrix(steps.output[:, :shown], labels, dim_labels, decimals=decimals),
    ]
    return "\n".join(out)


def format_focus(
    steps: Steps,
    labels: Sequence[str],
    query: int,
    *,
    key: int | None = None,
    title: str = "",
    decimals: int = 4,
    max_dims: int = 8,
) -> str:
    """The five steps for one query token, key by key, with one score worked out by hand."""
    check_decimals(decimals)
    n_k = steps.scores.shape[1]
    d = steps.d_k
    shown, note = _dims(d, max_dims)
    visible = steps.visible()[query]
    if key is None:
        key = int(np.argmax(np.where(visible, steps.weights[query], -1.0)))
    ql, kl = labels[query], labels[key]
    out = [title, "=" * len(title), ""] if title else []
    out.append(f"query '{ql}' (token {query}): q = {_vec(steps.q[query, :shown], decimals)}{note}")
    out.append("")
    out.append("Steps 1-4 for this query, one line per key:")
    w = max(6, min(14, max(len(x) for x in labels)))
    cols = ("score Q.K", "scaled", "masked", "weight")
    out.append(f"  {'key':>{w}} " + " ".join(f"{c:>10}" for c in cols))
    for j in range(n_k):
        vals = (
            steps.scores[query, j],
            steps.scaled[query, j],
            steps.masked[query, j],
            steps.weights[query, j],
        )
        mark = "  <-" if j == key else ""
        cells = " ".join(f"{_fmt(float(x), decimals):>10}" for x in vals)
        out.append(f"  {_short(labels[j], w):>{w}} {cells}{mark}")
    out.append(f"  {'':>{w}} {'':>10} {'':>10} {'sum':>10} {steps.row_sums[query]:>10.{decimals}f}")
    out.append("")
    qv, kv = steps.q[query], steps.k[key]
    terms = " + ".join(f"({qv[i]:.{decimals}f} x {kv[i]:.{decimals}f})" for i in range(min(3, d)))
    more = f" + ... ({d} terms)" if d > 3 else ""
    out.append(f"Worked by hand for key '{kl}' (token {key}):")
    out.append(f"  k = {_vec(kv[:shown], decimals)}{note}")
    out.append(f"  step 1  score  = q . k = {terms}{more} = {steps.scores[query, key]:.{decimals}f}")
    out.append(
        f"  step 2  scaled = {steps.scores[query, key]:.{decimals}f} x {steps.scale:.4g}"
        f" = {steps.scaled[query, key]:.{decimals}f}"
    )
    bias = steps.bias[query, key]
    masked = _fmt(float(steps.masked[query, key]), decimals)
    out.append(f"  step 3  masked = scaled + {_fmt(float(bias), decimals)} = {masked}")
    row = steps.masked[query]
    finite = row[np.isfinite(row)]
    top = float(finite.max()) if finite.size else 0.0
    total = float(np.exp(finite - top).sum()) if finite.size else 0.0
    if np.isfinite(steps.masked[query, key]) and total > 0:
        num = math.exp(float(steps.masked[query, key]) - top)
        out.append(
            f"  step 4  weight = exp(masked - max) / sum over visible keys = {num:.{decimals}f} / "
            f"{total:.{decimals}f} = {steps.weights[query, key]:.{decimals}f}"
        )
    else:
        out.append("  step 4  weight = 0 (the key is masked)")
    out.append("")
    top_keys = np.argsort(-np.where(visible, steps.weights[query], -1.0))[: min(3, int(visible.sum()))]
    parts = " + ".join(f"{steps.weights[query, j]:.{decimals}f} x v['{labels[j]}']" for j in top_keys)
    rest = " + ..." if int(visible.sum()) > len(top_keys) else ""
    out.append(f"Step 5 · output = sum of weight x value over the keys = {parts}{rest}")
    shown_v, note_v = _dims(steps.v.shape[1], max_dims)
    out.append(f"  output['{ql}'] = {_vec(steps.output[query, :shown_v], decimals)}{note_v}")
    return "\n".join(out)


def _vec(v: np.ndarray, decimals: int) -> str:
    return "[" + ", ".join(f"{x:.{decimals}f}" for x in v) + "]"
