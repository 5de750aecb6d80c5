"""`attnviz extract`: attention to a .safetensors/.npz file (-o, or a new one under outputs/);
--json also prints the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from attnviz.analyses.transform import ExtractOptions, extract_shown
from attnviz.cli._app import START, command
from attnviz.cli._options import (
    AddSpecialOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    HeadsOpt,
    JsonOpt,
    LayersOpt,
    ModelOpt,
    SpecialOpt,
    TextArg,
    TruncateOpt,
    TrustOpt,
    WeightingOpt,
    WordsOpt,
    load,
    read_text,
    view_options,
)
from attnviz.cli._output import print_result
from attnviz.selection import parse_indices


@command("extract", rich_help_panel=START)
def extract_cmd(
    text: TextArg = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write .safetensors or .npz here. Default: a new .safetensors file under outputs/.",
        ),
    ] = None,
    file: FileOpt = None,
    model: ModelOpt = "minilm",
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    words: WordsOpt = False,
    special: SpecialOpt = True,
    add_special: AddSpecialOpt = True,
    weighting: WeightingOpt = "attention",
    truncate: TruncateOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="float32, or float16: half the memory and file size; rounds each weight (about 3 digits).",
        ),
    ] = "float32",
    trust_remote_code: TrustOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Extract per-layer, per-head attention for a text and save it with its tokens (and, in the
    file's metadata, how it was made: --weighting, --no-special)."""
    from attnviz.outputs import check_data_output

    # everything the user typed is checked before the model loads (which can take a minute)
    options = ExtractOptions(
        layers=parse_indices(layers, "layers"),
        heads=parse_indices(heads, "heads"),
        words=words,
        special_tokens=add_special,
        truncate=truncate,
        store=store,
        view=view_options(weighting, special, words=words),
    ).check()
    body = read_text(text, file)
    check_data_output(output)
    loaded = load(model, device, dtype, trust_remote_code, quiet=as_json)
    att = extract_shown(body, loaded, options)
    output = _save(att, output, body, loaded.name)
    meta = att.metadata()
    summary = {
        "model": meta["model"],
        "kind": meta["kind"],
        "level": meta["level"],
        "tokens": meta["tokens"],
        "token_ids": meta["token_ids"],
        "pieces": meta["pieces"],
        "layers": meta["layers"],
        "heads": meta["heads"],
        "shapes": {name: list(a.shape) for name, a in att.streams.items()},
        "truncated": meta["truncated"],
        "weighting": meta["weighting"],
        "notes": meta["notes"],
        "output": str(output),
    }
    if as_json:  # the weights too, [layers, heads, q, k] per stream, to 1e-7 (float32 has ~7 digits)
        summary["attention"] = {name: a.astype(float).round(7).tolist() for name, a in att.streams.items()}
    print_result(summary, as_json, lambda: _print_summary(att, summary["shapes"], output))


def _print_summary(att: Any, shapes: dict[str, list[int]], output: Path) -> None:
    if att.truncated:
        typer.echo(f"note: cut {att.truncated} tokens to fit the model's limit", err=True)
    listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
    typer.echo(f"{att.model} ({att.kind}): {att.n_tokens} {att.level}s; attention {listed}")
    typer.echo(f"wrote {output}")


def _save(att: Any, output: Path | None, body: str, model: str) -> Path:
    """Save to `-o`, or to a new file under outputs/ (never overwriting; removed if saving fails)."""
    from attnviz.outputs import OUTPUT_DIR, default_name, reserve, slug

    if output is not None:
        att.save(output)
        return output
    path = reserve(OUTPUT_DIR, default_name("extract", slug(body), model, ext="safetensors"))
    try:
        att.save(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
