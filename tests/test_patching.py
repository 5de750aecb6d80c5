"""Activation patching against independent computations: hand-written forward pre-hooks on the
output projections, the model's own logits, and the identity patch."""

from __future__ import annotations

import numpy as np
import pytest

from attnviz.errors import InputError

CLEAN = "The cat sat on the mat"
CORRUPT = "The mat sat on the cat"  # the same length in every zoo tokenizer used here
IOI = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"

# every kind the zoo has: decoders (grouped-query, multi-query, softcapping, sliding windows,
# Conv1D), masked-LM encoders and encoder-decoders (their cross-attention heads)
DECODERS = ["gpt2", "llama", "mistral", "qwen2", "gemma2", "falcon", "phi3", "opt", "gpt_bigcode"]
MASKED = ["bert", "roberta", "distilbert", "modernbert"]
ENCDEC = ["t5", "bart", "marian"]
# the module that receives a stream's attention output, by name (not by attnviz's search)
_OUT_NAMES = ("o_proj", "out_proj", "c_proj", "o", "out_lin", "dense", "Wo")


def _model(tiny_model_path, tmp_path_factory, arch: str):
    """The zoo model with the LM head its metric needs (a masked-LM head for the base encoders)."""
    from attnviz.heads.patching import for_patching
    from attnviz.models.loading import load_model

    path = tiny_model_path(arch)
    if arch in ("bert", "distilbert"):
        import torch
        from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

        torch.manual_seed(1)
        folder = tmp_path_factory.mktemp(f"mlm-{arch}")
        AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(path)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(path).save_pretrained(folder)
        path = folder
    return for_patching(load_model(str(path), device="cpu"))


@pytest.fixture(scope="module")
def lm(tiny_model_path, tmp_path_factory):
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = _model(tiny_model_path, tmp_path_factory, arch)
        return cache[arch]

    return get


def _answer(loaded) -> str:
    """A word that is one token after the text in this tokenizer."""
    from attnviz.heads.patching import answer_token

    for word in ("cat", "the", "mat", "on", "a", "is", "sat"):
        try:
            answer_token(loaded, word)
            return word
        except InputError:
            continue
    raise AssertionError("no one-token word")


def _out_proj(loaded, stream: str, layer: int):
    """The projection after `stream` layer `layer`'s attention: a child of the attention module named
    like an output projection, else (BERT family) the dense layer of its sibling output module."""
    from attnviz.heads.interventions import attention_modules

    attn = attention_modules(loaded, stream)[layer]
    for name in _OUT_NAMES:
        child = getattr(attn, name, None)
        if child is not None and hasattr(child, "weight"):
            return child
    names = {id(m): n for n, m in loaded.model.named_modules()}
    parent = loaded.model.get_submodule(names[id(attn)].rsplit(".", 1)[0])
    return parent.output.dense


def _reference(loaded, setup, layer: int, head: int) -> float:
    """Denoising one head by hand: the corrupt run with the clean run's slice of the projection's input."""
    import torch

    from attnviz.heads.patching import forward, metric_of

    proj = _out_proj(loaded, setup.stream, layer)
    width = proj.weight.shape[0] if type(proj).__name__ == "Conv1D" else proj.weight.shape[1]
    d = width // loaded.capture.num_heads
    sl = slice(head * d, (head + 1) * d)
    kept = {}

    def keep(module, args):
        kept["x"] = args[0].detach().clone()

    def put(module, args):
        x = args[0].clone()
        x[..., sl] = kept["x"][..., sl]
        return (x, *args[1:])

    with torch.inference_mode():
        handle = proj.register_forward_pre_hook(keep)
        try:
            forward(setup, setup.ids["clean"])
        finally:
            handle.remove()
        handle = proj.register_forward_pre_hook(put)
        try:
            out = forward(setup, setup.ids["corrupt"]).double()
        finally:
            handle.remove()
    if setup.metric == "log-prob":
        out = torch.log_softmax(out, dim=-1)
    return float(metric_of(setup, out)[0])


