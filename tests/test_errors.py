"""Errors name parameters, and each caller spells them its own way (Python, command line, server)."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

from attnviz.errors import AttnvizError, InputError, api_terms, cli_terms, param, render


def test_one_message_three_spellings():
    hint = f"pass {param('truncate', True)} or {param('model', 'minilm')}"
    exc = InputError(f"bad {param('max_new_tokens')} 0: {hint}")
    assert str(exc) == "bad max_new_tokens 0: pass truncate=True or model='minilm'"
    assert exc.render(cli_terms) == "bad --max-new-tokens 0: pass --truncate or --model minilm"
    assert exc.render(api_terms) == "bad parameter max_new_tokens 0: pass truncate=1 or model=minilm"


def test_a_flag_spelled_otherwise_and_a_false_value():
    text = f"drop {param('special', False, flag='--no-special')} and {param('chat', True)}"
    assert render(text) == "drop special=False and chat=True"
    assert render(text, cli_terms) == "drop --no-special and --chat"
    assert render(text, api_terms) == "drop special=0 and chat=1"


def test_plain_messages_pass_through_and_only_the_first_line_is_rendered():
    assert str(InputError("no such file: a--b")) == "no such file: a--b"
    assert InputError("first\nsecond").render(cli_terms) == "first"
    assert InputError("").render(cli_terms) == "InputError"


def test_the_marks_survive_pickling_and_wrapping():
    """Ray sends errors between processes, and some messages are built on another error's."""
    exc = pickle.loads(pickle.dumps(InputError(f"bad {param('vmax')} 'x'")))
    assert type(exc) is InputError and exc.render(cli_terms) == "bad --vmax 'x'"
    wrapped = AttnvizError(f"{exc.message}; see {param('scale')}")
    assert str(wrapped) == "bad vmax 'x'; see scale"
    assert wrapped.render(cli_terms) == "bad --vmax 'x'; see --scale"


FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])(?![\w-])")
SRC = Path(__file__).resolve().parents[1] / "src" / "attnviz"


COMMAND = re.compile(r"`attnviz [^`]*`|pip install .*")  # a quoted command: its flags are its own


def _exempt(tree: ast.AST) -> set[int]:
    """Docstrings, and the `flag=` of a `param()`: where a flag is meant to be written."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
    }
    flags = {
        id(kw.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "param"
        for kw in node.keywords
        if kw.arg == "flag"
    }
    return docs | flags


def _flags(source: str) -> list[tuple[int, str]]:
    """Every flag-like word in a module's string literals; docstrings, quoted commands, `flag=` aside."""
    tree = ast.parse(source)
    exempt = _exempt(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exempt:
            text = COMMAND.sub("", node.value)
            found += [(node.lineno, m.group(1)) for m in FLAG.finditer(text)]
    return sorted(found)


def test_the_sweep_finds_a_flag():
    """The check below can fail: a flag in a message is caught, a docstring or quoted command is not."""
    source = 'def f():\n    """Like --vmax."""\n    raise InputError(f"bad --vmax {v}: or pass -o DIR")\n'
    source += 'HINT = "pip install --no-deps x; see `attnviz extract -o`" + param("out", flag="-o")\n'
    assert [flag for _, flag in _flags(source)] == ["--vmax", "-o"]


def test_no_library_message_names_a_flag():
    """Outside the CLI, messages name parameters with `param()`: a Python caller never typed a flag."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "cli" not in path.relative_to(SRC).parts:
            offenders += [f"{path.relative_to(SRC)}:{line} {flag}" for line, flag in _flags(path.read_text())]
    assert not offenders, "\n".join(offenders)
