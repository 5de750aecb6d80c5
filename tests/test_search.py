"""find-head's ranking: brute-force equality, word matching across tokenizer families, many texts."""

from __future__ import annotations

import numpy as np
import pytest

from attnviz.attention import Attention
from attnviz.errors import InputError, TokenNotFoundError, cli_terms
from attnviz.extraction import extract
from attnviz.heads.search import (
    combine,
    find_heads,
    pair_scores,
    parse_occurrence,
    rank,
    resolve,
    resolve_pair,
)

# Every word after "Emily" is split into pieces by all three tiny tokenizers; two words repeat.
SPLIT_TEXT = "Emily visits Parisian catsuits and Parisian catsuits"


def brute_force(attn: np.ndarray, ia: int, ib: int, direction: str = "both") -> list[tuple[int, int, float]]:
    """The seed tutorial's loop, generalised to a full ranking: (layer, head, score), best first."""
    rows = []
    for layer in range(attn.shape[0]):
        for head in range(attn.shape[1]):
            m = attn[layer, head]
            s = {"both": max(m[ia, ib], m[ib, ia]), "a2b": m[ia, ib], "b2a": m[ib, ia]}[direction]
            rows.append((layer, head, float(s)))
    return sorted(rows, key=lambda r: -r[2])  # stable: ties stay in layer-then-head order


def seed_best(attn: np.ndarray, ia: int, ib: int) -> tuple[int, int]:
    """Exactly the seed's `find_semantic_connection_head` loop on one tensor."""
    best_score, best_head = 0.0, (0, 0)
    for layer_idx in range(attn.shape[0]):
        for head_idx in range(attn.shape[1]):
            m = attn[layer_idx, head_idx]
            score = max(m[ia, ib], m[ib, ia])
            if score > best_score:
                best_score, best_head = score, (layer_idx, head_idx)
    return best_head


def random_attn(layers: int = 4, heads: int = 6, n: int = 9, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).random((layers, heads, n, n)).astype(np.float32)
    return a / a.sum(-1, keepdims=True)


@pytest.mark.parametrize("direction", ["both", "a2b", "b2a"])
def test_ranking_equals_brute_force_loop(direction):
    attn = random_attn()
    a2b, b2a = pair_scores(attn, [2], [7])
    ranking = rank(combine(a2b, b2a, direction), a2b, b2a, range(4), range(6))
    expected = brute_force(attn, 2, 7, direction)
    assert [(h.layer, h.head) for h in ranking] == [(r[0], r[1]) for r in expected]
    assert [h.score for h in ranking] == pytest.approx([r[2] for r in expected])
    assert [h.rank for h in ranking] == list(range(1, 25))
    if direction == "both":  # the seed's loop ranks on max(A->B, B->A) only
        assert (ranking[0].layer, ranking[0].head) == seed_best(attn, 2, 7)
    for h in ranking:
        assert h.a2b == pytest.approx(attn[h.layer, h.head, 2, 7])
        assert h.b2a == pytest.approx(attn[h.layer, h.head, 7, 2])


def test_ties_keep_layer_then_head_order():
    attn = np.full((3, 4, 5, 5), 0.2, dtype=np.float32)
    a2b, b2a = pair_scores(attn, [1], [3])
    ranking = rank(combine(a2b, b2a, "both"), a2b, b2a, range(3), range(4), top=5)
    assert [(h.layer, h.head) for h in ranking] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]


def test_pieces_merge_as_the_word_view_does():
    attn = random_attn(2, 3, 6)
    a2b, b2a = pair_scores(attn, [1, 2], [4, 5])
    expected = attn[:, :, [1, 2]][:, :, :, [4, 5]].sum(-1).mean(-1)  # mean over query pieces, sum keys
    assert np.allclose(a2b, expected)
    assert np.allclose(b2a, attn[:, :, [4, 5]][:, :, :, [1, 2]].sum(-1).mean(-1))


def test_parse_occurrence():
    assert parse_occurrence(None) == (None, None)
    assert parse_occurrence("2") == (2, 2)
    assert parse_occurrence("1,3") == (1, 3)
    assert parse_occurrence("all") == ("all", "all")
    assert parse_occurrence(",2") == (None, 2)
    for bad in ("0", "x", "1,2,3"):
        with pytest.raises(InputError):
            parse_occurrence(bad)
    with pytest.raises(InputError, match=r"^occurrence is empty") as caught:  # the keyword of find_heads
        parse_occurrence(" ")
    assert caught.value.render(cli_terms).startswith("--occurrence is empty")


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def family(request, tiny_model_path):
    """WordPiece (bert), GPT-2 byte-level BPE (gpt2) and SentencePiece-style Metaspace (llama)."""
    from attnviz.models.loading import load_model

    loaded = load_model(str(tiny_model_path(request.param)), device="cpu")
    return request.param, loaded, extract(SPLIT_TEXT, loaded)


