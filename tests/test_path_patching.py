"""Path patching against hand-written hooks on the projections, and against activation patching."""

from __future__ import annotations

import pytest

from attnviz.errors import InputError

CLEAN = "The cat sat on the mat"
CORRUPT = "The mat sat on the cat"


@pytest.fixture(scope="module")
def llama(tiny_model_path):
    from attnviz.heads.patching import for_patching
    from attnviz.models.loading import load_model

    return for_patching(load_model(str(tiny_model_path("llama")), device="cpu"))


def _by_hand(loaded, sender, receiver, via: str) -> float:
    """Two passes with forward hooks on the tiny Llama's own projections (found by name here):
    1. corrupt run, the sender's slice of o_proj's input from the clean run; keep the receiver's
       q_proj/k_proj/v_proj output (nothing else between them in a 2-layer model);
    2. corrupt run with only that slice (the key/value group for k and v) replaced."""
    import torch

    from attnviz.heads.patching import metric_of, prepare, readout

    setup = prepare(loaded, CLEAN, CORRUPT, "mat", "cat", "logit-diff", None)
    model = loaded.model.model
    n_heads, n_kv = loaded.capture.num_heads, loaded.num_kv_heads
    o_proj = model.layers[sender[0]].self_attn.o_proj
    d = o_proj.weight.shape[1] // n_heads
    proj = getattr(model.layers[receiver[0]].self_attn, f"{via}_proj")
    index = receiver[1] if via == "q" else receiver[1] // (n_heads // n_kv)
    s_sl, r_sl = slice(sender[1] * d, (sender[1] + 1) * d), slice(index * d, (index + 1) * d)
    kept: dict = {}

    def keep_in(module, args):
        kept["o"] = args[0].clone()

    def put_in(module, args):
        x = args[0].clone()
        x[..., s_sl] = kept["o"][..., s_sl]
        return (x,)

    def keep_out(module, args, out):
        kept["r"] = out.clone()

    def put_out(module, args, out):
        out = out.clone()
        out[..., r_sl] = kept["r"][..., r_sl]
        return out

    with torch.inference_mode():
        h = o_proj.register_forward_pre_hook(keep_in)
        readout(setup, setup.ids["clean"])
        h.remove()
        hs = [o_proj.register_forward_pre_hook(put_in), proj.register_forward_hook(keep_out)]
        readout(setup, setup.ids["corrupt"])
        for h in hs:
            h.remove()
        h = proj.register_forward_hook(put_out)
        value = float(metric_of(setup, readout(setup, setup.ids["corrupt"]))[0])
        h.remove()
    return value


@pytest.mark.parametrize("via", ["q", "k", "v"])
def test_two_passes_equal_hooks_on_the_projections(llama, via):
    from attnviz.heads.path_patching import path_patch

    r = path_patch(
        CLEAN, CORRUPT, llama, sender=(0, 1), receivers=[(1, 2)], via=via, answer="mat", wrong="cat"
    )
    assert r.patched == pytest.approx(_by_hand(llama, (0, 1), (1, 2), via), abs=1e-6)
    assert r.patched != pytest.approx(r.corrupt, abs=1e-9)  # the path carries something
    if via == "q":
        assert "grouped" not in r.note
    else:  # 4 query heads share 2 key/value heads: head 2 is in group 1
        assert "group 1 (heads 2-3)" in r.note


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_every_downstream_component_as_receiver_equals_activation_patching(tiny_model_path, arch):
    from attnviz.heads.patching import for_patching, patch
    from attnviz.heads.path_patching import path_patch
    from attnviz.models.loading import load_model

    loaded = for_patching(load_model(str(tiny_model_path(arch)), device="cpu"))
    from test_patching import _answer

    n, h, word = 2, loaded.capture.num_heads, _answer(loaded)
    act = patch(CLEAN, CORRUPT, loaded, answer=word, batch_size=1)
    for head in range(h):
        downstream = [(1, j) for j in range(h)] + ["logits"]
        r = path_patch(CLEAN, CORRUPT, loaded, sender=(0, head), receivers=downstream, via="qkv", answer=word)
        assert r.patched == pytest.approx(act.patched[0, head], abs=1e-6)
    # without the logits the sender's direct path is missing: a different number
    r = path_patch(CLEAN, CORRUPT, loaded, sender=(0, 0), receivers=[(1, j) for j in range(h)], via="qkv",
                   answer=word)  # fmt: skip
    assert r.patched != pytest.approx(act.patched[0, 0], abs=1e-9)
    assert n == loaded.capture.layer_counts[r.stream]


def test_errors_and_files(llama, tmp_path):
    from attnviz.heads.path_patching import PathPatching, parse_receivers, parse_unit, path_patch

    with pytest.raises(InputError, match=r"sender 1.0 is not upstream of receiver 1.2") as info:
        path_patch(CLEAN, CORRUPT, "no-such-model", sender=(1, 0), receivers=[(1, 2)], answer="mat")
    assert "\n" not in str(info.value)  # refused before loading anything
    with pytest.raises(InputError, match="unknown via"):
        path_patch(CLEAN, CORRUPT, llama, sender=(0, 0), receivers=[(1, 2)], via="x", answer="mat")
    with pytest.raises(InputError, match="head 9 is out of range"):
        path_patch(CLEAN, CORRUPT, llama, sender=(0, 9), receivers=[(1, 2)], answer="mat")
    assert parse_receivers("10.7, 11.10,logits") == ((10, 7), (11, 10), "logits")
    assert parse_unit("9.6") == (9, 6)
    with pytest.raises(InputError, match="bad sender"):
        parse_unit("9")
    r = path_patch(CLEAN, CORRUPT, llama, sender=(0, 0), receivers=[(1, 1)], via="k", answer="mat")
    for ext in ("npz", "safetensors"):
        assert PathPatching.load(r.save(tmp_path / f"p.{ext}")) == r
    assert "L0H0" in r._repr_html_()
