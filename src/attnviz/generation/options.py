"""`generate`'s options and what is shown of its result: one object, checked once before a model loads.

`GenerateOptions.check()` holds every rule of `attnviz generate`'s and /api/generate's arguments;
`generate_shown` takes it whole (the CLI and the server only build it), as `extract_shown` does for
`ExtractOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from attnviz.analyses.transform import ViewOptions
from attnviz.errors import InputError, param
from attnviz.generation.run import check_settings, generate
from attnviz.generation.transform import check_stream

if TYPE_CHECKING:
    from attnviz.generation.run import Generation
    from attnviz.models.loading import LoadedModel


@dataclass(frozen=True)
class GenerateOptions:
    """How to generate and what to show of it, checked once by `check()`, taken whole by `generate_shown`."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    layers: tuple[int, ...] | None = None  # None: all
    heads: tuple[int, ...] | None = None
    sample: bool = False  # greedy unless set; temperature, top_p and seed shape sampling only
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    chat: bool = False  # wrap the prompt in the tokenizer's chat template
    rollout: bool = False  # show attention rollout through the recorded layers (it fuses the heads)
    view: ViewOptions = field(default_factory=ViewOptions)  # hidden special tokens, pooling
    stream: str = "self"  # what a picture draws: self, or cross (an encoder-decoder's)

    def check(self) -> GenerateOptions:
        """InputError (one line, naming the option) on the first bad value; returns self."""
        check_settings(
            self.max_new_tokens, self.min_new_tokens, self.sample, self.temperature, self.top_p, self.seed
        )
        self.view.check()
        if self.view.weighting != "attention":
            raise InputError(f"a generation keeps the attention weights only: drop {param('weighting')}")
        check_stream(self.stream)
        if self.rollout and (self.view.aggregate or self.heads is not None or self.view.hide_special):
            special = param("hide_special", True, flag="--no-special")
            raise InputError(
                f"{param('rollout', True)} fuses every head itself: drop {param('aggregate')},"
                f" {param('heads')} and {special}"
            )
        return self


def generate_shown(
    prompt: str,
    model: str | LoadedModel | None,
    options: GenerateOptions,
    progress: Callable[[int, int], None] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """`generate` then what `options` show of it: rolled out, or special tokens hidden and pooled.

    `progress` and `on_text` are `generate`'s (a bar; the continuation as it grows).
    """
    o = options.check()
    gen = generate(
        prompt, model, max_new_tokens=o.max_new_tokens, min_new_tokens=o.min_new_tokens,
        layers=o.layers, heads=o.heads, sample=o.sample, temperature=o.temperature, top_p=o.top_p,
        seed=o.seed, chat=o.chat, prompt_rows=o.rollout, progress=progress, on_text=on_text,
    )  # fmt: skip
    if o.rollout:
        return gen.rolled_out()
    return gen.transformed(o.view.hide_special, o.view.aggregate, o.view.over)
