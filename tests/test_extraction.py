"""Extraction options: padding safety, word view, special tokens, length limits, files."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from attnviz.attention import Attention
from attnviz.errors import InputError, TextTooLongError, cli_terms
from attnviz.extraction import extract, extract_batch
from attnviz.models.loading import load_model

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


def test_word_view_merges_pieces_and_rows_sum_to_one(tiny_bert):
    loaded = tiny_bert
    att = extract("transformers attend", loaded)
    assert att.tokens == ("[CLS]", "transform", "##ers", "attend", "[SEP]")
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


def test_special_tokens_can_be_omitted(tiny_bert):
    loaded = tiny_bert
    assert "[CLS]" not in extract("the cat", loaded, special_tokens=False).tokens
    assert extract("the cat", loaded).special == (True, False, False, True)


def test_too_long_is_an_error_unless_truncated(tiny_model_path):
    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu")  # limit: 64 tokens
    long = " ".join(["the cat sat on the mat"] * 40)
    with pytest.raises(TextTooLongError, match="pass truncate=True to cut it"):
        extract(long, loaded)
    cut = extract(long, loaded, truncate=True)
    assert cut.n_tokens == 64 and cut.truncated > 0


def test_bad_selection_and_empty_text(tiny_bert):
    loaded = tiny_bert
    with pytest.raises(InputError, match="layer 5 is out of range"):
        extract("the cat", loaded, layers=[5])
    with pytest.raises(InputError, match="head 4 is out of range"):
        extract("the cat", loaded, heads=[4])
    with pytest.raises(InputError, match="empty"):
        extract("   ", loaded)


def test_an_empty_text_is_refused_before_a_model_name_is_loaded(monkeypatch):
    import attnviz.models.loading

    monkeypatch.setattr(
        attnviz.models.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded")
    )
    with pytest.raises(InputError, match="text 2 is empty"):
        extract_batch(["a cat", " "], "minilm")


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


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_damaged_files_are_one_clear_error(tmp_path, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a file")
    with pytest.raises(InputError, match=r"bad\.(safetensors|npz) is not a readable attention file"):
        Attention.load(path)


def test_unknown_output_format(tmp_path, tiny_bert):
    att = extract("the cat", tiny_bert)
    with pytest.raises(InputError, match="format"):
        att.save(tmp_path / "x.pkl")


def test_saving_is_atomic_on_a_full_disk(tmp_path, monkeypatch, tiny_bert):
    att = extract("the cat", tiny_bert)
    target = tmp_path / "out.npz"
    target.write_bytes(b"the user's previous result")

    def full_disk(path, **arrays):
        with open(path, "wb") as f:
            f.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    with pytest.raises(InputError, match=r"^no space left on the device to write .*out\.npz"):
        att.save(target)
    assert target.read_bytes() == b"the user's previous result"  # untouched, not half-replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # no temporary left


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_saved_files_respect_the_umask(tmp_path, suffix, mask, tiny_bert):
    att = extract("the cat", tiny_bert)
    old = os.umask(mask)
    try:
        path = att.save(tmp_path / f"out{suffix}")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~mask)


def test_save_refuses_a_folder(tmp_path, tiny_bert):
    att = extract("the cat", tiny_bert)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        att.save(tmp_path / "dir.npz")


CJK_EMOJI = "Paris 😀 中文 ok"


def test_byte_level_tokens_are_decoded_text_with_raw_ids_and_pieces(tiny_model_path, tmp_path):
    loaded = load_model(str(tiny_model_path("gpt2")), device="cpu")
    att = extract(CJK_EMOJI, loaded)
    tok = loaded.tokenizer
    ids = tok(CJK_EMOJI)["input_ids"]
    assert att.token_ids == tuple(ids)
    assert att.pieces == tuple(tok.convert_ids_to_tokens(ids))
    assert any("ð" in p for p in att.pieces)  # the raw pieces really are byte spellings
    mojibake = set("ðŁĺĢäæ¸ĸĩŃ")
    assert not any(set(t) & mojibake for t in att.tokens), att.tokens
    # a character split over pieces is named on each of them, with … where it goes on, so dropping
    # the continuations and the ␣ of lone spaces gives the text back without its spaces
    assert {"😀…", "…😀", "中…", "…中", "文…", "…文"} <= set(att.labels), att.labels
    rebuilt = "".join(
        (t[2:] if t.startswith("…") else t).removesuffix("…").replace("␣", "") for t in att.tokens
    )
    assert rebuilt == CJK_EMOJI.replace(" ", "")
    assert not any("\\x" in t for t in att.tokens)  # no byte escapes: every byte is in a character
    assert tok.decode(list(att.token_ids)) == CJK_EMOJI
    # words and lookups still work on the readable tokens
    words = att.to_words()
    assert [t for t in words.tokens if t != "␣"] == ["Paris", "😀", "中文", "ok"]  # lone spaces: own units
    from attnviz.tokens import positions

    assert positions(att, "中文") == [i for i, w in enumerate(att.word_ids) if w == 2]
    assert positions(att, "😀") == [i for i, w in enumerate(att.word_ids) if w == 1]
    assert positions(att, "ok") == [i for i, w in enumerate(att.word_ids) if w == 3]
    back = Attention.load(att.save(tmp_path / "a.npz"))
    assert back.token_ids == att.token_ids and back.pieces == att.pieces and back.tokens == att.tokens


@pytest.mark.slow
def test_smollm2_chinese_and_emoji_labels(smollm2):
    text = "I love 北京 🐱 and Paris"
    att = extract(text, smollm2)
    ids = smollm2.tokenizer(text)["input_ids"]
    assert att.token_ids == tuple(ids) and att.pieces == tuple(smollm2.tokenizer.convert_ids_to_tokens(ids))
    joined = "".join(att.labels)
    assert "北" in joined and "京" in joined and "🐱" in joined
    assert not any(set(t) & set("ðŁĺĢäæåįĳ") for t in att.labels), att.labels
    assert "Paris" in att.labels
    words = att.to_words()
    assert "北京" in words.tokens and "🐱" in words.tokens and "Paris" in words.tokens


@pytest.mark.slow
def test_minilm_seed_sentence(minilm, seed_text):
    att = extract(seed_text, minilm)
    assert att.tokens[:3] == ("[CLS]", "emily", "always") and att.tokens[-1] == "[SEP]"
    assert att.words[5] == "Paris" and att.word_ids[6] == 5
    assert att.spans[6] == (29, 34) and seed_text[29:34] == "Paris"


# -- choosing the stream to draw (heatmap --stream) ------------------------------------------------
def test_check_stream_names_and_cross_needs_one_raw_head() -> None:
    from attnviz.errors import InputError
    from attnviz.extraction import check_stream

    check_stream("self")
    check_stream("decoder", None, None, words=True)
    check_stream("cross", 0, [1])
    with pytest.raises(InputError, match=r"^unknown stream 'sideways'"):
        check_stream("sideways")
    for layer, heads, words in ((None, [1], False), (0, None, False), (0, [1, 2], False), (0, [1], True)):
        with pytest.raises(InputError, match="one head at token level"):
            check_stream("cross", layer, heads, words)
    with pytest.raises(
        InputError, match="raw weights: drop aggregate, weighting and hide_special=True"
    ) as caught:
        check_stream("cross", 0, [1], transformed=True)
    assert caught.value.render(cli_terms).endswith("drop --aggregate, --weighting and --no-special")
    check_stream("self", norm=True)
    with pytest.raises(InputError, match=r"^weighting='norm' .* drop stream='decoder'$") as caught:
        check_stream("decoder", norm=True)
    assert caught.value.render(cli_terms).startswith("--weighting norm ")


def test_square_stream_picks_encoder_or_decoder(tiny_model_path) -> None:
    from attnviz.errors import InputError
    from attnviz.extraction import square_stream

    t5 = extract("the cat sat", str(tiny_model_path("t5")), device="cpu")
    assert square_stream(t5, "self") is t5 and square_stream(t5, "encoder") is t5
    assert square_stream(t5, "decoder") is t5.decoder and t5.decoder.causal
    with pytest.raises(InputError, match="not a square"):
        square_stream(t5, "cross")
    bert = extract("the cat sat", str(tiny_model_path("bert")), device="cpu")
    with pytest.raises(InputError, match="no decoder stream"):
        square_stream(bert, "decoder")


def test_extract_stream_is_lazy_and_equals_extract_batch(tiny_bert) -> None:
    """The library's stream of many texts (what heads, find-head and cluster use)."""
    from attnviz.extraction import extract_stream

    loaded = tiny_bert
    texts = ["the cat sat", "a dog ran far away", "the bird sang", "hello"]
    pulled: list[str] = []

    def source():
        for t in texts:
            pulled.append(t)
            yield t

    stream = extract_stream(source(), loaded, layers=[1], batch_size=2)
    first = next(stream)
    assert pulled == texts[:2]  # one batch read, not the whole input
    rest = list(stream)
    for got, want in zip([first, *rest], extract_batch(texts, loaded, layers=[1]), strict=True):
        np.testing.assert_allclose(got.attn, want.attn, atol=1e-6)
        assert got.tokens == want.tokens


