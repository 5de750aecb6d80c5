"""Direct logit attribution: the components sum to the model's own logit (difference), and each one
equals a hand-written reference computed from the model's own modules (named here, as tests may)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zoo

from attnviz.analyses.attribution import Attribution, attribute
from attnviz.errors import InputError
from attnviz.models.loading import load_model

TEXT = "The cat sat on the mat, and the"
# post-norm: each layer normalises its stream, every norm's scale frozen from the run (analyses/postnorm.py)
POST_NORM = [
    "roberta",
    "xlm-roberta",
    "camembert",
    "data2vec-text",
    "electra",
    "ernie",
    "rembert",
    "deberta",
    "deberta-v2",
    "mpnet",
    "roformer",
    "bart",
    "marian",
    "blenderbot-small",
    "plbart",
]
# every zoo model it supports (decoders, masked LMs, encoder-decoders, pre-norm and post-norm; own attention
# code too, edited at the output projection); the others are refused in one line: no LM head, ALBERT's
# shared layer, or own code whose output projection was not found
SUPPORTED = [
    "modernbert",
    "esm",
    "gpt2",
    "gpt_neox",
    "gptj",
    "codegen",
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "phi",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "falcon",
    "falcon-alibi",
    "opt",
    "stablelm",
    "starcoder2",
    "olmo",
    "olmo2",
    "cohere",
    "granite",
    "granitemoe",
    "persimmon",
    "biogpt",
    "gpt_bigcode",
    "smollm3",
    "glm",
    "helium",
    "nemotron",
    "gpt_oss",
    "arcee",
    "ernie4_5",
    "apertus",
    "t5",
    "mt5",
    "umt5",
    "mbart",
    "pegasus",
    "blenderbot",
    "m2m_100",
    "megatron-bert",
    "gpt_neo",
    "bloom",
    "mpt",
    "xglm",
    *POST_NORM,
]
FAST = ("llama", "gpt2", "gemma2", "t5", "modernbert", "bloom", "roberta", "bart")


def _words(loaded, text: str = TEXT) -> list[str]:
    """Corpus words that are one token after `text` in this model's tiny vocabulary."""
    from attnviz.analyses.attribution import answer_token

    out = []
    for word in ("cat", "the", "mat", "sat", "and", "a"):
        try:
            answer_token(loaded, text, word)
            out.append(word)
        except InputError:
            pass
    return out


def _text(loaded) -> str:
    masked = not loaded.causal and not loaded.capture.encoder_decoder
    return f"{TEXT} {loaded.tokenizer.mask_token}" if masked else TEXT


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in SUPPORTED]
)
def test_components_sum_to_the_logit_difference_across_the_zoo(tiny_model_path, name):
    loaded = load_model(str(tiny_model_path(name)), device="cpu")
    answer, wrong = _words(loaded)[:2]
    r = attribute(_text(loaded), loaded, answer=answer, wrong=wrong)
    assert abs(r.total - r.logit) < 1e-3
    left = r.others.get("rest", r.others.get("softcap"))
    assert abs(left) < 1e-3  # nothing non-linear is left over on these (tiny logits under a softcap)
    assert len([n for n in r.names if "H" in n]) == r.num_layers * r.num_heads


@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in zoo.SPECS if s.name not in SUPPORTED], ids=lambda s: s.name)
def test_the_rest_of_the_zoo_is_refused_in_one_line(tiny_model_path, spec):
    loaded = load_model(str(tiny_model_path(spec.name)), device="cpu")
    with pytest.raises(InputError, match=r"no LM head|post-norm|its own code|several times"):
        attribute(TEXT, loaded, answer="the")


def _llama_reference(loaded, text: str, a: int, w: int) -> np.ndarray:
    """Each head's contribution by hand: W_O slice, RMSNorm weight over the run's own rms, W_U row."""
    model = loaded.model
    got = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args, i=i: got.__setitem__(i, args[0][0]))
        for i, layer in enumerate(model.model.layers)
    ]
    hooks.append(model.model.norm.register_forward_pre_hook(lambda m, args: got.__setitem__("x", args[0][0])))
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    x = got["x"][-1].double()
    model.requires_grad_(False)
    norm = model.model.norm
    scale = norm.weight.double() / torch.sqrt(x.pow(2).mean() + norm.variance_epsilon)
    direction = (model.lm_head.weight[a] - model.lm_head.weight[w]).double()
    n_heads = loaded.capture.num_heads
    out = np.zeros((len(model.model.layers), n_heads))
    for i, layer in enumerate(model.model.layers):
        w_o = layer.self_attn.o_proj.weight.double()
        d = w_o.shape[1] // n_heads
        o = got[i][-1].double()
        for h in range(n_heads):
            write = w_o[:, h * d : (h + 1) * d] @ o[h * d : (h + 1) * d]
            out[i, h] = float((write * scale) @ direction)
    return out


