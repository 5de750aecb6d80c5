"""Shared options, declared once so every command spells them the same, and small parsers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attnviz.analyses.transform import ViewOptions
from attnviz.errors import InputError
from attnviz.models.loading import BUNDLED, LoadNotice, load_model

# -- value completion (shell Tab): cheap, never imports a heavy library at start-up -------------


def complete_model(incomplete: str) -> list[str]:
    """Bundled aliases, hub ids already in the Hugging Face cache, then folders and .gguf files."""
    import os

    out = [alias for alias in BUNDLED if alias.startswith(incomplete)]
    hub = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    )
    try:
        cached = sorted(
            p.name[len("models--") :].replace("--", "/") for p in hub.expanduser().glob("models--*")
        )
    except OSError:
        cached = []
    out += [name for name in cached if name.startswith(incomplete)]
    return out + _paths(incomplete, lambda p: p.is_dir() or p.suffix == ".gguf")


def complete_cmap(incomplete: str) -> list[str]:
    """Matplotlib's colour maps (imported only when the shell asks)."""
    from matplotlib import colormaps

    return sorted(name for name in colormaps if name.startswith(incomplete))


def complete_config(incomplete: str) -> list[str]:
    """Names of configs/*.toml and of the shipped configs (as `--config NAME` takes them), then files."""
    from attnviz.batch.config import shipped_configs

    names = sorted({p.stem for p in Path("configs").glob("*.toml")} | set(shipped_configs()))
    return [n for n in names if n.startswith(incomplete)] + _paths(
        incomplete, lambda p: p.is_dir() or p.suffix == ".toml"
    )


def _paths(incomplete: str, keep: Any) -> list[str]:
    folder = Path(incomplete).parent if incomplete else Path(".")
    try:
        found = sorted(folder.glob(Path(incomplete).name + "*" if incomplete else "*"))
    except (OSError, ValueError):
        return []
    return [str(p) + ("/" if p.is_dir() else "") for p in found if keep(p) and not p.name.startswith(".")]


def one_index(what: str) -> Any:
    """A parser for `--layer`/`--head`: one whole number; a list gets a message naming the fix."""

    def parse(value: str) -> int:
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            if "," in text or "-" in text[1:]:
                raise typer.BadParameter(
                    f"'{value}' is a list; --{what} takes one {what} (commands that take several have"
                    f" --{what}s, e.g. --{what}s {text})"
                ) from None
            raise typer.BadParameter(f"'{value}' is not a {what} number: use a whole number") from None

    return parse


# -- shared options: one spelling and one meaning everywhere (docs/cli.md lists them) -----------

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        autocompletion=complete_model,
        help="Bundled alias (minilm, smollm2), Hugging Face hub id, model folder or .gguf file.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype", metavar="DTYPE", help="float32, float16 or bfloat16 (half precision: CUDA only)."
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow a model's own Python code to run (off by default)."),
]
TextArg = Annotated[
    str | None,
    typer.Argument(help="The text; omit it (or give -) to read --file or standard input."),
]
FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file", "-f", metavar="FILE", help="Read the text from this file (the whole file is one text)."
    ),
]
TextsOpt = Annotated[
    Path | None,
    typer.Option(
        "--texts",
        metavar="FILE",
        help="Many texts, one per line (- reads standard input); scores are averaged over them.",
    ),
]
LayerOpt = Annotated[
    int | None,
    typer.Option(
        "--layer",
        "-l",
        metavar="L",
        parser=one_index("layer"),
        help="One layer (negative counts from the end).",
    ),
]
LayersOpt = Annotated[
    str | None,
    typer.Option(
        "--layers",
        metavar="LIST",
        help="Layers to keep: 3, 0,2 or 1-3; negative counts from the end (default: all).",
    ),
]
HeadOpt = Annotated[
    int | None, typer.Option("--head", metavar="H", parser=one_index("head"), help="One head.")
]
HeadsOpt = Annotated[
    str | None,
    typer.Option("--heads", metavar="LIST", help="Heads to keep: 0,5,10 or 0-3 (default: all)."),
]
TopOpt = Annotated[int, typer.Option("--top", "-k", metavar="N", min=0, help="Show the N best (0: all).")]
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
    typer.Option(
        "--special/--no-special",
        help="Show the special tokens ([CLS], [SEP], BOS, EOS); --no-special hides them and "
        "renormalises each remaining row to sum to 1.",
    ),
]
AddSpecialOpt = Annotated[
    bool,
    typer.Option(
        "--add-special/--no-add-special",
        help="Encode with the tokenizer's special tokens; --no-add-special encodes the words alone "
        "(this changes the model's input).",
    ),
]
WeightingOpt = Annotated[
    str,
    typer.Option(
        "--weighting",
        metavar="attention|norm",
        help="attention (the weights), or norm: each weight times the size of the value vector it "
        "moves, ||alpha f(x)|| (Kobayashi et al. 2020).",
    ),
]
AggregateOpt = Annotated[
    str | None,
    typer.Option(
        "--aggregate",
        metavar="mean|max",
        help="Pool the selected heads (or layers, see --over) into one: their mean or their maximum.",
    ),
]
OverOpt = Annotated[
    str,
    typer.Option("--over", metavar="heads|layers|both", help="What --aggregate pools (default: heads)."),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Image file; the format comes from the extension (.png, .svg, .pdf). A folder gets a "
        "default name inside. Default: a new file under outputs/, never overwriting an earlier one.",
    ),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option("--plot", metavar="FILE", help="Also draw a figure into this file (.png, .svg or .pdf)."),
]
ScaleOpt = Annotated[
    str,
    typer.Option(
        "--scale",
        "--vmax",
        metavar="auto|max|log|N",
        help="Colour scale: auto (the largest weight shown, leaving out the sink: the first key of a "
        "causal model, or a [CLS]/BOS key holding the maximum; the legend says so), max (the largest "
        "weight, sink included), log, or a number for the top (1: the fixed 0-1 scale). "
        "--vmax is the old name.",
    ),
]
OutputJsonOpt = Annotated[  # -o of commands that print JSON and draw only when asked (rollout, compare)
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Image file (.png, .svg, .pdf) or a folder for a default name. With --json a picture is "
        "written only when -o is given. Default: a new file under outputs/.",
    ),
]
DpiOpt = Annotated[
    int | None,
    typer.Option(
        "--dpi", metavar="N", help="Resolution of PNG files in dots per inch, 10-1200 (default 150)."
    ),
]
CmapOpt = Annotated[
    str,
    typer.Option(
        "--cmap",
        metavar="NAME",
        autocompletion=complete_cmap,
        help="Matplotlib colour map: viridis, magma, cividis, Blues...",
    ),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        autocompletion=complete_config,
        help="TOML file, or a name: configs/NAME.toml here, else a shipped one (coreference, default).",
    ),
]


