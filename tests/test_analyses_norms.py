"""Value-weighted attention against a direct computation from each model's own weights.

The reference hooks each layer's value projection in a plain forward pass (not the capture), then
loops over heads and tokens: f_h(x_j) = v_h(x_j) W_O^h with the head's slice of the output weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from analyses_helpers import synthetic

from attnviz.analyses.norms import norm_weighted, special_share, value_norms, weighting_statistics
from attnviz.errors import InputError
from attnviz.extraction import extract
from attnviz.models.loading import load_model


def _parts(model, arch: str, layer: int):
    """(value module, function output -> [tokens, kv_heads*d], W_O as [hidden, heads*d], n_kv)."""
    cfg = model.config
    if arch == "bert":
        block = model.encoder.layer[layer].attention
        return block.self.value, lambda o: o, block.output.dense.weight, cfg.num_attention_heads
    if arch == "distilbert":
        block = model.transformer.layer[layer].attention
        return block.v_lin, lambda o: o, block.out_lin.weight, cfg.n_heads
    if arch == "gpt2":
        block = model.h[layer].attn
        hidden = cfg.n_embd
        return block.c_attn, lambda o: o[..., 2 * hidden :], block.c_proj.weight.T, cfg.n_head
    if arch == "llama":
        block = model.layers[layer].self_attn
        return block.v_proj, lambda o: o, block.o_proj.weight, cfg.num_key_value_heads
    raise ValueError(arch)


def brute_norms(loaded, arch: str, text: str) -> np.ndarray:
    import torch

    model = loaded.model
    n_layers = loaded.num_layers
    heads = loaded.capture.num_heads
    seen: dict[int, torch.Tensor] = {}
    handles = []
    parts = [_parts(model, arch, layer) for layer in range(n_layers)]
    for layer, (module, pick, _w, _kv) in enumerate(parts):
        handles.append(
            module.register_forward_hook(
                lambda _m, _i, o, layer=layer, pick=pick: seen.__setitem__(layer, pick(o))
            )
        )
    try:
        enc = loaded.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            model(**enc)
    finally:
        for h in handles:
            h.remove()
    n = enc["input_ids"].shape[1]
    out = np.zeros((n_layers, heads, n))
    for layer, (_m, _p, w_out, kv) in enumerate(parts):
        values = seen[layer][0].double()  # [tokens, kv * d]
        d = values.shape[-1] // kv
        w = w_out.detach().double()
        for h in range(heads):
            g = h // (heads // kv)  # grouped-query: the kv head serving query head h
            for j in range(n):
                v = values[j, g * d : (g + 1) * d]
                f = w[:, h * d : (h + 1) * d] @ v
                out[layer, h, j] = float(torch.linalg.norm(f))
    return out


@pytest.mark.parametrize("arch", ["bert", "distilbert", "gpt2", "llama"])
def test_norms_equal_the_model_weights(tiny_model_path, arch: str) -> None:
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    text = "the cat sat on the mat"
    att = extract(text, loaded, qkv=True)
    expected = brute_norms(loaded, arch, text)
    np.testing.assert_allclose(value_norms(att, loaded), expected, rtol=1e-4, atol=1e-6)
    weighted = norm_weighted(text, loaded)
    assert weighted.weighting == "norm" and weighted.metadata()["weighting"] == "norm"
    for layer in range(loaded.num_layers):
        for h in range(loaded.capture.num_heads):
            for i in range(att.n_tokens):
                for j in range(att.n_tokens):
                    want = float(att.attn[layer, h, i, j]) * expected[layer, h, j]
                    assert weighted.attn[layer, h, i, j] == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_head_and_layer_selection(tiny_model_path) -> None:
    loaded = load_model(str(tiny_model_path("llama")), device="cpu")
    text = "the cat sat"
    full = brute_norms(loaded, "llama", text)
    some = norm_weighted(text, loaded, layers=[1], heads=[1, 3])
    att = extract(text, loaded, layers=[1], heads=[1, 3])
    expected = att.attn * full[1][[1, 3]][None, :, None, :]
    np.testing.assert_allclose(some.attn, expected, rtol=1e-4, atol=1e-6)


def test_errors(tiny_bert) -> None:
    import torch

    loaded = tiny_bert
    with pytest.raises(InputError, match="qkv=True"):
        norm_weighted(extract("the cat", loaded), loaded)
    with pytest.raises(InputError, match="already norm-weighted"):
        norm_weighted(norm_weighted("the cat", loaded), loaded)
    odd = torch.nn.Sequential(torch.nn.Identity())
    fake = SimpleNamespace(name="odd-model", model=odd, capture=SimpleNamespace(interface=False))
    with pytest.raises(InputError, match=r"odd-model \(Sequential.*attention interface.*norm weighting"):
        value_norms(extract("the cat", loaded, qkv=True), fake)


def test_special_share_and_statistics() -> None:
    att = synthetic(("[CLS]", "a", "b", "[SEP]"), (True, False, False, True), layers=1, heads=2)
    share = special_share(att)
    for h in range(2):
        rows = [float(att.attn[0, h, i, 0] + att.attn[0, h, i, 3]) for i in (1, 2)]
        assert share[0, h] == pytest.approx(sum(rows) / 2, rel=1e-5)
    stats = weighting_statistics(att, att)
    assert set(stats) == {"special_attention", "special_norm"} and stats["special_norm"].shape == (1, 2)


@pytest.mark.slow
def test_minilm(minilm) -> None:
    text = "The cat sat on the mat."
    att = extract(text, minilm, qkv=True)
    expected = brute_norms(minilm, "bert", text)
    np.testing.assert_allclose(value_norms(att, minilm), expected, rtol=1e-4, atol=1e-5)
    weighted = norm_weighted(att, minilm)
    share_att, share_norm = special_share(att), special_share(weighted)
    assert share_norm.mean() < share_att.mean()  # [CLS]/[SEP] weights shrink once norms count


@pytest.mark.slow
def test_smollm2_grouped_query_heads(smollm2) -> None:
    """SmolLM2: 9 query heads share 3 key/value heads; checked on the first and last layer."""
    text = "The cat sat on the mat."
    expected = brute_norms(smollm2, "llama", text)
    att = extract(text, smollm2, layers=[0, 29], qkv=True)
    np.testing.assert_allclose(value_norms(att, smollm2), expected[[0, 29]], rtol=1e-3, atol=1e-4)
