"""The error sweep: every command fed its classic bad inputs answers one `error:` line and exit 2.

Empty, whitespace, out of range, reversed, NaN, negative, conflicting, unreadable, not UTF-8, a cut
file: each case below must fail in one stderr line starting `error:` with exit code 2 (130 for
Ctrl-C). Most are refused before a model loads; the few that need a model use the tiny random BERT
(2 layers x 4 heads). A full disk and a closed pipe need a real standard output: they run in a
subprocess (an interpreter start each, so only a few). docs/limitations.md gives the case count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error
from typer.testing import CliRunner

from attnviz.cli import app

runner = CliRunner()
BAD_UTF8 = b"\xff\xfe bad"
T = "the cat sat"

# (command line, standard input or None, a piece of the expected message or "")
# {tiny} is a tiny BERT folder, {tinylm} a tiny GPT-2; {text}, {empty}, {latin1}, {dir}, {missing}:
# files; {cut}: a cut GGUF file; {notgguf}: a text file named .gguf; {cfg_*}: TOML configs.
CASES: dict[str, list[tuple[str, bytes | None, str]]] = {
    "models": [("models --bogus", None, "No such option")],
    "info": [
        ("info ''", None, "model name is empty"),
        ("info '   '", None, "model name is empty"),
        ("info {missing}/", None, "unknown model"),
        ("info {dir}", None, "no config.json"),
        ("info {missing}.gguf", None, "no such GGUF file"),
    ],
    "extract": [
        ("extract ''", None, "empty"),
        ("extract '   '", None, "empty"),
        ("extract", b"", "no text given"),
        ("extract -", BAD_UTF8, "standard input is not UTF-8"),
        ("extract 'a b' --file {text}", None, "not both"),
        ("extract --file {missing}", None, "cannot read"),
        ("extract --file {dir}", None, "cannot read"),
        ("extract --file {latin1}", None, "not UTF-8"),
        ("extract --file {empty}", None, "empty"),
        ("extract '{T}' --layers 3-1", None, "low to high"),
        ("extract '{T}' --layers nan", None, "--layers"),
        ("extract '{T}' --heads ''", None, "--heads"),
        ("extract '{T}' --layers 9 -m {tiny}", None, "out of range"),
        ("extract '{T}' --layers=-9 -m {tiny}", None, "out of range"),
        ("extract '{T}' --heads 4 -m {tiny}", None, "out of range"),
        ("extract '{T}' -o {text}/out.npz", None, ""),
        ("extract '{T}' -o out.txt", None, ""),
        ("extract '{T}' --store float8", None, "float8"),
        ("extract '{T}' --weighting nope", None, "nope"),
        ("extract '{T}' -m ''", None, "model name is empty"),
        ("extract '{T}' -m {cut}", None, "truncated"),
        ("extract '{T}' -m {notgguf}", None, "not a GGUF file"),
        ("extract '{T}' --dtype float8", None, "float8"),
        ("extract '{T}' --dtype ''", None, "unknown dtype"),
        ("extract '{T}' --device ''", None, "unknown device"),
        ("extract '{T}' --layers 0-99999999999", None, "more indices than any model has"),
        ("extract '{T}' --heads=-99999999999--1", None, "more indices than any model has"),
        # issue 30: names and paths over the system's limits, a lone surrogate, broken model folders
        ("extract 'caf\udce9'", None, "lone surrogate"),
        ("extract '\u200b\u200c\u2060'", None, "only invisible characters"),
        ("extract '{T}' -o {long}.npz", None, "over this system's limit"),
        ("extract '{T}' -o {deep}/x.npz", None, "over this system's limit"),
        ("extract '{T}' -m {heads0}", None, "num_attention_heads 0"),
        ("extract '{T}' -m {pos1}", None, "max_position_embeddings 1"),
        ("extract '{T}' -m {badshape}", None, "do not have the shapes"),
        ("extract '{T}' -m {notok}", None, "no tokenizer files"),
        ("extract '{T}' -m '~no-such-user-attnviz/x'", None, "unknown model"),
        # issue 31: an option given twice; a layer out of range, before loading
        ("extract --file {text} --file {text}", None, "given twice"),
        ("extract '{T}' --layers 6 -m minilm", None, "layer 6 is out of range"),
    ],
    "heatmap": [
        ("heatmap", BAD_UTF8, "not UTF-8"),
        ("heatmap '{T}' --highlight ''", None, "--highlight is empty"),
        ("heatmap '{T}' --highlight ' , '", None, "--highlight is empty"),
        ("heatmap '{T}' --dpi=-1", None, "--dpi"),
        ("heatmap '{T}' --dpi nan", None, "--dpi"),
        ("heatmap '{T}' --vmax nan", None, "--scale"),
        ("heatmap '{T}' --scale=-1", None, "--scale"),
        ("heatmap '{T}' --size 0x5", None, "size"),
        ("heatmap '{T}' --size x", None, "size"),
        ("heatmap '{T}' --size ''", None, "--size is empty"),
        ("heatmap '{T}' --cmap nope", None, "nope"),
        ("heatmap '{T}' --layer 0 --head 0 --heads 1", None, "not both"),
        ("heatmap '{T}' --layer 0,1", None, "--layers"),
        ("heatmap '{T}' --aggregate median", None, "median"),
        ("heatmap '{T}' -o out.gif", None, "gif"),
        ("heatmap '{T}' --layer 2 -m {tiny}", None, "out of range"),
        ("heatmap '{T}' --layer 0 --head=-9 -m {tiny}", None, "out of range"),
        ("heatmap '{T}' --highlight zzz -m {tiny}", None, "zzz"),
        ("heatmap '{T}' --dpi 1200 --size 100x100", None, "pixels"),
        ("heatmap '{T}' --cmap '\x1b]0;x\x07'", None, "'\\x1b]0;x\\x07'"),
        ("heatmap '{T}' -o {long}.png", None, "over this system's limit"),
        ("heatmap '{T}' -o {deep}.png", None, "over this system's limit"),
        ("heatmap '{T}' --layer 7 -m minilm", None, "layer 7 is out of range: minilm has layers 0-5"),
    ],
    "entropy": [
        ("entropy '{T}' --highlight ,", None, "--highlight is empty"),
        ("entropy '{T}' --dpi 5", None, "--dpi"),
        ("entropy '{T}' --file {text}", None, "not both"),
        ("entropy '{T}' --layer 2 --head 0 -m {tiny}", None, "out of range"),
    ],
    "find-head": [
        ("find-head '' b '{T}'", None, ""),
        ("find-head a b --texts {missing}", None, ""),
        ("find-head a b --texts {empty}", None, ""),
        ("find-head a b --texts -", BAD_UTF8, "not UTF-8"),
        ("find-head cat sat '{T}' --top=-1", None, "--top"),
        ("find-head cat sat '{T}' -n x", None, ""),
        ("find-head cat sat '{T}' -n ''", None, "--occurrence is empty"),
        ("find-head cat sat '{T}' -d sideways", None, "sideways"),
        ("find-head cat sat '{T}' --layers 3-1", None, "low to high"),
        ("find-head cat zzz '{T}' -m {tiny}", None, "zzz"),
        ("find-head cat sat '{T}' --layer 5 -m {tiny}", None, "out of range"),
        ("find-head cat sat '{T}' --layer 1 --layer 2", None, "given twice"),
    ],
    "heads": [
        ("heads '{T}' --threshold nan", None, "threshold"),
        ("heads '{T}' --threshold 1.5", None, "threshold"),
        ("heads '{T}' --threshold=-0.1", None, "threshold"),
        ("heads '{T}' --sort vibes", None, "vibes"),
        ("heads --induction --seed=-1", None, "--seed"),
        ("heads --induction --seed 1180591620717411303424", None, "--seed"),
        ("heads --induction --seq-len 1", None, "seq-len"),
        ("heads --texts -", BAD_UTF8, "not UTF-8"),
        ("heads '{T}' --layers 9 -m {tiny}", None, "out of range"),
    ],
    "toy": [
        ("toy --tokens 0", None, "tokens"),
        ("toy --tokens=-3", None, "tokens"),
        ("toy --tokens ''", None, "tokens"),
        ("toy --tokens '   '", None, "tokens"),
        ("toy --dim 0", None, "dim"),
        ("toy --dim 5 --num-heads 2", None, "divisible"),
        ("toy --num-heads 0", None, "num-heads"),
        ("toy --temperature nan", None, "temperature"),
        ("toy --temperature 0", None, "temperature"),
        ("toy --seed 1180591620717411303424", None, "--seed"),
        ("toy --seed=-1", None, "--seed"),
        ("toy --decimals 11", None, "decimals"),
        ("toy --steps --dims=-1", None, "--dims"),
        ("toy --steps --head 5", None, "out of range"),
        ("toy --dpi 0", None, "--dpi"),
        ("toy -o out.gif", None, "gif"),
        ("toy --dpi 1200 --size 100x100", None, "pixels"),
        ("toy --dpi 1200 --size 60x60", None, "pixels"),
    ],
    "explain": [
        ("explain '{T}'", None, "--layer L --head H"),
        ("explain '{T}' --layer 0 --head 0 --dims=-1", None, "--dims"),
        ("explain '{T}' --layer 0 --head 0 --decimals=-1", None, "decimals"),
        ("explain '{T}' --layer 0 --head 0 --key cat", None, "--query"),
        ("explain '{T}' --file {text} --layer 0 --head 0", None, "not both"),
        ("explain '{T}' --layer 2 --head 0 -m {tiny}", None, "out of range"),
        ("explain '{T}' --layer 0 --head 0 --query zzz -m {tiny}", None, "zzz"),
    ],
    "ablate": [
        ("ablate '{T}'", None, "say which head"),
        ("ablate '{T}' --scan --layer 0 --head 0", None, "--scan"),
        ("ablate '{T}' --layer 0", None, "--head"),
        ("ablate '{T}' --heads 1-2", None, ""),
        ("ablate '{T}' --layer 0 --head 0 --mode mean", None, "--reference"),
        ("ablate '{T}' --layer 0 --head 0 --mode vibes", None, "vibes"),
        ("ablate '{T}' --layer 0 --head 0 --plot p.png", None, "--scan"),
        ("ablate '{T}' --scan --plot p.gif", None, "gif"),
        ("ablate '{T}' --layer 0 --head 0 --mode mean --reference {latin1}", None, "not UTF-8"),
        ("ablate '{T}' --layer 2 --head 0 -m {tiny}", None, "out of range"),
    ],
    "attribute": [
        ("attribute '{T}'", None, "--answer"),
        ("attribute '{T}' --answer ' '", None, "--answer"),
        ("attribute '{T}' --answer cat --wrong cat", None, "the same"),
        ("attribute '{T}' --answer cat --wrong ''", None, "--wrong is empty"),
        ("attribute '{T}' --answer cat --plot p.gif", None, "gif"),
        ("attribute '{T}' --answer cat -o out.txt", None, ".safetensors"),
        ("attribute '{T}' --answer cat -m {tiny}", None, "no LM head"),
        ("attribute '{T}' --answer zzqx -m {tinylm}", None, "tokens ("),
        ("attribute '{T}' --answer cat --position 99 -m {tinylm}", None, "--position"),
    ],
    "lens": [
        ("lens '{T}' -k 0", None, "-k 0"),
        ("lens '{T}' --answer ''", None, "--answer is empty"),
        ("lens '{T}' --plot p.gif", None, "gif"),
        ("lens '{T}' -m {tiny}", None, "no LM head"),
        ("lens '{T}' --answer zzqx -m {tinylm}", None, "tokens ("),
    ],
    "rollout": [
        ("rollout '{T}' --residual nan", None, "residual"),
        ("rollout '{T}' --residual 2", None, "residual"),
        ("rollout '{T}' --residual=-1", None, "residual"),
        ("rollout '{T}' --head-fusion median", None, "median"),
        ("rollout '{T}' --layers 3-1", None, "low to high"),
        ("rollout '{T}' --token zzz -m {tiny}", None, "zzz"),
        ("rollout '{T}' --token ''", None, "--token is empty"),
        ("rollout '{T}' --layers 5 -m {tiny}", None, "out of range"),
    ],
    "compare": [
        ("compare '' b", None, "TEXT_A is empty"),
        ("compare a '   '", None, "TEXT_B is empty"),
        ("compare a b --layer 0", None, "go together"),
        ("compare a b --top=-1", None, "--top"),
        ("compare a b --dpi 0", None, "--dpi"),
        ("compare '{T}' 'the dog sat' --layer 2 --head 0 -m {tiny}", None, "layer 2 is out of range"),
        ("compare '{T}' 'the dog sat' --layer 6 --head 0 -m {tiny}", None, "layer 6 is out of range"),
        ("compare '{T}' 'the dog sat' --layer 0 --head 4 -m {tiny}", None, "head 4 is out of range"),
    ],
    "cluster": [
        ("cluster {text} --file {text}", None, "not both"),
        ("cluster {missing}", None, ""),
        ("cluster {text}", None, "at least two texts"),
        ("cluster {text} --batch-size 0", None, "batch-size"),
        ("cluster {text} --format xml", None, "xml"),
        ("cluster {text} --layers 3-1", None, "low to high"),
    ],
    "batch": [
        ("batch {text} -o run --resume --overwrite", None, "not both"),
        ("batch {text} -o run --batch-size 0", None, "batch_size"),
        ("batch {text} -o run --config {cfg_broken}", None, "not valid TOML"),
        ("batch {text} -o run --config {cfg_keep_string}", None, "must be a list"),
        ("batch {text} -o run --config {cfg_nan}", None, "commit_seconds"),
        ("batch {text} -o run --config {cfg_empty_model}", None, "model name is empty"),
        ("batch {text} -o run --config no-such-config", None, "no such config"),
        ("batch {missing} -o run", None, ""),
        ("batch {text} -o run --engine spark", None, "spark"),
        ("batch {text} -o run --workers 2", None, "Ray"),
        ("batch {text} -o run --stats vibes", None, "vibes"),
        ("batch {text} -o run --probe nocolon", None, "probe"),
        ("batch {text} -o run --layers 3-1", None, "low to high"),
        ("batch {text} -o run --max-length 1", None, "max_length"),
        ("batch {text} -o run --format xml", None, "xml"),
        # issue 30: each refused before a model loads
        ("batch {text} -o run --threads 100000", None, "threads must be from 1 to 1024"),
        ("batch {text} -o run --config {cfg_threads}", None, "threads must be from 1 to 1024"),
        ("batch {text} -o run --field ''", None, "field name is empty"),
        ("batch {text} -o run --column '  '", None, "column name is empty"),
        ("batch {text} -o run --config {cfg_empty_field}", None, "field name is empty"),
        ("batch {text} -o run --config {cfg_empty_column}", None, "column name is empty"),
        ("batch {text} -o {not_utf8}", None, "not UTF-8"),
        ("batch {not_utf8} -o run", None, "no such input file: caf\\xe9"),
        ("batch {text} -o {long_name}", None, "over the file system's limit"),
        ("batch {text} -o {long_path}", None, "the system's limit of 4096"),
    ],
    "view": [
        ("view '{T}' --max-mb nan", None, "--max-mb"),
        ("view '{T}' --max-mb 0", None, "--max-mb"),
        ("view '{T}' --max-mb=-1", None, "--max-mb"),
        ("view '{T}' --view nope", None, "nope"),
        ("view '{T}' --scale sideways", None, "--scale"),
        ("view '{T}' --layers 3-1", None, "low to high"),
        ("view '{T}' --file {text}", None, "not both"),
        ("view '{T}' --layers 9 -m {tiny}", None, "out of range"),
        ("view '{T}' -o {long}.html", None, "over this system's limit"),
        ("view '{T}' -o {deep}/x.html", None, "over this system's limit"),
    ],
    # issue 21's command, checked before its model loads. Until that branch is merged these end in
    # "No such command 'generate'", also one line and exit 2; hence no message pieces here.
    "generate": [
        ("generate ''", None, ""),
        ("generate", BAD_UTF8, ""),
        ("generate '{T}' --file {text}", None, ""),
        ("generate '{T}' --max-new-tokens 0", None, ""),
        ("generate '{T}' --sample --top-p 2", None, ""),
        ("generate '{T}' --layers 3-1", None, ""),
        ("generate '{T}' --view {long}.html", None, "over this system's limit"),
        ("generate '{T}' --sample --temperature 1e-300", None, "--temperature must be a number from 0.01"),
        ("generate '{T}' --sample --temperature inf", None, "--temperature must be a number from 0.01"),
        ("generate '{T}' --sample --seed 18446744073709551616", None, "--seed"),
        ("generate '{T}' --seed 1", None, "--seed only matters when sampling: add --sample"),
    ],
    "patch": [
        ("patch '{T}' 'the dog sat'", None, "--answer"),
        ("patch '{T}' 'the dog sat' --answer cat --wrong cat", None, "same word"),
        ("patch '{T}' 'the dog sat on' --answer cat -m {tiny}", None, "different lengths: clean"),
        ("patch '{T}' 'the dog' --answer zebra --at last -m {tinylm}", None, "became"),
        ("patch '{T}' 'the dog sat' --answer cat --sender 2.0 --receivers 1.0", None, "not upstream"),
        ("patch '{T}' 'the dog sat' --answer cat --sender 0.0", None, "--receivers"),
        ("patch '{T}' 'the dog sat' --answer cat --sender 0.0 --receivers 1.0 --via x", None, "via"),
        ("patch '{T}' 'the dog sat' --answer cat --unit neurons", None, "unit"),
        ("patch '{T}' 'the dog sat' --answer cat --metric logit-diff", None, "--wrong"),
        ("patch '{T}' 'the dog sat' --answer cat --at first", None, "--at"),
        ("patch '{T}' 'the dog sat' --answer cat -o out.pkl", None, "pkl"),
    ],
    "serve": [
        ("serve --port=-1", None, "port"),
        ("serve --port 70000", None, "port"),
        ("serve -m ''", None, "model name is empty"),
        ("serve -m {tiny} -m {missing}/ --port 0", None, "unknown model"),  # no "loaded" line first
    ],
}
FLAT = [(cmd, *case) for cmd, cases in CASES.items() for case in cases]


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory: pytest.TempPathFactory, tiny_model_path) -> dict[str, str]:
    """The files the cases name: texts, a folder, a cut GGUF, bad configs; the tiny BERT."""
    root = tmp_path_factory.mktemp("sweep")
    files = {
        "text": "the cat sat on the mat\n",
        "empty": "",
        "notgguf": "hello\n",
        "cfg_broken": "not toml [",
        "cfg_keep_string": '[statistics]\nkeep = "entropy"\n',
        "cfg_nan": "[output]\ncommit_seconds = nan\n",
        "cfg_empty_model": '[model]\nname = ""\n',
        "cfg_threads": "[model]\nthreads = 100000\n",
        "cfg_empty_field": '[input]\nfield = ""\n',
        "cfg_empty_column": '[input]\ncolumn = ""\n',
    }
    out = {"T": T, "dir": str(root), "missing": str(root / "missing"), "tiny": str(tiny_model_path("bert"))}
    out |= {"long": "a" * 300, "deep": "/".join(["b" * 200] * 21)}  # over NAME_MAX; over PATH_MAX
    out |= _broken_models(root, Path(out["tiny"]))
    out["not_utf8"] = os.fsdecode(b"caf\xe9")  # a byte that is not UTF-8, as Python receives it
    out["long_name"] = "x" * 300
    out["long_path"] = "/".join(["y" * 200] * 21)
    out["tinylm"] = str(tiny_model_path("gpt2"))  # a causal LM: attribute and lens need an LM head
    for name, body in files.items():
        suffix = {"notgguf": ".gguf", "text": ".txt"}.get(name, ".toml" if name.startswith("cfg") else "")
        path = root / f"{name}{suffix}"
        path.write_text(body, encoding="utf-8")
        out[name] = str(path)
    (root / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    out["latin1"] = str(root / "latin1.txt")
    (root / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x05")  # the magic, then the file ends
    out["cut"] = str(root / "cut.gguf")
    return out


def _broken_models(root: Path, tiny: Path) -> dict[str, str]:
    """The tiny BERT with 0 heads, 1 position, weights of another size, and no tokenizer files."""
    import json
    import shutil

    out = {}
    for name, change in {
        "heads0": {"num_attention_heads": 0},
        "pos1": {"max_position_embeddings": 1},
        "badshape": {"hidden_size": 64},
        "notok": {},
    }.items():
        folder = root / name
        shutil.copytree(tiny, folder)
        config = folder / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
        if name == "notok":
            for path in folder.glob("*token*"):
                path.unlink()
        out[name] = str(folder)
    return out


def _args(line: str, files: dict[str, str]) -> list[str]:
    import shlex

    return [part.format(**files) for part in shlex.split(line)]


@pytest.mark.parametrize(("command", "line", "stdin", "needle"), FLAT, ids=[f"{c[0]}: {c[1]}" for c in FLAT])
def test_bad_input_is_one_line_and_exit_2(sweep_files, command, line, stdin, needle):
    result = runner.invoke(app, _args(line, sweep_files), input=stdin)
    assert "Traceback" not in result.output
    one_line_error(result, needle)


def test_the_sweep_covers_every_command():
    """A new command joins the sweep (the table above), or this fails."""
    import typer

    commands = set(getattr(typer.main.get_command(app), "commands", {}))
    assert commands and commands <= set(CASES), sorted(commands - set(CASES))


def test_ctrl_c_during_a_scan_exits_130(monkeypatch):
    """KeyboardInterrupt raised inside `ablate --scan`'s loop: one line, exit 130, nothing printed."""
    import attnviz.cli.ablate
    import attnviz.heads.ablation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attnviz.cli.ablate, "load", lambda *a, **k: None)
    monkeypatch.setattr(attnviz.heads.ablation, "for_ablation", lambda loaded, trust: loaded)
    monkeypatch.setattr(attnviz.heads.ablation, "scan_heads", interrupted)
    result = runner.invoke(app, ["ablate", T, "--scan"])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "error: interrupted" and result.stdout == ""


