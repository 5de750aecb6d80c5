"""`attnviz serve`: the explorer as a local web app with the models loaded once."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Annotated

import typer

from attnviz.cli._app import EXPLORE, command
from attnviz.cli._options import DeviceOpt, DtypeOpt, TrustOpt, load


class StderrHandler(logging.StreamHandler):
    """Log lines go to whatever `sys.stderr` is when they are written, not when serving began (a
    test runner's captured stream is closed by the time a later server logs)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ sets it: ignored
        pass


@command("serve", rich_help_panel=EXPLORE)
def serve_cmd(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to serve (alias, hub id, folder or .gguf); repeat it for several (default: minilm).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8000,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Serve the explorer and a JSON API (attention, find-head, heatmap PNG) on a local web page;
    Ctrl-C stops it."""
    from attnviz.server.app import bind, create_app, log, serve

    if not log.handlers:  # one line per request on stderr
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    names = list(dict.fromkeys(model or ["minilm"]))
    sock = bind(host, port)
    loaded, took = {}, []
    try:  # every model loads before any "loaded" line: a failure is the one line printed
        for name in names:
            start = time.perf_counter()
            loaded[name] = load(name, device, dtype, trust_remote_code)
            took.append(f"loaded {name} in {time.perf_counter() - start:.1f} s")
    except BaseException:
        sock.close()
        raise
    for line in took:
        typer.echo(line, err=True)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"serving on http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops)", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        serve(create_app(loaded), sock, host)
    typer.echo("stopped", err=True)
