"""The output projection found by data flow, against each architecture's module found by hand."""

from __future__ import annotations

import pytest

from attnviz.errors import InputError

BY_HAND = {
    "bert": lambda m, i: m.encoder.layer[i].attention.output.dense,
    "distilbert": lambda m, i: m.transformer.layer[i].attention.out_lin,
    "gpt2": lambda m, i: m.h[i].attn.c_proj,
    "llama": lambda m, i: m.layers[i].self_attn.o_proj,
    "t5": lambda m, i: m.encoder.block[i].layer[0].SelfAttention.o,
}


@pytest.mark.parametrize("arch", sorted(BY_HAND))
def test_output_projections_are_the_modules_named_by_hand(tiny_model_path, arch):
    from attnviz.models.architecture import in_features, output_projections
    from attnviz.models.loading import load_model

    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    found = output_projections(loaded, "a test")
    base = loaded.model.base_model
    assert len(found) == loaded.capture.num_layers
    for i, proj in enumerate(found):
        assert proj is BY_HAND[arch](base, i)
        assert in_features(proj) % loaded.capture.num_heads == 0  # heads * head_dim inputs


def test_an_output_changed_on_its_way_names_the_model_layer_and_purpose(tiny_bert):
    import torch

    from attnviz.models.architecture import output_projections

    loaded = tiny_bert
    outputs = [layer.attention.output for layer in loaded.model.base_model.encoder.layer]
    kept = [out.dense for out in outputs]
    try:  # no projection receives the attention output (put back after: loaded models are cached)
        for out in outputs:
            out.dense = torch.nn.Identity()
        with pytest.raises(InputError, match=r"of bert \(BertModel.* layer 0 .*norm weighting is not"):
            output_projections(loaded, "norm weighting")
    finally:
        for out, dense in zip(outputs, kept, strict=True):
            out.dense = dense
    assert len(output_projections(loaded, "a test")) == loaded.capture.num_layers


# -- own attention code: heads edited at the output projection's input -------------------------------

OWN_BY_HAND = {
    "deberta": lambda m, i: m.encoder.layer[i].attention.output.dense,
    "bloom": lambda m, i: m.h[i].self_attention.dense,
    "gpt_neo": lambda m, i: m.h[i].attn.attention.out_proj,
}


@pytest.mark.parametrize("arch", sorted(OWN_BY_HAND))
def test_own_code_output_projections_are_found_by_data_flow_and_edit_like_the_interface(
    tiny_model_path, arch
):
    """The found W_O is the module named by hand; an Editor there gets [batch, q, heads, head_dim]
    keyed (stream, layer), an unchanged tensor changes nothing, and it acts in its own thread only."""
    import threading

    import torch

    from attnviz.models.architecture import output_projections
    from attnviz.models.capture import Editor, editing
    from attnviz.models.loading import load_model

    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    cap = loaded.capture
    assert not cap.interface and cap.edit_at == "projection"
    found = output_projections(loaded, "a test")
    assert [p is OWN_BY_HAND[arch](loaded.model.base_model, i) for i, p in enumerate(found)] == [True, True]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    seen = []

    def look(key, out, module):
        seen.append((key, tuple(out.shape), module is found[key[1]]))
        return out

    def zero_all(key, out, module):
        return torch.zeros_like(out)

    with torch.inference_mode():
        plain = loaded.model(input_ids=ids).last_hidden_state
        with editing(Editor(index=cap.index, edit=look, shared=cap.shared)):
            same = loaded.model(input_ids=ids).last_hidden_state
        assert seen == [(("self", 0), (1, 5, 4, 8), True), (("self", 1), (1, 5, 4, 8), True)]
        assert torch.equal(same, plain)
        other: list = []
        with editing(Editor(index=cap.index, edit=zero_all, shared=cap.shared)):
            zeroed = loaded.model(input_ids=ids).last_hidden_state
            thread = threading.Thread(
                target=lambda: other.append(loaded.model(input_ids=ids).last_hidden_state)
            )
            thread.start()
            thread.join()
    assert not torch.allclose(zeroed, plain) and torch.equal(other[0], plain)
