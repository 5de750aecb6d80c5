"""What `attnviz models` and `attnviz info` report: the bundled aliases, and a loaded model's shape."""

from __future__ import annotations

from dataclasses import dataclass

from attnviz.models import BUNDLED, LoadedModel, bundled_path


@dataclass(frozen=True)
class BundledStatus:
    """A bundled alias and whether its package is installed here."""

    alias: str
    description: str
    installed: bool
    path: str | None
    install: str


def list_bundled() -> list[BundledStatus]:
    """The bundled aliases, without loading anything."""
    out = []
    for alias, info in BUNDLED.items():
        path = bundled_path(alias)
        out.append(
            BundledStatus(alias, info.description, path is not None, str(path) if path else None, info.pip)
        )
    return out


@dataclass(frozen=True)
class ModelInfo:
    """What `attnviz info` prints."""

    name: str
    origin: str
    path: str
    architecture: str
    kind: str
    causal: bool
    layers: int
    heads: int
    kv_heads: int
    head_dim: int | None
    hidden_size: int | None
    max_length: int | None
    parameters: int
    device: str
    dtype: str
    load_seconds: float


def model_info(loaded: LoadedModel) -> ModelInfo:
    """Architecture, sizes and where it was loaded from, read off the loaded model (nothing runs)."""
    config = loaded.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", None)
    head_dim = getattr(text, "head_dim", None) or (hidden // loaded.num_heads if hidden else None)
    return ModelInfo(
        name=loaded.name,
        origin=loaded.source.origin,
        path=loaded.source.path,
        architecture=type(loaded.model).__name__,
        kind=loaded.kind,
        causal=loaded.causal,
        layers=loaded.num_layers,
        heads=loaded.num_heads,
        kv_heads=loaded.num_kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        max_length=loaded.max_length,
        parameters=loaded.num_parameters,
        device=loaded.device,
        dtype=loaded.dtype,
        load_seconds=round(loaded.load_seconds, 3),
    )
