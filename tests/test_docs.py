"""The README documents every command, and its quick-start commands really parse."""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

import pytest

from attnviz.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
# Commands may be documented in README.md or in a topic page under docs/ (README links to them).
DOCS = README + "".join(
    p.read_text(encoding="utf-8") for p in sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))
)


def _commands() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)


def test_every_command_is_in_the_readme():
    missing = [name for name in _commands() if f"attnviz {name}" not in DOCS]
    assert not missing, f"commands missing from README.md: {missing}"


def test_readme_shows_the_two_commands_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    for line in ("bash scripts/setup.sh", ".venv/bin/python -m pytest -n 2"):
        assert line in README and line in ci


@pytest.mark.slow
def test_readme_python_api_block_runs(minilm, tmp_path, monkeypatch):
    start = README.index("## Python API\n")
    block = README[start:].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["att"].attn.shape == (1, 12, 8, 8)
    assert (tmp_path / "layer1.png").is_file() and (tmp_path / "paris.npz").is_file()


# -- docs/cli.md is generated from the commands' own help -------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _script(name: str):
    """A script of scripts/ as a module (the docs generators), loaded once."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generator():
    return _script("gen_cli_docs")


def test_cli_reference_is_what_the_generator_writes_now():
    """Like sqlite-utils' cog check: change a command, then run scripts/gen_cli_docs.py."""
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == _generator().render(), "docs/cli.md is stale: run python scripts/gen_cli_docs.py"


def test_cli_reference_has_every_command_with_its_usage():
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in _commands():
        assert f"## attnviz {name}\n" in doc and f"Usage: attnviz {name} " in doc


