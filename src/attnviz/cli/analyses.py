"""`attnviz rollout`, `compare` and `cluster`: analyses over heads and layers, a few lines each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attnviz.cli._app import BEYOND, command
from attnviz.cli._options import (
    CmapOpt,
    DeviceOpt,
    DpiOpt,
    DtypeOpt,
    FileOpt,
    HeadOpt,
    HeadsOpt,
    JsonOpt,
    LayerOpt,
    LayersOpt,
    ModelOpt,
    OutputJsonOpt,
    TextArg,
    TopOpt,
    TruncateOpt,
    TrustOpt,
    check_style,
    load,
    note,
    read_text,
    write_figure,
)
from attnviz.cli._output import print_result
from attnviz.errors import InputError
from attnviz.selection import parse_indices, resolve_indices


# -- rollout ------------------------------------------------------------------------------------
@command("rollout", rich_help_panel=BEYOND)
def rollout_cmd(
    text: TextArg = None,
    head_fusion: Annotated[
        str, typer.Option("--head-fusion", help="How heads are fused per layer: mean, max or min.")
    ] = "mean",
    residual: Annotated[
        float, typer.Option("--residual", help="r in A' = r*A + (1-r)*I (0: identity, 1: attention only).")
    ] = 0.5,
    layers: Annotated[
        str | None,
        typer.Option("--layers", help="Consecutive layers to multiply, e.g. 0-3 (default: all)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Output token whose row is drawn as bars: a word or @N (default @0)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {model, tokens, rollout} as JSON (picture only with -o).")
    ] = False,
    cmap: CmapOpt = "viridis",
    dpi: DpiOpt = None,
    output: OutputJsonOpt = None,
    file: FileOpt = None,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Attention rollout (Abnar & Zuidema 2020): fuse heads, add the residual, renormalise, multiply
    the layers. Draws R (output positions x input tokens) and one token's row; prints the path."""
    from attnviz.analyses.rollout import check_options, rollout
    from attnviz.extraction import extract
    from attnviz.outputs import check_output, slug
    from attnviz.plots.analyses import rollout_figure
    from attnviz.tokens import positions

    check_options(head_fusion, residual)
    if token is not None and not token.strip():  # not silently @0
        raise InputError("--token is empty: give a word or @N")
    check_style(cmap, dpi)
    layer_list = parse_indices(layers, "layers")
    body = read_text(text, file)
    check_output(output)
    loaded = load(model, device, dtype, trust_remote_code)
    att = extract(body, loaded, layers=layer_list, truncate=truncate)
    if att.truncated:
        note(f"cut {att.truncated} tokens to fit the model's limit")
    index = positions(att, token)[0] if token else 0
    ro = rollout(att, head_fusion, residual)
    path = None
    if output is not None or not as_json:
        fig = rollout_figure(ro, index, cmap=cmap, dpi=dpi or 150)
        span = f"L{ro.layers[0]}-{ro.layers[-1]}"
        path = write_figure(fig, output, ("rollout", slug(body), loaded.name, span, head_fusion), dpi)
    print_result(ro, as_json, str(path), token=index, output=path)