def test_subword_words_match_in_every_tokenizer_family(family):
    arch, _, att = family
    view = att.to_words()
    unit = resolve(att, "PARISIAN", view=view)  # case-free
    words = [i for i, w in enumerate(att.words) if w == "Parisian"]
    assert unit.tokens == tuple(i for i, w in enumerate(att.word_ids) if w == words[0])
    assert len(unit.tokens) > 1, f"{arch} did not split 'Parisian': {att.tokens}"
    assert unit.occurrence == 1 and unit.occurrences == 2
    second = resolve(att, "parisian", 2, view)
    assert second.tokens == tuple(i for i, w in enumerate(att.word_ids) if w == words[1])
    both = resolve(att, "parisian", "all", view)
    assert both.tokens == tuple(sorted(unit.tokens + second.tokens)) and both.occurrence == 0


def test_word_scores_are_the_word_views_values(family):
    _, _, att = family
    view = att.to_words()
    result = find_heads(att, "catsuits", "visits", occurrence="2,1", top=None)
    ua, ub = result.units[0]
    ia = view.word_ids.index(att.word_ids[ua.tokens[0]])
    ib = view.word_ids.index(att.word_ids[ub.tokens[0]])
    expected = brute_force(view.attn, ia, ib)
    assert [(h.layer, h.head) for h in result.ranking] == [(r[0], r[1]) for r in expected]
    assert [h.score for h in result.ranking] == pytest.approx([r[2] for r in expected], abs=1e-6)


def test_positions_pick_exact_tokens(family):
    _, _, att = family
    result = find_heads(att, "@1", "@-1", top=None)
    ua, ub = result.units[0]
    assert ua.tokens == (1,) and ub.tokens == (att.n_tokens - 1,)
    expected = brute_force(att.attn, 1, att.n_tokens - 1)
    assert [(h.layer, h.head) for h in result.ranking] == [(r[0], r[1]) for r in expected]


def test_the_same_word_twice_means_its_first_and_second_occurrence(family):
    _, _, att = family
    ua, ub = resolve_pair(att, "catsuits", "Catsuits")
    assert (ua.occurrence, ub.occurrence) == (1, 2)
    with pytest.raises(InputError, match=r"overlap: pick other occurrences with occurrence='N,M'$"):
        resolve_pair(att, "catsuits", "catsuits", (1, 1))


def test_a_missing_word_lists_the_texts_words(family):
    _, _, att = family
    with pytest.raises(TokenNotFoundError) as err:
        find_heads(att, "emily", "london")
    message = str(err.value)
    assert "'london' is not in the text" in message and "Parisian" in message and "\n" not in message
    with pytest.raises(TokenNotFoundError, match="occurrence 3") as caught:
        find_heads(att, "parisian", "catsuits", occurrence=3)
    assert str(caught.value).endswith("; occurrence='N,M' picks A's and B's separately")
    assert caught.value.render(cli_terms).endswith("; --occurrence N,M picks A's and B's separately")


def test_direction_top_and_layers(family):
    _, _, att = family
    both = find_heads(att, "emily", "visits", top=None)
    a2b = find_heads(att, "emily", "visits", direction="a2b", top=3)
    assert len(a2b.ranking) == 3
    assert all(h.score == h.a2b for h in a2b.ranking)
    assert all(h.score == max(h.a2b, h.b2a) for h in both.ranking)
    last = find_heads(att, "emily", "visits", layers=[-1], top=None)
    assert {h.layer for h in last.ranking} == {att.layers[-1]}
    with pytest.raises(InputError, match="direction"):
        find_heads(att, "emily", "visits", direction="sideways")


