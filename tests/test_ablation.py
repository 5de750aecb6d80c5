"""Ablation against independent computations: a copy of the model with the head's W_O columns zeroed
(or folded into the bias for mean ablation), and the measures computed by hand from its outputs."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from attnviz.errors import InputError, TokenNotFoundError

TEXT = "The cat sat on the mat, and the cat slept."
REFERENCE = ["A dog chased the cat across the garden.", "Attention is a weighted average of value vectors."]


def _proj(model, arch: str, layer: int):
    """The attention output projection, found by name per architecture (not by attnviz's search)."""
    if arch == "bert":
        bert = model.bert if hasattr(model, "bert") else model
        return bert.encoder.layer[layer].attention.output.dense
    if arch == "distilbert":
        base = model.distilbert if hasattr(model, "distilbert") else model
        return base.transformer.layer[layer].attention.out_lin
    if arch == "gpt2":
        return model.transformer.h[layer].attn.c_proj
    if arch == "llama":
        return model.model.layers[layer].self_attn.o_proj
    if arch == "t5":
        return model.encoder.block[layer].layer[0].SelfAttention.o
    raise ValueError(arch)


def _without(model, arch: str, heads, num_heads: int, mean=None):
    """A copy whose projection ignores the heads' input slice (plus its mean, for mean ablation)."""
    import torch

    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            proj = _proj(out, arch, layer)
            conv = type(proj).__name__ == "Conv1D"  # weight [in, out]
            width = proj.weight.shape[0] if conv else proj.weight.shape[1]
            d = width // num_heads
            sl = slice(head * d, (head + 1) * d)
            w = proj.weight[sl, :].T if conv else proj.weight[:, sl]  # [out, d]
            if mean is not None:
                proj.bias += w @ mean[layer][sl].to(w.dtype)
            w.zero_()  # a view: zeroes the columns (rows, for Conv1D) in place
    return out


def _ids(loaded, text: str = TEXT):
    return loaded.tokenizer(text, return_tensors="pt")["input_ids"]


def _log_prob(model, ids, pos: int) -> float:
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, pos - 1].double()
    return float(torch.log_softmax(logits, -1)[ids[0, pos]])


def _embedding(model, ids, t5: bool) -> np.ndarray:
    import torch

    with torch.no_grad():
        m = model.get_encoder() if t5 else model
        hidden = m(input_ids=ids).last_hidden_state[0].double().numpy()
    return hidden.mean(0)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 - float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_path):
    """arch -> the tiny model loaded with the head its measure needs."""
    from attnviz.heads.ablation import for_ablation
    from attnviz.models.loading import load_model

    return lambda arch: for_ablation(load_model(str(tiny_model_path(arch)), device="cpu"))


def _independent(loaded, arch: str, heads, mean=None) -> tuple[float, float]:
    """(before, after) by hand: the measure on the model and on the copy without the heads."""
    ids = _ids(loaded)
    other = _without(loaded.model, arch, heads, loaded.capture.num_heads, mean)
    if loaded.task == "causal-lm":
        pos = ids.shape[1] - 1
        return _log_prob(loaded.model, ids, pos), _log_prob(other, ids, pos)
    t5 = arch == "t5"
    return 0.0, _distance(_embedding(loaded.model, ids, t5), _embedding(other, ids, t5))