@pytest.mark.parametrize("arch", DECODERS + MASKED + ENCDEC)
def test_one_head_equals_a_pre_hook_on_the_output_projection(lm, arch):
    from attnviz.heads.patching import patch, prepare

    loaded = lm(arch)
    word = _answer(loaded)
    result = patch(CLEAN, CORRUPT, loaded, answer=word)
    setup = prepare(loaded, CLEAN, CORRUPT, word, None, "log-prob", None)
    assert result.patched.shape == (loaded.capture.layer_counts[setup.stream], loaded.capture.num_heads)
    assert result.clean != result.corrupt  # the texts differ where it matters
    for layer, head in [(0, 1), (1, 3), (1, 0)]:
        assert result.patched[layer, head] == pytest.approx(_reference(loaded, setup, layer, head), abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "roberta", "t5"])
def test_identity_patch_leaves_the_logits_bit_for_bit(lm, arch):
    import torch

    from attnviz.heads.interventions import intervening
    from attnviz.heads.patching import _units, forward, prepare, record

    loaded = lm(arch)
    setup = prepare(loaded, CLEAN, CLEAN, _answer(loaded), None, "log-prob", None)
    with torch.inference_mode():
        plain = forward(setup, setup.ids["corrupt"])
    units = ["heads", "resid"] + (["layer"] if arch in ("llama", "gpt2") else [])
    for unit in units:
        kinds, keys, _ = _units(setup, unit, False)
        saved = record(setup, "clean", kinds, keys)
        with torch.inference_mode(), intervening(loaded, setup.stream, kinds) as state:
            state.sources = saved
            state.masks = {k: torch.ones(v.shape[:3] if k[0] == "head" else v.shape[:2], dtype=torch.bool)
                           for k, v in saved.items()}  # fmt: skip
            patched = forward(setup, setup.ids["corrupt"])
        assert torch.equal(plain, patched), unit


@pytest.mark.parametrize("arch", ["llama", "gpt2", "roberta", "bart"])
def test_patching_the_last_residual_everywhere_reproduces_the_source_logits(lm, arch):
    import torch

    from attnviz.heads.interventions import intervening
    from attnviz.heads.patching import forward, prepare, record

    loaded = lm(arch)
    setup = prepare(loaded, CLEAN, CORRUPT, _answer(loaded), None, "log-prob", None)
    n = loaded.capture.layer_counts[setup.stream]
    saved = record(setup, "clean", {"resid"}, [("resid", n)])
    with torch.inference_mode():
        source = forward(setup, setup.ids["clean"])
        corrupt = forward(setup, setup.ids["corrupt"])
        with intervening(loaded, setup.stream, {"resid"}) as state:
            state.sources = saved
            state.masks = {("resid", n): torch.ones(saved[("resid", n)].shape[:2], dtype=torch.bool)}
            patched = forward(setup, setup.ids["corrupt"])
    assert not torch.equal(source, corrupt)
    assert torch.equal(patched, source)


def test_units_and_batching(lm):
    from attnviz.heads.patching import patch

    loaded = lm("llama")
    word = _answer(loaded)
    one = patch(CLEAN, CORRUPT, loaded, answer=word, positions=True, batch_size=1)
    many = patch(CLEAN, CORRUPT, loaded, answer=word, positions=True, batch_size=64)
    n = many.patched.shape[-1]
    assert many.patched.shape == (2, 4, n) and len(many.positions) == n
    np.testing.assert_allclose(one.patched, many.patched, atol=1e-9)
    resid = patch(CLEAN, CORRUPT, loaded, answer=word, unit="resid")
    assert resid.patched.shape == (3, n) and resid.rows[-1] == "out"
    same = [i for i in range(n) if resid.positions[i] in ("<s>", "sat", "on", "the")]
    np.testing.assert_allclose(resid.effect[0, same], 0.0, atol=1e-6)  # an embedding both texts share
    assert resid.effect[-1, -1] == pytest.approx(1.0, abs=1e-6)  # the last position carries the answer
    layer = patch(CLEAN, CORRUPT, loaded, answer=word, unit="layer")
    assert layer.patched.shape == (2, 2) and layer.columns == ("attn", "mlp")
    last = patch(CLEAN, "The dog sat on the big mat", loaded, answer=word, at="last")
    assert last.patched.shape == (2, 4)
    noise = patch(CLEAN, CORRUPT, loaded, answer=word, noising=True)
    assert noise.clean == one.clean and noise.corrupt == one.corrupt