def test_many_texts_rank_by_the_mean_over_texts_with_both_words(family):
    _, loaded, _ = family
    from attnviz.extraction import extract_batch

    texts = ["the cat sat on the mat", "a dog slept", "the mat and the cat"]
    atts = extract_batch(texts, loaded)
    result = find_heads(atts, "cat", "mat", top=None)
    assert (result.texts_used, result.texts_total, result.used) == (2, 3, (0, 2))
    mean = np.zeros(atts[0].attn.shape[:2])
    for att in (atts[0], atts[2]):
        ua, ub = resolve_pair(att, "cat", "mat")
        a2b, b2a = pair_scores(att.attn, ua.tokens, ub.tokens)
        mean += np.maximum(a2b, b2a) / 2
    best = np.unravel_index(mean.argmax(), mean.shape)
    assert (result.best.layer, result.best.head) == (int(best[0]), int(best[1]))
    assert result.best.score == pytest.approx(mean.max())
    streamed = find_heads(iter(atts), "cat", "mat", top=None)  # a generator is consumed once
    assert streamed.ranking == result.ranking and streamed.texts_total == 3
    with pytest.raises(TokenNotFoundError, match="none of the 3 texts"):
        find_heads(atts, "cat", "bird")
    with pytest.raises(TokenNotFoundError, match="its words are"):
        find_heads(iter(atts[1:2]), "cat", "mat")  # one text: the error lists its words


def test_roles_come_from_the_pattern_scores(family):
    from attnviz.heads.patterns import pattern_scores, role_of

    _, _, att = family
    roles = role_of(pattern_scores(att.attn, att.special, att.tokens, att.causal))
    for h in find_heads(att, "emily", "visits", top=None).ranking:
        assert h.role == roles[h.layer, h.head]


@pytest.mark.slow
def test_minilm_paris_french_top_head_matches_brute_force(minilm, seed_text):
    att = extract(seed_text, minilm)
    result = find_heads(att, "paris", "french")
    ia, ib = att.tokens.index("paris"), att.tokens.index("french")
    assert (result.best.layer, result.best.head) == seed_best(att.attn, ia, ib)
    assert [(h.layer, h.head) for h in result.ranking] == [
        (r[0], r[1]) for r in brute_force(att.attn, ia, ib)[:5]
    ]
    best = att.head(result.best.layer, result.best.head)
    assert result.best.score == pytest.approx(max(best[ia, ib], best[ib, ia]))
    assert result.units[0][0].tokens == (ia,) and result.units[0][1].tokens == (ib,)


def test_find_heads_rejects_word_level_attention():
    att = Attention(
        model="x",
        kind="encoder",
        text="a b",
        tokens=("a", "b"),
        spans=((0, 1), (2, 3)),
        word_ids=(0, 1),
        words=("a", "b"),
        special=(False, False),
        layers=(0,),
        heads=(0,),
        attn=np.full((1, 1, 2, 2), 0.5, dtype=np.float32),
        level="word",
    )
    with pytest.raises(InputError, match="token-level"):
        find_heads(att, "a", "b")


def test_a_phrase_is_its_words_in_a_row(family):
    _, _, att = family
    view = att.to_words()
    unit = resolve(att, "PARISIAN  catsuits", view=view)
    first_two = [i for i, w in enumerate(att.words) if w in ("Parisian", "catsuits")][:2]
    expected = tuple(i for i, w in enumerate(att.word_ids) if w in first_two)
    assert unit.tokens == expected and unit.label == "Parisian catsuits"
    assert (unit.occurrence, unit.occurrences) == (1, 2)
    second = resolve(att, "parisian catsuits", 2, view)
    assert min(second.tokens) > max(unit.tokens)
    assert resolve(att, "parisian catsuits", "all", view).tokens == tuple(sorted(unit.tokens + second.tokens))
    with pytest.raises(TokenNotFoundError, match="as words in a row"):
        resolve(att, "catsuits parisian emily", view=view)
    # find_heads scores the phrase as one unit: mean over its query pieces, sum over the key's pieces
    emily = resolve(att, "emily", view=view).tokens
    result = find_heads(att, "parisian catsuits", "emily", top=None)
    a2b, _ = pair_scores(att.attn, expected, emily)
    for h in result.ranking:
        assert h.a2b == pytest.approx(float(a2b[h.layer, h.head]))


def test_a_subword_piece_is_found_by_its_string(family):
    arch, _, att = family
    word = resolve(att, "parisian")
    piece_index = word.tokens[-1]
    piece = att.tokens[piece_index]
    unit = resolve(att, piece)
    assert unit.tokens == (piece_index,), f"{arch}: {piece!r} in {att.tokens}"
    assert unit.occurrences == 2  # the word occurs twice, and so does its last piece


