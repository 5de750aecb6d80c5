"""`serve`'s /api/generate: run the model's `generate` for a request and answer the page's data."""

from __future__ import annotations

from typing import Any

from attnviz.errors import InputError, param
from attnviz.views.generation import DEFAULT_MAX_MB, generation_data

MAX_SERVED_TOKENS = 256  # new tokens one request may ask for


def serve_generation(pool: Any, p: Any, max_mb: float | None = DEFAULT_MAX_MB) -> dict[str, Any]:
    """`serve`'s /api/generate: text, model, max_new_tokens, layers, heads, chat, special, aggregate.

    Builds the `GenerateOptions` `attnviz generate` builds (their `check()` says what is wrong);
    only the cap on new tokens is the server's own."""
    from attnviz.generation.options import GenerateOptions, generate_shown
    from attnviz.generation.run import load_for_generation

    text, name = p.text(), pool.name(p.q.get("model"))
    n = p.int("max_new_tokens", 20)
    options = GenerateOptions(
        max_new_tokens=n, layers=p.indices("layers"), heads=p.indices("heads"), chat=p.flag("chat"),
        view=p.view_options(),
    ).check()  # fmt: skip
    if options.max_new_tokens > MAX_SERVED_TOKENS:
        raise InputError(f"{param('max_new_tokens')} {n}: this server makes at most {MAX_SERVED_TOKENS}")
    with pool.turn(name):  # a request given up stops waiting for the model
        loaded = load_for_generation(pool.models[name])  # the LM-head model, loaded once and cached
        gen = generate_shown(text, loaded, options)
    data = generation_data(gen, max_mb)
    data.update(generated_ids=list(gen.generated_ids), kind=gen.kind)
    return data
