"""`attnviz ablate`: remove heads and print how much the model's prediction (or embedding) changes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attnviz.cli._app import HEADS, command
from attnviz.cli._options import (
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    HeadOpt,
    JsonOpt,
    LayerOpt,
    ModelOpt,
    TextArg,
    TopOpt,
    TruncateOpt,
    TrustOpt,
    load,
    read_text,
)
from attnviz.cli._output import print_result
from attnviz.cli._progress import progress_bar
from attnviz.errors import InputError, param
from attnviz.outputs import check_output

if TYPE_CHECKING:
    from attnviz.heads.ablation import Ablation, HeadScan
    from attnviz.heads.induction import InductionResult
    from attnviz.heads.search import HeadSearch
    from attnviz.models.loading import LoadedModel

TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="Causal LM: the word or @N token whose log-probability is measured (default: the last token);"
        " masked LM: the word masked (default: the last word). Encoders without an LM head ignore it.",
    ),
]
ModeOpt = Annotated[
    str, typer.Option("--mode", help="zero (default) or mean (the head's mean output over --reference).")
]
ReferenceOpt = Annotated[
    Path | None, typer.Option("--reference", help="--mode mean: reference texts, one per line.")
]


def reference_texts(reference: Path | None) -> tuple[str, ...] | None:
    """The --reference file's lines (read before the model loads)."""
    if reference is None:
        return None
    return tuple(line.strip() for line in read_text(None, reference).splitlines() if line.strip())


