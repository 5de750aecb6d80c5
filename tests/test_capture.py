"""Attention is really captured, and equals the model's own eager `output_attentions`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.extraction import extract
from attnviz.models.loading import load_model

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


# -- head-sliced capture and the preallocated store ------------------------------------------------


def _inputs(loaded, text):
    enc = loaded.tokenizer([text], return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if loaded.kind == "encoder-decoder":
        start = loaded.model.config.decoder_start_token_id
        inputs["decoder_input_ids"] = torch.tensor([[start, *enc["input_ids"][0].tolist()]])
    return inputs


def _last_hidden(out) -> list[np.ndarray]:
    states = [out.last_hidden_state]
    if getattr(out, "encoder_last_hidden_state", None) is not None:
        states.append(out.encoder_last_hidden_state)
    return [s[0].detach().numpy() for s in states]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block", [1 << 22, 7])
def test_head_sliced_weights_equal_eager(tiny_model_path, arch, block, monkeypatch):
    """Heads 1 and 2 (two KV groups in the GQA Llama) of the last layer, whole or in 1-row blocks."""
    from attnviz.models import capture

    path = tiny_model_path(arch)
    loaded = load_model(str(path), device="cpu")  # first: a first load's probe pass computes heads too
    monkeypatch.setattr(capture, "_BLOCK_ELEMENTS", block)
    computed: list[tuple[int, ...]] = []
    real = capture.head_weights

    def spy(module, query, key, mask, heads, out, **kwargs):
        computed.append(tuple(out.shape))
        return real(module, query, key, mask, heads, out, **kwargs)

    monkeypatch.setattr(capture, "head_weights", spy)
    att = extract(TEXT, loaded, layers=[-1], heads=[2, 1])
    out = _eager_reference(path, loaded, TEXT)
    streams = {"self": out.attentions} if arch != "t5" else {}
    if arch == "t5":
        streams = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions}
        streams["cross"] = out.cross_attentions
    assert set(att.streams) == set(streams)
    for name, theirs in streams.items():
        expected = theirs[-1][0, [1, 2]].numpy()[None]  # [1 layer, 2 heads, q, k]
        np.testing.assert_allclose(att.streams[name], expected, atol=1e-5)
    # only the two heads of the one recorded layer (per stream) were ever computed
    assert len(computed) == len(streams) and all(s[1] == 2 for s in computed)


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_layer_output_equals_unrecorded(tiny_model_path, arch):
    from transformers import AutoModel

    from attnviz.models.capture import Recorder, recording

    path = tiny_model_path(arch)
    loaded = load_model(str(path), device="cpu")
    cap = loaded.capture
    inputs = _inputs(loaded, TEXT)
    with torch.no_grad():
        plain = _last_hidden(loaded.model(**inputs))
        rec = Recorder(index=cap.index, layers=frozenset({0, 1}), heads=[3], counts=cap.layer_counts)
        with recording(rec):
            recorded = _last_hidden(loaded.model(**inputs))
        # the unrecorded path is transformers' own sdpa (eager for T5, whose position bias it keeps)
        impl = "eager" if arch == "t5" else "sdpa"
        ref = _last_hidden(AutoModel.from_pretrained(path, attn_implementation=impl).eval()(**inputs))
    assert rec.weights and all(w.shape[1] == 1 for w in rec.weights.values())
    for a, b, c in zip(recorded, plain, ref, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama", "t5"])
def test_all_layers_fill_one_preallocated_buffer(tiny_model_path, arch):
    """Every layer writes into its row of one [batch, layers, heads, q, k] array: no per-layer copies."""
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    cap = loaded.capture
    rec = cap.run(_inputs(loaded, TEXT), None, None)
    main = "encoder" if arch == "t5" else "self"
    buf = rec.buffers[main]
    assert buf.shape[1:3] == (cap.num_layers, cap.num_heads)
    for layer in range(cap.num_layers):
        w = rec.weights[(main, layer)]
        assert w.data_ptr() == buf[:, layer].data_ptr()
    assert rec.stacked(main, list(range(cap.num_layers))) is buf
    att = extract(TEXT, loaded)
    np.testing.assert_allclose(att.attn, buf[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5"])
def test_float16_store_rounds_and_halves(tiny_model_path, arch, tmp_path):
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    full = extract(TEXT, loaded)
    half = extract(TEXT, loaded, store="float16")
    for name, a in full.streams.items():
        b = half.streams[name]
        assert b.dtype == np.float16 and b.nbytes * 2 == a.nbytes
        np.testing.assert_allclose(b.astype(np.float32), a, atol=1e-3)
    assert not np.array_equal(half.attn.astype(np.float32), full.attn)  # it does round
    path = half.save(tmp_path / "half.safetensors")
    back = type(half).load(path)
    assert back.attn.dtype == np.float16 and np.array_equal(back.attn, half.attn)
    assert path.stat().st_size < full.save(tmp_path / "full.safetensors").stat().st_size


def test_unknown_store_is_an_input_error(tiny_bert):
    from attnviz.errors import InputError

    loaded = tiny_bert
    with pytest.raises(InputError, match="float16"):
        extract(TEXT, loaded, store="int8")


def test_cli_store_float16_says_it_rounds(tmp_path, bert):
    from typer.testing import CliRunner

    from attnviz.cli import app

    runner = CliRunner()
    helptext = runner.invoke(app, ["extract", "--help"], terminal_width=200).output
    assert "--store" in helptext and "rounds" in helptext
    out = tmp_path / "a.safetensors"
    model = bert
    res = runner.invoke(app, ["extract", TEXT, "-m", model, "--store", "float16", "-o", str(out)])
    assert res.exit_code == 0, res.output
    from attnviz.attention import Attention

    assert Attention.load(out).attn.dtype == np.float16
    bad = runner.invoke(app, ["extract", TEXT, "-m", model, "--store", "int8"])
    assert bad.exit_code == 2 and "float16" in bad.output


@pytest.mark.slow
def test_smollm2_head_sliced_equals_eager_and_output_unchanged(smollm2, seed_text):
    """Heads from all three KV groups of three layers, against the same weights run eager."""
    model = smollm2.model
    inputs = _inputs(smollm2, seed_text)
    att = extract(seed_text, smollm2, layers=[0, 15, 29], heads=[0, 4, 8])
    from attnviz.models.capture import Recorder, recording

    cap = smollm2.capture
    with torch.no_grad():
        rec = Recorder(index=cap.index, layers=frozenset({15}), heads=[4], counts=cap.layer_counts)
        with recording(rec):
            recorded = _last_hidden(model(**inputs))
        unrecorded = _last_hidden(model(**inputs))
        try:
            model.set_attn_implementation("sdpa")
            sdpa = _last_hidden(model(**inputs))
            model.set_attn_implementation("eager")
            out = model(**inputs, output_attentions=True)
        finally:
            model.set_attn_implementation("attnviz")
    expected = np.stack([out.attentions[i][0, [0, 4, 8]].numpy() for i in (0, 15, 29)])
    np.testing.assert_allclose(att.attn, expected, atol=1e-5)
    np.testing.assert_array_equal(recorded[0], unrecorded[0])
    np.testing.assert_allclose(recorded[0], sdpa[0], atol=1e-5)


def test_attention_sinks_fall_back_to_eager_weights(tiny_model_path, monkeypatch):
    """A weight term head_weights does not model (sinks) makes the layer run eager, then keep the heads."""
    from attnviz.models import capture

    def fail(*args, **kwargs):
        raise AssertionError("head_weights must not run when the layer has attention sinks")

    loaded = load_model(str(tiny_model_path("llama")), device="cpu")
    cap = loaded.capture
    inputs = _inputs(loaded, TEXT)
    expected = extract(TEXT, loaded, layers=[1], heads=[1, 2]).attn[0]
    monkeypatch.setattr(capture, "head_weights", fail)
    rec = capture.Recorder(index=cap.index, layers=frozenset({1}), heads=[1, 2], counts=cap.layer_counts)
    with torch.no_grad(), capture.recording(rec):
        loaded.model(**inputs, s_aux=torch.zeros(4))  # llama's eager ignores it: same weights
    np.testing.assert_allclose(rec.weights[("self", 1)][0].numpy(), expected, atol=1e-6)
