"""Shared fixtures: isolated caches, the real bundled models loaded once, tiny random models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SEED_TEXT = "Emily always wanted to visit Paris so she took some French lessons"


def _user_cache() -> Path:
    """The user's own attnviz cache (read before any test changes the environment)."""
    if env := os.environ.get("ATTNVIZ_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnviz"


USER_CACHE = _user_cache()


@pytest.fixture(scope="session", autouse=True)
def _build_the_cli_once():
    """Typer rebuilds the click command tree, reading every signature, on each `CliRunner.invoke`
    and `get_command` (about 0.1 s, a third of the fast suite); a process running `attnviz` builds
    it once. Build it once per app here too: the tree is the same, each invocation still gets its
    own context."""
    import weakref

    import typer.main
    import typer.testing

    built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    build = typer.main.get_command

    def cached(app):
        if app not in built:
            built[app] = build(app)
        return built[app]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.main, "get_command", cached)
        patch.setattr(typer.testing, "_get_command", cached)
        yield


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One isolated cache per test session: every test reads and writes here, never the user's."""
    return tmp_path_factory.mktemp("attnviz-cache")


@pytest.fixture(scope="session")
def model_cache(session_cache: Path) -> Path:
    """The GGUF cache of the slow real-model fixtures: the user's when it has entries already.

    Sharing it spares every run the 18 s de-quantisation of SmolLM2; entries are keyed by content
    and verified before use, so a shared entry is never a stale one. Other tests stay isolated.
    """
    return USER_CACHE if (USER_CACHE / "gguf").is_dir() else session_cache


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, session_cache: Path, tmp_path: Path) -> None:
    """No test reads or writes the user's caches, reaches the network, or picks up a debug flag."""
    monkeypatch.setenv("ATTNVIZ_CACHE", str(session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(session_cache / "hf-home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("ATTNVIZ_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


def _load_with_cache(alias: str, cache: Path):
    """Load a bundled model with ATTNVIZ_CACHE pointing at `cache` for this load only."""
    from attnviz.models.loading import load_model

    saved = {k: os.environ.get(k) for k in ("ATTNVIZ_CACHE", "HF_HUB_OFFLINE")}
    os.environ["ATTNVIZ_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return load_model(alias, device="cpu")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def empty_model_cache():
    """The process's loaded-model cache, emptied for one test and given back after it: a test that
    loads anew must not make the next test that uses a session model load it again (18 s for SmolLM2)."""
    from attnviz.models import loading as models

    saved = dict(models._CACHE)
    models.clear_cache()
    yield
    models._CACHE.clear()
    models._CACHE.update(saved)


@pytest.fixture(scope="session")
def minilm(model_cache: Path):
    """The bundled MiniLM (BERT encoder, 6 x 12), loaded once for the whole session."""
    return _load_with_cache("minilm", model_cache)


@pytest.fixture(scope="session")
def smollm2(model_cache: Path):
    """The bundled SmolLM2 (Llama decoder, 30 x 9, GQA), de-quantised and cached once."""
    return _load_with_cache("smollm2", model_cache)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory):
    """Factory: zoo name ("bert", "gpt2", "llama", "t5", ... see tests/zoo.py) -> folder of a tiny model."""
    import zoo

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in built:
            built[arch] = zoo.build(arch, root / arch)
        return built[arch]

    return make


@pytest.fixture(scope="session")
def bert(tiny_model_path) -> str:
    """The tiny BERT's folder, as a --model argument (the CLI tests' one copy)."""
    return str(tiny_model_path("bert"))


@pytest.fixture(scope="session")
def tiny_bert(tiny_model_path):
    """The tiny BERT (2 layers x 4 heads), loaded once for the session (`bert` is its folder)."""
    from attnviz.models.loading import load_model

    return load_model(str(tiny_model_path("bert")), device="cpu")


@pytest.fixture
def no_model(monkeypatch):
    """Fail loudly if a command gets as far as loading a model (errors must come before it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("attnviz.cli._options.load", refuse)


@pytest.fixture(scope="session")
def gpt2(tiny_model_path) -> str:
    """The tiny GPT-2's folder, as a --model argument."""
    return str(tiny_model_path("gpt2"))


@pytest.fixture(scope="session")
def llama(tiny_model_path) -> str:
    """The tiny Llama's folder (grouped-query heads), as a --model argument."""
    return str(tiny_model_path("llama"))


@pytest.fixture(scope="session")
def seed_text() -> str:
    return SEED_TEXT


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved through `attnviz.plots.save`, in order, with its path (also by file name)."""
    from helpers import SavedFigures

    import attnviz.plots

    saved = SavedFigures()
    real = attnviz.plots.save

    def spy(fig, path, dpi=None):
        saved.append((fig, Path(path)))
        return real(fig, path, dpi)

    monkeypatch.setattr(attnviz.plots, "save", spy)
    monkeypatch.setattr(attnviz.plots._common, "save", spy)  # what plots' own save_* helpers call
    return saved
