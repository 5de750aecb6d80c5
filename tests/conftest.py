"""Shared fixtures: isolated caches, the real bundled models loaded once, tiny random models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SEED_TEXT = "Emily always wanted to visit Paris so she took some French lessons"

# Under pytest-xdist (`-n 2`, README's test command) each worker is its own process: session
# fixtures run once per worker, environment variables and signals stay in it. What is real and
# shared on the machine runs on one worker at a time: the tests of one group go to one worker
# (`--dist loadgroup`, which the command names), so there is one local Ray instance and one
# headless Chromium at a time. Ports are free ones (bound to port 0), folders are per test.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
GROUPS = {
    "test_batch_ray.py": "ray",  # ray.init(address="local"): one local instance at a time
    "test_browser.py": "browser",  # Chromium + chromedriver
    "test_server_security.py::test_a_page_of_another_origin_in_chromium_cannot_run_the_model": "browser",
}

if XDIST_WORKER:
    # Two workers on two cores: one torch thread each, not two each fighting for the same cores.
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        file, _, name = item.nodeid.rpartition("/")[2].partition("::")
        group = GROUPS.get(f"{file}::{name.partition('[')[0]}") or GROUPS.get(file)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


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


@pytest.fixture
def torch_threads_of_the_goldens():
    """Two torch threads, as when tests/data/cli_json.json was written: a sum's rounding depends on
    how many threads share it (a loss difference moves by 5e-5 of itself), not on the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One isolated cache per test session: every test reads and writes here, never the user's."""
    return tmp_path_factory.mktemp("attnviz-cache")


@pytest.fixture(scope="session")
def model_cache(session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GGUF cache of the slow real-model fixtures: the user's when it has entries already.

    Sharing it spares every run the 18 s de-quantisation of SmolLM2; entries are keyed by content
    and verified before use, so a shared entry is never a stale one. Other tests stay isolated.
    Without one, the xdist workers of a run share one folder: an entry is written under a lock
    (models/gguf_cache.py), so the second worker waits for the first one's and reads it.
    """
    if (USER_CACHE / "gguf").is_dir():
        return USER_CACHE
    if XDIST_WORKER:
        shared = tmp_path_factory.getbasetemp().parent / "attnviz-model-cache"  # beside popen-gw0, gw1
        shared.mkdir(exist_ok=True)
        return shared
    return session_cache


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
