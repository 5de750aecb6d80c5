"""Draw every docs picture (docs/*.png) with the very command the docs show next to it.

The commands are not copied here: each picture names the markdown file that shows it, and the
command is read from that file - the one fenced block (bash, console or python) that writes the
picture. What the docs show is what runs, so a picture cannot drift from its command again
(issue 31: docs/analyses-compare-pair.png had been drawn from other texts than the ones shown).

    .venv/bin/python scripts/doc_figures.py            # every picture (real models, minutes)
    .venv/bin/python scripts/doc_figures.py --list     # each picture and its command, no model
    .venv/bin/python scripts/doc_figures.py generate-example.png analyses-rollout.png

Run from anywhere; commands run in the repository's root, as a reader runs them. The browser
screenshots (docs/view-*.png) come from scripts/screenshots.py.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(?P<lang>bash|console|python)[^\n]*\n(?P<body>.*?)^```", re.S | re.M)
OUTPUT_FLAGS = ("-o", "--output", "--plot", "--view")


@dataclass(frozen=True)
class Picture:
    """A docs picture, the markdown file that shows it and, when the command writes it under
    another name (`cluster` writes a folder of fixed names), the file the command writes."""

    name: str  # under docs/
    doc: str  # relative to the repository
    made: str | None = None  # what the command writes, relative to the root (default docs/NAME)

    @property
    def written(self) -> str:
        return self.made or f"docs/{self.name}"


PICTURES = (
    Picture("heatmap-example.png", "docs/pictures.md"),
    Picture("overview-example.png", "docs/pictures.md"),
    Picture("toy-causal-example.png", "docs/pictures.md"),
    Picture("cjk-emoji-example.png", "docs/pictures.md"),
    Picture("generate-example.png", "docs/generate.md"),
    Picture("analyses-aggregate.png", "docs/analyses.md"),
    Picture("analyses-rollout.png", "docs/analyses.md"),
    Picture("analyses-norm.png", "docs/analyses.md"),
    Picture("analyses-compare.png", "docs/analyses.md"),
    Picture("analyses-compare-pair.png", "docs/analyses.md"),
    Picture("analyses-clustermap.png", "docs/analyses.md", made="clusters/clustermap.png"),
    Picture("analyses-cluster-mds.png", "docs/analyses.md", made="clusters/embedding.png"),
)


@dataclass(frozen=True)
class Command:
    """What a doc shows for a picture: `lang` python (a whole block) or a shell command."""

    lang: str
    text: str
    line: int  # where the block starts in the doc (1-based)


def shell_commands(lang: str, body: str) -> list[tuple[str, str]]:
    """A bash or console block's commands, backslash continuations joined, each with the output
    the block shows under it (console: the lines up to the next `$ `; bash: none)."""
    out: list[tuple[str, str]] = []
    current, shown = "", []
    for line in body.splitlines():
        if lang == "console" and not current and not line.startswith("$ "):
            if out:
                shown.append(line)
            continue
        if lang == "console" and line.startswith("$ "):
            if out:
                out[-1] = (out[-1][0], "\n".join(shown))
            line, shown = line[2:], []
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        out.append((" ".join(current.split()), ""))
        current = ""
    if current:
        out.append((" ".join(current.split()), ""))
    if out and shown:
        out[-1] = (out[-1][0], "\n".join(shown))
    return out


def shown_command(picture: Picture) -> Command:
    """The one command in `picture.doc` that writes `picture.written` (named in the command, or in
    the output a console block shows under it); ValueError if none or several."""
    text = (ROOT / picture.doc).read_text(encoding="utf-8")
    found: list[Command] = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        body = m.group("body")
        if picture.written not in body:
            continue
        if m.group("lang") == "python":
            found.append(Command("python", body, line))
            continue
        for cmd, output in shell_commands(m.group("lang"), body):
            if cmd.startswith("attnviz ") and picture.written in f"{cmd}\n{output}":
                found.append(Command("shell", cmd, line))
    if len(found) != 1:
        raise ValueError(f"{picture.doc}: {len(found)} commands write {picture.written}, expected one")
    return found[0]


def without_outputs(cmd: str) -> str:
    """A command with its output flags (-o, --plot, --view and their files) left out: the same
    command written to another file (the README writes heatmap.png, the docs docs/heatmap-example.png)."""
    try:
        words = shlex.split(cmd, comments=True)
    except ValueError:  # not a simple command (an unclosed quote in a comment, a heredoc)
        return cmd
    kept: list[str] = []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w in OUTPUT_FLAGS:
            skip = True
        else:
            kept.append(w)
    return shlex.join(kept)


def run(picture: Picture, done: set[str] | None = None) -> float:
    """Run the picture's command in the repository's root; the picture in place. Seconds taken.

    A command in `done` already ran (cluster writes two pictures): only its file is copied."""
    cmd = shown_command(picture)
    start = time.perf_counter()
    if done is not None and cmd.text in done:
        shutil.copyfile(ROOT / str(picture.made), DOCS / picture.name)
        return 0.0
    if cmd.lang == "python":
        argv = [sys.executable, "-c", cmd.text]
    else:
        words = shlex.split(cmd.text, comments=True)
        argv = [str(Path(sys.executable).parent / "attnviz"), *words[1:]]
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    if picture.made:  # the command's own file, copied under the docs' name
        shutil.copyfile(ROOT / picture.made, DOCS / picture.name)
    if done is not None:
        done.add(cmd.text)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="pictures to draw (default: all)")
    parser.add_argument("--list", action="store_true", help="print each picture's command, draw none")
    args = parser.parse_args(argv)
    chosen = [p for p in PICTURES if not args.names or p.name in args.names]
    unknown = set(args.names) - {p.name for p in PICTURES}
    if unknown:
        parser.error(f"unknown pictures: {', '.join(sorted(unknown))}")
    done: set[str] = set()
    folders = {ROOT / Path(p.made).parent for p in chosen if p.made}
    fresh = {f for f in folders if not f.exists()}  # made here: removed when done
    try:
        for picture in chosen:
            cmd = shown_command(picture)
            if args.list:
                print(f"{picture.name}  ({picture.doc}:{cmd.line})\n  {cmd.text.strip()}")
                continue
            print(f"{picture.name}: {run(picture, done):.1f} s", flush=True)
    finally:
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
