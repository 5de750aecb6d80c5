"""Every zoo architecture, three ways: exact weights, ablation and norm weighting (one-line refusals).

The models come from tests/zoo.py (built once per session by the `tiny_model_path` fixture). The
`fast` ones (one per special case: shared layers, softcapping, sinks, rotary Falcon, encoder-decoders,
a model with its own attention code) run in the quick suite; the rest are marked slow.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import zoo
from helpers import one_line_error

from attnviz.errors import InputError
from attnviz.extraction import extract, extract_batch
from attnviz.models.loading import load_model

TEXT = "The cat sat on the mat, transformers attend."
TEXTS = ["The cat sat on the mat.", "A dog chased the cat across the garden while the bird sang."]
# architectures whose attention is their own code, not transformers' attention interface
# in transformers 5.25, the version the set-up installs (Falcon joined the attention interface in 5.25)
OWN_CODE = {
    "deberta", "deberta-v2", "mpnet", "megatron-bert", "roformer", "rembert", "convbert", "ibert",
    "gpt_neo", "bloom", "mpt", "xglm",
}  # fmt: skip


def _params(specs=zoo.SPECS):
    return [pytest.param(s, id=s.name, marks=() if s.fast else pytest.mark.slow) for s in specs]


@pytest.fixture(scope="session")
def eager_model():
    """Zoo name -> the model loaded by transformers itself with eager attention (the reference)."""
    from transformers import AutoModel

    cache: dict[str, object] = {}

    def make(folder) -> object:
        if str(folder) not in cache:
            cache[str(folder)] = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
        return cache[str(folder)]

    return make


def test_the_zoo_has_at_least_fifty_architectures():
    assert len(zoo.SPECS) >= 50 and len(zoo.BY_NAME) == len(zoo.SPECS)
    assert {s.family for s in zoo.SPECS} == {"encoder", "decoder", "encoder-decoder"}
    assert set(zoo.BY_NAME) >= OWN_CODE


def _eager_attentions(ref, loaded, texts):
    enc = loaded.tokenizer(texts, return_tensors="pt", padding=True)
    kwargs = {}
    if loaded.kind == "encoder-decoder":
        start = ref.config.decoder_start_token_id
        kwargs["decoder_input_ids"] = torch.full((len(texts), 1), start)
    with torch.no_grad():
        out = ref(**enc, **kwargs, output_attentions=True)
    theirs = out.encoder_attentions if loaded.kind == "encoder-decoder" else out.attentions
    return np.stack([t.numpy() for t in theirs], axis=1), enc["attention_mask"].numpy()  # [b, L, H, q, k]


@pytest.mark.parametrize("spec", _params())
def test_weights_equal_eager_alone_and_padded(tiny_model_path, eager_model, spec):
    folder = tiny_model_path(spec.name)
    loaded = load_model(str(folder), device="cpu")
    ref = eager_model(folder)
    assert loaded.kind == spec.family and loaded.causal == (spec.family == "decoder")
    expected, _ = _eager_attentions(ref, loaded, [TEXT])
    att = extract(TEXT, loaded)
    np.testing.assert_allclose(att.attn, expected[0], atol=1e-5)
    rows = att.attn.sum(-1)
    if "sinks" in spec.feature:  # a sink takes part of each row's mass, as in the model's own eager
        assert (rows < 1.0 + 1e-5).all() and (rows < 0.999).any()
    else:
        np.testing.assert_allclose(rows, 1.0, atol=1e-5)
    expected, mask = _eager_attentions(ref, loaded, TEXTS)
    for i, one in enumerate(extract_batch(TEXTS, loaded)):
        keep = np.flatnonzero(mask[i])  # the text's own tokens, wherever the padding went
        np.testing.assert_allclose(one.attn, expected[i][..., keep[:, None], keep], atol=1e-5)


def _reference_ablation(loaded, ref, layer: int, head: int, ids, mask, mean=None):
    """The eager model with head `head`'s slice of layer `layer`'s attention output zeroed (or = mean).

    Generic: wraps the model's own module-level eager function and counts its calls (the encoder
    runs first, one call per layer, a shared module once per layer), knowing no module names.
    """
    module = sys.modules[type(ref).__module__]
    real = module.eager_attention_forward
    calls = [0]

    def zeroing(*args, **kwargs):
        out, weights = real(*args, **kwargs)  # out: [batch, q, heads, head_dim]
        if calls[0] == layer:
            out = out.clone()
            out[:, :, head] = 0.0 if mean is None else mean
        calls[0] += 1
        return out, weights

    module.eager_attention_forward = zeroing
    try:
        with torch.no_grad():
            if loaded.kind == "encoder-decoder":
                return ref.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            return ref(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        module.eager_attention_forward = real


@pytest.mark.parametrize("spec", _params([s for s in zoo.SPECS if s.name not in OWN_CODE]))
def test_ablation_equals_zeroing_or_replacing_the_heads_slice_of_the_attention_output(
    tiny_model_path, eager_model, spec
):
    from attnviz.heads.ablation import _encoder_forward, _keep, ablating, reference_means

    folder = tiny_model_path(spec.name)
    loaded = load_model(str(folder), device="cpu")
    ref = eager_model(folder)
    enc = loaded.tokenizer(TEXTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    layer, head = loaded.num_layers - 1, 2
    with torch.inference_mode():
        before = _encoder_forward(loaded, ids, mask)
        with ablating(loaded) as state:
            state.keep[layer] = _keep(len(TEXTS), loaded.capture.num_heads, [head])
            ours = _encoder_forward(loaded, ids, mask)
        again = _encoder_forward(loaded, ids, mask)
    theirs = _reference_ablation(loaded, ref, layer, head, ids, mask)
    real = mask.bool()
    np.testing.assert_allclose(ours[real].numpy(), theirs[real].numpy(), atol=1e-4)
    assert not torch.allclose(ours[real], before[real], atol=1e-6)  # the head mattered: the check can fail
    torch.testing.assert_close(again, before)  # the editor is gone
    means = reference_means(loaded, TEXTS)  # per layer [heads, head_dim]
    assert [tuple(m.shape) for m in means] == [tuple(means[0].shape)] * loaded.num_layers
    with torch.inference_mode(), ablating(loaded, means) as state:
        state.keep[layer] = _keep(len(TEXTS), loaded.capture.num_heads, [head])
        ours = _encoder_forward(loaded, ids, mask)
    theirs = _reference_ablation(loaded, ref, layer, head, ids, mask, means[layer][head])
    np.testing.assert_allclose(ours[real].numpy(), theirs[real].numpy(), atol=1e-4)


@pytest.mark.parametrize("spec", _params([s for s in zoo.SPECS if s.name not in OWN_CODE]))
def test_norm_weighting_equals_brute_force_through_the_projection(tiny_model_path, spec):
    """||alpha_ij f_h(x_j)||, with f_h(x_j) = W_O(v_j in head h's slice, zeros elsewhere) - W_O(0)."""
    from attnviz.analyses.norms import norm_weighted
    from attnviz.models.architecture import output_projections

    loaded = load_model(str(tiny_model_path(spec.name)), device="cpu")
    att = extract(TEXT, loaded, qkv=True)
    weighted = norm_weighted(att, loaded)
    projections = output_projections(loaded, "norm weighting")
    h_all = loaded.capture.num_heads
    for li, layer in enumerate(att.layers):
        proj = projections[layer]
        v = att.qkv[layer].v  # [heads, k, head_dim] (grouped heads already repeated)
        d = v.shape[-1]
        x = torch.zeros(h_all, v.shape[1], h_all * d)
        for h in range(h_all):
            x[h, :, h * d : (h + 1) * d] = torch.as_tensor(v[h])
        with torch.no_grad():
            pushed = proj(x) - proj(torch.zeros(1, 1, h_all * d))  # [heads, k, hidden]
        norms = torch.linalg.vector_norm(pushed, dim=-1).numpy()  # [heads, k]
        expected = att.attn[li] * norms[:, None, :]
        np.testing.assert_allclose(weighted.attn[li], expected, rtol=1e-4, atol=1e-6)


# The hand-written reference's own knowledge of where each own-code architecture's output projection
# lives and its head size (the zoo's 32 wide, 4 heads; ConvBERT halves it for its convolution heads).
# attnviz knows no names: it finds W_O by data flow.
OUT_PROJ = {
    "deberta": "encoder.layer.{}.attention.output.dense",
    "deberta-v2": "encoder.layer.{}.attention.output.dense",
    "mpnet": "encoder.layer.{}.attention.attn.o",
    "megatron-bert": "encoder.layer.{}.attention.output.dense",
    "roformer": "encoder.layer.{}.attention.output.dense",
    "rembert": "encoder.layer.{}.attention.output.dense",
    "convbert": "encoder.layer.{}.attention.output.dense",
    "ibert": "encoder.layer.{}.attention.output.dense",
    "gpt_neo": "h.{}.attn.attention.out_proj",
    "bloom": "h.{}.self_attention.dense",
    "mpt": "blocks.{}.attn.out_proj",
    "xglm": "layers.{}.self_attn.out_proj",
}
HEAD_SIZE = {"convbert": 4}  # else 8


def _pre_hook_ablation(ref, name: str, layer: int, head: int, ids, mask, mean=None):
    """The eager model with head `head`'s slice of layer `layer`'s output projection input zeroed (or
    set to `mean`) by a forward pre-hook on the projection, named by hand."""
    d = HEAD_SIZE.get(name, 8)

    def zeroing(module, args):
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = 0.0 if mean is None else mean
        return (x, *args[1:])

    handle = ref.get_submodule(OUT_PROJ[name].format(layer)).register_forward_pre_hook(zeroing)
    try:
        with torch.no_grad():
            return ref(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        handle.remove()


@pytest.mark.parametrize("spec", _params([s for s in zoo.SPECS if s.name in OWN_CODE]))
def test_own_code_ablation_equals_zeroing_the_heads_slice_of_the_output_projections_input(
    tiny_model_path, eager_model, spec, tmp_path
):
    """Own attention code: heads are edited at W_O's input, found by data flow, on every such model."""
    from typer.testing import CliRunner

    from attnviz.cli import app
    from attnviz.heads.ablation import (
        _encoder_forward,
        _keep,
        ablate,
        ablating,
        for_ablation,
        reference_means,
    )

    assert set(OUT_PROJ) == OWN_CODE
    folder = tiny_model_path(spec.name)
    loaded = load_model(str(folder), device="cpu")
    assert not loaded.capture.interface and loaded.capture.edit_at == "projection"
    ref = eager_model(folder)
    enc = loaded.tokenizer(TEXTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    real = mask.bool()
    for layer, head in ((loaded.num_layers - 1, 2), (0, 1)):
        with torch.inference_mode():
            before = _encoder_forward(loaded, ids, mask)
            with ablating(loaded) as state:
                state.keep[layer] = _keep(len(TEXTS), loaded.capture.num_heads, [head])
                ours = _encoder_forward(loaded, ids, mask)
            again = _encoder_forward(loaded, ids, mask)
        theirs = _pre_hook_ablation(ref, spec.name, layer, head, ids, mask)
        np.testing.assert_allclose(ours[real].numpy(), theirs[real].numpy(), atol=1e-5)
        assert not torch.allclose(ours[real], before[real], atol=1e-6)  # the head mattered
        assert torch.equal(again, before)  # the editor is gone
    means = reference_means(loaded, TEXTS)
    with torch.inference_mode(), ablating(loaded, means) as state:
        state.keep[layer] = _keep(len(TEXTS), loaded.capture.num_heads, [head])
        ours = _encoder_forward(loaded, ids, mask)
    theirs = _pre_hook_ablation(ref, spec.name, layer, head, ids, mask, means[layer][head])
    np.testing.assert_allclose(ours[real].numpy(), theirs[real].numpy(), atol=1e-5)
    result = ablate(for_ablation(loaded), TEXT, [(0, 0)])  # the whole command path, LM head included
    assert np.isfinite(result.before) and np.isfinite(result.after)
    runner = CliRunner()
    for args in (
        ["ablate", TEXT, "--layer", "0", "--head", "0", "-m", str(folder)],
        ["extract", TEXT, "--weighting", "norm", "-m", str(folder), "-o", str(tmp_path / "n.npz")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)


@pytest.mark.parametrize("spec", _params([s for s in zoo.SPECS if s.name in OWN_CODE]))
def test_own_code_norm_weighting_equals_value_vectors_solved_from_the_projections_input(
    tiny_model_path, eager_model, spec
):
    """||alpha_ij W_O^h v_j^h||, with v solved from W_O's input X = P V (hooked by hand) and P (eager),
    an encoder's in float64 (a tiny random encoder's P is nearly uniform: solving in float32 loses
    digits; a decoder's P is triangular, and XGLM's mask does not run in float64)."""
    import copy

    from attnviz.analyses.norms import norm_weighted

    folder = tiny_model_path(spec.name)
    loaded = load_model(str(folder), device="cpu")
    ref = eager_model(folder)
    if spec.family == "encoder":
        ref = copy.deepcopy(ref).double()
    weighted = norm_weighted(TEXT, loaded)
    att = extract(TEXT, loaded)
    np.testing.assert_array_equal(norm_weighted(att, loaded).attn, weighted.attn)
    ids = torch.tensor([att.token_ids])
    d, h_all = HEAD_SIZE.get(spec.name, 8), loaded.capture.num_heads
    seen = {}
    handles = [
        ref.get_submodule(OUT_PROJ[spec.name].format(layer)).register_forward_pre_hook(
            lambda module, args, layer=layer: seen.setdefault(layer, args[0])
        )
        for layer in range(loaded.num_layers)
    ]
    try:
        with torch.no_grad():
            out = ref(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    for layer in range(loaded.num_layers):
        p = out.attentions[layer][0].double()  # [heads, q, k]
        x = seen[layer][0, :, : h_all * d].double().unflatten(-1, (h_all, d)).transpose(0, 1)  # [heads, q, d]
        v = torch.linalg.solve(p, x)  # [heads, k, d]
        w = ref.get_submodule(OUT_PROJ[spec.name].format(layer)).weight.detach().double()  # [hidden, in]
        norms = torch.stack(
            [torch.linalg.vector_norm(v[h] @ w[:, h * d : (h + 1) * d].T, dim=-1) for h in range(h_all)]
        )
        expected = att.attn[layer] * norms[:, None, :].numpy()
        np.testing.assert_allclose(weighted.attn[layer], expected, rtol=1e-3, atol=1e-6)


def test_a_model_whose_output_projection_is_not_found_is_refused_in_one_line(
    tiny_model_path, monkeypatch, empty_model_cache
):
    """When data flow finds no W_O (here: made to fail), weights still come out; norm weighting and
    ablation say why not in one line, before any forward pass."""
    from typer.testing import CliRunner

    from attnviz.analyses.norms import norm_weighted
    from attnviz.cli import app
    from attnviz.heads.ablation import ablate, for_ablation
    from attnviz.models import architecture

    monkeypatch.setattr(architecture, "_head_size", lambda x, weights: None)
    folder = str(tiny_model_path("deberta"))
    loaded = load_model(folder, device="cpu")
    assert loaded.capture.edit_at is None and extract(TEXT, loaded).attn.shape[:2] == (2, 4)
    monkeypatch.setattr(loaded.model, "forward", lambda *a, **k: pytest.fail("a forward pass ran"))
    for call in (
        lambda: norm_weighted(TEXT, loaded),
        lambda: ablate(loaded, TEXT, [(0, 0)]),
        lambda: for_ablation(loaded),
    ):
        with pytest.raises(InputError, match=r"model type 'deberta'.*heads' outputs side by side"):
            call()
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["ablate", TEXT, "--layer", "0", "--head", "0", "-m", folder])
    one_line_error(result, "deberta", "attention interface", "ablation")


# -- docs/models.md's table, written by scripts/gen_arch_table.py ----------------------------------


def _generator():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gen_arch_table.py"
    spec = importlib.util.spec_from_file_location("gen_arch_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented() -> str:
    gen = _generator()
    return gen.TARGET.read_text(encoding="utf-8").split(gen.START, 1)[1].split(gen.END, 1)[0].lstrip("\n")


def test_the_table_lists_every_zoo_architecture_and_what_is_refused():
    """The quick drift check: same rows in zoo order, refusals exactly where the zoo expects them."""
    rows = [line.split(" | ") for line in _documented().splitlines()[2:]]
    assert [r[0].strip("| `") for r in rows] == [s.name for s in zoo.SPECS]
    refused = [r[0] for r in rows if "yes" not in r[-1]]
    assert refused == []  # 50 of 50
    at_projection = {r[0].strip("| `") for r in rows if "W_O's input" in r[-1]}
    assert at_projection == OWN_CODE


@pytest.mark.slow
def test_the_table_is_what_the_generator_writes_now(tiny_model_path):
    """Like docs/cli.md: change the zoo or what works on it, then run scripts/gen_arch_table.py."""
    assert _documented() == _generator().render(tiny_model_path), (
        "docs/models.md's architecture table is stale: run python scripts/gen_arch_table.py"
    )


# -- every command on the special cases -------------------------------------------------------------

TOUR = ("albert", "gemma2", "gpt_oss", "t5", "falcon")


def _tour(model: str, decoder: bool, analyses: bool) -> list[list[str]]:
    text = "the cat sat on the mat and the cat slept"
    every = [
        ["extract", text, "-m", model, "-o", "a.npz"],
        ["heatmap", text, "-m", model, "-o", "h.png"],
        ["rollout", text, "-m", model, "--json"],
        ["compare", text, "the dog sat on the mat and the dog slept", "-m", model],
        ["view", text, "-m", model, "-o", "v.html"],
        ["heads", text, "-m", model],
        ["find-head", "cat", "mat", text, "-m", model],
        ["batch", "corpus.txt", "-o", "out", "-m", model, "--stats", "all" if analyses else "entropy"],
    ]
    if analyses:
        every += [
            ["explain", text, "-l", "-1", "--head", "1", "-m", model],
            ["extract", text, "--weighting", "norm", "-m", model, "-o", "n.npz"],
            ["find-head", "cat", "mat", text, "-m", model, "--ablate"],
            ["ablate", text, "--scan", "-m", model],
        ]
        if decoder:
            every.append(["heads", "--induction", "--ablate", "--seq-len", "8", "-m", model])
    return every


@pytest.mark.slow  # about 6 s of CPU per architecture
@pytest.mark.parametrize("spec", [zoo.BY_NAME[n] for n in TOUR], ids=TOUR)
def test_every_command_runs_on_the_special_cases(tiny_model_path, spec, tmp_path, monkeypatch):
    """Shared layers, softcapping, sinks, an encoder-decoder and a model with its own attention code."""
    from typer.testing import CliRunner

    from attnviz.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\na dog chased the cat\n")
    model = str(tiny_model_path(spec.name))
    runner = CliRunner()
    for args in _tour(model, spec.family == "decoder", spec.name not in OWN_CODE):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