# -- compare ------------------------------------------------------------------------------------
@command("compare", rich_help_panel=BEYOND)
def compare_cmd(
    text_a: Annotated[str, typer.Argument(help="First text of the minimal pair.")],
    text_b: Annotated[str, typer.Argument(help="Second text of the minimal pair.")],
    top: TopOpt = 10,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the ranked rows as JSON (picture only with -o).")
    ] = False,
    cmap: CmapOpt = "viridis",
    dpi: DpiOpt = None,
    output: OutputJsonOpt = None,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Which heads change between two texts? Per head, the mean Jensen-Shannon divergence (bits)
    between aligned rows. Draws a layers x heads map, or with --layer --head both heatmaps and A - B."""
    from attnviz.analyses.compare import compare
    from attnviz.extraction import extract_batch
    from attnviz.outputs import check_output, slug
    from attnviz.plots.analyses import change_figure, pair_figure

    if (layer is None) != (head is None):
        raise InputError("--layer and --head go together: they pick the head drawn side by side")
    for name, value in (("TEXT_A", text_a), ("TEXT_B", text_b)):
        if not value.strip():
            raise InputError(f"{name} is empty")
    check_style(cmap, dpi)
    layer_list = parse_indices(layers, "layers")
    head_list = parse_indices(heads, "heads")
    check_output(output)
    loaded = load(model, device, dtype, trust_remote_code)
    if layer is not None and head is not None:  # out of range is refused, as every command does
        layer = resolve_indices([layer], loaded.num_layers, "layer", loaded.name)[0]
        head = resolve_indices([head], loaded.num_heads, "head", loaded.name)[0]
    att_a, att_b = extract_batch(
        [text_a, text_b], loaded, layers=layer_list, heads=head_list, truncate=truncate
    )
    result = compare(att_a, att_b)
    note(result.alignment.describe())
    path = None
    if output is not None or not as_json:
        if layer is not None and head is not None:
            pick_layer = att_a.layers[att_a.layer_pos(layer)]
            fig = pair_figure(result, pick_layer, head, cmap=cmap, dpi=dpi or 150)
            parts = ("compare", slug(text_a, 24), loaded.name, f"L{pick_layer}-H{head}")
        else:
            fig = change_figure(result, dpi=dpi or 150)
            parts = ("compare", slug(text_a, 24), loaded.name)
        path = write_figure(fig, output, parts, dpi)
    rows = result.ranked(top or None)
    data = {"model": result.model, "alignment": result.alignment, "rows": rows, "output": path}
    print_result(data, as_json, lambda: _print_changes(rows, path))


def _print_changes(rows: list[dict[str, Any]], path: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("rank", "layer", "head", "change (bits)", title="heads that change most")
    for row in rows:
        table.add_row(str(row["rank"]), str(row["layer"]), str(row["head"]), f"{row['change']:.4f}")
    Console(width=100).print(table)
    typer.echo(str(path))


# -- cluster ------------------------------------------------------------------------------------
@command("cluster", rich_help_panel=BEYOND)
def cluster_cmd(
    source: Annotated[
        str | None,
        typer.Argument(
            help="Corpus as `batch` reads it (.txt a text per line, .jsonl, .csv, .parquet) or -."
        ),
    ] = None,
    file: FileOpt = None,
    outdir: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default: outputs/cluster-MODEL).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, txt, jsonl, csv or parquet.")] = "auto",
    field: Annotated[str, typer.Option("--field", help="JSON key holding the text.")] = "text",
    column: Annotated[str, typer.Option("--column", help="CSV / Parquet column holding the text.")] = "text",
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most this many texts.")] = None,
    groups: Annotated[
        int | None,
        typer.Option(
            "--groups", "-g", metavar="N", help="Groups of heads to print (default: about sqrt(heads/2))."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Texts per forward pass.")] = 16,
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    as_json: JsonOpt = False,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Cluster heads by how alike they attend (Clark et al. 2019): mean JS divergence between heads
    over the texts. Writes distances.csv, a seaborn clustermap and a 2-D MDS map coloured by layer."""
    from attnviz.analyses.cluster import check_enough_texts, check_groups, cluster_texts
    from attnviz.batch.corpus import read_texts
    from attnviz.cli._progress import progress_bar
    from attnviz.extraction import check_sizes
    from attnviz.outputs import refuse_link, slug
    from attnviz.plots.analyses import CLUSTER_FILES, cluster_folder, save_cluster

    if source is not None and file is not None:
        raise InputError("give the corpus as an argument or with --file, not both")
    where: Any = file if file is not None else source
    if where is None:
        if sys.stdin.isatty():
            raise InputError("no texts given: pass a corpus file, --file, or pipe texts (one per line)")
        where = "-"
    check_sizes(batch_size, None)  # the library's rules, before the model loads
    check_groups(groups)
    layer_list = parse_indices(layers, "layers")
    head_list = parse_indices(heads, "heads")
    texts, skipped = read_texts(where, fmt, field, column)
    if limit is not None:
        texts = texts[: max(limit, 0)]
    check_enough_texts(len(texts))
    if skipped:
        note(f"skipped {skipped} empty or unreadable records")
    for name in CLUSTER_FILES if outdir else ():
        refuse_link(outdir / name)  # before the model loads: these files are replaced
    loaded = load(model, device, dtype, trust_remote_code)
    folder = cluster_folder(outdir or Path("outputs") / f"cluster-{slug(loaded.name)}")
    with progress_bar("clustering", "texts", quiet=as_json) as progress:
        dist = cluster_texts(
            texts,
            loaded,
            layers=layer_list,
            heads=head_list,
            truncate=truncate,
            batch_size=batch_size,
            progress=progress,
        )
    found = dist.groups(groups)
    files = save_cluster(dist, folder)
    data = {"model": dist.model, "texts": dist.texts, "skipped": skipped, "files": files,
            "groups": found, "nearest": dist.nearest(10)}  # fmt: skip
    print_result(data, as_json, lambda: _print_groups(dist, found, files))


def _print_groups(dist: Any, found: Any, files: Any) -> None:
    typer.echo(f"{dist.model}: {len(found)} groups of heads over {dist.texts} texts (average linkage)")
    for i, group in enumerate(found, start=1):
        typer.echo(f"group {i}: {group.describe()}")
        typer.echo("  " + " ".join(group.heads))
    for f in files:
        typer.echo(str(f))
