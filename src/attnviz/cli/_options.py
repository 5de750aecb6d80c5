"""Shared options, declared once so every command spells them the same, and small parsers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attnviz.errors import InputError

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Bundled alias (minilm, smollm2), Hugging Face hub id, model folder or .gguf file.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="float32, float16 or bfloat16 (half precision: CUDA only).")
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow a model's own Python code to run (off by default)."),
]
TextArg = Annotated[
    str | None,
    typer.Argument(help="The text; omit it (or give -) to read --file or standard input."),
]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Read the text from this file.")]
LayerOpt = Annotated[
    int | None, typer.Option("--layer", "-l", help="Layer index (negative counts from the end).")
]
LayersOpt = Annotated[
    str | None, typer.Option("--layers", help="Layers to keep, e.g. 0,2 or 1-3 (default: all).")
]
HeadOpt = Annotated[int | None, typer.Option("--head", help="Head index.")]
HeadsOpt = Annotated[
    str | None, typer.Option("--heads", help="Heads to keep, e.g. 0,5,10 or 0-3 (default: all).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
WordsOpt = Annotated[
    bool, typer.Option("--words", help="Merge subword pieces into words (rows still sum to 1).")
]
TruncateOpt = Annotated[
    bool,
    typer.Option("--truncate", help="Cut texts longer than the model's limit instead of failing."),
]
SpecialOpt = Annotated[
    bool,
    typer.Option("--special/--no-special", help="Add the tokenizer's special tokens ([CLS], [SEP], BOS)."),
]


def read_text(text: str | None, file: Path | None) -> str:
    """The text from the argument, --file, or standard input (`-` or nothing on a pipe)."""
    if file is not None:
        try:
            data = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"{file} is not UTF-8 text") from None
        return data.strip()
    if text is not None and text != "-":
        return text
    if text == "-" or not sys.stdin.isatty():
        data = sys.stdin.read().strip()
        if data:
            return data
    raise InputError("no text given: pass it as an argument, with --file, or on standard input")


def load(model: str, device: str, dtype: str, trust_remote_code: bool = False, quiet: bool = False) -> Any:
    """Load a model; on an interactive terminal (and without `quiet`, e.g. --json) show a status line.

    The library reports slow steps (de-quantising a GGUF file) and repairs (a rebuilt cache entry)
    as notices: status notices update the spinner, warnings are one `warning:` line on stderr.
    Nothing is ever written to stdout.
    """
    from attnviz.models import LoadNotice, load_model

    def warn(notice: LoadNotice) -> None:
        if notice.kind == "warning":
            typer.echo(f"warning: {notice.message}", err=True)

    if not sys.stderr.isatty() or quiet:
        return load_model(
            model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=warn
        )
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"loading {model}...") as status:

        def show(notice: LoadNotice) -> None:
            if notice.kind == "status":
                status.update(notice.message)
            else:
                console.print(f"warning: {notice.message}", markup=False, highlight=False)

        return load_model(
            model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=show
        )


def print_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
