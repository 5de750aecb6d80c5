"""Every shell and Python example in README.md and docs/*.md runs, in document order.

Blocks fenced as `bash`, `console` (only the `$ ` lines) or `python` are run; a block preceded by
`<!-- example: skip REASON -->` is not (a server that runs until Ctrl-C, the set-up itself). Each
document runs in its own temporary folder laid out like the repository's root for what examples
read: `examples/` (the small corpora shipped in the repository) and `docs/`, so a command runs as
written from the root; no input file is made up here. There is no `configs/` in it, so
`--config NAME` must find a shipped config as it does for a user in any folder.
`attnviz ...` lines run in-process through Typer's CliRunner (one model load per test session);
other lines run in bash.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnviz.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = [d for d in DOCS if d.name != "cli.md"]  # generated from --help; checked by test_docs

_FENCE = re.compile(
    r"(?:<!--\s*example:\s*(?P<skip>skip[^>]*)-->\s*\n)?```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)```", re.S
)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    body: str


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        lang = m.group("lang")
        if m.group("skip") or lang not in ("bash", "console", "python"):
            continue
        out.append(Block(doc, text.count("\n", 0, m.start("body")), lang, m.group("body")))
    return out


def expected_errors(block: Block) -> dict[str, str]:
    """Console commands whose shown output is an `error: ...` line: they must fail with it."""
    lines, out = block.body.splitlines(), {}
    for i, line in enumerate(lines):
        if line.startswith("$ ") and i + 1 < len(lines) and lines[i + 1].startswith("error: "):
            out[line[2:]] = lines[i + 1]
    return out


def commands(block: Block) -> list[str]:
    """Shell commands of a block: heredocs and backslash continuations kept whole."""
    lines = block.body.splitlines()
    if block.lang == "console":
        cmds: list[str] = []
        i = 0
        while i < len(lines):
            if lines[i].startswith("$ "):
                cmd = [lines[i][2:]]
                while cmd[-1].rstrip().endswith("\\") and i + 1 < len(lines):  # continued command
                    i += 1
                    cmd.append(lines[i])
                heredoc = re.search(r"<<-?'?(\w+)'?", lines[i])
                while heredoc and i + 1 < len(lines):
                    i += 1
                    cmd.append(lines[i])
                    if lines[i].strip() == heredoc.group(1):
                        break
                cmds.append("\n".join(cmd))
            i += 1
        return cmds
    cmds, current, end = [], [], None
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        if end is None and (m := re.search(r"<<-?'?(\w+)'?", line)):
            end = m.group(1)
            continue
        if end is not None:
            if line.strip() == end:
                end = None
            else:
                continue
        if line.rstrip().endswith("\\"):
            continue
        cmds.append("\n".join(current))
        current = []
    if current:
        cmds.append("\n".join(current))
    return cmds


def run_command(cmd: str, cwd: Path, where: str, error: str | None = None) -> None:
    """Run one documented command; `error`: the `error: ...` line it must fail with instead."""
    if cmd.strip() == "source .venv/bin/activate":  # the runner already runs the venv's attnviz
        return
    simple = "<<" not in cmd and not any(c in cmd.replace("\\\n", "") for c in ";&>`$(")
    stdin = None
    if simple and "|" in cmd:
        left, _, right = cmd.partition("|")
        echo = shlex.split(left)
        if echo and echo[0] == "echo" and "|" not in right:
            stdin, cmd = " ".join(echo[1:]) + "\n", right.strip()
        else:
            simple = False
    if simple:
        argv = shlex.split(cmd.replace("\\\n", " "), comments=True)
        if argv and argv[0] == "attnviz":
            runner = CliRunner()
            with contextlib.chdir(cwd):
                result = runner.invoke(app, argv[1:], input=stdin, catch_exceptions=False)
            if error is not None:
                shown = error.split("...")[0].strip()
                assert result.exit_code == 2 and result.stderr.startswith(shown), f"{where}: {result.stderr}"
                return
            assert result.exit_code == 0, (
                f"{where}: `{cmd}` exited {result.exit_code}: {result.output[-800:]}"
            )
            return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert error is None, f"{where}: an expected error is checked for attnviz commands only"
    assert proc.returncode == 0, f"{where}: `{cmd}` exited {proc.returncode}: {proc.stderr[-800:]}"


def run_python(block: Block, cwd: Path, where: str) -> None:
    namespace: dict[str, object] = {"__name__": "__example__"}
    with contextlib.chdir(cwd), contextlib.redirect_stdout(io.StringIO()):
        try:
            exec(compile(block.body, where, "exec"), namespace)
        except Exception as exc:  # the block's own line numbers are in the traceback
            raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d)], ids=lambda d: d.name)
def test_documented_examples_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = blocks(doc)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the example corpora, as in the repository
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    monkeypatch.setenv("COLUMNS", "100")
    for block in found:
        where = f"{doc.relative_to(ROOT)}:{block.line + 1}"
        if block.lang == "python":
            run_python(block, tmp_path, where)
        else:
            errors = expected_errors(block) if block.lang == "console" else {}
            for cmd in commands(block):
                run_command(cmd, tmp_path, where, errors.get(cmd))


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_commands_are_in_tagged_blocks(doc: Path) -> None:
    """A block without a language is never run: it must not hold a command (tag it bash or text)."""
    text = doc.read_text(encoding="utf-8")
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        first = next((line for line in m.group(2).splitlines() if line.strip()), "")
        if not m.group(1):
            assert not first.lstrip().startswith(("attnviz ", "$ ", "python ")), (
                f"{doc.name}:{text.count(chr(10), 0, m.start()) + 1}: an untagged block holds a command"
            )


def test_runner_reads_console_heredocs_and_skips(tmp_path: Path) -> None:
    doc = ROOT / "tests" / "_example_probe.md"
    block = Block(
        doc, 0, "console", "$ cat > a.txt <<'EOF'\nx\nEOF\n$ attnviz --help \\\n  -h\noutput line\n"
    )
    assert commands(block) == ["cat > a.txt <<'EOF'\nx\nEOF", "attnviz --help \\\n  -h"]
    bash = Block(doc, 0, "bash", "# a comment\nattnviz extract x \\\n   --json   # trailing\n\necho hi\n")
    assert commands(bash) == ["attnviz extract x \\\n   --json   # trailing", "echo hi"]
    text = "<!-- example: skip runs forever -->\n```bash\nattnviz serve\n```\n```bash\nattnviz models\n```\n"
    fake = tmp_path / "probe.md"
    fake.write_text(text, encoding="utf-8")
    assert [b.body for b in blocks(fake)] == ["attnviz models\n"]


def test_every_input_file_an_example_names_is_in_the_repository() -> None:
    """Issue 31: `attnviz cluster sentences.txt` failed for a reader; every file a documented
    command reads (a corpus, an essay) is shipped under examples/ or docs/, named by that path."""
    missing = []
    for doc in DOCS:
        for block in blocks(doc):
            if block.lang == "python":
                named = re.findall(r"[\"']([\w./-]+\.(?:txt|jsonl|csv|parquet))[\"']", block.body)
            else:
                made = set(re.findall(r"(?:>|-o)\s*([\w./-]+\.\w+)", block.body))
                named = [
                    w for cmd in commands(block) for w in shlex.split(cmd, comments=True)
                    if re.fullmatch(r"[\w./-]+\.(txt|jsonl|csv|parquet)", w) and w not in made
                ]  # fmt: skip
            inputs = [n for n in named if not Path(n).name.startswith("_")]  # `_rejects.jsonl`: a run's
            missing += [f"{doc.name}: {n}" for n in inputs if not (ROOT / n).is_file()]
    assert not missing, missing
