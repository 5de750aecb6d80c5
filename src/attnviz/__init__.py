"""attnviz: see what a transformer attends to.

The public API is re-exported lazily so `import attnviz` (and `attnviz --help`) stays fast:
torch and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "attnviz.models.loading",
    "resolve_model": "attnviz.models.loading",
    "LoadedModel": "attnviz.models.loading",
    "LoadNotice": "attnviz.models.loading",
    "BUNDLED": "attnviz.models.loading",
    "extract": "attnviz.extraction",
    "extract_batch": "attnviz.extraction",
    "generate": "attnviz.generation.run",
    "Generation": "attnviz.generation.run",
    "Attention": "attnviz.attention",
    "QKV": "attnviz.attention",
    "Encoded": "attnviz.attention",
    "AttnvizError": "attnviz.errors",
    "find_heads": "attnviz.heads.search",
    "HeadScore": "attnviz.heads.search",
    "pattern_scores": "attnviz.heads.patterns",
    "head_patterns": "attnviz.heads.patterns",
    "row_entropy": "attnviz.heads.patterns",
    "induction_scores": "attnviz.heads.induction",
    "run_batch_analysis": "attnviz.batch",
    "iter_records": "attnviz.batch",
    "BatchConfig": "attnviz.batch.config",
    "show": "attnviz.views.notebook",
    "ablate": "attnviz.heads.ablation",
    "scan_heads": "attnviz.heads.ablation",
    "attribute": "attnviz.analyses.attribution",
    "Attribution": "attnviz.analyses.attribution",
    "lens": "attnviz.analyses.lens",
    "Lens": "attnviz.analyses.lens",
    "patch": "attnviz.heads.patching",
    "Patching": "attnviz.heads.patching",
    "path_patch": "attnviz.heads.path_patching",
    "PathPatching": "attnviz.heads.path_patching",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.analyses.attribution import Attribution, attribute  # noqa: F401
    from attnviz.analyses.lens import Lens, lens  # noqa: F401
    from attnviz.attention import QKV, Attention, Encoded  # noqa: F401
    from attnviz.batch import iter_records, run_batch_analysis  # noqa: F401
    from attnviz.batch.config import BatchConfig  # noqa: F401
    from attnviz.errors import AttnvizError  # noqa: F401
    from attnviz.extraction import extract, extract_batch  # noqa: F401
    from attnviz.generation.run import Generation, generate  # noqa: F401
    from attnviz.heads.ablation import ablate, scan_heads  # noqa: F401
    from attnviz.heads.induction import induction_scores  # noqa: F401
    from attnviz.heads.patching import Patching, patch  # noqa: F401
    from attnviz.heads.path_patching import PathPatching, path_patch  # noqa: F401
    from attnviz.heads.patterns import head_patterns, pattern_scores, row_entropy  # noqa: F401
    from attnviz.heads.search import HeadScore, find_heads  # noqa: F401
    from attnviz.models.loading import BUNDLED, LoadedModel, LoadNotice, load_model, resolve_model  # noqa: F401
    from attnviz.views.notebook import show  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnviz' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
