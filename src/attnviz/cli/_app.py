"""The Typer app and the `command` decorator that every command module registers with.

Kept apart from `cli/__init__.py` so command modules import this leaf, never the package that
imports them (no import cycle).
"""

from __future__ import annotations

import functools
import os
import sys
import unicodedata
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from attnviz import __version__
from attnviz.errors import AttnvizError, InputError, cli_terms
from attnviz.selection import parse_indices


def _tidy(params: list[Any]) -> list[Any]:
    """Flags take no value (no `<bool>` in the type column); arguments are named in capitals."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.upper()
    return params


class _Repeated(typer.BadParameter):
    """A usage error whose message is all it says (no "Invalid value for ..." before it)."""

    def format_message(self) -> str:
        return self.message


class Command(TyperCommand):
    """Every command's help reads the same: flags show no `<bool>`, arguments show as TEXT or [TEXT].

    Applied in one place (the `command` decorator), so a new command module gets it for free.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(super().get_params(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Refuse an option that takes one value given twice (`--file a --file b`): Click keeps
        the last one silently. Found by a first, dry parse; a bad line is left to the real one."""
        if not ctx.resilient_parsing:
            try:
                _, _, order = self.make_parser(ctx).parse_args(args=list(args))
            except typer.TyperException:
                order = []
            seen: set[str] = set()
            for param in order:
                if not isinstance(param, TyperOption) or param.multiple or param.count or param.is_flag:
                    continue
                if param.name in seen:
                    flag = max(param.opts, key=len)
                    raise _Repeated(f"{flag} is given twice, and only one would be used: give it once", ctx)
                seen.add(param.name or "")
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """`[OPTIONS] A B [TEXT]`: required arguments bare, optional ones in brackets (not `{a}`)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                name += "..." if param.nargs != 1 else ""
                pieces.append(name if param.required else f"[{name}]")
        return pieces


# `attnviz --help` lists commands in these panels, in this order: the README's tour. A command names
# its panel with `@command("name", rich_help_panel=PICTURES)`; within a panel, TOUR_ORDER ranks the
# commands (a command missing there comes after the ranked ones, by name).
START = "Start"
PICTURES = "Pictures"
EXPLORE = "Explore"
GENERATE = "Generate"
HEADS = "Heads"
SOURCE = "Where the answer comes from"
BEYOND = "Beyond raw weights"
CORPORA = "Corpora"
OTHER = "Other"
PANELS = (START, PICTURES, EXPLORE, GENERATE, HEADS, SOURCE, BEYOND, CORPORA, OTHER)
TOUR_ORDER = (
    "models", "info", "extract",
    "heatmap", "entropy", "toy", "explain",
    "view", "serve",
    "generate",
    "find-head", "heads", "ablate",
    "patch", "attribute", "lens",
    "rollout", "compare", "cluster",
    "batch",
)  # fmt: skip


def _panels(commands: list[tuple[str, Any]]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """Commands grouped by their `rich_help_panel`, panels in PANELS order, commands in tour order."""
    rank = {name: i for i, name in enumerate(TOUR_ORDER)}
    grouped: dict[str, list[tuple[str, Any]]] = {}
    for name, cmd in commands:
        grouped.setdefault(getattr(cmd, "rich_help_panel", None) or OTHER, []).append((name, cmd))
    order = {panel: i for i, panel in enumerate(PANELS)}
    return [
        (panel, sorted(cmds, key=lambda c: (rank.get(c[0], len(rank)), c[0])))
        for panel, cmds in sorted(grouped.items(), key=lambda p: (order.get(p[0], len(order)), p[0]))
    ]


class Group(TyperGroup):
    """The root command: a usage error (bad value, unknown option) is one `error:` line, exit 2.

    Typer would draw a multi-line panel; scripts and tests (CliRunner included) get one line here.
    Public API only: Click's `main(standalone_mode=False)`, and Typer's exported `TyperException`
    (every usage error's base) and `Abort`, caught by type. Typer vendors its Click, so
    tests/test_cli_app.py pins the minor version tested and the behaviour relied on.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(super().get_params(ctx))

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Plain help (no rich panels, `rich_markup_mode=None`), one section per panel."""
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        commands = [(name, cmd) for name, cmd in commands if cmd is not None and not cmd.hidden]
        if not commands:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in commands)
        for panel, cmds in _panels(commands):
            with formatter.section(panel):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in cmds])

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        except typer.TyperException as exc:  # a usage error (bad value, unknown option...)
            if not (sys.argv[1:] if args is None else list(args)):  # plain `attnviz`: no_args_is_help
                typer.echo(exc.format_message())
                sys.exit(0)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {printable(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=Group,
    name="attnviz",
    help="See what a transformer attends to: extract, draw and rank attention heads.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def printable(message: str) -> str:
    """A message safe for a terminal: control characters (ESC, BEL, NUL, a line break...) and
    lone surrogates shown as escapes (`\\x1b`), so what a user typed cannot drive the terminal
    (an OSC sequence retitling the window) or split the one error line."""
    out = []
    for ch in message:
        code = ord(ch)
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line to stderr (control characters escaped); the caller raises the Exit."""
    typer.echo(f"error: {printable(message)}", err=True)
    return typer.Exit(code)


# whether the running command was given --json (every command spells it `as_json`): no spinner then
JSON_OUTPUT: ContextVar[bool] = ContextVar("JSON_OUTPUT", default=False)


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command`, with library errors turned into one line and exit code 2."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        shared = _selection_options(fn)

        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            as_json = JSON_OUTPUT.set(bool(kw.get("as_json")))
            try:
                _check_selection_early(shared, kw)
                return fn(*a, **kw)
            except AttnvizError as exc:
                if os.environ.get("ATTNVIZ_DEBUG"):
                    raise
                raise fail(exc.render(cli_terms)) from None
            except KeyboardInterrupt:
                raise fail("interrupted", 130) from None
            finally:
                JSON_OUTPUT.reset(as_json)

        kwargs.setdefault("cls", Command)
        return app.command(*args, **kwargs)(wrapper)

    return decorate


# the shared options (cli/_options.py) that select layers and heads, by their annotation's name
_SELECTION = {"LayerOpt": "layer", "LayersOpt": "layers", "HeadOpt": "head", "HeadsOpt": "heads"}


def _selection_options(fn: Callable[..., Any]) -> dict[str, str]:
    """Keyword -> kind (layer, layers, head, heads) of the command's shared selection options."""
    import inspect

    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        kind = _SELECTION.get(p.annotation if isinstance(p.annotation, str) else "")
        if kind:
            out[name] = kind
    return out


def _check_selection_early(shared: dict[str, str], kw: dict[str, Any]) -> None:
    """--layer/--layers/--head/--heads against the model's config, before the command loads it
    (models.info.check_selection). A selection the command itself refuses is left to it."""
    model = kw.get("model")
    given = {shared[k]: v for k, v in kw.items() if k in shared and v is not None}
    if not given or not isinstance(model, str) or not model.strip():
        return
    from attnviz.models.info import check_selection

    try:
        layers = parse_indices(given.get("layer", given.get("layers")), "layers")
        heads = parse_indices(given.get("head", given.get("heads")), "heads")
    except InputError:
        return
    check_selection(model, layers, heads, bool(kw.get("trust_remote_code")))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """See what a transformer attends to."""
