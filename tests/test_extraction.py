"""Extraction options: padding safety, word view, special tokens, length limits, files."""

from __future__ import annotations

import numpy as np
import pytest

from attnviz.errors import InputError, TextTooLongError
from attnviz.extraction import Attention, extract, extract_batch
from attnviz.models import load_model

TEXTS = ["The cat sat.", "Transformers are great; transformers attend to tokens in Paris.", "A dog"]


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "t5"])
def test_padding_never_leaks(tiny_model_path, arch):
    loaded = load_model(str(tiny_model_path(arch)), device="cpu")
    together = extract_batch(TEXTS, loaded)
    for text, batched in zip(TEXTS, together, strict=True):
        alone = extract(text, loaded)
        assert alone.tokens == batched.tokens
        np.testing.assert_allclose(batched.attn, alone.attn, atol=1e-5)
        if alone.cross is not None:
            np.testing.assert_allclose(batched.cross, alone.cross, atol=1e-5)


def test_word_view_merges_pieces_and_rows_sum_to_one(tiny_model_path):
    loaded = load_model(str(tiny_model_path("bert")), device="cpu")
    att = extract("transformers attend", loaded)
    assert att.tokens == ("[CLS]", "transform", "##ers", "attend", "[SEP]") or "##ers" in att.tokens
    words = att.to_words()
    assert words.level == "word"
    assert "transformers" in words.tokens and "##ers" not in words.tokens
    assert words.tokens[0] == "[CLS]" and words.special[0]
    np.testing.assert_allclose(words.attn.sum(-1), 1.0, atol=1e-5)
    # brute force: mean over the query's pieces of the summed weight on the key's pieces
    i = att.tokens.index("transform")
    j = words.tokens.index("transformers")
    expected = att.attn[:, :, [i, i + 1], 0].mean(-1)  # transformers -> [CLS]
    np.testing.assert_allclose(words.attn[:, :, j, 0], expected, atol=1e-6)
    assert extract("transformers attend", loaded, words=True).tokens == words.tokens


def test_special_tokens_can_be_omitted(tiny_model_path):
    loaded = load_model(str(tiny_model_path("bert")), device="cpu")
    assert "[CLS]" not in extract("the cat", loaded, special_tokens=False).tokens
    assert extract("the cat", loaded).special == (True, False, False, True)


def test_too_long_is_an_error_unless_truncated(tiny_model_path):
    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu")  # limit: 64 tokens
    long = " ".join(["the cat sat on the mat"] * 40)
    with pytest.raises(TextTooLongError, match="--truncate"):
        extract(long, loaded)
    cut = extract(long, loaded, truncate=True)
    assert cut.n_tokens == 64 and cut.truncated > 0


def test_bad_selection_and_empty_text(tiny_model_path):
    loaded = load_model(str(tiny_model_path("bert")), device="cpu")
    with pytest.raises(InputError, match="layer 5 is out of range"):
        extract("the cat", loaded, layers=[5])
    with pytest.raises(InputError, match="head 4 is out of range"):
        extract("the cat", loaded, heads=[4])
    with pytest.raises(InputError, match="empty"):
        extract("   ", loaded)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_save_and_load_round_trip(tiny_model_path, tmp_path, suffix):
    loaded = load_model(str(tiny_model_path("t5")), device="cpu")
    att = extract("the cat sat", loaded, layers=[1])
    path = att.save(tmp_path / f"out{suffix}")
    back = Attention.load(path)
    assert back.tokens == att.tokens and back.layers == (1,) and back.kind == "encoder-decoder"
    np.testing.assert_array_equal(back.attn, att.attn)
    np.testing.assert_array_equal(back.cross, att.cross)
    assert back.decoder.tokens == att.decoder.tokens
    if suffix == ".npz":  # readable by plain numpy without pickles
        with np.load(path, allow_pickle=False) as data:
            assert data["encoder"].shape == att.attn.shape
    else:
        from safetensors.numpy import load_file

        assert load_file(str(path))["encoder"].shape == att.attn.shape


def test_unknown_output_format(tiny_model_path, tmp_path):
    att = extract("the cat", load_model(str(tiny_model_path("bert")), device="cpu"))
    with pytest.raises(InputError, match="format"):
        att.save(tmp_path / "x.pkl")


@pytest.mark.slow
def test_minilm_seed_sentence(minilm, seed_text):
    att = extract(seed_text, minilm)
    assert att.tokens[:3] == ("[CLS]", "emily", "always") and att.tokens[-1] == "[SEP]"
    assert att.words[5] == "Paris" and att.word_ids[6] == 5
    assert att.spans[6] == (29, 34) and seed_text[29:34] == "Paris"
