"""Shared fixtures: isolated caches, the real bundled models loaded once, tiny random models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SEED_TEXT = "Emily always wanted to visit Paris so she took some French lessons"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GGUF cache per test session, so SmolLM2 is de-quantised once, never in the user's home."""
    return tmp_path_factory.mktemp("attnviz-cache")


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, session_cache: Path, tmp_path: Path) -> None:
    """No test reads or writes the user's caches, reaches the network, or picks up a debug flag."""
    monkeypatch.setenv("ATTNVIZ_CACHE", str(session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(session_cache / "hf-home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("ATTNVIZ_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


def _env_for_session(cache: Path) -> None:
    os.environ.setdefault("ATTNVIZ_CACHE", str(cache))
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def minilm(session_cache: Path):
    """The bundled MiniLM (BERT encoder, 6 x 12), loaded once for the whole session."""
    _env_for_session(session_cache)
    from attnviz.models import load_model

    return load_model("minilm", device="cpu")


@pytest.fixture(scope="session")
def smollm2(session_cache: Path):
    """The bundled SmolLM2 (Llama decoder, 30 x 9, GQA), de-quantised and cached once."""
    _env_for_session(session_cache)
    from attnviz.models import load_model

    return load_model("smollm2", device="cpu")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory):
    """Factory: arch ("bert", "distilbert", "gpt2", "llama", "t5") -> folder of a tiny random model."""
    import tiny

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in built:
            built[arch] = tiny.build(arch, root / arch)
        return built[arch]

    return make


@pytest.fixture(scope="session")
def seed_text() -> str:
    return SEED_TEXT
