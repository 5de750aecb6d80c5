"""`attnviz view`: the interactive explorer as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.analyses.transform import ExtractOptions, extract_shown
from attnviz.cli._app import EXPLORE, command
from attnviz.cli._options import (
    AggregateOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    HeadsOpt,
    LayersOpt,
    ModelOpt,
    OverOpt,
    ScaleOpt,
    SpecialOpt,
    TextArg,
    TruncateOpt,
    TrustOpt,
    WeightingOpt,
    load,
    read_text,
    view_options,
)
from attnviz.selection import parse_indices


@command("view", rich_help_panel=EXPLORE)
def view_cmd(
    text: TextArg = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The .html file (or a folder). Default: a new file under outputs/, never overwriting.",
        ),
    ] = None,
    file: FileOpt = None,
    model: ModelOpt = "minilm",
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    words: Annotated[bool, typer.Option("--words", help="Open in the word-level view.")] = False,
    special: SpecialOpt = True,
    aggregate: AggregateOpt = None,
    over: OverOpt = "heads",
    weighting: WeightingOpt = "attention",
    start: Annotated[
        str, typer.Option("--view", help="The view shown first: head, matrix, model or text.")
    ] = "head",
    scale: ScaleOpt = "auto",
    max_mb: Annotated[
        float, typer.Option("--max-mb", help="Refuse pages larger than this many megabytes.")
    ] = 25.0,
    open_: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Write an interactive explorer (head, matrix, model and text views) as one HTML file that works
    offline; prints its path. --aggregate shows the pooled heads as one head."""
    from attnviz.plots._common import parse_scale
    from attnviz.views.html import (
        check_output,
        check_page_fits,
        check_page_options,
        output_path,
        render_html,
        write_html,
    )

    check_page_options(start, max_mb)
    parse_scale(scale)
    options = view_options(weighting, special, aggregate, over)
    body = read_text(text, file)
    check_output(output)
    layer_list = parse_indices(layers, "layers")
    head_list = parse_indices(heads, "heads")
    loaded = load(model, device, dtype, trust_remote_code)
    check_page_fits(
        loaded, body, layers=layer_list, heads=head_list, options=options, truncate=truncate, max_mb=max_mb
    )
    from attnviz.cli._progress import stage

    with stage("extracting attention..."):
        shown = ExtractOptions(layers=layer_list, heads=head_list, truncate=truncate, view=options)
        att = extract_shown(body, loaded, shown)
    if att.truncated:
        typer.echo(f"note: cut {att.truncated} tokens to fit the model's limit", err=True)
    with stage(f"building the page ({len(att.tokens)} tokens)..."):
        page = render_html(att, level="word" if words else "token", scale=scale, view=start, max_mb=max_mb)
    path = write_html(page, output_path(output, body, loaded.name))
    typer.echo(str(path))
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
