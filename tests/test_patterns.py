"""Pattern scores on synthetic attention with a known answer, roles, aggregation and speed."""

from __future__ import annotations

import numpy as np
import pytest

from attnviz.attention import Attention
from attnviz.errors import InputError
from attnviz.heads.patterns import (
    PATTERNS,
    ROLE_NAMES,
    head_patterns,
    is_punctuation,
    pattern_scores,
    role_of,
    row_entropy,
    uniform_bound,
)

N = 8
# [CLS] w w , w w . [SEP]: specials at both ends, punctuation at 3 and 6
TOKENS = ["[CLS]", "the", "cat", ",", "sat", "down", ".", "[SEP]"]
SPECIAL = [True, False, False, False, False, False, False, True]


def one_head(matrix: np.ndarray) -> np.ndarray:
    """[q, k] -> [1, 1, q, k]."""
    return np.asarray(matrix, dtype=np.float32)[None, None]


def diagonal(n: int = N) -> np.ndarray:
    return np.eye(n)


def previous(n: int = N) -> np.ndarray:
    m = np.eye(n, k=-1)
    m[0, 0] = 1.0  # the first token has no previous token: it keeps itself
    return m


def next_token(n: int = N) -> np.ndarray:
    m = np.eye(n, k=1)
    m[-1, -1] = 1.0
    return m


def column(j: int, n: int = N) -> np.ndarray:
    m = np.zeros((n, n))
    m[:, j] = 1.0
    return m


def causal_uniform(n: int = N) -> np.ndarray:
    m = np.tril(np.ones((n, n)))
    return m / m.sum(-1, keepdims=True)


def score(matrix: np.ndarray, causal: bool = False, name: str | None = None) -> dict[str, float]:
    out = {k: float(v[0, 0]) for k, v in pattern_scores(one_head(matrix), SPECIAL, TOKENS, causal).items()}
    return out if name is None else out[name]


@pytest.mark.parametrize("causal", [False, True])
def test_pure_diagonal_head_scores_one_on_self(causal):
    s = score(diagonal(), causal)
    assert s["self"] == pytest.approx(1.0)
    assert s["previous"] == pytest.approx(0.0) and s["next"] == pytest.approx(0.0)
    assert s["broad"] == pytest.approx(0.0)


@pytest.mark.parametrize("causal", [False, True])
def test_pure_previous_token_head_scores_one_on_previous(causal):
    s = score(previous(), causal)
    assert s["previous"] == pytest.approx(1.0)
    assert s["self"] < 0.2  # only the first row, and that one is ignored in causal models
    assert s["next"] == pytest.approx(0.0)


def test_pure_next_token_head_scores_one_on_next():
    s = score(next_token())
    assert s["next"] == pytest.approx(1.0)
    assert s["previous"] == pytest.approx(0.0)


def test_next_is_zero_for_causal_models():
    assert score(causal_uniform(), causal=True, name="next") == 0.0


@pytest.mark.parametrize("causal", [False, True])
def test_first_token_sink_scores_one_on_first(causal):
    s = score(column(0), causal)
    assert s["first"] == pytest.approx(1.0)
    assert s["last_sep"] == pytest.approx(0.0)


def test_sep_sink_scores_one_on_last_sep():
    s = score(column(N - 1))
    assert s["last_sep"] == pytest.approx(1.0)
    assert s["first"] == pytest.approx(0.0)


def test_last_sep_without_separators_is_the_encoder_texts_last_token():
    tokens, special = TOKENS[1:-1], SPECIAL[1:-1]
    n = len(tokens)
    s = pattern_scores(one_head(column(n - 1, n)), special, tokens, causal=False)
    assert s["last_sep"][0, 0] == pytest.approx(1.0)
    causal = pattern_scores(one_head(causal_uniform(n)), special, tokens, causal=True)
    assert causal["last_sep"][0, 0] == 0.0  # nothing to sink into: no EOS in a causal text


def test_punctuation_sink_scores_one_on_punctuation():
    m = np.zeros((N, N))
    m[:, 3] = 0.5
    m[:, 6] = 0.5
    assert score(m, name="punctuation") == pytest.approx(1.0)


@pytest.mark.parametrize("causal", [False, True])
def test_uniform_head_scores_one_on_broad(causal):
    m = causal_uniform() if causal else np.full((N, N), 1.0 / N)
    s = score(m, causal)
    assert s["broad"] == pytest.approx(1.0, abs=1e-5)
    assert s["self"] < 0.5