def read_text(text: str | None, file: Path | None) -> str:
    """The text from the argument, --file, or standard input (`-` or nothing on a pipe), checked
    (not empty, no byte that is not UTF-8) before any model loads."""
    from attnviz.extraction import check_text

    body = _read_text(text, file)
    check_text(body)
    return body


def _read_text(text: str | None, file: Path | None) -> str:
    if file is not None and text not in (None, "-"):
        raise InputError("give the text as an argument or with --file, not both")
    if file is not None:
        try:
            data = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"{file} is not UTF-8 text") from None
        data = data.strip()
        if not data:
            raise InputError(f"{file} holds no text")  # said before any model loads
        return data
    if text is not None and text != "-":
        if not text.strip():
            raise InputError(  # said before any model loads
                "the text is empty: give some text as the argument, with --file or on standard input"
            )
        return text
    if text == "-" or not sys.stdin.isatty():
        data = read_stdin().strip()
        if data:
            return data
    raise InputError("no text given: pass it as an argument, with --file, or on standard input")


def read_stdin() -> str:
    """All of standard input as UTF-8 text, held to the same rule as --file (no silent replacement)."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text-only stand-in (some test runners): already decoded
        return sys.stdin.read()
    try:
        return raw.read().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("standard input is not UTF-8 text") from None


def _terminal() -> bool:
    return sys.stderr.isatty()


def spinner_wanted(quiet: bool = False) -> bool:
    """A status line only on a terminal, and never when asked to be quiet or the command got --json."""
    from attnviz.cli._app import JSON_OUTPUT

    return not quiet and _terminal() and not JSON_OUTPUT.get()


def load(
    model: str,
    device: str,
    dtype: str,
    trust_remote_code: bool = False,
    quiet: bool = False,
    task: str = "base",
) -> Any:
    """Load a model; on an interactive terminal (without `quiet` or --json) show a status line.

    The library reports slow steps (de-quantising a GGUF file) and repairs (a rebuilt cache entry)
    as notices: status notices update the spinner, warnings are one `warning:` line on stderr.
    Nothing is ever written to stdout. `task` picks the head (`generate` needs the LM head).
    """
    from attnviz.cli._app import printable

    def warn(notice: LoadNotice) -> None:
        if notice.kind == "warning":
            typer.echo(f"warning: {printable(notice.message)}", err=True)

    if not spinner_wanted(quiet):
        return load_model(
            model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=warn, task=task
        )
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"loading {model}...") as status:

        def show(notice: LoadNotice) -> None:
            if notice.kind == "status":
                status.update(notice.message)
            else:
                console.print(f"warning: {printable(notice.message)}", markup=False, highlight=False)

        return load_model(
            model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=show, task=task
        )


def view_options(
    weighting: str = "attention",
    special: bool = True,
    aggregate: str | None = None,
    over: str = "heads",
    words: bool = False,
) -> Any:
    """The checked ViewOptions of --weighting, --no-special, --aggregate and --over (before loading)."""

    return ViewOptions(weighting, not special, aggregate, over).check(words)


def print_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def note(message: str) -> None:
    """A remark on stderr (stdout stays for results)."""
    typer.echo(f"note: {message}", err=True)


def check_style(cmap: str, dpi: int | None, size: tuple[float, float] | None = None) -> None:
    """--cmap, --dpi and the pixels of --size at that dpi, checked before any model loads;
    InputError on the first bad one."""
    from attnviz.plots import check_pixels, colormap

    check_pixels(size, dpi)  # and the dpi's range
    colormap(cmap)


def write_figure(fig: Any, output: Path | None, parts: tuple[Any, ...], dpi: int | None = None) -> Path:
    """Save to `-o` or a fresh default path under outputs/; a reserved default file is removed on failure."""
    from attnviz import plots
    from attnviz.outputs import output_path

    reserved = output is None or output.is_dir()
    path = output_path(output, parts)
    try:
        plots.save(fig, path, dpi)
    except BaseException:
        if reserved:
            path.unlink(missing_ok=True)
        raise
    return path
