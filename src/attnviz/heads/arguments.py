"""The model argument of the heads layer's public functions (`ablate`, `scan_heads`): a model name,
a path or a LoadedModel alike, and a TypeError naming the parameter for anything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from attnviz.models.architecture import require_editable
from attnviz.models.loading import LoadedModel, as_loaded

if TYPE_CHECKING:
    from attnviz.models.loading import LoadedModel


def ablation_model(
    loaded: object, with_head: Callable[[LoadedModel], LoadedModel], name: str = "loaded"
) -> LoadedModel:
    """A LoadedModel as given (it must allow ablation); a name or a path loaded, then given the LM
    head its measure needs by `with_head` (ablation's `for_ablation`); anything else a TypeError
    naming the parameter."""

    if isinstance(loaded, LoadedModel):
        require_editable(loaded, "ablation")
        return loaded
    return with_head(as_loaded(loaded, name))