def test_scores_equal_their_one_line_definitions_on_random_attention():
    rng = np.random.default_rng(0)
    attn = rng.random((3, 4, N, N)).astype(np.float32)
    attn /= attn.sum(-1, keepdims=True)
    s = pattern_scores(attn, SPECIAL, TOKENS, causal=False)
    for layer in range(3):
        for head in range(4):
            a = attn[layer, head].astype(np.float64)
            assert s["self"][layer, head] == pytest.approx(np.mean([a[i, i] for i in range(N)]), abs=1e-6)
            assert s["previous"][layer, head] == pytest.approx(
                np.mean([a[i, i - 1] for i in range(1, N)]), abs=1e-6
            )
            assert s["next"][layer, head] == pytest.approx(
                np.mean([a[i, i + 1] for i in range(N - 1)]), abs=1e-6
            )
            assert s["first"][layer, head] == pytest.approx(np.mean([a[i, 0] for i in range(1, N)]), abs=1e-6)
            assert s["last_sep"][layer, head] == pytest.approx(a[:, N - 1].mean(), abs=1e-6)
            assert s["punctuation"][layer, head] == pytest.approx((a[:, 3] + a[:, 6]).mean(), abs=1e-6)
            entropy = [-(a[i] * np.log2(a[i])).sum() / np.log2(N) for i in range(N)]
            assert s["broad"][layer, head] == pytest.approx(np.mean(entropy), abs=1e-5)


def test_causal_scores_skip_the_first_query_which_has_no_choice():
    rng = np.random.default_rng(1)
    attn = np.tril(rng.random((1, 1, N, N))).astype(np.float32)
    attn /= attn.sum(-1, keepdims=True)
    s = pattern_scores(attn, SPECIAL, TOKENS, causal=True)
    a = attn[0, 0].astype(np.float64)
    assert s["self"][0, 0] == pytest.approx(np.mean([a[i, i] for i in range(1, N)]), abs=1e-6)
    entropy = [-(a[i, : i + 1] * np.log2(a[i, : i + 1])).sum() / np.log2(i + 1) for i in range(1, N)]
    assert s["broad"][0, 0] == pytest.approx(np.mean(entropy), abs=1e-5)


def test_shapes_names_and_degenerate_inputs():
    attn = np.ones((2, 3, 1, 1), dtype=np.float32)
    s = pattern_scores(attn, [True], ["[CLS]"], causal=False)
    assert tuple(s) == PATTERNS
    assert all(v.shape == (2, 3) and not v.any() for v in s.values())
    with pytest.raises(ValueError, match="tokens"):
        pattern_scores(np.ones((1, 1, 3, 3)) / 3, [False, False], ["a", "b"], causal=False)
    with pytest.raises(ValueError, match="shape"):
        pattern_scores(np.ones((3, 3)), [False] * 3, ["a"] * 3, causal=False)


def test_is_punctuation_across_tokenizer_families():
    assert all(is_punctuation(t) for t in [",", ".", "Ġ,", "▁.", "?!", "»"])
    assert not any(is_punctuation(t) for t in ["cat", "Ġcat", "'s", "##s", "Ġ", "3"])


def test_roles_name_the_dominant_pattern_past_the_threshold():
    heads = [diagonal(), previous(), next_token(), column(0), column(N - 1), np.full((N, N), 1 / N)]
    blend = 0.4 * diagonal() + 0.35 * previous() + 0.25 * np.full((N, N), 1 / N)
    attn = np.stack([*heads, blend])[None].astype(np.float32)  # [1, 7, N, N]
    roles = role_of(pattern_scores(attn, SPECIAL, TOKENS, causal=False))
    assert roles.shape == (1, 7)
    assert list(roles[0]) == ["self", "previous", "next", "first", "last_sep", "broad", "mixed"]
    assert set(ROLE_NAMES) >= set(roles[0])
    relaxed = role_of(pattern_scores(attn, SPECIAL, TOKENS, causal=False), threshold=0.3)
    assert relaxed[0, 6] == "self"


def _att(attn: np.ndarray, causal: bool = False) -> Attention:
    layers, heads, n, _ = attn.shape
    return Attention(
        model="synthetic",
        kind="decoder" if causal else "encoder",
        text="the cat , sat down .",
        tokens=tuple(TOKENS[:n]),
        spans=tuple((0, 0) for _ in range(n)),
        word_ids=tuple(None for _ in range(n)),
        words=(),
        special=tuple(SPECIAL[:n]),
        layers=tuple(range(layers)),
        heads=tuple(range(heads)),
        attn=attn.astype(np.float32),
        causal=causal,
    )


