"""`attnviz patch`: activation patching (and path patching) between a clean and a corrupt text."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attnviz.cli._app import SOURCE, command
from attnviz.cli._options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, TopOpt, TrustOpt, load
from attnviz.cli._output import print_result
from attnviz.errors import InputError, param

if TYPE_CHECKING:
    from attnviz.heads.patching import Patching
    from attnviz.heads.path_patching import PathPatching


@command("patch", rich_help_panel=SOURCE)
def patch_cmd(
    clean: Annotated[str, typer.Argument(help="The clean text (the model gets the answer right).")],
    corrupt: Annotated[str, typer.Argument(help="The corrupt text, of the same token length.")],
    answer: Annotated[
        str | None, typer.Option("--answer", help="The word after the text: the first token of ' WORD'.")
    ] = None,
    wrong: Annotated[
        str | None,
        typer.Option("--wrong", help="The word to compare with: the metric is the logit difference."),
    ] = None,
    noising: Annotated[
        bool, typer.Option("--noising", help="Run the clean text with each unit from the corrupt one.")
    ] = False,
    positions: Annotated[bool, typer.Option("--positions", help="Patch each unit at each position.")] = False,
    unit: Annotated[
        str,
        typer.Option("--unit", help="heads (default), resid (residual stream), or layer (attention, MLP)."),
    ] = "heads",
    metric: Annotated[
        str | None, typer.Option("--metric", help="logit-diff (default with --wrong), log-prob or kl.")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="last: patch the final position only (texts may differ).")
    ] = None,
    stream: Annotated[
        str | None, typer.Option("--stream", help="Encoder-decoders: cross (default), decoder or encoder.")
    ] = None,
    sender: Annotated[
        str | None, typer.Option("--sender", help="Path patching: the sender head, LAYER.HEAD.")
    ] = None,
    receivers: Annotated[
        str | None,
        typer.Option("--receivers", help="Path patching: receiver heads LAYER.HEAD,... (or logits)."),
    ] = None,
    via: Annotated[str, typer.Option("--via", help="Path patching: the receivers' q, k or v.")] = "q",
    top: TopOpt = 10,
    plot: Annotated[Path | None, typer.Option("--plot", help="Save the map here (.png, .svg, .pdf).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Save the result (.safetensors or .npz).")
    ] = None,
    model: ModelOpt = "smollm2",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Patch heads (or the residual stream, or layer outputs) from one run into the other and measure."""
    from attnviz.heads.patching import check_options, patch
    from attnviz.heads.path_patching import check_path, parse_receivers, parse_unit, path_patch
    from attnviz.outputs import check_data_output, check_output

    if answer is None:
        raise InputError("say which word should follow the clean text: --answer WORD")
    path = sender is not None or receivers is not None
    if path and (sender is None or receivers is None):
        raise InputError("path patching needs both --sender LAYER.HEAD and --receivers LAYER.HEAD,...")
    check_options(answer, wrong, metric, unit, at, positions)
    if path:
        pair, recv = parse_unit(sender or ""), parse_receivers(receivers or "")
        check_path(pair, recv, via)
        if plot is not None:
            raise InputError("--plot draws the map of activation patching: drop it with --sender")
    check_output(plot, param("plot"))
    check_data_output(output)
    loaded = load(model, device, dtype, trust_remote_code, quiet=as_json)
    if path:
        found = path_patch(
            clean, corrupt, loaded, sender=pair, receivers=recv, via=via, answer=answer, wrong=wrong,
            metric=metric, noising=noising, stream=stream,
        )  # fmt: skip
        _finish_path(found, output, as_json)
        return
    result = patch(
        clean, corrupt, loaded, answer=answer, wrong=wrong, metric=metric, noising=noising,
        positions=positions, unit=unit, at=at, stream=stream,
    )  # fmt: skip
    print_result(result, as_json, lambda: _print(result, top))
    if output is not None:
        typer.echo(f"wrote {result.save(output)}", err=as_json)
    if plot is not None:
        from attnviz.plots.causal import patching_map

        typer.echo(f"wrote {patching_map(result, plot)}", err=as_json)


def _print(r: Patching, top: int) -> None:
    from attnviz.heads.patching import unit_name

    mode = (
        "noising: the clean run with each unit from the corrupt"
        if r.noising
        else ("denoising: the corrupt run with each unit from the clean")
    )
    typer.echo(f"{r.model}: {mode} ({r.unit}, {r.patched.size} patches, {r.seconds:.1f} s)")
    typer.echo(
        f"metric: {r.metric}; clean {r.clean:.6g}, corrupt {r.corrupt:.6g}"
        + (f"; {r.note}" if r.note else "")
    )
    typer.echo("effect: 0 = the corrupt run, 1 = the clean run; largest |effect| first")
    typer.echo(f"{'unit':<24} {'effect':>8} {'patched':>12}")
    for idx, eff in r.top(top or r.patched.size):
        typer.echo(f"{unit_name(r, idx):<24} {eff:>+8.3f} {r.patched[idx]:>12.6g}")


def _finish_path(r: PathPatching, output: Path | None, as_json: bool) -> None:
    print_result(r, as_json, lambda: _print_path(r))
    if output is not None:
        typer.echo(f"wrote {r.save(output)}", err=as_json)


def _print_path(r: PathPatching) -> None:
    recv = ", ".join(x if isinstance(x, str) else f"L{x[0]}H{x[1]}" for x in r.receivers)
    typer.echo(f"{r.model}: path L{r.sender[0]}H{r.sender[1]} -> {recv} via {r.via}")
    typer.echo(f"metric: {r.metric}; clean {r.clean:.6g}, corrupt {r.corrupt:.6g}")
    typer.echo(f"patched {r.patched:.6g}, effect {r.effect:+.4f} (0 = corrupt run, 1 = clean run)")
    if r.note:
        typer.echo(f"note: {r.note}")
