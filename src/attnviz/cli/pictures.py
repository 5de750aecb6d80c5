"""`attnviz heatmap`, `entropy`, `toy` and `explain`: pictures and the five steps of attention."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attnviz.analyses.transform import ExtractOptions, extract_shown
from attnviz.cli._app import PICTURES, command
from attnviz.cli._options import (
    AddSpecialOpt,
    AggregateOpt,
    CmapOpt,
    DeviceOpt,
    DpiOpt,
    DtypeOpt,
    FileOpt,
    HeadOpt,
    HeadsOpt,
    JsonOpt,
    LayerOpt,
    ModelOpt,
    OutputOpt,
    OverOpt,
    ScaleOpt,
    SpecialOpt,
    TextArg,
    TruncateOpt,
    TrustOpt,
    WeightingOpt,
    WordsOpt,
    check_style,
    complete_cmap,
    load,
    note,
    one_index,
    read_text,
    view_options,
    write_figure,
)
from attnviz.cli._output import print_result
from attnviz.errors import InputError
from attnviz.selection import parse_indices

if TYPE_CHECKING:
    from attnviz.analyses.explain import Explained

AnnotateOpt = Annotated[
    bool, typer.Option("--annotate", help="Write the weights in the cells (short texts only).")
]
HeatmapDpiOpt = Annotated[
    int | None,
    typer.Option(
        "--dpi",
        metavar="N",
        help="Resolution of PNG files in dots per inch, 10-1200 (default 150; 100 for the whole-model grid).",
    ),
]
SizeOpt = Annotated[
    str | None,
    typer.Option(
        "--size",
        metavar="WxH",
        help="Figure size in inches, WIDTHxHEIGHT, e.g. 10x8 (default: grows with the text).",
    ),
]
HighlightOpt = Annotated[
    str | None,
    typer.Option(
        "--highlight",
        metavar="WORDS",
        help="Outline these tokens' rows and columns: words or @positions, e.g. paris,french.",
    ),
]
EntropyHighlightOpt = Annotated[
    str | None,
    typer.Option(
        "--highlight",
        metavar="WORDS",
        help="One head (--layer --head): mark these query tokens' bars, e.g. paris,french or @3.",
    ),
]
DecimalsOpt = Annotated[
    int, typer.Option("--decimals", metavar="N", help="Decimals printed in the tables (0-10).")
]
DimsOpt = Annotated[
    int,
    typer.Option(
        "--dims", metavar="N", min=0, help="Vector dimensions printed (0: all); tables stay narrow."
    ),
]


# -- helpers: parsing and writing, no tensor logic ---------------------------------------------
def _style(vmax: str | None, cmap: str, dpi: int | None, size: str | None) -> dict[str, Any]:
    """Check the drawing options before any model loads; InputError on the first bad one."""
    from attnviz.plots import parse_scale, parse_size

    check_style(cmap, dpi, parse_size(size))
    return {"vmax": parse_scale(vmax), "cmap": cmap, "dpi": dpi, "size": parse_size(size)}


def _words(value: str | None) -> list[str]:
    """--highlight's words; given but empty (`--highlight ''`) is an error, not nothing marked."""

    words = [w.strip() for w in (value or "").split(",") if w.strip()]
    if value is not None and not words:
        raise InputError("--highlight is empty: give words or @positions, e.g. --highlight paris,french")
    return words


def _extract_selection(
    text: str | None,
    file: Path | None,
    output: Path | None,
    load_args: tuple[str, str, str, bool],
    options: ExtractOptions,
) -> tuple[str, Any, Any]:
    """Read the text, check -o before loading, load the model, extract and transform as `options` ask.

    Returns (text, loaded model, Attention); a truncation is reported as a note.
    """
    from attnviz.outputs import check_output

    body = read_text(text, file)
    _one_textnote(file, body)
    check_output(output)
    loaded = load(*load_args)
    att = extract_shown(body, loaded, options)
    if att.truncated:
        note(f"cut {att.truncated} tokens to fit the model's limit")
    return body, loaded, att


def _selection(layer: int | None, heads: list[int] | None, **kwargs: Any) -> ExtractOptions:
    """--layer and --head/--heads (and the rest of `kwargs`) as one checked ExtractOptions."""
    layers = None if layer is None else (layer,)
    return ExtractOptions(layers=layers, heads=None if heads is None else tuple(heads), **kwargs).check()


