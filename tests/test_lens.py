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


def test_each_stage_gets_its_own_norm_scale(tiny_model_path):
    """Every stage by hand: lm_head(norm(stream)) on that stage's stream. Reusing the last layer's
    RMS scale (TransformerLens #1076) gives other probabilities, which this test would catch."""
    loaded = load_model(str(tiny_model_path("llama")), device="cpu", task="causal-lm")
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
