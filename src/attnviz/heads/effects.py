"""Ablation effects beside attention rankings: does a head that attends also matter?

`find-head --ablate` and `heads --induction --ablate` compare a ranking by attention (search.py,
induction.py) with a ranking by ablation effect (ablation.py); the comparisons live here so the
commands only print them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attnviz.heads.ablation import HeadScan
    from attnviz.heads.induction import InductionResult
    from attnviz.heads.search import HeadSearch
    from attnviz.models.loading import LoadedModel


@dataclass(frozen=True)
class SearchEffects:
    """Each ranked head's ablation effect on B, so attention scores can be checked against effects."""

    scan: HeadScan  # every head ablated alone, measured at B
    delta: tuple[float, ...]  # per head of the search's ranking, in its order: after - before
    rho: float  # Spearman correlation of attention score and |delta| over the ranking


@dataclass(frozen=True)
class InductionEffects:
    """The repeat-loss rise of each head beside its induction score: do induction heads matter?"""

    scan: HeadScan  # every head zeroed alone on the induction test's sequences
    rise: dict[tuple[int, int], float]  # (layer, head) -> loss rise
    overlap: int  # heads in both top-k lists
    k: int


def search_effects(
    loaded: LoadedModel,
    result: HeadSearch,
    text: str,
    truncate: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SearchEffects:
    """Ablate every head on `text`, measuring B (as the search found it), and correlate with the scores."""
    import numpy as np

    from attnviz.heads.ablation import scan_heads, spearman

    ub = result.units[0][1]
    scan = scan_heads(
        loaded, text, target=result.b, occurrence=ub.occurrence or None, truncate=truncate, progress=progress
    )
    delta = tuple(float(scan.delta[h.layer, h.head]) for h in result.ranking)
    effect = np.array([scan.effect[h.layer, h.head] for h in result.ranking], dtype=np.float64)
    rho = spearman(np.array([h.score for h in result.ranking]), effect)
    return SearchEffects(scan=scan, delta=delta, rho=rho)


def induction_effects(
    loaded: LoadedModel,
    result: InductionResult,
    k: int = 10,
    progress: Callable[[int, int], None] | None = None,
) -> InductionEffects:
    """Zero each head on the same repeated sequences as `result`; overlap of the top-k by each measure."""
    import numpy as np

    from attnviz.heads.ablation import repeat_loss_scan, top_overlap

    scan = repeat_loss_scan(
        loaded, seq_len=result.seq_len, batch=result.batch, seed=result.seed, progress=progress
    )
    rise = {(r.layer, r.head): r.delta for r in scan.ranking()}
    sub = scan.delta[np.ix_(list(result.layers), list(result.heads))]
    overlap, used = top_overlap(result.induction, sub, k)
    return InductionEffects(scan=scan, rise=rise, overlap=overlap, k=used)
