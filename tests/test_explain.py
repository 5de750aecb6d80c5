"""The five steps on a real head equal the attention the model itself produced."""

from __future__ import annotations

import numpy as np
import pytest

from attnviz.analyses.explain import explain, explain_head
from attnviz.errors import InputError, TokenNotFoundError, cli_terms
from attnviz.extraction import extract
from attnviz.heads.patterns import row_entropy_of
from attnviz.tokens import positions, positions_of


@pytest.mark.slow
def test_minilm_softmax_step_is_the_extracted_attention(minilm, seed_text):
    att = extract(seed_text, minilm, layers=[1], heads=[5], qkv=True)
    ex = explain_head(att, 1, 5)
    np.testing.assert_allclose(ex.steps.weights, att.head(1, 5), atol=1e-5)
    assert ex.max_difference < 1e-5
    assert ex.steps.scale == pytest.approx(1 / np.sqrt(32))
    assert not ex.steps.causal
    np.testing.assert_allclose(ex.steps.output, ex.steps.weights @ ex.steps.v)
    # "paris" attending to "visit", step by step
    p, v = positions(att, "paris")[0], positions(att, "visit")[0]
    assert ex.steps.scores[p, v] == pytest.approx(float(ex.steps.q[p] @ ex.steps.k[v]))
    assert ex.labels[p] == "paris"


@pytest.mark.slow
def test_explain_from_text_and_every_head_of_a_layer(minilm, seed_text):
    ex = explain(seed_text, minilm, layer=-1, head=0)
    assert ex.layer == 5 and ex.head == 0
    att = extract(seed_text, minilm, layers=[2], qkv=True)
    for h in att.heads:
        assert explain_head(att, 2, h).max_difference < 1e-5


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_tiny_models_causal_gqa_and_position_bias(tiny_model_path, arch):
    from attnviz.models.loading import load_model

    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    att = extract("the cat sat on the mat", loaded, qkv=True)
    for layer in att.layers:
        for head in att.heads:
            ex = explain_head(att, layer, head)
            np.testing.assert_allclose(ex.steps.weights, att.head(layer, head), atol=1e-5)
    steps = explain_head(att, 0, 0).steps
    if arch in ("llama", "gpt2"):
        assert steps.causal
        assert np.all(steps.masked[np.triu_indices(att.n_tokens, 1)] == -np.inf)
    if arch == "t5":
        assert steps.position_bias  # T5's relative position bias, added in step 3


def test_explain_needs_vectors():
    from test_plots import fake_attention

    with pytest.raises(InputError, match="qkv=True"):
        explain_head(fake_attention(), 0, 0)


def test_positions_by_text_piece_and_position():
    from dataclasses import replace

    from test_plots import fake_attention

    att = replace(
        fake_attention(),
        tokens=("[CLS]", "transform", "##ers", "cat", "cat", "[SEP]"),
        word_ids=(None, 0, 0, 1, 2, None),
        words=("transformers", "cat", "cat"),
    )
    assert positions(att, "cat") == [3, 4]
    assert positions(att, "Transformers") == [1, 2]  # every piece of the word
    assert positions(att, "@-1") == [5]
    assert positions_of(att, ["cat", "@3", "[sep]"]) == [3, 4, 5]
    with pytest.raises(TokenNotFoundError, match="its tokens are"):
        positions(att, "dog")


def test_row_entropy_of_masks_the_future():
    from test_plots import fake_attention

    att = fake_attention(layers=2, heads=3, causal=True)
    ent = row_entropy_of(att)
    assert ent.entropy.shape == (2, 3, 6)
    np.testing.assert_allclose(ent.bound, np.log2(np.arange(1, 7)))
    assert np.all(ent.entropy <= ent.bound + 1e-6)
    data = ent.as_dict()
    assert data["layers"] == [0, 1] and len(data["mean_entropy"]) == 2


def test_explain_follows_a_query_and_key_in_the_library(bert):
    model = bert
    text = "the cat sat on the cat"
    ex = explain(text, model, layer=1, head=2, query="cat", key="sat")
    assert ex.query_matches == (2, 6) and ex.query == 2 and ex.key == 3
    assert ex.as_dict()["query"] == 2 and ex.as_dict()["key"] == 3
    plain = explain(text, model, layer=1, head=2)
    assert plain.query is None and plain.key is None
    np.testing.assert_allclose(plain.steps.weights, ex.steps.weights)
    no_special = explain(text, model, layer=1, head=2, special_tokens=False)
    assert no_special.labels[0] != "[CLS]" and len(no_special.labels) == len(plain.labels) - 2
    with pytest.raises(InputError, match=r"^key needs query ") as caught:  # the keywords, not the flags
        explain(text, model, layer=1, head=2, key="sat")
    assert caught.value.render(cli_terms).startswith("--key needs --query ")
