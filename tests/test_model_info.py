"""`describe` (what `attnviz info` prints) reads files only, and agrees with the loaded model."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from attnviz.cli import app
from attnviz.models import info as model_info
from attnviz.models import loading as models

runner = CliRunner()
SHAPE = ("architecture", "kind", "causal", "layers", "heads", "kv_heads", "head_dim", "hidden_size",
         "max_length", "parameters")  # fmt: skip


def _shape(info: model_info.ModelInfo) -> dict:
    return {k: v for k, v in dataclasses.asdict(info).items() if k in SHAPE}


@pytest.mark.parametrize("arch", ["bert", "distilbert", "gpt2", "llama", "t5"])
def test_describe_agrees_with_the_loaded_model(tiny_model_path, arch):
    path = str(tiny_model_path(arch))
    described = model_info.describe(path)
    assert described.device is None and described.load_seconds is None  # nothing was loaded
    assert _shape(described) == _shape(model_info.model_info(models.load_model(path, device="cpu")))


def test_info_never_loads_the_weights(tiny_model_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("info loaded the model")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models.LoadedModel, "num_parameters", property(refuse))
    result = runner.invoke(app, ["info", str(tiny_model_path("llama")), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["layers"], info["heads"], info["kv_heads"], info["kind"]) == (2, 4, 2, "decoder")


def test_an_uncached_hub_id_suggests_the_keyword_or_the_flag():
    from attnviz.errors import ModelNotFoundError, cli_terms

    with pytest.raises(ModelNotFoundError, match=r"try model='minilm' or a local model folder$") as info:
        model_info.describe("no-such-org/no-such-model")
    assert info.value.render(cli_terms).endswith("try --model minilm or a local model folder")


def test_a_truncated_gguf_file_is_one_line(tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_describe_agrees_with_the_bundled_models(request, name):
    loaded = request.getfixturevalue(name)
    described = _shape(model_info.describe(name))
    expected = _shape(model_info.model_info(loaded))
    if name == "smollm2":  # a GGUF header names the architecture, not the transformers class
        assert described.pop("architecture") == "llama (GGUF)"
        expected.pop("architecture")
    assert described == expected


def test_a_gguf_header_is_read_as_the_gguf_package_reads_it(tmp_path):
    """Our header walk (arrays skipped, not decoded) against the gguf package's full reader."""
    import numpy as np

    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(3)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_embedding_length(32)
    writer.add_context_length(128)
    writer.add_token_list(["<s>", "a", "bé", "c"] * 50)  # arrays of strings and numbers, skipped
    writer.add_array("tokenizer.ggml.scores", [0.5] * 200)
    writer.add_string("general.name", "tiny")
    for name, shape in (("token_embd.weight", (200, 32)), ("blk.0.attn_q.weight", (32, 32)), ("out", (7,))):
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = model_info.describe(str(path))
    reader = gguf.GGUFReader(str(path))
    assert info.parameters == sum(int(t.n_elements) for t in reader.tensors) == 200 * 32 + 32 * 32 + 7
    assert (info.layers, info.heads, info.kv_heads, info.hidden_size, info.head_dim, info.max_length) == (
        3, 4, 2, 32, 8, 128
    )  # fmt: skip
    assert (info.kind, info.causal, info.architecture) == ("decoder", True, "llama (GGUF)")


def test_plain_encoders_are_read_without_transformers(tiny_model_path):
    """MiniLM's family needs only config.json: `info` then imports neither transformers nor torch."""
    import subprocess
    import sys

    code = (
        "import sys; from attnviz.models.info import describe\n"
        f"info = describe({str(tiny_model_path('bert'))!r})\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(info.layers, info.heads, info.kind, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "4", "encoder", "[]"]


@pytest.mark.parametrize("model_type", sorted(model_info.PLAIN_ENCODERS))
def test_the_plain_encoder_table_is_transformers_own(model_type):
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    assert MODEL_MAPPING_NAMES[model_type] == model_info.PLAIN_ENCODERS[model_type]
    assert model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES  # an encoder, whatever else it has
    config = CONFIG_MAPPING[model_type]()
    assert not getattr(config, "is_decoder", False) and not getattr(config, "is_encoder_decoder", False)
    data = config.to_dict()
    assert all(
        isinstance(data.get(k), int) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size")
    )
    assert data.get("max_position_embeddings")
