"""`attnviz attribute` (direct logit attribution) and `attnviz lens` (the logit lens): thin wrappers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attnviz.cli._app import SOURCE, command
from attnviz.cli._options import (
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    JsonOpt,
    ModelOpt,
    PlotOpt,
    TextArg,
    TrustOpt,
    load,
    read_text,
)
from attnviz.cli._output import print_result
from attnviz.errors import param

if TYPE_CHECKING:
    from attnviz.analyses.attribution import Attribution
    from attnviz.analyses.lens import Lens

AnswerOpt = Annotated[
    str | None,
    typer.Option(
        "--answer",
        metavar="WORD",
        help="The predicted word to explain: its first token as the tokenizer makes it after the text"
        " (' Mary' after '... to'); it must be one token.",
    ),
]
WrongOpt = Annotated[
    str | None,
    typer.Option("--wrong", metavar="WORD", help="Explain the logit difference answer - wrong instead."),
]
DataOutOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", help="Save the result to a .safetensors or .npz file."),
]


def _load_with_head(model: str, device: str, dtype: str, trust: bool, quiet: bool, purpose: str) -> Any:
    """The model with the LM head attribute and the lens read through (one line if it has none)."""
    from attnviz.analyses.residual import head_task, with_head

    return with_head(load(model, device, dtype, trust, quiet=quiet, task=head_task(model)), purpose)


def _checks(plot: Path | None, output: Path | None) -> None:
    """--plot and -o checked before any model loads."""
    from attnviz.outputs import check_data_output, check_output

    check_output(plot, param("plot"))
    check_data_output(output)


@command("attribute", rich_help_panel=SOURCE)
def attribute_cmd(
    text: TextArg = None,
    file: FileOpt = None,
    answer: AnswerOpt = None,
    wrong: WrongOpt = None,
    position: Annotated[
        int,
        typer.Option(
            "--position", metavar="N", help="Token whose prediction is explained (default: the last)."
        ),
    ] = -1,
    top: Annotated[int, typer.Option("--top", "-k", metavar="N", min=1, help="Components listed.")] = 10,
    plot: PlotOpt = None,
    output: DataOutOpt = None,
    model: ModelOpt = "smollm2",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Direct logit attribution: each head's, MLP's and the embeddings' share of the answer's logit."""
    from attnviz.analyses.attribution import PURPOSE, attribute, check_answers

    check_answers(answer, wrong)
    _checks(plot, output)
    body = read_text(text, file)
    loaded = _load_with_head(model, device, dtype, trust_remote_code, as_json, PURPOSE)
    result = attribute(body, loaded, answer=answer or "", wrong=wrong, position=position)
    print_result(result, as_json, lambda: _print_attribution(result, top))
    _write(result, plot, output, as_json)


@command("lens", rich_help_panel=SOURCE)
def lens_cmd(
    text: TextArg = None,
    file: FileOpt = None,
    k: Annotated[
        int, typer.Option("-k", "--top", metavar="N", help="Tokens kept per stage and position.")
    ] = 5,
    answer: AnswerOpt = None,
    plot: PlotOpt = None,
    output: DataOutOpt = None,
    model: ModelOpt = "smollm2",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The logit lens: the top tokens of the residual stream after each layer, at every position."""
    from attnviz.analyses.lens import PURPOSE, check_options, lens

    check_options(k, answer)
    _checks(plot, output)
    body = read_text(text, file)
    loaded = _load_with_head(model, device, dtype, trust_remote_code, as_json, PURPOSE)
    result = lens(body, loaded, k=k, answer=answer)
    print_result(result, as_json, lambda: _print_lens(result))
    _write(result, plot, output, as_json)


def _write(result: Attribution | Lens, plot: Path | None, output: Path | None, as_json: bool) -> None:
    from attnviz.analyses.attribution import Attribution
    from attnviz.plots.attribution import attribution_map, lens_map

    if plot is not None:
        (attribution_map if isinstance(result, Attribution) else lens_map)(result, plot)  # type: ignore[operator]
        typer.echo(f"wrote {plot}", err=as_json)
    if output is not None:
        result.save(output)
        typer.echo(f"wrote {output}", err=as_json)


def _print_attribution(r: Attribution, top: int) -> None:
    what = f"'{r.answer}'" + (f" - '{r.wrong}'" if r.wrong is not None else "")
    typer.echo(
        f"{r.model}: direct logit attribution of {what} after token {r.position} ('{r.tokens[r.position]}')"
    )
    typer.echo(f"logit{' difference' if r.wrong is not None else ''}: {r.logit:+.4f}")
    typer.echo(f"sum of the {len(r.names)} components: {r.total:+.4f}")
    typer.echo(f"{'component':>12} {'value':>10}")
    for name, value in r.top(top):
        typer.echo(f"{name:>12} {value:>+10.4f}")
    shown = {n for n, _ in r.top(top)}
    rest = ", ".join(f"{n} {v:+.4f}" for n, v in r.others.items() if n not in shown)
    if rest:
        typer.echo(f"also: {rest}")


def _print_lens(r: Lens) -> None:
    pos = len(r.tokens) - 1
    typer.echo(f"{r.model}: logit lens at the last position ('{r.tokens[pos]}'), top {r.k} per stage")
    has_answer = r.answer_rank is not None and r.answer_prob is not None
    extra = f" {'rank':>6} {'p(' + (r.answer or '') + ')':>10}" if has_answer else ""
    typer.echo(f"{'stage':>10}  {'top tokens':<48}{extra}")
    for i, stage in enumerate(r.stages):
        tops = " ".join(f"{r.label(i, pos, j)!r}:{r.top_probs[i, pos, j]:.2f}" for j in range(min(r.k, 3)))
        line = f"{stage:>10}  {tops:<48}"
        if has_answer:
            line += f" {int(r.answer_rank[i, pos]):>6} {float(r.answer_prob[i, pos]):>10.4f}"  # type: ignore[index]
        typer.echo(line)