def _one_textnote(file: Path | None, body: str) -> None:
    """--file is one text everywhere; say so when the file looks like one text per line."""
    lines = [line for line in body.splitlines() if line.strip()]
    if file is not None and len(lines) > 1:
        note(f"{file} has {len(lines)} lines, drawn as one text (find-head and heads average over --texts)")


def _heads_arg(head: int | None, heads: str | None) -> list[int] | None:
    if head is not None and heads is not None:
        raise InputError("give --head or --heads, not both")
    return [head] if head is not None else parse_indices(heads, "heads")


def _selection_name(att: Any, layer_given: bool, pooled: str | None = None) -> tuple[str, ...]:
    """File-name parts naming the layer and head selection: L1-H5, L1-H0_5_10, L1-mean, overview."""
    layers = f"L{att.layers[0]}" if layer_given else ("all-layers" if len(att.layers) > 1 else None)
    if pooled:
        heads = f"H{att.heads[0]}" if att.pooled_heads is None and len(att.heads) == 1 else None
        return tuple(p for p in (layers, heads, pooled) if p)
    if len(att.heads) == 1:
        heads = f"H{att.heads[0]}"
    elif len(att.heads) <= 6:
        heads = "H" + "_".join(str(h) for h in att.heads)
    else:
        heads = "all-heads"
    if layers == "all-layers" and heads == "all-heads":
        return ("overview",)
    return tuple(p for p in (layers, heads) if p)


