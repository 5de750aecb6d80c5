"""scripts/doc_figures.py: every docs picture is drawn by the command the docs show next to it.

Checked cheaply (no model runs): the script reads each command from the markdown, the command sits
in the picture's own section before it, the README's copies are the same command, and what the
script would run is exactly that command.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("doc_figures", ROOT / "scripts" / "doc_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_figures"] = module
    spec.loader.exec_module(module)
    return module


doc_figures = _script()
NAMES = [p.name for p in doc_figures.PICTURES]


def test_every_docs_picture_comes_from_a_script():
    """doc_figures.py draws them; the browser screenshots (and any other script's) name their files."""
    others = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "scripts").glob("*.py")
                      if p.name != "doc_figures.py")  # fmt: skip
    for png in sorted((ROOT / "docs").glob("*.png")):
        assert png.name in NAMES or png.name in others, f"docs/{png.name} comes from no script"
    assert len(set(NAMES)) == len(NAMES)
    for name in NAMES:
        assert (ROOT / "docs" / name).is_file(), name


@pytest.mark.parametrize("picture", doc_figures.PICTURES, ids=NAMES)
def test_the_command_is_the_one_shown_next_to_the_picture(picture):
    text = (ROOT / picture.doc).read_text(encoding="utf-8")
    cmd = doc_figures.shown_command(picture)  # exactly one block writes it (ValueError otherwise)
    image = re.search(rf"!\[.*?\]\({re.escape(picture.name)}\)", text)
    assert image, f"{picture.doc} does not show {picture.name}"
    image_line = text.count("\n", 0, image.start()) + 1
    low, high = sorted((cmd.line, image_line))
    headings = [line for line in text.splitlines()[low - 1 : high - 1] if line.startswith(("## ", "### "))]
    assert not headings, (
        f"{picture.doc}:{cmd.line}: the command is not in the section of {picture.name} (line {image_line})"
    )
    if cmd.lang == "shell":
        assert picture.written in cmd.text or picture.made
    else:
        assert f'"{picture.written}"' in cmd.text


def test_the_readme_shows_the_same_commands_for_its_pictures():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = [c for m in doc_figures.FENCE.finditer(readme)
             for c, _ in doc_figures.shell_commands(m.group("lang"), m.group("body"))]  # fmt: skip
    for picture in doc_figures.PICTURES:
        if f"](docs/{picture.name})" not in readme:
            continue
        expected = doc_figures.without_outputs(doc_figures.shown_command(picture).text)
        assert expected in [doc_figures.without_outputs(c) for c in shown], (
            f"README shows docs/{picture.name} beside another command than {picture.doc}'s: {expected}"
        )


def test_the_script_runs_exactly_the_shown_command(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(doc_figures.subprocess, "run", lambda argv, **kw: ran.append((argv, kw)))
    monkeypatch.setattr(doc_figures.shutil, "copyfile", lambda a, b: ran.append(("copy", a, b)))
    for picture in doc_figures.PICTURES:
        ran.clear()
        doc_figures.run(picture)
        cmd = doc_figures.shown_command(picture)
        argv, kw = ran[0]
        assert kw["cwd"] == ROOT and kw["check"] is True
        if cmd.lang == "python":
            assert argv[1:] == ["-c", cmd.text]
        else:
            assert Path(argv[0]).name == "attnviz" and argv[1:] == shlex.split(cmd.text, comments=True)[1:]
        if picture.made:
            assert ran[1] == ("copy", ROOT / picture.made, ROOT / "docs" / picture.name)
