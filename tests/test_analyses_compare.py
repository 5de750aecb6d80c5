"""Minimal pairs: alignment, and the per-head JS change against loops over heads and tokens."""

from __future__ import annotations

import numpy as np
import pytest
from analyses_helpers import js_scalar, renorm, synthetic

from attnviz.analyses.compare import align, compare, js_divergence
from attnviz.errors import InputError
from attnviz.extraction import extract


def brute_change(a, b, pairs) -> list[list[float]]:
    layers, heads = a.attn.shape[:2]
    ia, ib = [p for p, _ in pairs], [q for _, q in pairs]
    out = []
    for layer in range(layers):
        row = []
        for h in range(heads):
            values = []
            for qa, qb in pairs:
                p = renorm([float(a.attn[layer, h, qa, k]) for k in ia])
                q = renorm([float(b.attn[layer, h, qb, k]) for k in ib])
                values.append(js_scalar(p, q))
            row.append(sum(values) / len(values))
        out.append(row)
    return out


def test_js_divergence_bounds() -> None:
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert js_divergence(np.array([0.3, 0.7]), np.array([0.3, 0.7])) == pytest.approx(0.0)
    p, q = [0.2, 0.5, 0.3], [0.6, 0.1, 0.3]
    assert js_divergence(np.array(p), np.array(q)) == pytest.approx(js_scalar(p, q))


def test_same_length_aligns_by_position() -> None:
    a = synthetic(("[CLS]", "too", "big", "[SEP]"), seed=1)
    b = synthetic(("[CLS]", "too", "small", "[SEP]"), seed=2)
    result = compare(a, b)
    assert result.alignment.mode == "positional"
    assert result.alignment.differing == [(2, 2)]
    assert "big/small" in result.alignment.describe()
    pairs = [(i, i) for i in range(4)]
    np.testing.assert_allclose(result.change, brute_change(a, b, pairs), atol=1e-6)


def test_different_lengths_align_on_shared_tokens() -> None:
    a = synthetic(("[CLS]", "the", "cat", "sat", "[SEP]"), seed=1)
    b = synthetic(("[CLS]", "the", "big", "black", "cat", "sat", "[SEP]"), seed=2)
    result = compare(a, b)
    assert result.alignment.mode == "shared"
    assert result.alignment.pairs == ((0, 0), (1, 1), (2, 4), (3, 5), (4, 6))
    assert "aligned on 5 shared tokens" in result.alignment.describe()
    np.testing.assert_allclose(result.change, brute_change(a, b, result.alignment.pairs), atol=1e-6)
    rows = result.ranked(3)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["change"] == pytest.approx(result.change.max())
    assert rows[0]["change"] >= rows[1]["change"] >= rows[2]["change"]


def test_identical_texts_do_not_change() -> None:
    a = synthetic(("a", "b", "c"))
    assert np.allclose(compare(a, a).change, 0.0)


def test_errors() -> None:
    with pytest.raises(InputError, match="fewer than two tokens"):
        align(("a", "b", "c"), ("x", "y"))
    a, b = synthetic(("a", "b"), heads=2), synthetic(("a", "b"), heads=3)
    with pytest.raises(InputError, match="same layers and heads"):
        compare(a, b)
    with pytest.raises(InputError, match="was not compared"):
        compare(a, a).pair(0, 7)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_tiny_models(tiny_model_path, arch: str) -> None:
    path = str(tiny_model_path(arch))
    a = extract("the cat sat on the mat", path, device="cpu")
    b = extract("the dog sat on the mat", path, device="cpu")
    result = compare(a, b)
    np.testing.assert_allclose(result.change, brute_change(a, b, result.alignment.pairs), atol=1e-6)
    assert ((result.change >= 0) & (result.change <= 1)).all()


@pytest.mark.slow
def test_minilm_trophy(minilm) -> None:
    a = extract("The trophy did not fit in the suitcase because it was too big.", minilm)
    b = extract("The trophy did not fit in the suitcase because it was too small.", minilm)
    result = compare(a, b)
    assert result.alignment.mode == "positional"
    np.testing.assert_allclose(result.change, brute_change(a, b, result.alignment.pairs), atol=1e-6)
    assert result.change.max() > 0.01


def test_same_length_but_shifted_aligns_on_shared_tokens() -> None:
    a = ("[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]")
    b = ("[CLS]", "the", "b", "##i", "##g", "cat", "sat", "[SEP]")
    got = align(a, b)
    assert got.mode == "shared"
    assert got.pairs == ((0, 0), (1, 1), (2, 5), (3, 6), (7, 7))


def test_a_negative_top_is_refused_not_a_dropped_row() -> None:
    """Issue 28: `ranked(-1)` silently dropped the last head; the rule was the CLI's (`--top` min 0)."""
    from attnviz.errors import cli_terms

    result = compare(
        synthetic(("[CLS]", "too", "big", "[SEP]"), seed=1),
        synthetic(("[CLS]", "too", "small", "[SEP]"), seed=2),
    )
    everything = result.ranked()
    assert result.ranked(0) == everything and len(result.ranked(2)) == 2
    with pytest.raises(InputError, match=r"^bad top -1: use 0 \(all heads\) or more$") as caught:
        result.ranked(-1)
    assert caught.value.render(cli_terms).startswith("bad --top -1")