# -- heatmap ----------------------------------------------------------------------------------
@command("heatmap", rich_help_panel=PICTURES)
def heatmap_cmd(
    text: TextArg = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    heads: HeadsOpt = None,
    aggregate: AggregateOpt = None,
    over: OverOpt = "heads",
    weighting: WeightingOpt = "attention",
    words: WordsOpt = False,
    vmax: ScaleOpt = "auto",
    cmap: CmapOpt = "viridis",
    annotate: AnnotateOpt = False,
    stream: Annotated[
        str,
        typer.Option(
            "--stream",
            metavar="self|decoder|cross",
            help="Encoder-decoder models: self (encoder), decoder, or cross (one head, decoder on encoder).",
        ),
    ] = "self",
    highlight: HighlightOpt = None,
    dpi: HeatmapDpiOpt = None,
    size: SizeOpt = None,
    output: OutputOpt = None,
    file: FileOpt = None,
    special: SpecialOpt = True,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Draw attention as a heatmap: one head (--layer --head), several (--heads), a layer, their
    mean or maximum (--aggregate), or with no selection the whole model as a layers x heads grid.
    Prints the path."""
    from attnviz.outputs import slug
    from attnviz.plots import annotate_limit, attention_figure, cross_figure, derived_figure
    from attnviz.tokens import positions_of

    options = view_options(weighting, special, aggregate, over, words)
    head_list = _heads_arg(head, heads)
    style = _style(vmax, cmap, dpi, size)
    marked = _words(highlight)
    what = _selection(layer, head_list, words=words, truncate=truncate, view=options, stream=stream)
    load_args = (model, device, dtype, trust_remote_code)
    body, loaded, att = _extract_selection(text, file, output, load_args, what)
    if stream == "cross":
        fig = cross_figure(att, att.layers[0], att.heads[0], annotate=annotate, **style)
        parts = ("heatmap", slug(body), loaded.name, "cross", *_selection_name(att, True))
        typer.echo(str(write_figure(fig, output, parts)))
        return
    marks = positions_of(att, marked)
    if annotate:
        limit = annotate_limit(len(att.layers), len(att.heads))
        if att.n_tokens > limit:
            why = "the whole-model overview" if limit == 0 else f"more than {limit} {att.level}s in this view"
            note(f"--annotate skipped: the numbers cannot be read in {why} ({att.n_tokens} {att.level}s)")
    from attnviz.cli._progress import stage

    draw = derived_figure if att.notes else attention_figure
    with stage(f"drawing {len(att.layers) * len(att.heads)} heads of {att.n_tokens} {att.level}s..."):
        fig = draw(att, annotate=annotate, highlight=marks, **style)
    stream_part = () if stream == "self" else (stream,)
    how = (
        options.weighting if options.weighting != "attention" else None,
        "nospecial" if options.hide_special else None,
    )
    parts = (
        "heatmap",
        slug(body),
        loaded.name,
        *stream_part,
        *_selection_name(att, layer is not None, options.aggregate),
        *(p for p in how if p),
    )
    with stage("writing the picture..."):
        path = write_figure(fig, output, (*parts, "words") if words else parts)
    typer.echo(str(path))


# -- entropy ----------------------------------------------------------------------------------
@command("entropy", rich_help_panel=PICTURES)
def entropy_cmd(
    text: TextArg = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    heads: HeadsOpt = None,
    words: WordsOpt = False,
    cmap: Annotated[
        str,
        typer.Option(
            "--cmap",
            metavar="NAME",
            autocompletion=complete_cmap,
            help="Colour map of the layers x heads heatmap.",
        ),
    ] = "magma",
    highlight: EntropyHighlightOpt = None,
    dpi: DpiOpt = None,
    size: SizeOpt = None,
    output: OutputOpt = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the numbers as JSON (a picture is written only with -o)."),
    ] = False,
    file: FileOpt = None,
    special: SpecialOpt = True,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Row entropy of attention in bits: per query token for one head (--layer --head), with the
    uniform bound for reference; otherwise the mean of every head as a layers x heads heatmap."""
    from attnviz.heads.patterns import row_entropy_of
    from attnviz.outputs import slug
    from attnviz.plots import entropy_figure
    from attnviz.tokens import positions_of

    options = view_options(special=special)
    head_list = _heads_arg(head, heads)
    style = _style("auto", cmap, dpi, size)
    marked = _words(highlight)
    what = _selection(layer, head_list, words=words, truncate=truncate, view=options)
    load_args = (model, device, dtype, trust_remote_code)
    body, loaded, att = _extract_selection(text, file, output, load_args, what)
    ent = row_entropy_of(att)
    marks = positions_of(att, marked)
    path = None
    if output is not None or not as_json:
        fig = entropy_figure(
            ent,
            cmap=cmap,
            highlight=marks,
            dpi=style["dpi"],
            size=style["size"],
            text=att.text,
            note=att.note if options.hide_special else "",
        )
        parts = ("entropy", slug(body), loaded.name, *_selection_name(att, layer is not None))
        parts = (*parts, "nospecial") if options.hide_special else parts
        path = write_figure(fig, output, (*parts, "words") if words else parts)
    print_result(ent, as_json, str(path), output=path)


# -- toy --------------------------------------------------------------------------------------
@command("toy", rich_help_panel=PICTURES)
def toy_cmd(
    tokens: Annotated[
        str,
        typer.Option(
            "--tokens",
            metavar="N|WORDS",
            help="How many made-up tokens (e.g. 12), or the tokens: 'I like transformers'.",
        ),
    ] = "12",
    dim: Annotated[
        int, typer.Option("--dim", metavar="N", help="Model width d_model; each head gets dim/num-heads.")
    ] = 16,
    num_heads: Annotated[
        int, typer.Option("--num-heads", metavar="N", help="Number of attention heads.")
    ] = 2,
    seed: Annotated[
        int, typer.Option("--seed", metavar="N", help="Random seed: the same seed, the same numbers.")
    ] = 0,
    causal: Annotated[
        bool, typer.Option("--causal", help="Mask the future, as a decoder (GPT-style) does.")
    ] = False,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature",
            metavar="T",
            help="Divide scores by this too: below 1 sharpens, above 1 flattens.",
        ),
    ] = 1.0,
    steps: Annotated[
        bool, typer.Option("--steps", help="Print the five steps of attention as labelled tables.")
    ] = False,
    head: Annotated[
        int | None,
        typer.Option("--head", metavar="H", parser=one_index("head"), help="With --steps: only this head."),
    ] = None,
    decimals: DecimalsOpt = 4,
    dims: DimsOpt = 8,
    vmax: ScaleOpt = "auto",
    cmap: CmapOpt = "viridis",
    annotate: AnnotateOpt = False,
    dpi: DpiOpt = None,
    size: SizeOpt = None,
    output: OutputOpt = None,
) -> None:
    """A toy self-attention built from scratch (random embeddings and Q/K/V, no pretrained model):
    draws each head's attention and row entropy; --steps prints the five steps."""
    from attnviz.analyses.steps import check_decimals, format_steps
    from attnviz.analyses.toy import build_toy, parse_tokens
    from attnviz.outputs import check_output, slug
    from attnviz.plots import toy_figure

    style = _style(vmax, cmap, dpi, size)
    check_decimals(decimals)
    check_output(output)
    toy = build_toy(tokens, dim=dim, heads=num_heads, seed=seed, causal=causal, temperature=temperature)
    picked = [(h, toy.head_steps(h)) for h in ([head] if head is not None else range(toy.num_heads))]
    for h, one in picked if steps else ():  # a --head the toy lacks is refused with or without --steps
        title = f"{toy.describe()} · head {h}"
        typer.echo(format_steps(one, toy.labels, title=title, decimals=decimals, max_dims=dims))
        typer.echo("")
    fig = toy_figure(
        toy.weights,
        toy.entropy(),
        toy.bound(),
        toy.labels,
        visible=toy.visible(),
        title=toy.describe(),
        annotate=annotate,
        vmax=style["vmax"],
        cmap=cmap,
        dpi=style["dpi"] or 150,
        size=style["size"],
    )
    what = f"{toy.n_tokens}tok" if tokens.strip().isdigit() else slug(" ".join(parse_tokens(tokens)), 24)
    parts = (
        "toy",
        what,
        f"d{dim}",
        f"{num_heads}heads",
        f"seed{seed}",
        "causal" if causal else None,
        f"T{temperature:g}" if temperature != 1.0 else None,
    )
    typer.echo(str(write_figure(fig, output, parts)))


