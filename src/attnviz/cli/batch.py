"""`attnviz batch`: per-head statistics over a corpus, streamed to Parquet (see attnviz.batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from attnviz.cli._app import CORPORA, command
from attnviz.cli._options import DeviceOpt, DtypeOpt, HeadsOpt, JsonOpt, LayersOpt, ModelOpt
from attnviz.cli._output import print_result
from attnviz.selection import parse_indices

# Every option defaults to None, "not given", so a value from --config is only overridden when the
# option is actually typed.
_Flag = Annotated[bool | None, typer.Option(show_default=False)]


@command("batch", rich_help_panel=CORPORA)
def batch_cmd(
    input: Annotated[
        str, typer.Argument(help="Corpus: .txt (a text per line), .jsonl, .csv, .parquet (.gz too), or -.")
    ],
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created if missing).")],
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML file, or a name: configs/NAME.toml here, else a shipped one (coreference, default).",
        ),
    ] = None,
    model: ModelOpt = None,  # type: ignore[assignment]
    device: DeviceOpt = None,  # type: ignore[assignment]
    dtype: DtypeOpt = None,  # type: ignore[assignment]
    trust_remote_code: Annotated[
        bool | None, typer.Option("--trust-remote-code", help="Allow a model's own Python code to run.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Torch CPU threads (default: the CPUs other work leaves free)."),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="auto, txt, jsonl, csv or parquet (auto: file name).")
    ] = None,
    field: Annotated[
        str | None, typer.Option("--field", help="JSON key holding the text (default: text).")
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", help="CSV / Parquet column holding the text (default: text).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Texts per batch (default: 32).")
    ] = None,
    layers: LayersOpt = None,
    heads: HeadsOpt = None,
    stats: Annotated[
        str | None,
        typer.Option(
            "--stats",
            help="Statistics to keep: entropy,max_weight,special,patterns (the default), norm (value-norm "
            "weighting, off by default), or all, none.",
        ),
    ] = None,
    probe: Annotated[
        list[str] | None,
        typer.Option(
            "--probe",
            "-p",
            help="Token pair A:B (alternatives he|she:Emily; named it=it:trophy); repeat for more. "
            "Replaces the config's probes.",
        ),
    ] = None,
    truncate: Annotated[
        bool | None,
        typer.Option("--truncate/--no-truncate", help="Cut texts over the model's limit (default: reject)."),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Token limit below the model's own.")
    ] = None,
    save_attention: Annotated[
        bool | None,
        typer.Option(
            "--save-attention/--no-save-attention", help="Also write raw tensors (safetensors shards)."
        ),
    ] = None,
    plots: Annotated[bool | None, typer.Option("--plots/--no-plots", help="Write summary plots.")] = None,
    texts_table: Annotated[
        bool | None, typer.Option("--texts/--no-texts", help="Keep the texts table (_texts/).")
    ] = None,
    texts_per_part: Annotated[
        int | None, typer.Option("--texts-per-part", help="Texts per committed Parquet part (default: 1024).")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="local (this process, the default) or ray (actors on a Ray cluster)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Ray actors, each loading the model once (default: CPUs / threads)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster: auto or ray://HOST:PORT (default: start a local one)."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run that stopped.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in the output folder.")
    ] = False,
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Print the merged configuration as TOML and exit.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Record per-head statistics (entropy, patterns, probes...) for every text of a corpus."""
    from attnviz.batch.config import make_config, parse_probe

    for value, option in ((layers, "layers"), (heads, "heads")):
        parse_indices(value, option)  # extract's one-line errors, naming the option ("all" stays)
    cfg = make_config(
        config,
        model=model,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        threads=threads,
        format=fmt,
        field=field,
        column=column,
        batch_size=batch_size,
        layers=layers,
        heads=heads,
        statistics=stats,
        probes=tuple(parse_probe(p) for p in probe) if probe else None,
        truncate=truncate,
        max_length=max_length,
        save_attention=save_attention,
        plots=plots,
        keep_texts=texts_table,
        texts_per_part=texts_per_part,
        engine=engine,
        workers=workers,
        address=address,
    )
    if show_config:
        typer.echo(cfg.to_toml(), nl=False)
        return
    _run(input, outdir, cfg, resume, overwrite, as_json)


def _run(source: str, outdir: Path, cfg: Any, resume: bool, overwrite: bool, as_json: bool) -> None:
    import sys

    from attnviz.batch import OutputFolder, check_input
    from attnviz.batch.run import already_complete
    from attnviz.cli._options import load

    check_input(source, cfg)
    if cfg.engine == "ray":
        from attnviz.batch.ray_engine import import_ray

        import_ray()  # Ray missing: one line before any folder is made
    # the folder is checked, created and locked before the model loads: a bad -o costs nothing
    with OutputFolder(outdir, cfg, source, resume, overwrite) as folder:
        if (done := already_complete(folder, source, cfg)) is not None:  # no model to load
            typer.echo(f"note: {outdir} holds this run, complete; nothing left to do", err=True)
            _report(done, outdir, as_json)
            return
        if source == "-" and sys.stdin.isatty():
            typer.echo("reading texts from standard input (end with Ctrl-D)...", err=True)
        # the Ray engine loads the model in each worker, not here
        loaded = (
            None if cfg.engine == "ray" else load(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
        )
        result = _analyse(source, cfg, folder, loaded)
    _report(result, outdir, as_json)


def _analyse(source: str, cfg: Any, folder: Any, loaded: Any) -> Any:
    """Run the analysis; Ctrl-C or kill keeps whole batches and says how to resume."""
    import signal

    from attnviz.batch import run_batch_analysis

    outdir = folder.outdir

    def on_term(signum: int, frame: Any) -> None:  # kill: stop like Ctrl-C, keeping whole batches
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    bar = _ProgressBar()
    try:
        with bar:
            return run_batch_analysis(source, cfg, outdir, model=loaded, progress=bar.update, folder=folder)
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: every text committed so far is in {outdir}; "
            "run the same command with --resume to continue",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(result: Any, outdir: Path, as_json: bool) -> None:
    before = f" ({result.processed} now, {result.resumed} before)" if result.resumed else ""
    rejects = (
        f", {result.total_rejected} rejected (see {outdir / '_rejects.jsonl'})"
        if result.total_rejected
        else ", 0 rejected"
    )
    print_result(
        result,
        as_json,
        f"done: {result.total_processed} texts processed{before}{rejects} in {result.seconds:.1f} s "
        f"({result.texts_per_second:.1f} texts/s) -> {outdir}",
    )


class _ProgressBar:
    """A rich progress bar on an interactive stderr (count, rate, ETA); silent otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>6.1f} texts/s"),
                TextColumn("{task.fields[rejected]} rejected"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.__enter__()
        return self

    def update(self, p: Any) -> None:
        if self.progress is None:
            return
        import time

        if self.task is None:
            self.start = time.perf_counter()
            self.task = self.progress.add_task("batch", total=p.total, completed=p.done, rate=0.0, rejected=0)
        elapsed = time.perf_counter() - self.start
        rate = p.processed / elapsed if elapsed > 0 else 0.0
        self.progress.update(self.task, completed=p.done, total=p.total, rate=rate, rejected=p.rejected)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
