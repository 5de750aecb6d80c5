"""`attnviz find-head` (heads linking two words) and `attnviz heads` (roles, induction heads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attnviz.cli._app import command
from attnviz.cli._options import (
    DeviceOpt,
    DtypeOpt,
    HeadsOpt,
    JsonOpt,
    LayersOpt,
    ModelOpt,
    TextArg,
    TruncateOpt,
    TrustOpt,
    load,
    print_json,
    read_text,
)
from attnviz.selection import parse_indices

if TYPE_CHECKING:
    from attnviz.extraction import Attention
    from attnviz.induction import InductionResult
    from attnviz.patterns import PatternTable
    from attnviz.search import HeadSearch

TextsOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="Read texts from this file, one per line (several lines: scores are averaged over them).",
    ),
]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Save a figure here (.png, .svg or .pdf).")]
AblateOpt = Annotated[
    bool,
    typer.Option(
        "--ablate",
        help="Also zero-ablate each head and show the effect on the prediction (see attnviz ablate).",
    ),
]


def _check_plot(plot: Path | None) -> None:
    """Fail on a bad --plot extension before the model loads."""
    if plot is not None:
        from attnviz.outputs import image_format

        image_format(plot)


def texts_from(text: str | None, file: Path | None) -> list[str]:
    """One text from the argument, or one per non-empty line of --file / standard input."""
    if text is not None and text != "-" and file is not None:
        from attnviz.errors import InputError

        raise InputError("give the text or --file, not both")
    if text is not None and text != "-":
        return [text]
    lines = [line.strip() for line in read_text(text, file).splitlines()]
    return [line for line in lines if line]


def _stream(
    texts: list[str],
    loaded: object,
    layers: list[int] | None,
    heads: list[int] | None,
    truncate: bool,
    chunk: int = 32,
) -> Iterator[Attention]:
    """Extract `chunk` texts at a time, so a long --file never holds every tensor at once."""
    from attnviz.extraction import extract_batch

    for start in range(0, len(texts), chunk):
        yield from extract_batch(
            texts[start : start + chunk], loaded, layers=layers, heads=heads, truncate=truncate
        )


# -- find-head ---------------------------------------------------------------------------------


@command("find-head")
def find_head_cmd(
    a: Annotated[str, typer.Argument(help="First word (any case, any subword split) or @N token position.")],
    b: Annotated[str, typer.Argument(help="Second word or @N token position.")],
    text: Annotated[str | None, typer.Option("--text", "-t", help="The text (else --file or stdin).")] = None,
    file: TextsOpt = None,
    occurrence: Annotated[
        str | None,
        typer.Option(
            "--occurrence",
            "-n",
            help="Which occurrence: N (both words), N,M (A then B) or all (default: the first of each).",
        ),
    ] = None,
    direction: Annotated[
        str,
        typer.Option(
            "--direction", "-d", help="both (the larger of A->B and B->A), a2b (A looks at B) or b2a."
        ),
    ] = "both",
    top: Annotated[int, typer.Option("--top", "-k", help="How many heads to show (0: all).")] = 5,
    layer: Annotated[
        str | None,
        typer.Option("--layer", "-l", help="Only these layers: 3, 0,2 or 1-3 (negative: from the end)."),
    ] = None,
    model: ModelOpt = "minilm",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
    plot: PlotOpt = None,
    ablate: AblateOpt = False,
) -> None:
    """Rank every layer and head by how strongly words A and B attend to each other."""
    from attnviz.errors import InputError
    from attnviz.search import DIRECTIONS, find_heads, parse_occurrence

    if direction not in DIRECTIONS:
        raise InputError(f"unknown --direction '{direction}': use {', '.join(DIRECTIONS)}")
    if top < 0:
        raise InputError("--top must be 0 (all) or more")
    occ = parse_occurrence(occurrence)
    _check_plot(plot)
    texts = texts_from(text, file)
    if not texts:
        raise InputError("no text given: pass --text, --file or standard input")
    loaded = load(model, device, dtype, trust_remote_code)
    if ablate:  # the model with its LM head, for extraction and ablation alike
        from attnviz.ablation import for_ablation

        loaded = for_ablation(loaded, trust_remote_code)
    layer_list = parse_indices(layer, "--layer")
    atts = _stream(texts, loaded, layer_list, None, truncate)
    result = find_heads(atts, a, b, occurrence=occ, direction=direction, top=None if ablate else top or None)
    _say_matches(result, texts, err=as_json)
    if ablate:
        from attnviz.cli.ablate import find_head_effects

        find_head_effects(loaded, result, texts[result.used[0]], truncate, top, as_json)
    elif as_json:
        print_json([h.as_dict() for h in result.ranking])
    else:
        _print_ranking(result)
    if plot is not None:
        from attnviz.extraction import extract

        first = extract(texts[result.used[0]], loaded, layers=layer_list, truncate=truncate)
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
    """The winning head's heatmap on the first text used, with A's and B's tokens highlighted."""
    from attnviz import plots

    best = result.best
    ua, ub = result.units[0]
    fig = plots.heatmap(
        att.head(best.layer, best.head),
        att.labels,
        visible=att.visible(),
        highlight=sorted({*ua.tokens, *ub.tokens}),
        title=f"{att.model} · layer {best.layer} · head {best.head}: "
        f"{ua.label} ↔ {ub.label} (score {best.score:.3f})",
    )
    plots.save(fig, path)


