"""Ablation effects beside attention rankings, against the scans and brute-force statistics."""

from __future__ import annotations

import numpy as np
import pytest

TEXT = "The cat sat on the mat, and the cat slept."


def _lm(path: str):
    from attnviz.heads.ablation import for_ablation
    from attnviz.models.loading import load_model

    return for_ablation(load_model(path, device="cpu"))


def test_search_effects_follow_the_ranking_and_correlate_like_pandas(tiny_model_path):
    import pandas as pd

    from attnviz.extraction import extract
    from attnviz.heads.ablation import scan_heads
    from attnviz.heads.effects import search_effects
    from attnviz.heads.search import find_heads

    loaded = _lm(str(tiny_model_path("gpt2")))
    result = find_heads(extract(TEXT, loaded), "cat", "mat", top=None)
    fx = search_effects(loaded, result, TEXT)
    scan = scan_heads(loaded, TEXT, target="mat")
    assert len(fx.delta) == len(result.ranking) == scan.delta.size
    for h, d in zip(result.ranking, fx.delta, strict=True):
        assert d == pytest.approx(scan.delta[h.layer, h.head], abs=1e-12)
    scores = pd.Series([h.score for h in result.ranking])
    effect = pd.Series([abs(d) for d in fx.delta])
    assert fx.rho == pytest.approx(scores.corr(effect, method="spearman"), abs=1e-9)


def test_induction_effects_rise_and_top_k_overlap_by_hand(tiny_model_path):
    from attnviz.heads.ablation import repeat_loss_scan
    from attnviz.heads.effects import induction_effects
    from attnviz.heads.induction import induction_scores

    loaded = _lm(str(tiny_model_path("llama")))
    result = induction_scores(loaded, seq_len=6, batch=2, seed=0)
    fx = induction_effects(loaded, result, k=3)
    scan = repeat_loss_scan(loaded, seq_len=6, batch=2, seed=0)
    assert fx.rise == {(i, j): scan.delta[i, j] for i in range(2) for j in range(4)}
    top = lambda a: {divmod(int(i), a.shape[1]) for i in np.argsort(-a.ravel(), kind="stable")[:3]}  # noqa: E731
    assert fx.k == 3 and fx.overlap == len(top(result.induction) & top(scan.delta))
