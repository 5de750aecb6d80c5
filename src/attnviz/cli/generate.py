"""`attnviz generate`: continue a prompt and record what each new token's step read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnviz.cli._app import GENERATE, command
from attnviz.cli._options import (
    AggregateOpt,
    CmapOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    HeadsOpt,
    JsonOpt,
    LayersOpt,
    ModelOpt,
    OverOpt,
    PlotOpt,
    SpecialOpt,
    TrustOpt,
    load,
    read_text,
    view_options,
)
from attnviz.cli._output import print_result
from attnviz.errors import param
from attnviz.selection import parse_indices

PromptArg = Annotated[
    str | None, typer.Argument(help="The prompt; omit it (or give -) to read --file or standard input.")
]


@command("generate", rich_help_panel=GENERATE)
def generate_cmd(
    prompt: PromptArg = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", metavar="N", help="Stop after N new tokens (or at EOS).")
    ] = 20,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[
        float, typer.Option("--temperature", metavar="T", help="Sampling temperature (with --sample).")
    ] = 1.0,
    top_p: Annotated[
        float, typer.Option("--top-p", metavar="P", help="Nucleus sampling: keep the top P of the mass.")
    ] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Seed for --sample.")] = None,
    chat: Annotated[
        bool,
        typer.Option("--chat", help="Wrap the prompt in the tokenizer's chat template (instruct models)."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write the rows to .safetensors or .npz here."),
    ] = None,
    plot: PlotOpt = None,
    stream: Annotated[
        str,
        typer.Option("--stream", metavar="self|cross", help="What --plot draws (cross: encoder-decoder)."),
    ] = "self",
    view: Annotated[
        Path | None,
        typer.Option("--view", metavar="FILE", help="Also write the explorer's generation mode (.html)."),
    ] = None,
    rollout: Annotated[
        bool,
        typer.Option(
            "--rollout", help="Attention rollout through the recorded layers instead of raw weights."
        ),
    ] = False,
    file: FileOpt = None,
    model: ModelOpt = "smollm2",
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    special: SpecialOpt = True,
    aggregate: AggregateOpt = None,
    over: OverOpt = "heads",
    cmap: CmapOpt = "viridis",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Continue a prompt with the model's own generate and record, for each new token, the attention
    row of the step that wrote it; prints the continuation."""
    from attnviz.generation.options import GenerateOptions
    from attnviz.generation.run import generation_task
    from attnviz.outputs import check_data_output, check_output
    from attnviz.views.generation import check_view_output

    # everything the user typed is checked before the model loads
    options = GenerateOptions(
        max_new_tokens=max_new_tokens, layers=parse_indices(layers, "layers"),
        heads=parse_indices(heads, "heads"), sample=sample, temperature=temperature, top_p=top_p,
        seed=seed, chat=chat, rollout=rollout, view=view_options("attention", special, aggregate, over),
        stream=stream,
    ).check()  # fmt: skip
    body = read_text(prompt, file)  # refuses an empty prompt
    check_data_output(output)
    check_output(plot, param("plot"))
    check_view_output(view)
    task = generation_task(model)
    loaded = load(model, device, dtype, trust_remote_code, quiet=as_json, task=task)
    gen, streamed = _generate(body, loaded, options)
    written = _write(gen, output, plot, stream, cmap, view)
    data = {
        "model": gen.model,
        "prompt": gen.prompt,
        "generated": gen.text,
        "generated_ids": gen.generated_ids,
        "tokens": gen.tokens,
        "prompt_length": gen.prompt_length,
        "shapes": {name: list(a.shape) for name, a in gen.streams.items()},
        "notes": gen.notes,
        "output": output,
        "plot": plot,
        "view": view,
    }
    print_result(data, as_json, lambda: _print_continuation(gen.text, streamed, written))


def _print_continuation(text: str, streamed: str | None, written: list[Path]) -> None:
    if streamed is None:
        typer.echo(text)
    else:  # what streamed is on the screen already: the rest (normally only the line's end)
        rest = text[len(streamed) :] if text.startswith(streamed) else "\n" + text
        typer.echo(rest)
    for path in written:
        typer.echo(f"wrote {path}", err=True)


def _generate(body: str, loaded, options) -> tuple:
    """The generation as shown, and the text already shown: on a terminal the continuation streams
    to stdout as it grows (or, with stdout redirected, a bar counts the tokens on stderr)."""
    import sys

    from attnviz.cli._options import spinner_wanted
    from attnviz.cli._progress import progress_bar, stdout_terminal
    from attnviz.generation.options import generate_shown

    shown: list[str] = []
    if spinner_wanted() and stdout_terminal():

        def show(piece: str) -> None:
            shown.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()

        return generate_shown(body, loaded, options, on_text=show), "".join(shown)
    with progress_bar("generating", "tokens") as progress:
        return generate_shown(body, loaded, options, progress=progress), None


def _write(
    gen, output: Path | None, plot: Path | None, stream: str, cmap: str, view: Path | None
) -> list[Path]:
    """The files asked for: data, heatmap, explorer page."""
    written = []
    if output is not None:
        written.append(gen.save(output))
    if plot is not None:
        from attnviz import plots
        from attnviz.plots.generation import generation_picture

        written.append(plots.save(generation_picture(gen, stream, cmap=cmap), plot))
    if view is not None:
        from attnviz.views.generation import write_generation_html

        written.append(write_generation_html(gen, view))
    return written
