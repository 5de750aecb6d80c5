"""`attnviz models` and `attnviz info`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from attnviz.cli._app import START, command
from attnviz.cli._options import JsonOpt, TrustOpt
from attnviz.cli._output import print_result
from attnviz.models.loading import DEFAULT_MODEL

if TYPE_CHECKING:
    from attnviz.models.info import ModelInfo


@command("models", rich_help_panel=START)
def models_cmd(as_json: JsonOpt = False) -> None:
    """List the bundled model aliases and whether each is installed."""
    from attnviz.models.info import list_bundled

    rows = list_bundled()
    lines = []
    for r in rows:
        mark = "installed" if r.installed else f"not installed ({r.install})"
        default = "  [used when --model is not given]" if r.alias == DEFAULT_MODEL else ""
        lines.append(f"{r.alias:<9} {mark:<10} {r.description}{default}")
    lines.append("Also accepted: a Hugging Face hub id (from the local cache), a model folder, a .gguf file.")
    print_result(rows, as_json, lines)


@command("info", rich_help_panel=START)
def info_cmd(
    model: str = typer.Argument("minilm", help="Alias, hub id, model folder or .gguf file."),
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Print a model's layers, heads, kind, maximum length and parameter count (read, not loaded)."""
    from attnviz.models.info import describe

    info = describe(model, trust_remote_code=trust_remote_code)
    print_result(info, as_json, lambda: _print_info(info))


def _print_info(info: ModelInfo) -> None:
    kv = f" ({info.kv_heads} key/value heads, grouped-query)" if info.kv_heads != info.heads else ""
    lines = [
        ("model", f"{info.name} ({info.origin}: {info.path})"),
        ("architecture", info.architecture),
        ("kind", info.kind + (" (causal)" if info.causal else "")),
        ("layers", str(info.layers)),
        ("heads", f"{info.heads} per layer{kv}"),
        ("head size", str(info.head_dim)),
        ("hidden size", str(info.hidden_size)),
        ("max length", str(info.max_length) if info.max_length else "unbounded"),
        ("parameters", f"{info.parameters:,}"),
    ]
    for key, value in lines:
        typer.echo(f"{key:<13}{value}")