# -- explain --------------------------------------------------------------------------------------
@command("explain", rich_help_panel=PICTURES)
def explain_cmd(
    text: TextArg = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--query", "-q", metavar="WORD", help="Follow one token (a word or @position) through the steps."
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", metavar="WORD", help="With --query: the key worked out by hand (default: the top one)."
        ),
    ] = None,
    decimals: DecimalsOpt = 4,
    dims: DimsOpt = 8,
    file: FileOpt = None,
    add_special: AddSpecialOpt = True,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The five steps of attention for a real model's head, from the query, key and value vectors
    it computed for this text: scores, scaling, mask, softmax, weighted sum of values."""
    from attnviz.analyses.explain import check_focus, explain
    from attnviz.analyses.steps import check_decimals

    body = read_text(text, file)
    if layer is None or head is None:
        raise InputError("explain needs one head: pass --layer L --head H")
    check_focus(query, key)
    check_decimals(decimals)
    loaded = load(model, device, dtype, trust_remote_code)
    ex = explain(
        body,
        loaded,
        layer=layer,
        head=head,
        query=query,
        key=key,
        special_tokens=add_special,
        truncate=truncate,
    )
    if ex.truncated:
        note(f"cut {ex.truncated} tokens to fit the model's limit")
    if len(ex.query_matches) > 1:
        note(f"'{query}' is at tokens {list(ex.query_matches)}; following the first (use @N for another)")
    print_result(ex, as_json, lambda: _print_explanation(ex, decimals, dims))


def _print_explanation(ex: Explained, decimals: int, dims: int) -> None:
    from attnviz.analyses.steps import format_focus, format_steps

    if ex.query is not None:
        typer.echo(
            format_focus(
                ex.steps, ex.labels, ex.query, key=ex.key, title=ex.title, decimals=decimals, max_dims=dims
            )
        )
    else:
        if len(ex.labels) > 16:
            note(f"{len(ex.labels)} tokens make wide tables; --query WORD follows one token")
        typer.echo(format_steps(ex.steps, ex.labels, title=ex.title, decimals=decimals, max_dims=dims))
    typer.echo("")
    diff = ex.max_difference
    if diff < 1e-3:
        typer.echo(
            f"check: step 4 equals {ex.model}'s own attention for this head (largest difference {diff:.1e})"
        )
    else:
        typer.echo(f"check: step 4 differs from {ex.model}'s own attention by up to {diff:.3g}")
