"""`serve`'s /api/generate: run the model's `generate` for a request and answer the page's data."""

from __future__ import annotations

from typing import Any

from attnviz.errors import InputError
from attnviz.views.generation import DEFAULT_MAX_MB, generation_data

MAX_SERVED_TOKENS = 256  # new tokens one request may ask for


def serve_generation(pool: Any, p: Any, max_mb: float | None = DEFAULT_MAX_MB) -> dict[str, Any]:
    """`serve`'s /api/generate: text, model, max_new_tokens, layers, heads, chat, special, aggregate."""
    from attnviz.generation.run import generate, load_for_generation

    text, name = p.text(), pool.name(p.q.get("model"))
    n = p.int("max_new_tokens", 20)
    if n is None or not 1 <= n <= MAX_SERVED_TOKENS:
        raise InputError(f"parameter 'max_new_tokens' must be between 1 and {MAX_SERVED_TOKENS}")
    options = p.view_options()
    with pool.turn(name):  # a request given up stops waiting for the model
        loaded = load_for_generation(pool.models[name])  # the LM-head model, loaded once and cached
        gen = generate(
            text,
            loaded,
            max_new_tokens=n,
            layers=p.indices("layers"),
            heads=p.indices("heads"),
            chat=p.flag("chat"),
        )
    gen = gen.transformed(options.hide_special, options.aggregate, options.over)
    data = generation_data(gen, max_mb)
    data.update(generated_ids=list(gen.generated_ids), kind=gen.kind)
    return data
