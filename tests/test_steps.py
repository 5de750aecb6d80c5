"""The five steps of attention, checked against seed 002's pure-Python formula, and their tables."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from attnviz.analyses.steps import five_steps, format_focus, format_steps
from attnviz.analyses.toy import build_toy
from attnviz.errors import InputError


# -- seed 002, by hand: lists and loops, no numpy, no torch ---------------------------------------
def matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def transpose(a):
    return [list(row) for row in zip(*a, strict=True)]


def softmax(vec):
    finite = [v for v in vec if v != float("-inf")]
    top = max(finite) if finite else 0.0
    exps = [0.0 if v == float("-inf") else math.exp(v - top) for v in vec]
    total = sum(exps)
    return [e / total for e in exps]


def by_hand(q, k, v, causal):
    """Seed 002's `attention`, keeping each step."""
    d_k = len(q[0])
    scores = matmul(q, transpose(k))
    scaled = [[s / math.sqrt(d_k) for s in row] for row in scores]
    masked = [
        [float("-inf") if causal and j > i else s for j, s in enumerate(row)] for i, row in enumerate(scaled)
    ]
    weights = [softmax(row) for row in masked]
    return scores, scaled, masked, weights, matmul(weights, v)


def random_matrix(rows, cols, rng):
    return [[rng.gauss(0, 1) for _ in range(cols)] for _ in range(rows)]


@pytest.mark.parametrize("causal", [False, True])
def test_five_steps_equal_the_formula_by_hand(causal: bool):
    rng = random.Random(42)
    q, k, v = (random_matrix(5, 8, rng) for _ in range(3))
    steps = five_steps(q, k, v, causal=causal)
    expected = by_hand(q, k, v, causal)
    got = (steps.scores, steps.scaled, steps.masked, steps.weights, steps.output)
    for name, mine, hand in zip(
        ("scores", "scaled", "masked", "weights", "output"), got, expected, strict=True
    ):
        np.testing.assert_allclose(mine, np.array(hand), rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(steps.row_sums, 1.0)
    assert steps.scale == pytest.approx(1 / math.sqrt(8))


def test_causal_mask_is_minus_infinity_in_the_future_and_zero_weight():
    rng = random.Random(0)
    steps = five_steps(*(random_matrix(4, 2, rng) for _ in range(3)), causal=True)
    future = np.triu(np.ones((4, 4), dtype=bool), k=1)
    assert np.all(steps.masked[future] == -np.inf)
    assert np.all(np.isfinite(steps.masked[~future]))
    assert np.all(steps.weights[future] == 0)
    assert steps.weights[0, 0] == 1.0  # the first token can only see itself
    assert steps.causal


def test_bias_and_fully_masked_rows():
    q = k = v = np.eye(3)
    bias = np.array([[0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf], [0, 0, 0]])
    steps = five_steps(q, k, v, scale=1.0, bias=bias)
    np.testing.assert_allclose(steps.masked[0], [1.0, 1.0, 2.0])
    assert steps.position_bias
    np.testing.assert_array_equal(steps.weights[1], [0, 0, 0])  # no visible key: zeros, not NaN
    with pytest.raises(InputError, match="shapes"):
        five_steps(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 3)))


def test_format_steps_prints_five_labelled_tables():
    toy = build_toy("<BOS> I like transformers <EOS>", dim=16, heads=2, seed=42, causal=True)
    text = format_steps(toy.steps[0], toy.labels, title="head 0")
    for n in range(1, 6):
        assert f"Step {n} ·" in text
    assert "Q K^T" in text and "sqrt(8)" in text and "-inf" in text and "sum" in text
    assert "[5, 8] @ [8, 5] = [5, 5]" in text
    weights_block = text.split("Step 4")[1].split("Step 5")[0]
    rows = [line.split() for line in weights_block.splitlines()[2:]]  # after the title and header
    first_row = next(r for r in rows if r and r[0] == "<BOS>")
    assert first_row[1:] == ["1.0000", "0.0000", "0.0000", "0.0000", "0.0000", "1.0000"]


def test_format_focus_works_one_score_by_hand():
    toy = build_toy("I like transformers", dim=8, heads=1, seed=0)
    s = toy.steps[0]
    text = format_focus(s, toy.labels, 2, key=0)
    assert "query 'transformers'" in text and "key 'I'" in text
    assert f"= {s.scores[2, 0]:.4f}" in text
    assert f"= {s.weights[2, 0]:.4f}" in text


def test_toy_and_explain_use_the_one_five_steps():
    import attnviz.analyses.explain
    import attnviz.analyses.steps
    import attnviz.analyses.toy

    assert (
        attnviz.analyses.toy.five_steps
        is attnviz.analyses.steps.five_steps
        is attnviz.analyses.explain.five_steps
    )


@pytest.mark.parametrize("decimals", [-1, 11, 2.5, True])
def test_the_tables_refuse_decimals_they_cannot_print(decimals):
    """Issue 28: `format_steps(decimals=-1)` crashed in Python's format mini-language ("Format
    specifier missing precision"); the 0-10 rule was the CLI's, twice. Now it is the printers'."""
    from attnviz.analyses.steps import check_decimals
    from attnviz.errors import cli_terms

    toy = build_toy(3, dim=4, heads=1)
    for call in (
        lambda: format_steps(toy.steps[0], toy.labels, decimals=decimals),
        lambda: format_focus(toy.steps[0], toy.labels, 0, decimals=decimals),
        lambda: check_decimals(decimals),
    ):
        with pytest.raises(InputError, match=rf"^bad decimals {decimals}: use 0-10$") as caught:
            call()
        assert caught.value.render(cli_terms) == f"bad --decimals {decimals}: use 0-10"
    assert check_decimals(0) == 0 and " 1.000" in format_steps(toy.steps[0], toy.labels, decimals=3)