# -- a real standard output and a real signal: subprocesses, one interpreter start each ----------
_PATCHED_SCAN = """
import os, signal, sys
import attnviz.heads.ablation, attnviz.cli.ablate
from attnviz.cli import main
signal.signal(signal.SIGINT, signal.default_int_handler)  # as on a terminal, whatever the parent set
attnviz.cli.ablate.load = lambda *a, **k: None
attnviz.heads.ablation.for_ablation = lambda loaded, trust: loaded
attnviz.heads.ablation.scan_heads = lambda *a, **k: os.kill(os.getpid(), signal.SIGINT)
sys.argv = ["attnviz", "ablate", "the cat sat", "--scan"]
main()
"""


_MAIN = "import sys; from attnviz.cli import main; sys.argv = ['attnviz', *sys.argv[1:]]; main()"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["models"], ["--help"]])
def test_a_full_standard_output_is_one_line_and_exit_2(args):
    """`attnviz models > /dev/full`: light commands, so no torch import (the guard is the same for all)."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-c", _MAIN, *args], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: cannot write to standard output: no space left\n"


def test_a_closed_pipe_ends_quietly():
    """`attnviz models | head -0`: the reader is gone before the first write; exit 0, not a word."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, whatever the timing
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MAIN, "models"], stdout=write_end, stderr=subprocess.PIPE
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, b"")


def test_a_closed_standard_output_is_one_line_and_exit_2():
    """`attnviz models >&-`: Python starts with sys.stdout None; the first write fails in one line."""
    args = [sys.executable, "-c", _MAIN, "models"]
    done = subprocess.run(args, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert (done.returncode, done.stderr) == (2, "error: cannot write to standard output: it is closed\n")


def test_a_real_sigint_during_a_scan_exits_130():
    done = subprocess.run([sys.executable, "-c", _PATCHED_SCAN], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr, done.stdout) == (130, "error: interrupted\n", "")


def test_stdout_errors_are_not_file_errors():
    """An OSError from a file the command writes is not reported as standard output's."""
    from attnviz.cli._stdout import Guarded, StdoutError

    class Broken:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            raise OSError(32, "Broken pipe")

    guarded = Guarded(Broken())
    with pytest.raises(StdoutError) as info:
        guarded.write("x")
    assert info.value.errno == 28 and not isinstance(info.value, OSError)
    with pytest.raises(StdoutError):
        guarded.flush()
