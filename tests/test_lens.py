"""The logit lens: the last stage is the model's own logits, and each stage's norm is its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.analyses.lens import Lens, lens
from attnviz.errors import InputError
from attnviz.models.loading import load_model

TEXT = "The cat sat on the mat, and the"


def _logits(loaded, text: str) -> torch.Tensor:
    from attnviz.analyses.residual import tokenized

    inputs, _ = tokenized(loaded, text)
    with torch.no_grad():
        return loaded.model(**inputs).logits[0]


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2", "t5", "modernbert", "electra", "bart"])
def test_the_last_stage_is_the_models_own_logits(tiny_model_path, name):
    """Post-norm models too (ELECTRA's masked LM, BART): each layer's output goes through the head as is."""
    from attnviz.analyses.residual import with_head

    loaded = with_head(str(tiny_model_path(name)), "lens", device="cpu")
    text = TEXT if loaded.causal or loaded.capture.encoder_decoder else f"{TEXT} [MASK]"
    r = lens(text, loaded, k=3)
    logits = _logits(loaded, text)
    assert r.top_ids.shape == (
        loaded.capture.layer_counts["decoder" if name in ("t5", "bart") else "self"] + 1,
        len(r.tokens),
        3,
    )
    np.testing.assert_array_equal(r.top_ids[-1, :, 0], logits.argmax(-1).numpy())
    probs = torch.softmax(logits.float(), -1).topk(3, -1).values.numpy()
    np.testing.assert_allclose(r.top_probs[-1], probs, atol=1e-5)
    assert r.stages[0] == "embeddings" and r.stages[-1] == f"L{len(r.stages) - 2}"


@pytest.mark.parametrize("group", [64, 5])
def test_each_stage_gets_its_own_norm_scale(tiny_model_path, monkeypatch, group):
    """Every stage by hand: lm_head(norm(stream)) on that stage's stream. Reusing the last layer's
    RMS scale (TransformerLens #1076) gives other probabilities, which this test would catch.
    With groups of 5 the tiny vocabulary (178) takes the grouped top-k, with a tail of 3 entries."""
    import attnviz.analyses.lens as lens_module

    monkeypatch.setattr(lens_module, "_GROUP", group)
    loaded = load_model(str(tiny_model_path("llama")), device="cpu", task="causal-lm")
    vocab = loaded.model.config.vocab_size
    assert (vocab // group >= 8 * 4 and vocab % group > 0) == (group == 5)  # which top-k each takes
    model = loaded.model
    model.requires_grad_(False)
    r = lens(TEXT, loaded, k=4)
    ids = loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    got = {}
    hook = model.model.norm.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0]))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    hook.remove()
    stages = [*hidden[:-1], got["x"]]  # transformers ties the last hidden state to the norm's output
    norm, eps = model.model.norm, model.model.norm.variance_epsilon
    last_rms = torch.sqrt(got["x"].pow(2).mean(-1, keepdim=True) + eps)
    for i, h in enumerate(stages):
        want = torch.softmax(model.lm_head(norm(h))[0], -1).topk(4, -1)
        np.testing.assert_array_equal(r.top_ids[i], want.indices.numpy())
        np.testing.assert_allclose(r.top_probs[i], want.values.numpy(), atol=1e-5)
    wrong = torch.softmax(model.lm_head(norm.weight * stages[0] / last_rms)[0], -1).topk(4, -1)
    assert not np.allclose(r.top_probs[0], wrong.values.numpy(), atol=1e-5)  # what 1e-5 above tells apart


def test_the_answers_rank_and_probability(tiny_model_path):
    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu", task="causal-lm")
    r = lens(TEXT, loaded, k=5, answer="cat")
    logits = _logits(loaded, TEXT)
    probs = torch.softmax(logits.float(), -1)[:, r.answer_id]
    np.testing.assert_allclose(r.answer_prob[-1], probs.numpy(), atol=1e-6)
    ranks = (logits > logits[:, r.answer_id : r.answer_id + 1]).sum(-1) + 1
    np.testing.assert_array_equal(r.answer_rank[-1], ranks.numpy())
    top = r.top_ids[:, :, 0] == r.answer_id
    assert (r.answer_rank[top] == 1).all() and (r.answer_rank[~top] > 1).all()
    assert r.as_dict()["answer_rank"] == r.answer_rank[:, -1].tolist()


def test_a_step_it_cannot_rerun_and_a_missing_head_are_refused(tiny_model_path):
    with pytest.raises(InputError, match="own code on the way to its logits"):
        lens(f"{TEXT} <mask>", str(tiny_model_path("esm")))  # ESM's head calls gelu as a function
    with pytest.raises(InputError, match="no LM head"):
        lens(TEXT, str(tiny_model_path("bert")))
    with pytest.raises(InputError, match="at least 1"):
        lens(TEXT, "no/such-model", k=0)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_and_load_round_trip(tiny_model_path, tmp_path, suffix):
    r = lens("The <i>cat</i> sat", str(tiny_model_path("gpt2")), k=2, answer="the")
    back = Lens.load(r.save(tmp_path / f"l{suffix}"))
    assert back.top_tokens == r.top_tokens and back.stages == r.stages and back.answer == r.answer
    np.testing.assert_array_equal(back.top_ids, r.top_ids)
    np.testing.assert_array_equal(back.answer_rank, r.answer_rank)
    page = r._repr_html_()
    assert "<i>" not in page and "&lt;i&gt;" in page


@pytest.mark.slow
def test_smollm2_finds_mary_only_in_the_last_layers(smollm2):
    r = lens("When Mary and John went to the store, John gave a drink to", smollm2, answer="Mary")
    assert r.label(len(r.stages) - 1, len(r.tokens) - 1) == "Mary"
    ranks = r.answer_rank[:, -1]
    assert ranks[-1] == 1 and ranks[0] > 100 and (ranks[: len(ranks) // 2] > 10).all()


def test_a_post_norm_plan_made_for_the_lens_serves_attribution_too(tiny_model_path):
    """The plan is cached per model: the lens making it first, attribution still freezes every norm."""
    from attnviz.analyses.attribution import attribute
    from attnviz.analyses.residual import with_head

    loaded = with_head(str(tiny_model_path("electra")), "lens", device="cpu")
    lens(f"{TEXT} [MASK]", loaded, k=2)
    r = attribute(f"{TEXT} [MASK]", loaded, answer="the", wrong="cat")
    assert abs(r.total - r.logit) < 1e-3 and abs(r.value("rest")) < 1e-3


@pytest.mark.parametrize("vocab", [49152, 50257, 300])
def test_the_grouped_top_k_is_torch_topk(vocab):
    """Values and ids equal torch.topk's, with a tail after the last whole group (50257), with the
    plain top-k (300), and with the top values crowded into one group."""
    from attnviz.analyses.lens import _top_k

    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(37, vocab, generator=gen) * 4
    logits[0, 128:133] = 50.0 + torch.arange(5.0)  # all of row 0's top 5 in one group
    logits[1, -1] = 99.0  # row 1's top token is the very last
    for k in (1, 5, 10):
        values, ids = _top_k(logits, k)
        want = torch.topk(logits, k, dim=-1)
        assert torch.equal(values, want.values) and torch.equal(ids, want.indices)
    ids = _top_k(logits, 5)[1]
    assert ids[1, 0] == vocab - 1 and ids[0].tolist() == [132, 131, 130, 129, 128]


@pytest.mark.parametrize("scale", [1.0, 30.0, -5.0, 0.0])
def test_the_log_sum_exp_in_place(scale):
    """Without the shift where no exp can overflow or vanish, shifted where one could (scale 30:
    maxima near 130, where an unshifted exp overflows; -5 with an offset: every logit below -100,
    where it vanishes; 0: one row of 40 near 150 among ordinary ones, shifted on its own)."""
    from attnviz.analyses.lens import _log_sum_exp_

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4096, generator=gen) * (abs(scale) or 1.0) + (-150.0 if scale < 0 else 0.0)
    if scale == 0.0:
        logits[3] += 150.0
    want = torch.logsumexp(logits.double(), -1)
    got = _log_sum_exp_(logits.clone(), logits.amax(-1))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-5)


def test_the_forward_makes_only_the_last_logits_and_the_check_is_real(tiny_model_path, monkeypatch):
    """A decoder's own forward makes the last position's logits only (the lens makes every stage's);
    that row still checks the lens's path: a path off by 0.01 in the logits is refused."""
    import attnviz.analyses.lens as lens_module
    from attnviz.analyses.residual import plan, run, with_head
    from attnviz.errors import AttnvizError

    loaded = with_head(str(tiny_model_path("llama")), "lens", device="cpu")
    r = run(loaded, plan(loaded, "lens"), TEXT, heads=False, last_logits=True)
    assert r.logits.shape[0] == 1 and r.stages.shape[1] > 1
    np.testing.assert_allclose(r.logits[0].numpy(), _logits(loaded, TEXT)[-1].numpy(), atol=1e-5)
    seq2seq = with_head(str(tiny_model_path("t5")), "lens", device="cpu")  # no logits_to_keep: all kept
    assert run(seq2seq, plan(seq2seq, "lens"), TEXT, heads=False, last_logits=True).logits.shape[0] > 1
    path = lens_module._after_unembed
    monkeypatch.setattr(lens_module, "_after_unembed", lambda *a: lambda x, f=path(*a): f(x) + 0.01)
    with pytest.raises(AttnvizError, match="differs from"):
        lens(TEXT, loaded, k=2)


def test_each_top_token_is_labelled_on_its_own(tiny_model_path):
    """Two byte pieces of one character (UTF-8 C3 A4, 'ä') side by side in a top-k are two tokens,
    not one text: each reads as its own byte, not as halves of 'ä'."""
    from attnviz.analyses.lens import _labels

    tokenizer = load_model(str(tiny_model_path("gpt2")), device="cpu", task="causal-lm").tokenizer
    ids = tokenizer.convert_tokens_to_ids(["Ã", "¤", "Ã"])
    assert _labels(tokenizer, np.array(ids)) == ("\\xc3", "\\xa4", "\\xc3")


def test_the_options_are_checked_before_a_model_and_in_the_server(tiny_model_path):
    """The lens's k and answer rules, once (analyses/lens.check_options): the library refuses an
    empty answer without a model, as the command line and /api/lens do."""
    from attnviz.analyses.lens import check_options

    with pytest.raises(InputError, match="answer is empty"):
        check_options(5, " ")
    with pytest.raises(InputError, match="at least 1"):
        check_options(0)
    check_options(3, "Mary")