@pytest.mark.parametrize("arch", ["bert", "distilbert", "gpt2", "llama", "t5"])
def test_zero_ablation_equals_a_model_without_the_heads_w_o_columns(tiny_lm, arch):
    from attnviz.heads.ablation import ablate

    loaded = tiny_lm(arch)
    expected_measure = "log-prob" if arch in ("gpt2", "llama") else "embedding"
    for heads in ([(1, 2)], [(0, 3), (1, 0)]):
        r = ablate(loaded, TEXT, heads)
        before, after = _independent(loaded, arch, heads)
        assert r.measure == expected_measure
        assert r.before == pytest.approx(before, abs=1e-5)
        assert r.after == pytest.approx(after, abs=1e-5)
        assert abs(r.delta) > 1e-7  # a random head does change something
        assert r.heads == tuple(heads)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_mean_ablation_equals_folding_the_reference_mean_into_the_bias(tiny_lm, arch):
    import torch

    from attnviz.heads.ablation import ablate

    loaded = tiny_lm(arch)
    # the reference mean by hand: each text alone (no padding), every token of every layer's projection input
    seen: dict[int, list] = {}
    handles = [
        _proj(loaded.model, arch, layer).register_forward_pre_hook(
            lambda mod, args, layer=layer: seen.setdefault(layer, []).append(args[0][0].double())
        )
        for layer in range(loaded.capture.num_layers)
    ]
    try:
        with torch.no_grad():
            for text in REFERENCE:
                loaded.model(input_ids=_ids(loaded, text))
    finally:
        for h in handles:
            h.remove()
    mean = {layer: torch.cat(rows).mean(0) for layer, rows in seen.items()}
    heads = [(0, 1), (1, 3)]
    r = ablate(loaded, TEXT, heads, mode="mean", reference=REFERENCE)
    before, after = _independent(loaded, arch, heads, mean)
    assert r.mode == "mean"
    assert r.before == pytest.approx(before, abs=1e-5)
    assert r.after == pytest.approx(after, abs=1e-5)
    zero = ablate(loaded, TEXT, heads)
    assert abs(zero.after - r.after) > 1e-7  # the mean is not zero


