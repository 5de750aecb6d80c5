"""The induction-head test: scores on synthetic attention, the random input, and real SmolLM2 heads."""

from __future__ import annotations

import numpy as np
import pytest

from attnviz.errors import InputError, cli_terms
from attnviz.heads.induction import chance_level, induction_scores, random_repeats, repeat_scores

T = 6


def shifted(offset: int, t: int = T, prefix: int = 1) -> np.ndarray:
    """[1, 1, n, n]: second-half queries attend to key q - T + offset; everything else to itself."""
    n = prefix + 2 * t
    m = np.eye(n)
    for q in range(prefix + t, n):
        m[q] = 0.0
        m[q, q - t + offset] = 1.0
    return m[None, None].astype(np.float32)


def test_a_perfect_induction_head_scores_one():
    ind, dup = repeat_scores(shifted(+1), T, prefix=1)
    assert ind[0, 0] == pytest.approx(1.0) and dup[0, 0] == pytest.approx(0.0)


def test_a_perfect_duplicate_token_head_scores_one():
    ind, dup = repeat_scores(shifted(0), T, prefix=1)
    assert dup[0, 0] == pytest.approx(1.0) and ind[0, 0] == pytest.approx(0.0)


@pytest.mark.parametrize("prefix", [0, 1])
def test_uniform_causal_attention_scores_chance(prefix):
    n = prefix + 2 * T
    m = np.tril(np.ones((n, n)))
    m /= m.sum(-1, keepdims=True)
    ind, dup = repeat_scores(m[None, None], T, prefix)
    assert ind[0, 0] == pytest.approx(chance_level(T, prefix))
    assert dup[0, 0] == pytest.approx(chance_level(T, prefix))


def test_repeat_scores_checks_the_length():
    with pytest.raises(ValueError, match="expected"):
        repeat_scores(np.zeros((1, 1, 5, 5)), T)


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_path):
    from attnviz.models.loading import load_model

    return load_model(str(tiny_model_path("llama")), device="cpu")


def test_random_repeats_are_distinct_ordinary_tokens_repeated(tiny_llama):
    enc, prefix = random_repeats(tiny_llama, seq_len=10, batch=3, seed=1)
    tok = tiny_llama.tokenizer
    assert prefix == 1 and enc.input_ids.shape == (3, 21)  # the tiny llama's tokenizer adds <s>
    for row in enc.input_ids.tolist():
        assert row[0] == tok.bos_token_id
        first, second = row[1:11], row[11:]
        assert first == second and len(set(first)) == 10
        assert not set(first) & set(tok.all_special_ids)
    again, _ = random_repeats(tiny_llama, seq_len=10, batch=3, seed=1)
    assert again.input_ids.equal(enc.input_ids)


def test_induction_scores_on_a_tiny_llama(tiny_llama):
    result = induction_scores(tiny_llama, seq_len=8, batch=3, seed=0)
    assert result.induction.shape == (2, 4) and result.duplicate.shape == (2, 4)
    assert result.prefix == 1 and result.chance == pytest.approx(chance_level(8, 1))
    ranking = result.ranking()
    assert len(ranking) == 8 and [s.induction for s in ranking] == sorted(result.induction.ravel())[::-1]
    assert result.ranking("duplicate", top=2)[0].duplicate == pytest.approx(result.duplicate.max())
    assert set(ranking[0].as_dict()) == {"rank", "layer", "head", "induction", "duplicate"}
    part = induction_scores(tiny_llama, seq_len=8, batch=3, seed=0, layers=[1], heads=[0, 2])
    assert part.layers == (1,) and part.heads == (0, 2)
    assert np.allclose(part.induction, result.induction[1, [0, 2]][None], atol=1e-5)


def test_encoders_are_told_the_test_is_for_causal_models(tiny_bert):

    bert = tiny_bert
    with pytest.raises(InputError, match="applies to causal"):
        induction_scores(bert)


@pytest.mark.slow
def test_smollm2_has_real_induction_heads(smollm2):
    # seq_len 20 after no BOS: uniform attention would score ~0.034 (chance_level(20)), and a head
    # that ignores the repeat entirely scores about that. 0.5 is ~15x chance: half of the query's
    # attention on one specific earlier token out of 21-40. SmolLM2-135M's best heads (layers 17-18)
    # score ~0.9 at this setting, so the bound leaves room for seeds and numerical drift.
    result = induction_scores(smollm2, seq_len=20, batch=2, seed=0)
    assert result.chance < 0.05
    top = result.ranking(top=3)
    assert top[0].induction > 0.5
    assert all(s.induction > 10 * result.chance for s in top)
    assert top[0].duplicate < 0.2  # it attends to the next token, not to the copy itself


def test_settings_are_checked_before_a_model_loads():
    from attnviz.heads.induction import InductionSettings

    assert InductionSettings(seq_len=8, batch=2).check().sort == "induction"
    with pytest.raises(InputError, match=r"^use seq_len of at least 2 and batch of at least 1$") as caught:
        InductionSettings(seq_len=1).check()
    assert caught.value.render(cli_terms) == "use --seq-len of at least 2 and --batch of at least 1"
    with pytest.raises(InputError, match=r"^unknown sort 'self' for the induction test"):
        InductionSettings(sort="self").check()
    with pytest.raises(InputError, match=r"^seed -1: "):
        InductionSettings(seed=-1).check()


def test_settings_run_equals_the_function(tiny_llama):
    from attnviz.heads.induction import InductionSettings

    settings = InductionSettings(seq_len=6, batch=2, seed=3, layers=(-1,), heads=(0, 2))
    ran = settings.run(tiny_llama)
    direct = induction_scores(tiny_llama, seq_len=6, batch=2, seed=3, layers=[-1], heads=[0, 2])
    assert ran.layers == direct.layers == (1,) and ran.heads == (0, 2)
    np.testing.assert_array_equal(ran.induction, direct.induction)


def test_random_repeats_label_byte_level_tokens_readably(tiny_model_path):
    from attnviz.models.loading import load_model
    from attnviz.tokens import is_byte_level, token_labels

    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu")
    tok = loaded.tokenizer
    assert is_byte_level(tok)
    enc, _ = random_repeats(loaded, seq_len=40, batch=2, seed=3)
    for row, tokens, pieces in zip(enc.input_ids.tolist(), enc.tokens, enc.pieces, strict=True):
        assert pieces == tok.convert_ids_to_tokens(row)
        assert tokens == token_labels(tok, row)[0]
        assert tokens != pieces  # raw bytes of non-ASCII pieces ("Ã") are shown decoded or as \\xNN