def test_metrics_normalise_to_the_two_runs(lm):
    from attnviz.heads.patching import patch

    loaded = lm("llama")
    for metric in ("logit-diff", "log-prob", "kl"):
        r = patch(CLEAN, CORRUPT, loaded, answer="mat", wrong="cat", metric=metric, unit="resid")
        # the residual leaving the last layer at the last position carries the whole clean run
        assert r.effect[-1, -1] == pytest.approx(1.0, abs=1e-6), metric
        assert r.effect[0, 0] == pytest.approx(0.0, abs=1e-6), metric  # an identical first token
    kl = patch(CLEAN, CORRUPT, loaded, answer="mat", metric="kl", unit="resid")
    assert kl.clean == pytest.approx(0.0, abs=1e-12) and kl.corrupt > 0


def test_model_without_lm_head_uses_the_embedding(tiny_model_path):
    from attnviz.heads.patching import patch
    from attnviz.models.loading import load_model

    loaded = load_model(str(tiny_model_path("bert")), device="cpu")
    r = patch(CLEAN, CORRUPT, loaded, answer="cat")
    assert r.metric == "embedding" and r.clean == pytest.approx(1.0) and r.corrupt < 1
    assert "no LM head" in r.note


def test_save_load_json_and_html(lm, tmp_path):
    from attnviz.heads.patching import Patching, patch

    r = patch(CLEAN, CORRUPT, lm("llama"), answer="mat", wrong="cat", positions=True)
    for ext in ("npz", "safetensors"):
        back = Patching.load(r.save(tmp_path / f"p.{ext}"))
        np.testing.assert_array_equal(back.patched, r.patched)
        assert back.as_dict() == r.as_dict() and back.positions == r.positions
    assert set(r.as_dict()) == {"model", "metric", "answer", "wrong", "clean", "corrupt", "patched", "effect"}
    html = r._repr_html_()
    assert "<table>" in html and "L" in html
    with pytest.raises(InputError, match="not a patching file"):
        np.savez(tmp_path / "x.npz", metadata=np.array("{}"))
        Patching.load(tmp_path / "x.npz")