def test_stream_and_batch_errors_number_texts_in_the_whole_input(tiny_bert) -> None:
    from attnviz.errors import TextTooLongError
    from attnviz.extraction import extract_stream

    loaded = tiny_bert
    texts = ["the cat sat", "a dog", "the bird sang", "the cat " * 40, "fine"]
    with pytest.raises(TextTooLongError, match=r"^text 4 has \d+ tokens"):
        list(extract_stream(iter(texts), loaded, batch_size=2))
    with pytest.raises(TextTooLongError, match=r"^text 4 has \d+ tokens"):
        extract_batch(texts, loaded, batch_size=3)  # the chunk [text 4, text 5] said "text 1" before
    with pytest.raises(InputError, match=r"^text 3 is empty"):
        list(extract_stream(["a", "b", " "], loaded, batch_size=2))


# -- issue 30: sizes and texts no model can take, refused before it loads -----------------------
@pytest.fixture
def no_load(monkeypatch):
    import attnviz.models.loading

    monkeypatch.setattr(attnviz.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (
            lambda: extract_batch(["a b"], "minilm", batch_size=0),
            "batch_size must be a whole number of at least 1",
        ),
        (lambda: extract_batch(["a b"], "minilm", batch_size=-1), "batch_size must be a whole number"),
        (lambda: extract_batch(["a b"], "minilm", batch_size=2.5), "batch_size must be a whole number"),
        (lambda: extract("a b", "minilm", max_length=0), "max_length must be a whole number of at least 2"),
        (lambda: extract("a b", "minilm", max_length=-5), "max_length must be a whole number"),
        (lambda: extract("caf\udce9", "minilm"), "lone surrogate at character 4 (\\udce9)"),
        (lambda: extract("a \ud800 b", "minilm"), "lone surrogate at character 3"),
        (lambda: extract_batch(["ok", "x\udfff"], "minilm"), "text 2 holds a lone surrogate"),
    ],
)
def test_sizes_and_texts_no_model_takes_are_refused_before_loading(no_load, call, needle):
    with pytest.raises(InputError) as info:
        call()
    assert needle in str(info.value)


