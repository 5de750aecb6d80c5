"""Write docs/cli.md from the commands' own --help: every registered command, nothing typed by hand.

    python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale (tests/test_docs.py does this)

The help is rendered at a fixed width of 80 columns without colour, so the output depends only on
the code. The shared-options table is the one place where an option's single meaning is written
down; which commands have each option is read from the app.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"
WIDTH = 80

# flag -> (how it is written, its one meaning). Commands having it are found by walking the app.
SHARED: dict[str, tuple[str, str]] = {
    "TEXT": (
        "`TEXT` (argument)",
        "The text. Leave it out, or give `-`, to read standard input (or use `--file`).",
    ),
    "--file": ("`-f, --file FILE`", "One text: the whole file, line breaks and all."),
    "--texts": (
        "`--texts FILE`",
        "Many texts, one per non-empty line (`-`: standard input). Commands that take it average"
        " their scores over the texts.",
    ),
    "--model": (
        "`-m, --model MODEL`",
        "Bundled alias (`minilm`, `smollm2`), Hugging Face hub id, model folder or `.gguf` file."
        " Tab completion offers the aliases, hub ids already cached, and folders.",
    ),
    "--layer": (
        "`-l, --layer L`",
        "One layer; negative counts from the end (`-1`: the last). A list here is an error that"
        " names `--layers`.",
    ),
    "--layers": (
        "`--layers LIST`",
        "Several layers: `3`, `0,2`, `1-3`, `-2--1`; negative counts from the end. Default: all."
        " Reversed ranges (`3-1`), empty lists and words are errors, the same in every command.",
    ),
    "--head": ("`--head H`", "One head."),
    "--heads": ("`--heads LIST`", "Several heads, written as for `--layers`. Default: all."),
    "--top": ("`-k, --top N`", "Show the N best rows (0: all). `-k` means `--top` and nothing else."),
    "--output": (
        "`-o, --output FILE`",
        "The file the command writes as its result: the image of `heatmap`, `entropy` and `toy`"
        " (format from the extension; a folder gets a default name inside), the data file of"
        " `extract`, the output folder of `batch`.",
    ),
    "--plot": (
        "`--plot FILE`",
        "Also draw a figure into FILE, for commands whose result is a printed table. A command has"
        " `-o` or `--plot`, never both.",
    ),
    "--words": ("`--words`", "Merge subword pieces into words (rows still sum to 1)."),
    "--special": (
        "`--no-special`",
        "Hide the special tokens ([CLS], [SEP], BOS, EOS) and renormalise each remaining row to sum"
        " to 1; titles say so. Rankings (`find-head`, `heads`) are computed on those rows.",
    ),
    "--add-special": (
        "`--no-add-special`",
        "Encode the text without the tokenizer's special tokens: this changes the model's input.",
    ),
    "--weighting": (
        "`--weighting W`",
        "`attention` (the default), or `norm`: each weight times the size of the value vector it"
        " moves (Kobayashi et al. 2020); rows no longer sum to 1.",
    ),
    "--aggregate": (
        "`--aggregate HOW`",
        "`mean` or `max`: pool the selected heads (or layers: `--over`) into one. A mean of rows"
        " still sums to 1; a max is an envelope.",
    ),
    "--over": ("`--over WHAT`", "What `--aggregate` pools: `heads` (the default), `layers` or `both`."),
    "--json": ("`--json`", "Machine-readable JSON on standard output; notes stay on standard error."),
    "--truncate": ("`--truncate`", "Cut texts longer than the model's limit instead of failing."),
    "--device": ("`--device DEVICE`", "`auto`, `cpu`, `cuda` or `cuda:N`."),
    "--dtype": ("`--dtype DTYPE`", "`float32`, `float16` or `bfloat16` (half precision on CUDA only)."),
    "--trust-remote-code": (
        "`--trust-remote-code`",
        "Allow a model's own Python code to run (off by default).",
    ),
    "--cmap": ("`--cmap NAME`", "A Matplotlib colour map (Tab completion lists them)."),
    "--config": (
        "`-c, --config FILE`",
        "A TOML file, or a name: `configs/NAME.toml` here, else a config shipped in the package "
        "(`coreference`, `default`; Tab completes them).",
    ),
}


def _app():  # the Typer app, imported late so --help of this script is instant
    sys.path.insert(0, str(ROOT / "src"))
    from attnviz.cli import app

    return app


def commands() -> dict[str, object]:
    """Every registered command (click objects), by name, sorted."""
    import typer.main

    group = typer.main.get_command(_app())
    return dict(sorted(group.commands.items()))  # type: ignore[attr-defined]


def help_text(args: list[str]) -> str:
    """`attnviz ARGS --help` as a user at an 80-column terminal without colour sees it."""
    from typer.testing import CliRunner

    env = {"COLUMNS": str(WIDTH), "LINES": "50", "NO_COLOR": "1", "TERM": "dumb"}
    result = CliRunner().invoke(_app(), [*args, "--help"], env=env, prog_name="attnviz")
    if result.exit_code != 0:
        raise RuntimeError(f"attnviz {' '.join(args)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.stdout.strip("\n").splitlines())


def _names(command: object) -> dict[str, bool]:
    """Option names of a command -> whether it is a flag (arguments by metavar: TEXT...)."""
    out: dict[str, bool] = {}
    for param in command.params:  # type: ignore[attr-defined]
        if param.param_type_name == "argument":
            out[(param.metavar or param.name or "").upper()] = False
        else:
            for o in (*param.opts, *param.secondary_opts):
                if o.startswith("--"):
                    out[o] = bool(getattr(param, "is_flag", False))
    return out


def _is_flag(spelling: str) -> bool:
    """`--json` is a flag; `--layer L` and `TEXT` take a value."""
    words = spelling.strip("`").split("`")[0].split()
    return words[-1].startswith("--") and not words[0].isupper()


def _first_line(command: object) -> str:
    text = (command.help or "").strip()  # type: ignore[attr-defined]
    return " ".join(text.split("\n\n")[0].split())


def render() -> str:
    """The whole of docs/cli.md."""
    cmds = commands()
    names = {name: _names(cmd) for name, cmd in cmds.items()}
    out = [
        "# Command-line reference",
        "",
        "<!-- Generated by scripts/gen_cli_docs.py from the commands' own --help. Do not edit:",
        "     run `python scripts/gen_cli_docs.py`; tests/test_docs.py fails when this file is stale. -->",
        "",
        "Every command below is shown with its own `--help`, at 80 columns. Errors are one",
        "`error: ...` line on standard error with exit code 2 (`ATTNVIZ_DEBUG=1` shows a traceback).",
        "",
        "## Shared options: one spelling, one meaning",
        "",
        "An option with one of these names means the same thing in every command that has it.",
        "",
        "| Option | Meaning | Commands |",
        "|---|---|---|",
    ]
    for flag, (spelling, meaning) in SHARED.items():
        kind = _is_flag(spelling)
        having = [name for name, opts in names.items() if opts.get(flag) == kind]
        other = [name for name, opts in names.items() if flag in opts and opts[flag] != kind]
        used = ", ".join(f"`{n}`" for n in having) if having else "-"
        if other:  # the same name used another way: shown, so it is seen and fixed
            used += "; **different meaning in** " + ", ".join(f"`{n}`" for n in other)
        out.append(f"| {spelling} | {meaning} | {used} |")
    out += ["", "## Commands", ""]
    out += [f"- [`attnviz {name}`](#attnviz-{name}): {_first_line(cmd)}" for name, cmd in cmds.items()]
    out += ["", "## attnviz", "", "```text", help_text([]), "```"]
    for name in cmds:
        out += ["", f"## attnviz {name}", "", "```text", help_text([name]), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    text = render()
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