# -- heads -------------------------------------------------------------------------------------


@command("heads")
def heads_cmd(
    text: TextArg = None,
    file: TextsOpt = None,
    induction: Annotated[
        bool,
        typer.Option("--induction", help="Run the induction-head test (causal models) instead of patterns."),
    ] = False,
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="--induction: random tokens per copy.", min=2)
    ] = 50,
    batch: Annotated[int, typer.Option("--batch", help="--induction: how many random sequences.", min=1)] = 4,
    seed: Annotated[int, typer.Option("--seed", help="--induction: random seed.")] = 0,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            "-s",
            help="Sort by this score, highest first (self, previous, next, first, last_sep, punctuation,"
            " broad; --induction: induction or duplicate).",
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", "-k", help="Show this many heads (default: all; 10 with --induction; 0: all)."),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="A pattern score from which it names the head's role.")
    ] = 0.5,
    broad_threshold: Annotated[
        float, typer.Option("--broad-threshold", help="The broad score from which a head is 'broad'.")
    ] = 0.8,
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
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
    from attnviz.errors import InputError

    if top is not None and top < 0:
        raise InputError("--top must be 0 (all) or more")
    _check_plot(plot)
    layer_list = parse_indices(layers, "--layers")
    head_list = parse_indices(heads, "--heads")
    if induction:
        if text is not None or file is not None:
            raise InputError("--induction makes its own random text: drop the text and --file")
        _induction(model, device, dtype, trust_remote_code, seq_len, batch, seed, layer_list, head_list,
                   sort, top, as_json, plot, ablate)  # fmt: skip
        return
    if ablate:
        raise InputError("--ablate works with --induction (for a text, use attnviz ablate TEXT --scan)")
    from attnviz.patterns import PATTERNS, head_patterns

    if sort is not None and sort not in PATTERNS:
        raise InputError(f"unknown --sort '{sort}': use one of {', '.join(PATTERNS)}")
    texts = texts_from(text, file)
    if not texts:
        raise InputError("no text given: pass it as an argument, with --file, or on standard input")
    loaded = load(model, device, dtype, trust_remote_code)
    table = head_patterns(_stream(texts, loaded, layer_list, head_list, truncate), threshold, broad_threshold)
    rows = table.rows(sort)[: top or None]
    if as_json:
        print_json([r.as_dict() for r in rows])
    else:
        _print_patterns(table, rows)
    if plot is not None:
        from attnviz.roles_plot import role_map

        best = _role_scores(table)
        where = f"{table.texts} texts" if table.texts > 1 else "one text"
        role_map(
            table.roles, table.layers, table.heads, plot, best, title=f"{table.model}: head roles ({where})"
        )
        typer.echo(f"wrote {plot}", err=as_json)


def _role_scores(table: PatternTable) -> object:
    """Each head's score on its own role (NaN for mixed), for labelling the role map."""
    import numpy as np

    out = np.full(table.roles.shape, np.nan)
    for name, values in table.mean.items():
        out = np.where(table.roles == name, values, out)
    return out


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
    model: str,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    seq_len: int,
    batch: int,
    seed: int,
    layers: list[int] | None,
    heads: list[int] | None,
    sort: str | None,
    top: int | None,
    as_json: bool,
    plot: Path | None,
    ablate: bool = False,
) -> None:
    from attnviz.errors import InputError
    from attnviz.induction import SCORES, induction_scores

    by = sort or "induction"
    if by not in SCORES:
        raise InputError(f"unknown --sort '{by}' with --induction: use induction or duplicate")
    loaded = load(model, device, dtype, trust_remote_code)
    result = induction_scores(loaded, seq_len=seq_len, batch=batch, seed=seed, layers=layers, heads=heads)
    ranking = result.ranking(by, 10 if top is None else top or None)
    if ablate:
        from attnviz.ablation import for_ablation
        from attnviz.cli.ablate import induction_effects

        induction_effects(for_ablation(loaded, trust_remote_code), result, ranking, as_json)
    elif as_json:
        print_json([s.as_dict() for s in ranking])
    else:
        _print_induction(result, ranking)
    if plot is not None:
        from attnviz.roles_plot import score_map

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
