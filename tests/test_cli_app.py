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