def test_bad_input_is_one_line(lm):
    from attnviz.heads.patching import patch

    loaded = lm("llama")
    cases = [
        (
            lambda: patch(CLEAN, "A dog", loaded, answer="mat"),
            r"different lengths: clean \d+ tokens \[.*corrupt",
        ),
        (lambda: patch(CLEAN, CORRUPT, loaded, answer="mat", wrong="mat"), "the same word"),
        (
            lambda: patch(CLEAN, CORRUPT, loaded, answer="xyzzyplugh"),
            r"not one token .* became \d+ tokens \[",
        ),
        (lambda: patch(CLEAN, CORRUPT, loaded, answer="mat", unit="neurons"), "unknown unit"),
        (lambda: patch(CLEAN, CORRUPT, loaded, answer="mat", metric="logit-diff"), "needs wrong"),
    ]
    for call, pattern in cases:
        with pytest.raises(InputError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.slow
def test_smollm2_ioi(smollm2):
    """The indirect-object prompt: the clean run prefers Mary, the corrupt one John; name movers late."""
    from attnviz.heads.patching import patch

    heads = patch(IOI, IOI_CORRUPT, smollm2, answer="Mary", wrong="John")
    assert heads.clean == pytest.approx(6.1, abs=0.3) and heads.corrupt == pytest.approx(-5.5, abs=0.3)
    assert heads.patched.shape == (30, 9)
    (layer, _), best = heads.top(1)[0]
    assert layer >= 10 and best > 0.3  # L23H3 (0.58 in docs/causal.md): a late head carries the name


def test_encoder_decoder_streams(lm):
    from attnviz.heads.patching import patch

    loaded = lm("t5")
    word = _answer(loaded)
    cross = patch(CLEAN, CORRUPT, loaded, answer=word, positions=True)
    assert cross.stream == "cross" and cross.patched.shape == (2, 4, 1) and "decoder" in cross.note
    enc = patch(CLEAN, CORRUPT, loaded, answer=word, stream="encoder", positions=True)
    n = len(enc.positions)
    assert enc.patched.shape == (2, 4, n) and n > 1
    last = patch(CLEAN, "The mat sat on the big cat", loaded, answer=word, stream="encoder", at="last")
    assert last.patched.shape == (2, 4)
    with pytest.raises(InputError, match="unknown stream 'self'"):
        patch(CLEAN, CORRUPT, loaded, answer=word, stream="self")


def test_top_ranks_by_the_change_from_the_run_patched_into():
    from attnviz.heads.patching import Patching

    values = np.array([[0.0, 0.5], [1.0, 2.0]])  # clean 2, corrupt 0: effect = values / 2
    base = {"model": "m", "metric": "logit-diff", "unit": "heads", "stream": "self", "answer": "a",
            "wrong": "b", "clean_text": "x", "corrupt_text": "y", "clean": 2.0, "corrupt": 0.0,
            "patched": values, "rows": ("0", "1"), "columns": ("0", "1")}  # fmt: skip
    assert Patching(**base).top(1) == [((1, 1), 1.0)]  # denoising: furthest from the corrupt run
    assert Patching(**base, noising=True).top(1) == [((0, 0), 0.0)]  # noising: furthest from the clean run


# issue 29 part 6: own attention code is edited at the output projection's input (found by data flow);
# the reference names that projection by hand (tests/test_zoo.py's OUT_PROJ).
@pytest.mark.parametrize("arch", ["bloom", "gpt_neo", "xglm", "mpt", "deberta-v2", "roformer"])
def test_own_code_models_patch_heads_exactly(tiny_model_path, arch):
    import torch
    from test_zoo import HEAD_SIZE, OUT_PROJ

    from attnviz.heads.patching import for_patching, forward, metric_of, patch, prepare

    loaded = for_patching(str(tiny_model_path(arch)))
    assert not loaded.capture.interface
    result = patch(CLEAN, CORRUPT, loaded, answer="the")
    setup = prepare(loaded, CLEAN, CORRUPT, "the", None, "log-prob", None)
    d = HEAD_SIZE.get(arch, 8)
    kept: dict = {}
    for layer, head in [(0, 1), (1, 3)]:
        proj = loaded.model.base_model.get_submodule(OUT_PROJ[arch].format(layer))
        sl = slice(head * d, (head + 1) * d)

        def put(module, args, sl=sl):
            x = args[0].clone()
            x[..., sl] = kept["x"][..., sl]
            return (x, *args[1:])

        with torch.inference_mode():
            handle = proj.register_forward_pre_hook(lambda m, a: kept.__setitem__("x", a[0].detach().clone()))
            forward(setup, setup.ids["clean"])
            handle.remove()
            handle = proj.register_forward_pre_hook(put)
            out = torch.log_softmax(forward(setup, setup.ids["corrupt"]).double(), dim=-1)
            handle.remove()
        assert result.patched[layer, head] == pytest.approx(float(metric_of(setup, out)[0]), abs=1e-6)


def test_path_patching_needs_the_attention_interface(tiny_model_path):
    from attnviz.heads.path_patching import path_patch

    with pytest.raises(InputError, match="its own code"):
        path_patch(
            CLEAN, CORRUPT, str(tiny_model_path("bloom")), answer="the", sender=(0, 1), receivers=[(1, 2)]
        )
