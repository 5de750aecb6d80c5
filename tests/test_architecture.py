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
