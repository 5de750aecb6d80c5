"""`attnviz find-head` (heads linking two words) and `attnviz heads` (roles, induction heads)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attnviz.analyses.transform import ExtractOptions, ViewOptions, extract_shown_stream
from attnviz.cli._app import HEADS, command
from attnviz.cli._options import (
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    HeadsOpt,
    JsonOpt,
    LayerOpt,
    LayersOpt,
    ModelOpt,
    PlotOpt,
    SpecialOpt,
    TextArg,
    TextsOpt,
    TopOpt,
    TruncateOpt,
    TrustOpt,
    WeightingOpt,
    load,
    read_text,
    view_options,
)
from attnviz.cli._output import print_result
from attnviz.errors import InputError
from attnviz.selection import parse_indices

if TYPE_CHECKING:
    from attnviz.analyses.transform import ViewOptions
    from attnviz.attention import Attention
    from attnviz.heads.induction import InductionResult, InductionSettings
    from attnviz.heads.patterns import PatternTable
    from attnviz.heads.search import HeadSearch
    from attnviz.models.loading import LoadedModel


AblateOpt = Annotated[
    bool,
    typer.Option(
        "--ablate",
        help="Also zero-ablate each head and show the effect on the prediction (see attnviz ablate).",
    ),
]


def _check_plot(plot: Path | None) -> None:
    """Fail on a bad --plot extension or an unwritable place before the model loads."""
    if plot is not None:
        from attnviz.errors import param
        from attnviz.outputs import check_output

        check_output(plot, param("plot"))


def texts_from(text: str | None, file: Path | None, texts: Path | None) -> list[str]:
    """The text argument or --file (one text), or --texts (one text per non-empty line)."""

    given = [name for name, v in (("the text", text), ("--file", file), ("--texts", texts)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give one of the text, --file or --texts, not both {given[0]} and {given[1]}")
    if texts is not None:
        lines = read_text("-", None) if str(texts) == "-" else read_text(None, texts)
        out = [line.strip() for line in lines.splitlines() if line.strip()]
        if not out:
            raise InputError(f"{texts} has no texts: write one text per line")
        return out
    return [read_text(text, file)]


def _layer_choice(layer: int | None, layers: str | None) -> tuple[int, ...] | None:
    if layer is not None and layers is not None:
        raise InputError("give --layer (one layer) or --layers (a list), not both")
    return (layer,) if layer is not None else parse_indices(layers, "layers")


def _stream(
    texts: list[str],
    loaded: LoadedModel,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    truncate: bool,
    options: ViewOptions | None = None,
    plain: bool = False,
) -> Iterator[Any]:
    """Each text's attention as `options` (--weighting, --no-special) show it, extracted a chunk of
    texts at a time; `plain`: pairs (shown, unweighted), so roles come from the weights."""

    what = ExtractOptions(
        layers=None if layers is None else tuple(layers),
        heads=None if heads is None else tuple(heads),
        truncate=truncate,
        view=options or ViewOptions(),
    )
    return extract_shown_stream(texts, loaded, what, plain=plain)


# -- find-head ---------------------------------------------------------------------------------


@command("find-head", rich_help_panel=HEADS)
def find_head_cmd(
    a: Annotated[
        str,
        typer.Argument(
            help="First word (any case), several words in a row ('new york'), a subword piece, or @N."
        ),
    ],
    b: Annotated[str, typer.Argument(help="Second word, words in a row, piece, or @N token position.")],
    text: TextArg = None,
    file: FileOpt = None,
    texts: TextsOpt = None,
    occurrence: Annotated[
        str | None,
        typer.Option(
            "--occurrence",
            "-n",
            metavar="N|N,M|all",
            help="Which occurrence: N (both words), N,M (A then B) or all (default: the first of each).",
        ),
    ] = None,
    direction: Annotated[
        str,
        typer.Option(
            "--direction",
            "-d",
            metavar="both|a2b|b2a",
            help="both (the larger of A->B and B->A), a2b (A looks at B) or b2a.",
        ),
    ] = "both",
    top: TopOpt = 5,
    layer: LayerOpt = None,
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    special: SpecialOpt = True,
    weighting: WeightingOpt = "attention",
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
    plot: PlotOpt = None,
    ablate: AblateOpt = False,
) -> None:
    """Rank every layer and head by how strongly A and B attend to each other in the text.

    A word of several pieces counts as the mean over its query pieces of the summed weight on the
    other's pieces; so do several words in a row. With --texts, the score is the mean over the
    texts that contain both. --no-special ranks on rows without [CLS]/[SEP]/BOS/EOS, renormalised,
    so a head that only looks at [SEP] does not win because of it.
    """
    from attnviz.heads.search import check_direction, check_queries, find_heads, parse_occurrence

    check_direction(direction)
    options = view_options(weighting, special)
    occ = parse_occurrence(occurrence)
    layer_list = _layer_choice(layer, layers)
    head_list = parse_indices(heads, "heads")
    _check_plot(plot)
    items = texts_from(text, file, texts)
    check_queries(items, a, b)
    loaded = load(model, device, dtype, trust_remote_code)
    if ablate:  # the model with its LM head, for extraction and ablation alike
        from attnviz.heads.ablation import for_ablation

        loaded = for_ablation(loaded, trust_remote_code)
    roles = None  # roles are `heads`' roles: from the weights, whatever --weighting ranks
    weighted = options.weighting != "attention"
    atts = _stream(items, loaded, layer_list, head_list, truncate, options, plain=weighted)
    if weighted:
        import itertools

        ranked, plain = itertools.tee(atts)
        atts, roles = (p[0] for p in ranked), (p[1] for p in plain)
    result = find_heads(
        atts, a, b, occurrence=occ, direction=direction, top=None if ablate else top or None, roles_from=roles
    )
    _say_matches(result, items, err=as_json)
    if ablate:
        from attnviz.cli.ablate import find_head_effects

        find_head_effects(loaded, result, items[result.used[0]], truncate, top, as_json)
    else:
        print_result(result.ranking, as_json, lambda: _print_ranking(result))
    if plot is not None:
        first = next(_stream(items[result.used[0] :][:1], loaded, layer_list, head_list, truncate, options))
        _plot_best(result, first, plot)
        typer.echo(f"wrote {plot}", err=as_json)


def _say_matches(result: HeadSearch, texts: list[str], err: bool) -> None:
    """Which positions were used (and over how many texts): to stdout, or stderr beside --json."""
    if len(texts) > 1:
        typer.echo(
            f"{result.model}: ranked by the mean over {result.texts_used} of {len(texts)} texts"
            f" containing both '{result.a}' and '{result.b}'",
            err=err,
        )
        shown = list(zip(result.used, result.units, strict=True))[:3]
        for index, (ua, ub) in shown:
            typer.echo(f"  text {index + 1}: A {ua.describe()}, B {ub.describe()}", err=err)
        if result.texts_used > len(shown):
            typer.echo(f"  ... and {result.texts_used - len(shown)} more", err=err)
    else:
        ua, ub = result.units[0]
        typer.echo(f"{result.model}: A {ua.describe()}, B {ub.describe()}", err=err)


def _print_ranking(result: HeadSearch) -> None:
    score = {"both": "max(A->B, B->A)", "a2b": "A->B", "b2a": "B->A"}[result.direction]
    note = " (causal model: the earlier word cannot attend to the later one)" if result.causal else ""
    typer.echo(f"score = {score}{note}")
    typer.echo(f"{'rank':>4} {'layer':>5} {'head':>4} {'score':>7} {'A->B':>7} {'B->A':>7}  role")
    for h in result.ranking:
        typer.echo(
            f"{h.rank:>4} {h.layer:>5} {h.head:>4} {h.score:>7.4f} {h.a2b:>7.4f} {h.b2a:>7.4f}  {h.role}"
        )


def _plot_best(result: HeadSearch, att: Attention, path: Path) -> None:
    """The winning head's heatmap on the first text used (the library's `search_figure`)."""
    from attnviz import plots
    from attnviz.plots.heatmaps import search_figure

    plots.save(search_figure(result, att), path)


# -- heads -------------------------------------------------------------------------------------


@command("heads", rich_help_panel=HEADS)
def heads_cmd(
    text: TextArg = None,
    file: FileOpt = None,
    texts: TextsOpt = None,
    induction: Annotated[
        bool,
        typer.Option("--induction", help="Run the induction-head test (causal models) instead of patterns."),
    ] = False,
    seq_len: Annotated[
        int, typer.Option("--seq-len", metavar="N", help="--induction: random tokens per copy.", min=2)
    ] = 50,
    batch: Annotated[
        int, typer.Option("--batch", metavar="N", help="--induction: how many random sequences.", min=1)
    ] = 4,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="--induction: random seed.")] = 0,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            "-s",
            metavar="SCORE",
            help="Sort by this score, highest first (self, previous, next, first, last_sep, punctuation,"
            " broad, or role: each head's own role score; --induction: induction or duplicate).",
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            "-k",
            metavar="N",
            min=0,
            help="Show the N best: by --sort, else by role score (default: all, in model order; "
            "10 with --induction; 0: all).",
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            metavar="0-1",
            help="A pattern score from which the head is named by that pattern.",
        ),
    ] = 0.5,
    broad_threshold: Annotated[
        float,
        typer.Option(
            "--broad-threshold", metavar="0-1", help="The broad score from which a head is 'broad'."
        ),
    ] = 0.8,
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    special: SpecialOpt = True,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
    plot: PlotOpt = None,
    ablate: AblateOpt = False,
) -> None:
    """Score every head on the classic patterns and name its role; or find induction heads."""
    from attnviz.heads.patterns import check_sort, check_thresholds, head_patterns

    _check_plot(plot)
    layer_list = parse_indices(layers, "layers")
    head_list = parse_indices(heads, "heads")
    if induction:
        from attnviz.heads.induction import InductionSettings

        if text is not None or file is not None or texts is not None:
            raise InputError("--induction makes its own random text: drop the text, --file and --texts")
        settings = InductionSettings(seq_len, batch, seed, layer_list, head_list, sort or "induction").check()
        loaded = load(model, device, dtype, trust_remote_code)
        if ablate:  # the LM head's loss needs the model with it
            from attnviz.heads.ablation import for_ablation

            loaded = for_ablation(loaded, trust_remote_code)
        _induction(settings.run(loaded), settings, top, as_json, plot, loaded if ablate else None)
        return
    if ablate:
        raise InputError("--ablate works with --induction (for a text, use attnviz ablate TEXT --scan)")
    check_sort(sort)
    check_thresholds(threshold, broad_threshold)
    items = texts_from(text, file, texts)
    loaded = load(model, device, dtype, trust_remote_code)
    atts = _stream(items, loaded, layer_list, head_list, truncate, view_options(special=special))
    table = head_patterns(atts, threshold, broad_threshold)
    rows = table.rows(sort or ("role" if top else None))[: top or None]  # -k N: the N best
    print_result(rows, as_json, lambda: _print_patterns(table, rows))
    if plot is not None:
        from attnviz.plots import role_map

        where = f"{table.texts} texts" if table.texts > 1 else "one text"
        role_map(
            table.roles,
            table.layers,
            table.heads,
            plot,
            table.role_scores(),
            title=f"{table.model}: head roles ({where})",
        )
        typer.echo(f"wrote {plot}", err=as_json)


_COLUMNS = (("self", "self"), ("previous", "prev"), ("next", "next"), ("first", "first"),
            ("last_sep", "sep"), ("punctuation", "punct"), ("broad", "broad"))  # fmt: skip


def _print_patterns(table: PatternTable, rows: list) -> None:
    spread = table.std is not None
    width = 11 if spread else 6
    if spread:
        typer.echo(f"{table.model}: mean ± standard deviation over {table.texts} texts")
    else:
        typer.echo(f"{table.model}: pattern scores (0-1) on one text")
    head = " ".join(f"{short:>{width}}" for _, short in _COLUMNS)
    typer.echo(f"{'layer':>5} {'head':>4} {head}  role")
    for r in rows:
        if spread:
            cells = " ".join(f"{r.scores[k]:.2f}±{r.spread[k]:.2f}".rjust(width) for k, _ in _COLUMNS)
        else:
            cells = " ".join(f"{r.scores[k]:>{width}.2f}" for k, _ in _COLUMNS)
        typer.echo(f"{r.layer:>5} {r.head:>4} {cells}  {r.role}")
    counts = ", ".join(f"{name} {n}" for name, n in table.counts().items() if n)
    typer.echo(
        f"roles: {counts} (role: a pattern >= {table.threshold:g}, else broad >= {table.broad_threshold:g})"
    )


def _induction(
    result: InductionResult,
    settings: InductionSettings,
    top: int | None,
    as_json: bool,
    plot: Path | None,
    ablate_with: LoadedModel | None = None,
) -> None:
    """Print (or write as JSON) an induction test's ranking, and draw its score map on --plot.

    `ablate_with`: a model with its LM head; each ranked head's ablation effect is shown too.
    """
    by = settings.sort
    ranking = result.ranking(by, 10 if top is None else top or None)
    if ablate_with is not None:
        from attnviz.cli.ablate import induction_effects

        induction_effects(ablate_with, result, ranking, as_json)
    else:
        print_result(ranking, as_json, lambda: _print_induction(result, ranking))
    if plot is not None:
        from attnviz.plots import score_map

        values = result.induction if by == "induction" else result.duplicate
        title = f"{result.model}: {by} scores (chance {result.chance:.3f})"
        score_map(values, result.layers, result.heads, plot, title=title, label=f"{by} score")
        typer.echo(f"wrote {plot}", err=as_json)


def _print_induction(result: InductionResult, ranking: tuple) -> None:
    typer.echo(
        f"{result.model}: {result.batch} sequences of {result.seq_len} random tokens, each repeated twice"
        f" (seed {result.seed}); chance (uniform attention) = {result.chance:.3f}"
    )
    typer.echo(f"{'rank':>4} {'layer':>5} {'head':>4} {'induction':>9} {'duplicate':>9}")
    for s in ranking:
        typer.echo(f"{s.rank:>4} {s.layer:>5} {s.head:>4} {s.induction:>9.3f} {s.duplicate:>9.3f}")