def test_heads_equal_a_hand_written_reference_on_llama(tiny_model_path):
    """Grouped-query Llama, RMSNorm: a wrong slice, a missing norm scale or a wrong W_U row fails."""
    loaded = load_model(str(tiny_model_path("llama")), device="cpu", task="causal-lm")
    answer, wrong = _words(loaded)[:2]
    r = attribute(TEXT, loaded, answer=answer, wrong=wrong)
    want = _llama_reference(loaded, TEXT, r.answer_id, r.wrong_id)
    np.testing.assert_allclose(r.head_map(), want, atol=1e-6)
    assert np.abs(want).max() > 1e-3  # the reference is not trivially zero


def test_layer_norm_biases_and_conv1d_on_gpt2(tiny_model_path, empty_model_cache):
    """GPT-2 with random biases: LayerNorm centres each part; every bias lands in `bias`, by hand."""
    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu", task="causal-lm")
    model = loaded.model
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    answer = _words(loaded)[0]
    r = attribute(TEXT, loaded, answer=answer)
    got = {}
    hooks = [
        b.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: got.__setitem__(i, a[0][0]))
        for i, b in enumerate(model.transformer.h)
    ]
    hooks.append(model.transformer.ln_f.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0][0])))
    with torch.no_grad():
        logits = model(input_ids=loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"]).logits[0, -1]
    for h in hooks:
        h.remove()
    model.requires_grad_(False)
    ln = model.transformer.ln_f
    x = got["x"][-1].double()
    sigma = torch.sqrt(x.var(unbiased=False) + ln.eps)
    u = model.lm_head.weight[r.answer_id].double()

    def through(v):  # the frozen final norm, without its bias
        return ((v - v.mean()) / sigma * ln.weight.double()) @ u

    bias = float(ln.bias.double() @ u)
    for i, block in enumerate(model.transformer.h):
        w = block.attn.c_proj.weight.double()  # Conv1D: [in, out]
        d = w.shape[0] // 4
        o = got[i][-1].double()
        for h in range(4):
            assert r.value(f"L{i}H{h}") == pytest.approx(
                float(through(o[h * d : (h + 1) * d] @ w[h * d : (h + 1) * d])), abs=1e-6
            )
        bias += float(through(block.attn.c_proj.bias.double()))
    assert r.value("bias") == pytest.approx(bias, abs=1e-6)
    assert r.logit == pytest.approx(float(logits[r.answer_id]), abs=1e-5)
    assert abs(r.value("rest")) < 1e-4


def test_a_softcap_is_its_own_component(tiny_model_path, empty_model_cache):
    """Gemma-2 with a tight softcap: the linear parts add up to the pre-cap logit difference, and
    `softcap` holds exactly what the cap changes (never spread over the heads)."""
    loaded = load_model(str(tiny_model_path("gemma2")), device="cpu", task="causal-lm")
    model = loaded.model
    model.config.final_logit_softcapping = 0.05
    answer, wrong = _words(loaded)[:2]
    r = attribute(TEXT, loaded, answer=answer, wrong=wrong)
    got = {}
    hook = model.lm_head.register_forward_hook(lambda m, a, out: got.__setitem__("raw", out[0, -1]))
    with torch.no_grad():
        model(input_ids=loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"])
    hook.remove()
    raw = float(got["raw"][r.answer_id] - got["raw"][r.wrong_id])
    linear = r.total - r.value("softcap")
    assert linear == pytest.approx(raw, abs=1e-5)
    assert r.value("softcap") == pytest.approx(r.logit - raw, abs=1e-5)
    assert abs(r.value("softcap")) > 1e-3  # the cap really changed the logits here


def test_encoder_decoder_heads_include_cross_attention(tiny_model_path):
    loaded = load_model(str(tiny_model_path("t5")), device="cpu")
    answer, wrong = _words(loaded)[:2]
    r = attribute(TEXT, loaded, answer=answer, wrong=wrong)
    assert r.has_cross and "L1X3" in r.names and "L1H3" in r.names
    assert abs(r.total - r.logit) < 1e-3


def test_no_lm_head_and_post_norm_own_code_are_refused(tiny_model_path):
    with pytest.raises(InputError, match="no LM head"):
        attribute(TEXT, str(tiny_model_path("bert")), answer="cat")
    with pytest.raises(InputError, match="post-norm"):  # its layers' own code: the parts do not add up
        attribute(f"{TEXT} [MASK]", str(tiny_model_path("ibert")), answer="cat")


def _roberta_reference(loaded, text: str, a: int, w: int) -> tuple[np.ndarray, float]:
    """Each head's contribution and the biases' by hand (BERT's layers, RoBERTa's MLM head): W_O slice,
    then every later LayerNorm's gamma / sigma_run with centring, the head's dense, its gelu frozen
    from the run, its LayerNorm, the W_U rows; each bias and beta carried the same way."""
    model = loaded.model
    model.requires_grad_(False)
    layers, head = model.roberta.encoder.layer, model.lm_head
    norms = [n for layer in layers for n in (layer.attention.output.LayerNorm, layer.output.LayerNorm)]
    got = {}
    hooks = [
        layer.attention.output.dense.register_forward_pre_hook(lambda m, a, i=i: got.__setitem__(i, a[0][0]))
        for i, layer in enumerate(layers)
    ]
    hooks += [n.register_forward_pre_hook(lambda m, a, n=n: got.__setitem__(n, a[0][0])) for n in norms]
    hooks.append(head.dense.register_forward_hook(lambda m, a, out: got.__setitem__("z", out[0])))
    hooks.append(head.layer_norm.register_forward_pre_hook(lambda m, a: got.__setitem__("hx", a[0][0])))
    with torch.no_grad():
        model(**loaded.tokenizer(text, return_tensors="pt"))
    for h in hooks:
        h.remove()
    pos = loaded.tokenizer(text)["input_ids"].index(loaded.tokenizer.mask_token_id)

    def frozen(ln, x, v):  # LayerNorm's linear part, its 1/sigma from the run's own input x
        return (v - v.mean()) * ln.weight.double() / torch.sqrt(x.var(unbiased=False) + ln.eps)

    z = got["z"][pos].double()
    gelu = torch.nn.functional.gelu(z) / z
    direction = (head.decoder.weight[a] - head.decoder.weight[w]).double()

    def carried(v, after):  # through the norms from index `after` on, then the head
        for ln in norms[after:]:
            v = frozen(ln, got[ln][pos].double(), v)
        v = (head.dense.weight.double() @ v) * gelu
        return float(frozen(head.layer_norm, got["hx"][pos].double(), v) @ direction)

    n_heads = loaded.capture.num_heads
    out = np.zeros((len(layers), n_heads))
    bias = 0.0
    for i, layer in enumerate(layers):
        dense = layer.attention.output.dense
        w_o, o = dense.weight.double(), got[i][pos].double()
        d = w_o.shape[1] // n_heads
        for h in range(n_heads):
            out[i, h] = carried(w_o[:, h * d : (h + 1) * d] @ o[h * d : (h + 1) * d], 2 * i)
        bias += carried(dense.bias.double(), 2 * i)
        bias += carried(layer.attention.output.LayerNorm.bias.double(), 2 * i + 1)
        bias += carried(layer.output.LayerNorm.bias.double(), 2 * i + 2)
    hx = got["hx"][pos].double()
    bias += float(frozen(head.layer_norm, hx, head.dense.bias.double() * gelu) @ direction)
    bias += float(head.layer_norm.bias.double() @ direction + (head.decoder.bias[a] - head.decoder.bias[w]))
    return out, bias


def test_post_norm_heads_equal_a_hand_written_reference_on_roberta(tiny_model_path, empty_model_cache):
    """BERT's post-norm layers (RoBERTa's MLM head), random weights and biases: a missing or unfrozen
    LayerNorm, a norm not centred, a beta not carried through the later norms, or a wrong slice fails."""
    loaded = load_model(str(tiny_model_path("roberta")), device="cpu", task="masked-lm")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # every weight, gain and bias random and large: each head matters
        for p in loaded.model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    text = _text(loaded)
    answer, wrong = _words(loaded, text)[:2]
    r = attribute(text, loaded, answer=answer, wrong=wrong)
    want, bias = _roberta_reference(loaded, text, r.answer_id, r.wrong_id)
    np.testing.assert_allclose(r.head_map(), want, atol=1e-4)
    assert np.abs(want).max() > 1e-3  # the reference is not trivially zero
    assert r.value("bias") == pytest.approx(bias, abs=1e-4)
    assert abs(bias) > 1e-2  # the biases really matter here
    assert abs(r.total - r.logit) < 1e-3 and abs(r.value("rest")) < 1e-4


def test_answers_are_checked(tiny_model_path):
    with pytest.raises(InputError, match="the same"):
        attribute(TEXT, "no/such-model", answer="cat", wrong=" cat ")  # before any model loads
    with pytest.raises(InputError, match="answer"):
        attribute(TEXT, "no/such-model", answer="  ")
    gpt2 = str(tiny_model_path("gpt2"))
    with pytest.raises(InputError, match=r"becomes \d+ tokens \("):
        attribute(TEXT, gpt2, answer="zzqx")
    with pytest.raises(InputError, match="position"):
        attribute(TEXT, gpt2, answer="cat", position=99)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load_round_trip(tiny_model_path, tmp_path, suffix):
    r = attribute("The <b>cat</b> sat on the mat, and the", str(tiny_model_path("gpt2")), answer="the")
    back = Attribution.load(r.save(tmp_path / f"a{suffix}"))
    assert back.names == r.names and back.tokens == r.tokens and back.logit == r.logit
    np.testing.assert_array_equal(back.values, r.values)
    page = r._repr_html_()
    assert "<b>cat" not in page and "&lt;b&gt;cat" in page
    with pytest.raises(InputError, match="not an attribution"):
        from attnviz.outputs import write_arrays

        Attribution.load(write_arrays(tmp_path / f"x{suffix}", {"v": np.zeros(1)}, '{"kind": "x"}'))


@pytest.mark.slow
def test_smollm2_indirect_object(smollm2):
    """The classic prompt: Mary - John is about +6.1, the parts add up, late heads carry it."""
    r = attribute(
        "When Mary and John went to the store, John gave a drink to", smollm2, answer="Mary", wrong="John"
    )
    assert r.answer == "Mary" and r.wrong == "John"
    assert r.logit == pytest.approx(6.12, abs=0.1)
    assert abs(r.total - r.logit) < 1e-3 and abs(r.value("rest")) < 1e-3
    best = r.top(1)[0]
    assert best[0].startswith("L2") and "H" in best[0] and best[1] > 1.0


def test_batch_writes_per_head_attribution(tiny_model_path, tmp_path):
    """`statistics = ["dla"]`: each text's [layers, heads] is attribute() on the model's own top token."""
    from attnviz.batch import iter_records, run_batch_analysis
    from attnviz.batch.config import BatchConfig

    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu")
    texts = ["The cat sat on the mat, and the", "A dog chased the cat", "Attention is a weighted"]
    cfg = BatchConfig(statistics=("entropy", "dla"), batch_size=3)
    recs = list(iter_records(texts, cfg, model=loaded))
    lm = load_model(str(tiny_model_path("gpt2")), device="cpu", task="causal-lm")
    for rec in recs:
        ids = lm.tokenizer(rec.text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            top = int(lm.model(input_ids=ids).logits[0, -1].argmax())
        want = attribute(rec.text, lm, answer=top)  # the model's own top token, by id
        np.testing.assert_allclose(rec.values["dla"], want.head_map(), atol=1e-6)
        assert np.abs(want.head_map()).max() > 0
    run_batch_analysis(texts, cfg, tmp_path / "out", model=loaded)
    assert any((tmp_path / "out").rglob("*.parquet"))
    with pytest.raises(InputError, match="dla"):
        list(iter_records(texts, cfg, model=load_model(str(tiny_model_path("t5")), device="cpu")))


def test_exported_lazily_from_the_package():
    import attnviz
    from attnviz.analyses.lens import Lens, lens

    assert attnviz.attribute is attribute and attnviz.Attribution is Attribution
    assert attnviz.lens is lens and attnviz.Lens is Lens