@command("ablate", rich_help_panel=HEADS)
def ablate_cmd(
    text: TextArg = None,
    file: FileOpt = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    heads: Annotated[
        str | None,
        typer.Option("--heads", help="Several heads ablated together: LAYER:HEAD,... e.g. 18:6,17:3."),
    ] = None,
    scan: Annotated[
        bool, typer.Option("--scan", help="Ablate every head in turn and rank them by effect.")
    ] = False,
    target: TargetOpt = None,
    mode: ModeOpt = "zero",
    reference: ReferenceOpt = None,
    top: TopOpt = 10,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="--scan: save a layers x heads heatmap of the effect here.")
    ] = None,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Ablate heads (zero or mean) and print the change in the prediction or the embedding."""
    from attnviz.heads.ablation import for_ablation, run_ablation
    from attnviz.heads.ablation_options import AblationOptions, parse_heads
    from attnviz.plots.roles import effect_map

    pairs: tuple[tuple[int, int], ...] = ()
    if heads is not None:
        pairs = parse_heads(heads)
    if layer is not None or head is not None:
        if layer is None or head is None:
            raise InputError("give both --layer and --head (or --heads LAYER:HEAD,...)")
        pairs = (*pairs, (layer, head))
    refs = reference_texts(reference)
    options = AblationOptions(pairs, scan, target, None, mode, refs, truncate).check()
    if plot is not None:
        if not scan:
            raise InputError("--plot draws the --scan heatmap: add --scan")
        check_output(plot, param("plot"))  # format, rights, and never a symbolic link
    body = read_text(text, file)
    loaded = for_ablation(load(model, device, dtype, trust_remote_code), trust_remote_code)
    if not scan:
        result = run_ablation(body, loaded, options)
        print_result(result, as_json, lambda: _print_ablation(result))
        return
    with progress_bar("ablating each head", "heads") as progress:
        found = run_ablation(body, loaded, options, progress)
    rows = found.ranking(top or None)
    print_result(rows, as_json, lambda: _print_scan(found, rows))
    if plot is not None:
        effect_map(found, plot)
        typer.echo(f"wrote {plot}", err=as_json)


def _what(measure: str, target: str | None, position: int | None) -> str:
    if target is None:
        return measure
    return f"{measure} of '{target}' (token {position})"


def _print_ablation(r: Ablation) -> None:
    heads = ", ".join(f"L{layer}H{head}" for layer, head in r.heads)
    typer.echo(f"{r.model}: {r.mode}-ablating {heads}")
    typer.echo(f"measure: {r.measure}, because {r.reason}")
    typer.echo(f"{_what(r.measure, r.target, r.position)}: before {r.before:.6g}, after {r.after:.6g}")
    typer.echo(f"delta (after - before): {r.delta:+.6g}")


def _print_scan(found: HeadScan, rows: tuple) -> None:
    typer.echo(
        f"{found.model}: each of {found.delta.size} heads {found.mode}-ablated alone"
        f" ({found.seconds:.1f} s, batched)"
    )
    typer.echo(f"measure: {found.measure}, because {found.reason}")
    typer.echo(f"{_what(found.measure, found.target, found.position)} without ablation: {found.before:.6g}")
    order = "the rise" if found.measure == "repeat-loss" else "|delta|"
    typer.echo(f"ranked by {order}, largest first")
    typer.echo(f"{'rank':>4} {'layer':>5} {'head':>4} {'delta':>12}")
    for r in rows:
        typer.echo(f"{r.rank:>4} {r.layer:>5} {r.head:>4} {r.delta:>+12.6g}")


def find_head_effects(
    loaded: LoadedModel, result: HeadSearch, text: str, truncate: bool, top: int, as_json: bool
) -> None:
    """`find-head --ablate`: each ranked head's ablation effect beside its score, and Spearman's rho."""
    from attnviz.heads.effects import search_effects

    with progress_bar("ablating each head", "heads") as progress:
        fx = search_effects(loaded, result, text, truncate, progress)
    found = fx.scan
    shown = result.ranking[: top or None]
    what = _what(found.measure, found.target, found.position)
    summary = (
        f"ablation ({found.mode}) measure: {what}, because {found.reason}; before {found.before:.6g}\n"
        f"Spearman rank correlation of attention score and |delta| over {len(result.ranking)} heads:"
        f" {fx.rho:+.3f}"
    )
    rows = [{**h.as_dict(), "delta": d} for h, d in zip(shown, fx.delta, strict=False)]
    lines = [f"{'rank':>4} {'layer':>5} {'head':>4} {'score':>7} {'A->B':>7} {'B->A':>7} {'delta':>11}  role"]
    for h, d in zip(shown, fx.delta, strict=False):
        lines.append(
            f"{h.rank:>4} {h.layer:>5} {h.head:>4} {h.score:>7.4f} {h.a2b:>7.4f} {h.b2a:>7.4f}"
            f" {d:>+11.4g}  {h.role}"
        )
    print_result(rows, as_json, lines, summary=summary)


def induction_effects(loaded: LoadedModel, result: InductionResult, ranking: tuple, as_json: bool) -> None:
    """`heads --induction --ablate`: the loss rise of each ranked head, and the top-10 overlap."""
    from attnviz.heads.effects import induction_effects as compute

    with progress_bar("ablating each head", "heads") as progress:
        fx = compute(loaded, result, 10, progress)
    by_loss = ", ".join(f"L{r.layer}H{r.head}" for r in fx.scan.ranking(5))
    summary = (
        f"ablation: zeroing each head, mean loss on the second copy {fx.scan.before:.4f} without ablation;"
        f" largest rises: {by_loss}\n"
        f"top-{fx.k} overlap of induction score and loss rise: {fx.overlap} of {fx.k}"
    )
    rows = [{**s.as_dict(), "loss_rise": fx.rise[(s.layer, s.head)]} for s in ranking]
    print_result(rows, as_json, lambda: _print_rises(result, ranking, fx.rise), summary=summary)


def _print_rises(result: InductionResult, ranking: tuple, rise: dict) -> None:
    _print_ind_header(result)
    typer.echo(f"{'rank':>4} {'layer':>5} {'head':>4} {'induction':>9} {'duplicate':>9} {'loss rise':>10}")
    for s in ranking:
        typer.echo(
            f"{s.rank:>4} {s.layer:>5} {s.head:>4} {s.induction:>9.3f} {s.duplicate:>9.3f}"
            f" {rise[(s.layer, s.head)]:>+10.4f}"
        )


def _print_ind_header(result: InductionResult) -> None:
    typer.echo(
        f"{result.model}: {result.batch} sequences of {result.seq_len} random tokens, each repeated twice"
        f" (seed {result.seed}); chance (uniform attention) = {result.chance:.3f}"
    )
