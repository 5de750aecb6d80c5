"""cli/_app.py's contract with Typer: the version tested, and the behaviour relied on."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from packaging.requirements import Requirement
from typer.core import TyperCommand, TyperGroup

from attnviz.cli import app
from attnviz.cli._app import Command, Group

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_typer_is_the_pinned_minor_version():
    """A new Typer fails here first: rerun this file and the CLI tests, then move the pin."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (pin,) = [Requirement(r) for r in project["dependencies"] if r.startswith("typer")]
    assert pin.specifier.contains(version("typer")), f"typer {version('typer')} is outside {pin}"
    lower, upper = sorted(pin.specifier, key=lambda s: s.operator, reverse=True)
    assert (lower.operator, upper.operator) == (">=", "<")
    major, minor = (int(x) for x in lower.version.split(".")[:2])
    assert upper.version == f"{major}.{minor + 1}", "pin one minor version: the one tested"


def test_the_classes_we_subclass_still_offer_what_we_override():
    assert issubclass(Group, TyperGroup) and issubclass(Command, TyperCommand)
    for method in ("main", "get_params", "collect_usage_pieces"):
        assert callable(getattr(TyperGroup, method))
    assert isinstance(typer.main.get_command(app), Group)


def test_usage_errors_are_typer_exceptions_when_not_standalone():
    """What Group.main catches by type: every usage error derives from the exported TyperException."""
    group = typer.main.get_command(app)
    with pytest.raises(typer.TyperException) as err:
        group.main(["extract", "--bogus"], "attnviz", standalone_mode=False)
    assert "No such option: --bogus" in err.value.format_message() and err.value.exit_code == 2
    with pytest.raises(typer.TyperException):
        group.main(["nosuchcommand"], "attnviz", standalone_mode=False)
    with pytest.raises(typer.TyperException) as bare:  # no_args_is_help: the help, as an exception
        group.main([], "attnviz", standalone_mode=False)
    assert bare.value.format_message().startswith("Usage: attnviz [OPTIONS] COMMAND")
    assert issubclass(typer.BadParameter, typer.TyperException)


def _help_sections() -> list[tuple[str, list[str]]]:
    """`attnviz --help`'s command sections: (title, [command, ...]) in the order printed."""
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["--help"], terminal_width=100).output
    sections: list[tuple[str, list[str]]] = []
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":") and line != "Options:":
            sections.append((line[:-1], []))
        elif sections and line.startswith("  ") and line.strip():
            sections[-1][1].append(line.split()[0])
    return sections


def test_help_groups_commands_as_the_readme_tour_does():
    """Panels in PANELS order, every command in one (none left in 'Other'), the tour's order."""
    import re

    from attnviz.cli import _app

    sections = _help_sections()
    titles = [title for title, _ in sections]
    assert titles == [p for p in _app.PANELS if p in titles], titles
    assert _app.OTHER not in titles and titles[:3] == ["Start", "Pictures", "Explore"]
    listed = [name for _, names in sections for name in names]
    assert sorted(listed) == sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = readme.split("## A quick tour", 1)[1].split("\n## ", 1)[0]
    order: list[str] = []
    for name in re.findall(r"^attnviz ([a-z-]+)", tour, flags=re.M):
        if name not in order:
            order.append(name)
    assert [n for n in listed if n in order] == order  # the README's tour, command by command
    panel = dict(sections)
    assert panel["Pictures"] == ["heatmap", "entropy", "toy", "explain"]
    assert panel["Heads"] == ["find-head", "heads", "ablate"]
    assert _app.SOURCE == "Where the answer comes from" and _app.SOURCE in _app.PANELS
