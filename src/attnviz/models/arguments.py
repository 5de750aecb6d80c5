"""The model argument every public function takes: a model name, a path (str or os.PathLike) or a
LoadedModel alike; anything else is a TypeError naming the parameter, never an AttributeError from
deep inside (`extract(text, model=123)`)."""

from __future__ import annotations

import os


def model_spec(model: object, name: str = "model") -> str | None:
    """A model argument as `resolve_model` takes it: a name or a path (str or os.PathLike), or
    None for the default. TypeError naming the parameter for anything else (`model=123`), never an
    AttributeError from deep inside."""
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, os.PathLike):
        return os.fspath(model)  # type: ignore[return-value]
    raise TypeError(
        f"{name} must be a model name, a path or a LoadedModel (from load_model), not {type(model).__name__}"
    )