def test_check_queries_before_loading():
    from attnviz.heads.search import check_queries

    check_queries(["Emily visits PARIS"], "paris", "emily")  # case-free
    check_queries(["Un café à Paris"], "CAFE", "a")  # accents do not count
    check_queries(["New  York\nand London"], "new york", "@3")  # spaces are spaces; @N is not checked
    with pytest.raises(TokenNotFoundError, match="'berlin' does not occur in the text"):
        check_queries(["Emily visits Paris"], "paris", "berlin")
    with pytest.raises(TokenNotFoundError, match="none of the 2 texts contains both"):
        check_queries(["Paris", "Rome"], "paris", "rome")
    with pytest.raises(InputError, match="empty word"):
        check_queries(["Paris"], " ", "paris")


# -- issues 30 and 31: decomposed accents, scripts without spaces, and what the message lists ----
def _tokens_with_spans(text: str, cuts: list[tuple[int, int]], special_ends: bool = True) -> Attention:
    """A model-free Attention whose tokens are the given character spans of `text` (plus [CLS]/[SEP])."""
    from attnviz.tokens import align_words

    spans = [(0, 0), *cuts, (0, 0)] if special_ends else list(cuts)
    special = [s == (0, 0) for s in spans]
    tokens = tuple(
        "[CLS]" if s and i == 0 else "[SEP]" if s else text[a:b]
        for i, ((a, b), s) in enumerate(zip(spans, special, strict=True))
    )
    word_ids, words = align_words(text, spans, special)
    n = len(tokens)
    attn = random_attn(2, 3, n)
    return Attention(
        model="fake", kind="encoder", text=text, tokens=tokens, spans=tuple(spans), word_ids=tuple(word_ids),
        words=tuple(words), special=tuple(special), layers=(0, 1), heads=(0, 1, 2), attn=attn,
    )  # fmt: skip


def test_a_chinese_word_inside_an_unsegmented_run_is_the_tokens_covering_it():
    """find-head 巴黎 法语 "我喜欢在巴黎学习法语。": the text's one 'word' holds both; a span matches."""
    text = "我喜欢在巴黎学习法语。"
    cuts = [(0, 1), (1, 3), (3, 4), (4, 5), (5, 6), (6, 8), (8, 10), (10, 11)]  # 巴 and 黎 apart
    att = _tokens_with_spans(text, cuts)
    ua, ub = resolve_pair(att, "巴黎", "法语")
    assert ua.tokens == (4, 5) and ua.label == "巴黎"
    assert ub.tokens == (7,) and ub.label == "法语"
    result = find_heads(att, "巴黎", "法语", top=None)
    assert len(result.ranking) == 6


def test_a_span_query_counts_its_occurrences_and_a_missing_one_lists_words():
    text = "东京和东京"
    att = _tokens_with_spans(text, [(0, 2), (2, 3), (3, 5)])
    assert resolve(att, "东京", 2).tokens == (3,)
    assert resolve(att, "东京", "all").tokens == (1, 3)
    with pytest.raises(TokenNotFoundError, match="occurrence 3 does not exist"):
        resolve(att, "东京", 3)
    with pytest.raises(TokenNotFoundError) as err:
        resolve(att, "巴黎")
    assert "its words are: [CLS] 东京和东京 [SEP]" in str(err.value), str(err.value)


def test_latin_words_are_not_matched_inside_other_words():
    att = _tokens_with_spans("concatenate the cat", [(0, 11), (12, 15), (16, 19)])
    assert resolve(att, "cat").tokens == (3,)
    with pytest.raises(TokenNotFoundError, match="'cate' is not in the text; its words are"):
        resolve(att, "cate")


@pytest.mark.parametrize(
    ("text", "query"),
    [("un café au lait", "cafe\u0301"), ("un cafe\u0301 au lait", "café"), ("un CAFÉ au lait", "cafe\u0301")],
)
def test_composed_and_decomposed_accents_match_both_ways(text, query):
    from attnviz.tokens import words_of

    cut = [(a, b) for _, a, b in words_of(text)]
    att = _tokens_with_spans(text, cut)
    assert resolve(att, query).tokens == (2,)
    ua, ub = resolve_pair(att, query, "lait")
    assert (ua.tokens, ub.tokens) == ((2,), (4,))


def test_a_negative_top_is_refused_not_an_empty_ranking():
    """Issue 28: `find_heads(top=-1)` returned no head at all; the server alone refused it."""
    from analyses_helpers import synthetic

    from attnviz.heads.search import find_heads

    att = synthetic(("[CLS]", "the", "cat", "sat", "[SEP]"), seed=3)
    assert len(find_heads(att, "cat", "sat", top=None).ranking) == att.attn.shape[0] * att.attn.shape[1]
    with pytest.raises(InputError, match=r"^bad top -1: use 0 \(all heads\) or more$"):
        find_heads(att, "cat", "sat", top=-1)
