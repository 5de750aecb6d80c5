"""The toy attention: reproducible random heads whose steps equal seed 002's formula by hand."""

from __future__ import annotations

import numpy as np
import pytest
from test_steps import by_hand

from attnviz.analyses.toy import build_toy, parse_tokens
from attnviz.errors import InputError, cli_terms


def test_matches_torch_scaled_dot_product_attention():
    import torch

    toy = build_toy(7, dim=12, heads=3, seed=3, causal=True)
    for s in toy.steps:
        ref = torch.nn.functional.scaled_dot_product_attention(
            torch.tensor(s.q)[None], torch.tensor(s.k)[None], torch.tensor(s.v)[None], is_causal=True
        )[0]
        np.testing.assert_allclose(s.output, ref.numpy(), rtol=1e-10, atol=1e-12)


def test_toy_steps_equal_the_formula_by_hand_on_its_own_vectors():
    toy = build_toy("I like transformers", dim=16, heads=2, seed=42, causal=True)
    for s in toy.steps:
        hand = by_hand(s.q.tolist(), s.k.tolist(), s.v.tolist(), causal=True)
        np.testing.assert_allclose(s.weights, np.array(hand[3]), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(s.output, np.array(hand[4]), rtol=1e-12, atol=1e-15)


def test_toy_is_reproducible_and_heads_differ():
    a = build_toy(12, dim=16, heads=2, seed=0)
    b = build_toy(12, dim=16, heads=2, seed=0)
    c = build_toy(12, dim=16, heads=2, seed=1)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert not np.allclose(a.weights, c.weights)
    assert a.weights.shape == (2, 12, 12)
    assert a.d_k == 8 and a.x.shape == (12, 16)
    assert not np.allclose(a.weights[0], a.weights[1])  # each head its own pattern
    np.testing.assert_allclose(a.weights.sum(axis=-1), 1.0)


def test_temperature_sharpens_and_flattens():
    sharp = build_toy(10, seed=0, temperature=0.25).entropy().mean()
    plain = build_toy(10, seed=0).entropy().mean()
    flat = build_toy(10, seed=0, temperature=4.0).entropy().mean()
    assert sharp < plain < flat <= np.log2(10)


def test_causal_entropy_bound_grows_with_position():
    toy = build_toy(5, causal=True)
    np.testing.assert_allclose(toy.bound(), np.log2(np.arange(1, 6)))
    assert np.all(toy.entropy() <= toy.bound() + 1e-9)
    assert np.all(toy.entropy()[:, 0] == 0)


def test_parse_tokens_and_bad_settings():
    assert parse_tokens("3") == ["t0", "t1", "t2"]
    assert parse_tokens("I like transformers") == ["I", "like", "transformers"]
    assert parse_tokens("a,b") == ["a", "b"]
    same = build_toy("the cat the", dim=4, heads=1, seed=0)
    pos = same.x[2] - same.x[0]  # same token embedding, different positions
    assert not np.allclose(pos, 0)
    for kwargs, message in (
        ({"tokens": "0"}, "^tokens 0: "),
        ({"tokens": " "}, "^tokens is empty"),
        ({"dim": 10, "heads": 3}, "^dim 10 is not divisible by heads 3"),
        ({"heads": 0}, "^heads 0: "),
        ({"temperature": 0.0}, "^temperature 0.0: "),
    ):
        with pytest.raises(InputError, match=message):  # the keywords of build_toy, not the flags
            build_toy(**kwargs)
    with pytest.raises(InputError) as caught:
        build_toy(dim=10, heads=3)
    assert caught.value.render(cli_terms).startswith("--dim 10 is not divisible by --num-heads 3")


def test_a_negative_count_and_a_missing_head_are_refused_by_the_library():
    """Issue 28: the CLI alone refused `--tokens -3` (build_toy made one token named "-3") and a
    `--head` the toy lacks (toy.steps[5] is an IndexError); both rules now live in the library."""
    for value in ("-3", " -12 "):
        with pytest.raises(InputError, match=r"^tokens -\d+: give a count of 1 or more") as caught:
            build_toy(value)
        assert caught.value.render(cli_terms).startswith("--tokens -")
    assert parse_tokens("a -3 b") == ["a", "-3", "b"]  # among words it is a token like any other
    toy = build_toy(4, dim=4, heads=2)
    assert toy.head_steps(1) is toy.steps[1]
    for head in (2, -1):
        with pytest.raises(InputError, match=rf"^head {head} is out of range: the toy has heads 0-1$"):
            toy.head_steps(head)
