"""Attention rollout against a brute-force product written with loops over heads and tokens."""

from __future__ import annotations

import numpy as np
import pytest
from analyses_helpers import synthetic

from attnviz.analyses.rollout import rollout
from attnviz.errors import InputError, cli_terms
from attnviz.extraction import extract


def brute_rollout(attn: np.ndarray, fusion: str, r: float) -> list[list[float]]:
    """Loops only: fuse heads, mix in the identity, renormalise, multiply last @ ... @ first."""
    layers, heads, n, _ = attn.shape
    result = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for layer in range(layers):
        mixed = []
        for i in range(n):
            row = []
            for j in range(n):
                values = [float(attn[layer, h, i, j]) for h in range(heads)]
                fused = {"mean": sum(values) / heads, "max": max(values), "min": min(values)}[fusion]
                row.append(r * fused + (1 - r) * (1.0 if i == j else 0.0))
            total = sum(row)
            mixed.append([x / total for x in row])
        result = [[sum(mixed[i][m] * result[m][j] for m in range(n)) for j in range(n)] for i in range(n)]
    return result


@pytest.mark.parametrize(("fusion", "r"), [("mean", 0.5), ("max", 0.3), ("min", 0.9)])
def test_rollout_equals_brute_force(fusion: str, r: float) -> None:
    att = synthetic(("[CLS]", "a", "b", "c", "[SEP]"), layers=3, heads=4, seed=3)
    got = rollout(att, fusion, r)
    np.testing.assert_allclose(got.matrix, brute_rollout(att.attn, fusion, r), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.matrix.sum(1), 1.0)
    assert got.layers == (0, 1, 2) and got.head_fusion == fusion


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_rollout_on_tiny_models(tiny_model_path, arch: str) -> None:
    att = extract("the cat sat on the mat", str(tiny_model_path(arch)), device="cpu")
    got = rollout(att)
    np.testing.assert_allclose(got.matrix, brute_rollout(att.attn, "mean", 0.5), atol=1e-6)
    if arch == "gpt2":  # decoder: nothing flows from the future
        assert att.causal and np.allclose(np.triu(got.matrix, 1), 0.0)
    record = got.as_dict()
    assert record["tokens"] == list(att.tokens) and len(record["rollout"]) == att.n_tokens


def test_layer_range_limits_the_product(bert) -> None:
    att = extract("the cat sat", bert, layers=[1], device="cpu")
    got = rollout(att, residual=1.0)
    np.testing.assert_allclose(got.matrix, att.attn[0].mean(0), atol=1e-6)
    assert got.layers == (1,)


def test_bad_options() -> None:
    att = synthetic(("a", "b", "c"), layers=3)
    with pytest.raises(InputError, match=r"^unknown head_fusion 'median'") as caught:  # the keyword
        rollout(att, "median")
    assert caught.value.render(cli_terms).startswith("unknown --head-fusion 'median'")  # the CLI's flag
    with pytest.raises(InputError, match=r"^bad residual 1.5"):
        rollout(att, residual=1.5)
    gap = synthetic(("a", "b"), layers=3)
    from dataclasses import replace

    with pytest.raises(InputError, match="consecutive"):
        rollout(replace(gap, layers=(0, 2, 3)))


@pytest.mark.slow
def test_rollout_on_minilm(minilm) -> None:
    att = extract("The cat sat on the mat.", minilm)
    got = rollout(att)
    np.testing.assert_allclose(got.matrix, brute_rollout(att.attn, "mean", 0.5), atol=1e-6)