def test_generator_is_deterministic_whatever_the_terminal(monkeypatch):
    gen = _generator()
    for name in ("COLUMNS", "FORCE_COLOR", "NO_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    plain = gen.help_text(["heatmap"])
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    wide = gen.help_text(["heatmap"])
    assert wide == plain  # a wide, colour terminal renders the same text as none at all
    assert "\x1b[" not in wide
    assert max(len(line) for line in wide.splitlines()) <= 80


# -- help text: every command at 80 columns ----------------------------------------------------


def _command_objects() -> dict:
    import typer.main

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", _commands())
def test_help_at_80_columns_shows_every_option_whole(name):
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and "<bool>" not in text
    usage = text.split("Usage: ", 1)[1].splitlines()[0]
    assert "{" not in usage and "}" not in usage, usage
    for param in _command_objects()[name].params:
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("-"):
                assert re.search(rf"(^|[\s,]){re.escape(opt)}([\s,/]|$)", text, re.M), (name, opt)


def test_one_short_option_one_long_option_everywhere():
    """-k is --top, -l is --layer, -f is --file, -o is --output... in every command that has them."""
    seen: dict[str, tuple[str, str]] = {}
    for name, cmd in _command_objects().items():
        for param in cmd.params:
            longs = [o for o in param.opts if o.startswith("--")] or ["(none)"]
            for short in (o for o in param.opts if o.startswith("-") and not o.startswith("--")):
                if short in seen:
                    assert seen[short][1] == longs[0], f"{short}: {seen[short]} vs {name} {longs[0]}"
                seen[short] = (name, longs[0])
    assert seen["-k"][1] == "--top" and seen["-l"][1] == "--layer" and seen["-f"][1] == "--file"


@pytest.mark.parametrize("option", ["--layer", "--head"])
def test_singular_selection_options_take_one_index_everywhere(option):
    from typer.testing import CliRunner

    having = [n for n, c in _command_objects().items() if any(option in p.opts for p in c.params)]
    assert having
    for name in having:
        result = CliRunner().invoke(app, [name, "x y", option, "1,2"])
        assert result.exit_code == 2, (name, result.output)
        assert f"{option} takes one" in result.stderr and f"{option}s" in result.stderr, result.stderr


# -- value completion ---------------------------------------------------------------------------


def test_model_completion_offers_aliases_cached_hub_ids_and_folders(tmp_path, monkeypatch):
    from attnviz.cli._options import complete_model

    hub = tmp_path / "hf" / "hub"
    (hub / "models--google-bert--bert-base-uncased").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    (tmp_path / "my-model").mkdir()
    (tmp_path / "small.gguf").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert complete_model("")[:2] == ["minilm", "smollm2"]
    assert complete_model("m") == ["minilm", "my-model/"]
    assert complete_model("google") == ["google-bert/bert-base-uncased"]
    assert complete_model("s") == ["smollm2", "small.gguf"]


def test_cmap_and_config_completion(tmp_path, monkeypatch):
    from attnviz.cli._options import complete_cmap, complete_config

    assert "viridis" in complete_cmap("vir") and all(c.startswith("vir") for c in complete_cmap("vir"))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "coreference.toml").write_text("")
    (tmp_path / "corpus.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    assert complete_config("co") == ["coreference", "configs/", "corpus.toml"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [("attnviz heatmap --cmap vir", "viridis"), ("attnviz entropy --cmap mag", "magma"),
     ("attnviz heads -m min", "minilm"), ("attnviz find-head a b --model smo", "smollm2")],
)  # fmt: skip
def test_completers_are_wired_to_their_options(words, expected):
    """What bash gets on Tab, through Typer's own completion protocol."""
    from typer.testing import CliRunner

    env = {
        "_ATTNVIZ_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    result = CliRunner().invoke(app, [], env=env, prog_name="attnviz")
    assert expected in result.stdout.split(), result.output


@pytest.mark.slow
def test_heads_guide_python_block_runs(minilm, smollm2):
    doc = (ROOT / "docs" / "heads.md").read_text(encoding="utf-8")
    block = doc.split("## Python API for heads\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "docs/heads.md", "exec"), namespace)
    best = namespace["found"].best
    assert (best.layer, best.head) == (5, 3) and best.score == pytest.approx(0.417, abs=1e-3)
    assert namespace["ind"].ranking(top=1)[0].induction > 0.5


def test_heads_guide_documents_every_option_of_its_commands():
    doc = (ROOT / "docs" / "heads.md").read_text(encoding="utf-8")
    skip = {"--help", "--model", "--device", "--dtype", "--trust-remote-code", "--truncate", "--special"}
    for name in ("find-head", "heads"):
        for param in _command_objects()[name].params:
            for opt in (o for o in param.opts if o.startswith("--") and o not in skip):
                assert opt in doc, f"docs/heads.md does not mention {name} {opt}"


def test_attnviz_alone_prints_the_help_not_an_error():
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0 and result.stdout.startswith("Usage: attnviz [OPTIONS] COMMAND")
    assert "error" not in result.stderr and all(f" {name} " in result.stdout for name in _commands())


# Known clashes in modules this branch does not own, each with who fixes it; a new one fails.
KNOWN_CLASHES = {"--texts": "batch's --texts/--no-texts keeps its texts table: the batch owner renames it"}


def test_an_option_name_is_a_flag_everywhere_or_takes_a_value_everywhere():
    kinds: dict[str, dict[bool, list[str]]] = {}
    for name, cmd in _command_objects().items():
        for param in cmd.params:
            if param.param_type_name != "option":
                continue
            for opt in (o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")):
                kinds.setdefault(opt, {}).setdefault(bool(param.is_flag), []).append(name)
    clashes = {opt: k for opt, k in kinds.items() if len(k) > 1 and opt not in KNOWN_CLASHES}
    assert not clashes, f"one name, two kinds of option: {clashes}"


def test_batch_guide_says_truly_what_is_importable_from_attnviz_batch():
    """A name the guide imports from `attnviz.batch`, or lists in its module table without marking
    it *internal*, is public (in `__all__`); every name in the table is where the table says."""
    import importlib

    import attnviz.batch

    doc = (ROOT / "docs" / "batch.md").read_text(encoding="utf-8")
    public = set(attnviz.batch.__all__)
    imported = {
        n.strip() for line in re.findall(r"from attnviz\.batch import (.+)", doc) for n in line.split(",")
    }
    submodules = {p.stem for p in (ROOT / "src" / "attnviz" / "batch").glob("*.py")}
    imported |= set(re.findall(r"attnviz\.batch\.([A-Za-z_]\w*)", doc)) - {"__all__"} - submodules
    assert imported and imported <= public, imported - public
    rows = re.findall(r"^\| `(\w+)\.py` \| (.+) \|$", doc, re.M)
    assert len(rows) >= 9
    for module_name, text in rows:
        module = importlib.import_module(f"attnviz.batch.{module_name}")
        for name, after in re.findall(r"`([A-Za-z_]\w*)`([^`]*)", text):
            assert hasattr(module, name), f"{name} is not in attnviz/batch/{module_name}.py"
            assert name in public or "*internal*" in after, f"{name} is neither public nor marked internal"


def test_views_docstring_names_the_modules_that_load_or_run_a_model():
    """`attnviz.views` once said views never load a model while its server ran them."""
    import ast

    import attnviz.views

    doc = " ".join(attnviz.views.__doc__.split())
    sentences = re.split(r"(?<=\.) ", doc)
    runs = {"extract", "extract_batch", "run_batch", "load_model", "find_heads", "ablate"}
    for path in sorted((ROOT / "src" / "attnviz" / "views").glob("*.py")):
        names = {
            alias.name
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        if path.stem != "__init__" and names & runs:
            said = [s for s in sentences if f"attnviz.views.{path.stem}" in s]
            assert any("runs" in s or "loads" in s for s in said), f"{path.name} runs a model: say so"
    assert not re.search(r"\bviews never load a model\b", doc, re.I)


def test_readme_limitations_are_the_limitations_guide_s_words():
    """README's list is a selection of docs/limitations.md, word for word, so the two never diverge."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Limitations", 1)[1].split("\n## ", 1)[0]
    guide = " ".join((ROOT / "docs" / "limitations.md").read_text(encoding="utf-8").split())
    bullets = [" ".join(b.split()) for b in re.findall(r"(?ms)^- .*?(?=^- |^\s*$|\Z)", section)]
    assert len(bullets) >= 3 and "docs/limitations.md" in section
    for bullet in bullets:
        assert bullet in guide, f"README's limitation differs from docs/limitations.md: {bullet[:70]}"


# -- docs/api.md is generated from the public API's signatures and docstrings ------------------------
def _api_generator():
    return _script("gen_api_docs")


def test_api_reference_is_generated_from_the_code():
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert current == _api_generator().render(), "docs/api.md is stale: run python scripts/gen_api_docs.py"


def test_docstrings_name_only_what_exists():
    """analyses/transform.py once promised a `check_view` that no module defined."""
    assert _api_generator().unresolved() == []


def test_the_docstring_check_can_fail():
    import types

    fake = types.ModuleType("attnviz.fake")
    fake.__doc__ = "Call `check_view` first, then `transform`; `no_such_thing()` too."
    assert _api_generator().unresolved([fake]) == [
        "attnviz.fake: check_view",
        "attnviz.fake: no_such_thing()",
    ]