def _masked_lm(tiny_model_path, tmp_path: Path, arch: str) -> Path:
    """A tiny random BERT/DistilBERT with its MLM head, saved with the tiny tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    src = tiny_model_path(arch)
    torch.manual_seed(1)
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(src))
    model.save_pretrained(tmp_path / arch)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / arch)
    return tmp_path / arch


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_masked_lm_probability_of_the_masked_word_by_hand(tiny_model_path, tmp_path, arch):
    import torch

    from attnviz.heads.ablation import ablate, for_ablation
    from attnviz.models.loading import load_model

    loaded = for_ablation(load_model(str(_masked_lm(tiny_model_path, tmp_path, arch)), device="cpu"))
    assert loaded.task == "masked-lm"
    heads = [(1, 1)]
    r = ablate(loaded, TEXT, heads, target="mat")
    ids = _ids(loaded).clone()
    pos = loaded.tokenizer.convert_ids_to_tokens(ids[0]).index("mat")
    original = int(ids[0, pos])
    ids[0, pos] = loaded.tokenizer.mask_token_id
    other = _without(loaded.model, arch, heads, loaded.capture.num_heads)

    def prob(model) -> float:
        with torch.no_grad():
            return float(torch.softmax(model(input_ids=ids).logits[0, pos].double(), -1)[original])

    assert (r.measure, r.target, r.position) == ("masked-prob", "mat", pos)
    assert r.before == pytest.approx(prob(loaded.model), abs=1e-7)
    assert r.after == pytest.approx(prob(other), abs=1e-7)
    default = ablate(loaded, TEXT, heads)
    assert default.target == "slept"  # the last word, not the full stop or [SEP]


def test_causal_target_word_and_position(tiny_lm):
    from attnviz.heads.ablation import ablate

    loaded = tiny_lm("gpt2")
    r = ablate(loaded, TEXT, [(1, 2)], target="@3")
    ids = _ids(loaded)
    other = _without(loaded.model, "gpt2", [(1, 2)], loaded.capture.num_heads)
    assert r.position == 3
    assert r.before == pytest.approx(_log_prob(loaded.model, ids, 3), abs=1e-5)
    assert r.after == pytest.approx(_log_prob(other, ids, 3), abs=1e-5)
    second = ablate(loaded, TEXT, [(1, 2)], target="cat", occurrence=2)
    first = ablate(loaded, TEXT, [(1, 2)], target="cat")
    assert second.position > first.position


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "t5"])
def test_scan_equals_one_ablation_per_head(tiny_lm, arch):
    from attnviz.heads.ablation import ablate, scan_heads

    loaded = tiny_lm(arch)
    found = scan_heads(loaded, TEXT, batch_size=3)  # 8 heads in chunks of 3: a chunk spans two layers
    assert found.delta.shape == (2, 4)
    for layer in range(2):
        for head in range(4):
            assert found.delta[layer, head] == pytest.approx(
                ablate(loaded, TEXT, [(layer, head)]).delta, abs=1e-6
            )
    rows = found.ranking()
    effects = [abs(r.delta) for r in rows]
    assert effects == sorted(effects, reverse=True) and len(rows) == 8
    assert [r.rank for r in found.ranking(3)] == [1, 2, 3]


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_ablating_a_head_whose_output_is_already_zero_changes_nothing(tiny_lm, arch):
    import torch

    from attnviz.heads.ablation import ablate, scan_heads
    from attnviz.models.capture import Capture

    loaded = tiny_lm(arch)
    model = copy.deepcopy(loaded.model)
    layer, head = 1, 2
    d = 32 // 4
    with torch.no_grad():  # the head's values are zero, so its output (a mix of values) is zero
        if arch == "gpt2":
            attn = model.transformer.h[layer].attn.c_attn  # Conv1D [in, 3 * hidden]: q, k, v
            attn.weight[:, 64 + head * d : 64 + (head + 1) * d] = 0
            attn.bias[64 + head * d : 64 + (head + 1) * d] = 0
        else:
            value = model.encoder.layer[layer].attention.self.value
            value.weight[head * d : (head + 1) * d] = 0
            value.bias[head * d : (head + 1) * d] = 0
    dead = replace(loaded, model=model, capture=Capture(model, loaded.tokenizer))
    r = ablate(dead, TEXT, [(layer, head)])
    assert abs(r.delta) < 1e-6
    assert abs(scan_heads(dead, TEXT).delta[layer, head]) < 1e-6
    assert abs(ablate(dead, TEXT, [(layer, 3)]).delta) > 1e-6  # its neighbour still matters


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_hooks_never_leak_into_a_later_extraction(tiny_lm, arch):
    from attnviz.extraction import extract
    from attnviz.heads.ablation import ablate, ablating, scan_heads
    from attnviz.models.architecture import output_projections

    loaded = tiny_lm(arch)
    before = extract(TEXT, loaded, qkv=True)
    ablate(loaded, TEXT, [(0, 1), (1, 2)])
    scan_heads(loaded, TEXT)
    with pytest.raises(RuntimeError, match="boom"), ablating(loaded) as state:
        state.keep[0] = __import__("torch").zeros(1, 4)
        raise RuntimeError("boom")
    assert all(not p._forward_pre_hooks for p in output_projections(loaded, "ablation"))
    after = extract(TEXT, loaded, qkv=True)
    assert np.array_equal(before.attn, after.attn)
    assert np.array_equal(before.qkv[1].v, after.qkv[1].v)
    with pytest.raises(TokenNotFoundError):  # an error inside ablate also leaves nothing behind
        ablate(loaded, TEXT, [(0, 1)], target="zebra")
    assert all(not p._forward_pre_hooks for p in output_projections(loaded, "ablation"))


def test_bad_input_is_one_line(tiny_lm):
    from attnviz.heads.ablation import ablate, scan_heads
    from attnviz.heads.ablation_options import parse_heads

    loaded = tiny_lm("gpt2")
    cases = [
        (lambda: ablate(loaded, TEXT, [(0, 4)]), "head 4 is out of range: .* heads 0-3"),
        (lambda: ablate(loaded, TEXT, [(2, 0)]), "layer 2 is out of range"),
        (lambda: ablate(loaded, TEXT, [(0, 1)], target="zebra"), "'zebra' is not in the text"),
        (lambda: ablate(loaded, TEXT, [(0, 1)], mode="mean"), "^mode='mean' needs reference texts"),
        (lambda: scan_heads(loaded, TEXT, mode="mean"), "^mode='mean' needs reference texts"),
        (lambda: ablate(loaded, TEXT, [(0, 1)], mode="mean", reference=[" "]), "^reference has no text"),
        (lambda: ablate(loaded, TEXT, [(0, 1)], mode="half"), "^unknown mode 'half'"),
        (lambda: ablate(loaded, TEXT, [(0, 1)], target="@0"), "first token"),
        (lambda: ablate(loaded, TEXT, []), "^say which head to ablate: heads or scan=True$"),
        (lambda: ablate(loaded, TEXT, None), "^say which head to ablate: heads or scan=True$"),
        (lambda: parse_heads("18-6"), "^bad heads '18-6': use LAYER:HEAD pairs"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert ablate(loaded, TEXT, [(-1, 0)]).heads == ((1, 0),)
    assert parse_heads("18:6, 17:3") == ((18, 6), (17, 3))


def test_errors_name_the_keyword_and_the_command_line_its_flag():
    """A Python caller never typed `--mode`; `attnviz ablate` prints the flags it has."""
    from attnviz.errors import cli_terms
    from attnviz.heads.ablation_options import AblationOptions, parse_heads

    def check(**kw):
        return lambda: AblationOptions(**{"heads": ((0, 1),), **kw}).check()

    for call, python, cli in (
        (check(mode="mean"), "mode='mean' needs", "--mode mean needs"),
        (check(mode="half"), "unknown mode 'half'", "unknown --mode 'half'"),
        (lambda: parse_heads("1"), "bad heads '1'", "bad --heads '1'"),
        (check(scan=True), "scan=True ablates every head in turn: drop heads",
         "--scan ablates every head in turn: drop --layer/--head/--heads"),
        (check(heads=()), "say which head to ablate: heads or scan=True",
         "say which head to ablate: --layer L --head H, --heads L:H,... or --scan"),
    ):  # fmt: skip
        with pytest.raises(InputError) as caught:
            call()
        assert str(caught.value).startswith(python) and "--" not in str(caught.value)
        assert caught.value.render(cli_terms).startswith(cli)
    options = AblationOptions(scan=True, mode="mean", reference=("a text",))
    assert options.check() is options


def test_run_ablation_takes_the_options_whole(tiny_lm):
    """One entry point: `run_ablation` scans or ablates as the options say, refusing bad ones itself."""
    from attnviz.heads.ablation import Ablation, HeadScan, run_ablation
    from attnviz.heads.ablation_options import AblationOptions

    loaded = tiny_lm("gpt2")
    one = run_ablation(TEXT, loaded, AblationOptions(heads=((0, 1),)))
    assert isinstance(one, Ablation) and one.heads == ((0, 1),)
    scan = run_ablation(TEXT, loaded, AblationOptions(scan=True))
    assert isinstance(scan, HeadScan) and scan.delta.shape == (2, 4)
    assert scan.delta[0, 1] == pytest.approx(one.delta, abs=1e-6)  # batched: float32 rounding
    with pytest.raises(InputError, match=r"^scan=True ablates every head in turn"):
        run_ablation(TEXT, loaded, AblationOptions(heads=((0, 1),), scan=True))


def test_spearman_and_overlap_match_brute_force():
    import pandas as pd

    from attnviz.heads.ablation import spearman, top_overlap

    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    y[:5] = y[5]  # ties
    assert spearman(x, y) == pytest.approx(pd.Series(x).corr(pd.Series(y), method="spearman"), abs=1e-12)
    assert np.isnan(spearman(x, np.ones(40)))
    a = np.arange(12.0).reshape(3, 4)
    b = a.copy()
    b[2, 3] = -1
    assert top_overlap(a, b, 3) == (2, 3)
    assert top_overlap(a, a, 100) == (12, 12)


def test_repeat_loss_scan_by_hand(tiny_lm):
    import torch

    from attnviz.heads.ablation import repeat_loss_scan
    from attnviz.heads.induction import random_repeats

    loaded = tiny_lm("llama")
    found = repeat_loss_scan(loaded, seq_len=6, batch=2, seed=1, batch_size=6)  # 3 heads x 2 rows a pass
    enc, prefix = random_repeats(loaded, 6, 2, 1)

    def loss(model) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=enc.input_ids).logits.double(), -1)
        tgt = np.arange(prefix + 6, prefix + 12)
        return float(-logp[:, tgt - 1].gather(-1, enc.input_ids[:, tgt, None])[..., 0].mean())

    assert found.before == pytest.approx(loss(loaded.model), abs=1e-6)
    for layer, head in [(0, 0), (1, 3), (1, 1)]:
        other = _without(loaded.model, "llama", [(layer, head)], 4)
        assert found.delta[layer, head] == pytest.approx(loss(other) - found.before, abs=1e-6)
    assert found.ranking()[0].delta == found.delta.max()


def test_load_model_task_is_part_of_the_cache_key(tiny_model_path):
    from attnviz.models.loading import load_model

    folder = str(tiny_model_path("gpt2"))
    base = load_model(folder, device="cpu")
    lm = load_model(folder, device="cpu", task="causal-lm")
    assert base.task == "base" and lm.task == "causal-lm"
    assert type(lm.model).__name__ == "GPT2LMHeadModel" and type(base.model).__name__ == "GPT2Model"
    assert load_model(folder, device="cpu", task="causal-lm") is lm
    with pytest.raises(InputError, match="unknown task"):
        load_model(folder, device="cpu", task="seq2seq")


@pytest.mark.slow
def test_smollm2_gguf_cache_serves_the_lm_head_and_l18h6_hurts_the_repeat_loss(
    smollm2, model_cache, monkeypatch
):
    import torch

    from attnviz.heads.ablation import for_ablation, repeat_loss_scan, top_overlap
    from attnviz.heads.induction import induction_scores

    monkeypatch.setenv("ATTNVIZ_CACHE", str(model_cache))  # the cache the session's smollm2 was loaded from
    lm = for_ablation(smollm2)
    assert lm.task == "causal-lm" and lm.from_cache  # the de-quantised cache, written by the base load
    assert torch.equal(lm.model.lm_head.weight, smollm2.model.embed_tokens.weight)  # tied head
    # 270 ablated copies of 1 x 10 random tokens, as docs/ablation.md's example (a quarter of 2 x 20)
    found = repeat_loss_scan(lm, seq_len=10, batch=1)
    ind = induction_scores(lm, seq_len=10, batch=1)
    assert ind.ranking("induction", 1)[0].layer == 18 and ind.ranking("induction", 1)[0].head == 6
    # measured (docs/ablation.md): L18H6, the top induction head, is among the largest loss rises (6th
    # of 270 with 1 x 10, 3rd with 2 x 20); the heads above it (L1H4, L16H0...) are no induction
    # heads: zeroing them hurts any text; the top-10 lists share 2 heads (1 x 10, 2 x 20, 4 x 50)
    ranked = [(r.layer, r.head) for r in found.ranking(270)]
    assert ranked.index((18, 6)) < 8 and found.delta[18, 6] > 1.0
    assert all(ind.induction[layer, head] < 0.2 for layer, head in ranked[: ranked.index((18, 6))])
    assert top_overlap(ind.induction, found.delta, 10)[0] >= 2


@pytest.mark.slow
def test_minilm_is_measured_on_its_mean_pooled_embedding(minilm):
    from attnviz.heads.ablation import ablate, for_ablation

    loaded = for_ablation(minilm)
    assert loaded is minilm  # no LM head: the base model is used as is
    r = ablate(loaded, "Emily always wanted to visit Paris so she took some French lessons", [(0, 0)])
    assert r.measure == "embedding" and "no LM head" in r.reason and 0 < r.after < 1
