"""Aggregation over heads/layers and hiding special tokens, against loops over heads and tokens."""

from __future__ import annotations

import numpy as np
import pytest
from analyses_helpers import synthetic

from attnviz.analyses.aggregate import aggregate, derive, without_special
from attnviz.attention import Attention
from attnviz.errors import InputError
from attnviz.extraction import extract

TOKENS = ("[CLS]", "the", "cat", "sat", ".", "[SEP]")
SPECIAL = (True, False, False, False, False, True)


def test_mean_and_max_over_heads_equal_loops() -> None:
    att = synthetic(TOKENS, SPECIAL, layers=3, heads=4)
    mean = aggregate(att, "heads", "mean", heads=[1, 3])
    top = aggregate(att, "heads", "max", heads=[1, 3])
    n = att.n_tokens
    for li in range(3):
        for i in range(n):
            for j in range(n):
                a, b = float(att.attn[li, 1, i, j]), float(att.attn[li, 3, i, j])
                assert mean.attn[li, 0, i, j] == pytest.approx((a + b) / 2, abs=1e-7)
                assert top.attn[li, 0, i, j] == pytest.approx(max(a, b), abs=1e-7)
    assert mean.heads == (1,) and mean.pooled_heads == (1, 3) and mean.layers == (0, 1, 2)
    assert mean.note == "mean of heads 1, 3"
    np.testing.assert_allclose(mean.attn.sum(-1), 1.0, atol=1e-6)


def test_over_layers_and_both() -> None:
    att = synthetic(TOKENS, SPECIAL, layers=3, heads=2)
    by_layer = aggregate(att, "layers", "max")
    both = aggregate(att, "both", "mean", layers=[0, 2])
    for h in range(2):
        for i in range(att.n_tokens):
            for j in range(att.n_tokens):
                vals = [float(att.attn[layer, h, i, j]) for layer in range(3)]
                assert by_layer.attn[0, h, i, j] == pytest.approx(max(vals), abs=1e-7)
    pooled = [float(att.attn[layer, h, 2, 4]) for layer in (0, 2) for h in range(2)]
    assert both.attn.shape == (1, 1, 6, 6)
    assert both.attn[0, 0, 2, 4] == pytest.approx(sum(pooled) / 4, abs=1e-7)
    assert both.pooled_layers == (0, 2) and both.pooled_heads == (0, 1)
    assert both.metadata()["notes"] == ["mean of heads 0, 1", "mean of layers 0, 2"]


def test_bad_aggregation_is_an_input_error() -> None:
    att = synthetic(TOKENS)
    with pytest.raises(InputError, match="use mean or max"):
        aggregate(att, how="median")
    with pytest.raises(InputError, match="heads, layers or both"):
        aggregate(att, over="tokens")
    with pytest.raises(InputError, match="head 9 was not extracted"):
        aggregate(att, heads=[9])


def test_without_special_renormalises_rows_like_a_loop() -> None:
    att = synthetic(TOKENS, SPECIAL, causal=False)
    out = without_special(att)
    keep = [i for i, s in enumerate(SPECIAL) if not s]
    assert out.tokens == ("the", "cat", "sat", ".")
    assert out.special == (False,) * 4 and type(out) is Attention
    assert "special tokens hidden" in out.note
    for li in range(2):
        for h in range(3):
            for a, i in enumerate(keep):
                total = sum(float(att.attn[li, h, i, j]) for j in keep)
                for b, j in enumerate(keep):
                    assert out.attn[li, h, a, b] == pytest.approx(
                        float(att.attn[li, h, i, j]) / total, rel=1e-5
                    )


def test_sep_only_head_no_longer_dominates() -> None:
    """A head putting 95% on [SEP] keeps only what it does with the other 5%."""
    att = synthetic(TOKENS, SPECIAL, layers=1, heads=1)
    arr = np.full((1, 1, 6, 6), 0.01, dtype=np.float32)
    arr[..., 5] = 0.95
    hidden = without_special(Attention(**{**att.__dict__, "attn": arr}))
    np.testing.assert_allclose(hidden.attn, 0.25, atol=1e-6)


def test_without_special_edge_cases() -> None:
    plain = synthetic(("a", "b"))
    assert without_special(plain).tokens == ("a", "b")
    only = synthetic(("[CLS]", "[SEP]"), (True, True))
    with pytest.raises(InputError, match="only special tokens"):
        without_special(only)


def test_causal_rows_stay_causal(tiny_model_path) -> None:
    att = extract("the cat sat on the mat", str(tiny_model_path("llama")), device="cpu")
    assert att.special[0]  # BOS
    out = without_special(att)
    assert out.tokens == att.tokens[1:]
    assert np.allclose(np.triu(out.attn, 1), 0)
    np.testing.assert_allclose(out.attn.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_how_it_was_made_survives_save_and_load(tmp_path, suffix) -> None:
    """weighting, notes and pooled layers/heads are written and read back by Attention.load."""
    att = synthetic(TOKENS, SPECIAL, layers=3, heads=4)
    out = aggregate(derive(without_special(att), weighting="norm"), "both", "max", layers=[0, 2])
    back = Attention.load(out.save(tmp_path / f"a{suffix}"))
    assert type(back) is Attention
    assert back.weighting == "norm"
    assert back.notes == (
        "special tokens hidden, rows renormalised",
        "max of heads 0-3",
        "max of layers 0, 2",
    )
    assert back.pooled_layers == (0, 2) and back.pooled_heads == (0, 1, 2, 3)
    assert back.layers == (0,) and back.heads == (0,)
    np.testing.assert_array_equal(back.attn, out.attn)
    plain = Attention.load(synthetic(TOKENS, SPECIAL).save(tmp_path / f"b{suffix}"))
    how = (plain.weighting, plain.notes, plain.pooled_layers, plain.pooled_heads)
    assert how == ("attention", (), None, None)


def test_derived_saves_its_notes(tmp_path) -> None:
    out = aggregate(synthetic(TOKENS, SPECIAL), "heads", "max")
    path = out.save(tmp_path / "a.npz")
    import json

    with np.load(path) as data:
        meta = json.loads(str(data["metadata"]))
    assert meta["weighting"] == "attention" and meta["notes"] == ["max of heads 0-2"]