def test_a_text_that_is_not_a_string_is_a_type_error(no_load):
    with pytest.raises(TypeError, match="the text must be a string, not int"):
        extract(123, "minilm")


def test_a_lone_surrogate_is_refused_by_a_loaded_model_and_the_stream(tiny_model_path):
    from attnviz.extraction import extract_stream

    loaded = load_model(str(tiny_model_path("bert")), device="cpu")
    with pytest.raises(InputError, match="lone surrogate"):
        extract("\ud83d then", loaded)
    with pytest.raises(InputError, match="text 2 holds a lone surrogate"):
        list(extract_stream(iter(["fine", "\ud83d"]), loaded))
    with pytest.raises(InputError, match="batch_size"):
        list(extract_stream(["fine"], loaded, batch_size=0))


def test_the_server_answers_400_for_a_lone_surrogate(tiny_model_path):
    """A JSON string may hold "\\ud800": today the tokenizer's TypeError is a 500."""
    from starlette.testclient import TestClient

    from attnviz.server.app import create_app

    client = TestClient(create_app({"tiny": load_model(str(tiny_model_path("bert")), device="cpu")}))
    got = client.post(
        "/api/attention",
        content=b'{"text": "caf\\ud800 au lait"}',
        headers={"content-type": "application/json"},
    )
    assert got.status_code == 400, got.text
    assert "lone surrogate" in got.json()["error"]


def test_a_text_of_zero_width_characters_is_empty(no_load):
    with pytest.raises(InputError, match="only invisible characters"):
        extract("\u200b\u200c\ufeff \u2060", "minilm")
