"""`describe` (what `attnviz info` prints) reads files only, and agrees with the loaded model."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from attnviz import model_info, models
from attnviz.cli import app

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