def test_head_patterns_over_texts_gives_mean_spread_and_roles():
    a = np.stack([diagonal(), column(0)])[None]  # [1, 2, N, N]
    b = np.stack([diagonal(), column(N - 1)])[None]
    table = head_patterns([_att(a), _att(b)])
    assert table.texts == 2 and table.std is not None
    assert table.mean["self"][0, 0] == pytest.approx(1.0) and table.std["self"][0, 0] == pytest.approx(0.0)
    assert table.mean["first"][0, 1] == pytest.approx(0.5) and table.std["first"][0, 1] == pytest.approx(0.5)
    assert list(table.roles[0]) == ["self", "first"]  # 0.5 first, 0.5 last_sep: the first wins the tie
    rows = table.rows()
    assert [(r.layer, r.head) for r in rows] == [(0, 0), (0, 1)]
    record = rows[0].as_dict()
    assert {"layer", "head", "role", *PATTERNS, *(f"{p}_std" for p in PATTERNS)} == set(record)
    assert table.rows(sort="first")[0].head == 1
    assert table.counts()["self"] == 1
    single = head_patterns(_att(a))
    assert single.std is None and "self_std" not in single.rows()[0].as_dict()


def test_row_entropy_and_uniform_bound_keep_their_signatures():
    visible = np.tril(np.ones((4, 4), dtype=bool))
    uniform = visible / visible.sum(-1, keepdims=True)
    assert np.allclose(row_entropy(uniform, visible), uniform_bound(visible))


def test_thresholds_are_fractions():
    from attnviz.errors import cli_terms
    from attnviz.heads.patterns import check_thresholds

    check_thresholds(0.0, 1.0)
    for t, b, option in ((2.0, 0.8, "threshold"), (0.5, -0.1, "broad_threshold")):
        with pytest.raises(InputError, match=f"^bad {option} "):  # a Python caller never typed --threshold
            check_thresholds(t, b)
    with pytest.raises(InputError) as caught:
        check_thresholds(0.5, 2.0)
    assert caught.value.render(cli_terms).startswith("bad --broad-threshold 2: ")  # what the CLI prints


def test_role_scores_are_each_heads_score_on_its_own_role():
    from attnviz.heads.patterns import PatternTable

    mean = {name: np.full((1, 2), 0.1) for name in PATTERNS}
    mean["previous"] = np.array([[0.9, 0.2]])
    roles = np.array([["previous", "mixed"]])
    table = PatternTable("m", (0,), (0, 1), mean, None, roles, texts=1)
    scores = table.role_scores()
    assert scores[0, 0] == pytest.approx(0.9) and np.isnan(scores[0, 1])


# -- issue 30: a row that is not a distribution has no entropy ----------------------------------
@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([[1, 2]], "a row sums to 3"),
        ([[0.5, 0.6]], "a row sums to 1.1"),
        ([[-0.5, 1.5]], "a row holds -0.5"),
        ([[float("nan"), 1.0]], "not NaN or infinite"),
        (0.5, "not one number"),
    ],
)
def test_row_entropy_refuses_rows_that_are_not_distributions(rows, needle):
    from attnviz.errors import InputError
    from attnviz.heads.patterns import row_entropy

    with pytest.raises(InputError, match=needle):
        row_entropy(rows)


def test_row_entropy_takes_distributions_float16_rows_and_padding():
    from attnviz.heads.patterns import row_entropy

    np.testing.assert_allclose(row_entropy([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]), [1.0, 0.0, 0.0])
    rng = np.random.default_rng(0)
    rows = rng.random((3, 4, 40, 40))
    half = (rows / rows.sum(-1, keepdims=True)).astype(np.float16)  # sums off by up to ~1e-3
    assert np.isfinite(row_entropy(half)).all()


def test_the_sort_rule_is_the_tables_and_names_the_parameter():
    """Issue 28: `heads --sort` had its own copy of `PatternTable.rows`' rule, worded apart."""
    from attnviz.errors import cli_terms
    from attnviz.heads.patterns import PatternTable, check_sort

    mean = {name: np.full((1, 2), 0.1) for name in PATTERNS}
    table = PatternTable("m", (0,), (0, 1), mean, None, np.array([["self", "mixed"]]), texts=1)
    for call in (lambda: table.rows("vibes"), lambda: check_sort("vibes")):
        with pytest.raises(InputError, match=r"^unknown sort 'vibes': use one of self, ") as caught:
            call()
        assert caught.value.render(cli_terms).startswith("unknown --sort 'vibes'")
    assert len(table.rows("role")) == 2 and check_sort(None) is None
