"""The README documents every command, and its quick-start commands really parse."""

from __future__ import annotations

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
    for line in ("bash scripts/setup.sh", ".venv/bin/python -m pytest"):
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
