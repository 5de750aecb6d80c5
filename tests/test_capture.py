"""Attention is really captured, and equals the model's own eager `output_attentions`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.extraction import extract
from attnviz.models import load_model

TEXT = "The cat sat on the mat, transformers attend."
ARCHS = ["bert", "distilbert", "gpt2", "llama", "t5"]


def _eager_reference(path, loaded, text):
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = loaded.tokenizer([text], return_tensors="pt")
    kwargs = {}
    if loaded.kind == "encoder-decoder":
        start = ref.config.decoder_start_token_id
        kwargs["decoder_input_ids"] = torch.tensor([[start, *enc["input_ids"][0].tolist()]])
    with torch.no_grad():
        return ref(**enc, **kwargs, output_attentions=True)


def test_sdpa_returns_no_attention_but_we_do(tiny_model_path):
    """The transformers 5 trap: the default sdpa implementation silently returns nothing."""
    from transformers import AutoModel

    path = tiny_model_path("bert")
    plain = AutoModel.from_pretrained(path).eval()
    assert plain.config._attn_implementation == "sdpa"
    loaded = load_model(str(path), device="cpu")
    with torch.no_grad():
        out = plain(**loaded.tokenizer([TEXT], return_tensors="pt"), output_attentions=True)
    assert not out.attentions  # empty: the trap is real
    att = extract(TEXT, loaded)
    assert att.attn.shape[:2] == (2, 4) and att.attn.any()


@pytest.mark.parametrize("arch", ARCHS)
def test_equals_eager_output_attentions(tiny_model_path, arch):
    path = tiny_model_path(arch)
    loaded = load_model(str(path), device="cpu")
    att = extract(TEXT, loaded)
    out = _eager_reference(path, loaded, TEXT)
    if arch == "t5":
        pairs = [
            (att.attn, out.encoder_attentions),
            (att.decoder.attn, out.decoder_attentions),
            (att.cross, out.cross_attentions),
        ]
        assert set(att.streams) == {"encoder", "decoder", "cross"}
    else:
        pairs = [(att.attn, out.attentions)]
    for ours, theirs in pairs:
        expected = np.stack([t[0].numpy() for t in theirs])
        assert ours.dtype == np.float32 and ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_sum_to_one_and_causal_future_is_zero(tiny_model_path, arch):
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    att = extract(TEXT, loaded)
    np.testing.assert_allclose(att.attn.sum(-1), 1.0, atol=1e-5)
    future = np.triu(np.ones((att.n_tokens, att.n_tokens), dtype=bool), 1)
    if loaded.causal:
        assert (att.attn[..., future] == 0).all()
    else:
        assert (att.attn[..., future] > 0).any()
    if att.decoder is not None:
        m = att.decoder.n_tokens
        assert (att.decoder.attn[..., np.triu(np.ones((m, m), dtype=bool), 1)] == 0).all()


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_selected_layers_and_heads_match_full_extraction(tiny_model_path, arch):
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    full = extract(TEXT, loaded)
    part = extract(TEXT, loaded, layers=[-1], heads=[3, 1])
    assert part.layers == (1,) and part.heads == (1, 3)
    np.testing.assert_allclose(part.attn, full.attn[1:2][:, [1, 3]], atol=1e-6)
    np.testing.assert_allclose(part.head(1, 3), full.head(1, 3), atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "t5"])
def test_captured_qkv_reproduce_the_weights(tiny_model_path, arch):
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    att = extract(TEXT, loaded, qkv=True)
    for layer, v in att.qkv.items():
        scores = np.einsum("hqd,hkd->hqk", v.q, v.k) * v.scaling + v.bias
        scores -= scores.max(-1, keepdims=True)
        weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
        np.testing.assert_allclose(weights, att.attn[att.layer_pos(layer)], atol=1e-5)
        assert v.v.shape == v.k.shape


@pytest.mark.slow
def test_minilm_equals_eager(minilm, seed_text):
    out = _eager_reference(minilm.source.path, minilm, seed_text)
    att = extract(seed_text, minilm)
    np.testing.assert_allclose(att.attn, np.stack([t[0].numpy() for t in out.attentions]), atol=1e-5)
    assert att.attn.shape == (6, 12, 14, 14)


@pytest.mark.slow
def test_smollm2_extracts_causal_attention(smollm2):
    att = extract("The cat sat on the mat. The cat sat", smollm2, layers=[0, 15, 29])
    assert att.attn.shape[:2] == (3, 9) and att.causal and att.kind == "decoder"
    np.testing.assert_allclose(att.attn.sum(-1), 1.0, atol=1e-4)
    n = att.n_tokens
    assert (att.attn[..., np.triu(np.ones((n, n), dtype=bool), 1)] == 0).all()
