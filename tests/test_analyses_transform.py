"""The view pipeline: options checked before loading, steps applied in order, each one noted."""

from __future__ import annotations

import numpy as np
import pytest
from analyses_helpers import synthetic

from attnviz.analyses.aggregate import aggregate, without_special
from attnviz.analyses.transform import ViewOptions, transform
from attnviz.errors import InputError, api_terms, cli_terms

TOKENS = ("[CLS]", "a", "b", "c", "[SEP]")
SPECIAL = (True, False, False, False, True)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (ViewOptions(weighting="value"), "^unknown weighting 'value'"),
        (ViewOptions(aggregate="median"), "^unknown aggregate 'median'"),
        (ViewOptions(over="rows"), "^unknown over 'rows'"),
    ],
)
def test_bad_options_are_one_line_errors(options, match) -> None:
    with pytest.raises(InputError, match=match):
        options.check()


def test_norm_on_words_and_without_a_model_are_errors() -> None:
    with pytest.raises(InputError, match=r"^weighting='norm' works on tokens: drop words=True$") as caught:
        ViewOptions(weighting="norm").check(words=True)
    assert caught.value.render(cli_terms) == "--weighting norm works on tokens: drop --words"
    assert caught.value.render(api_terms) == "weighting=norm works on tokens: drop words=1"
    with pytest.raises(InputError, match="needs the model"):
        transform(synthetic(TOKENS, SPECIAL), ViewOptions(weighting="norm"))


def test_plain_options_change_nothing() -> None:
    att = synthetic(TOKENS, SPECIAL)
    assert not ViewOptions().changes and ViewOptions(hide_special=True).changes
    assert transform(att, ViewOptions()) is att


def test_hide_then_pool_equals_the_steps_by_hand() -> None:
    att = synthetic(TOKENS, SPECIAL, layers=2, heads=3)
    out = transform(att, ViewOptions(hide_special=True, aggregate="max", over="both"))
    by_hand = aggregate(without_special(att), "both", "max")
    np.testing.assert_array_equal(out.attn, by_hand.attn)
    keep = [1, 2, 3]
    sub = att.attn[:, :, keep][:, :, :, keep]
    np.testing.assert_allclose(out.attn[0, 0], (sub / sub.sum(-1, keepdims=True)).max(axis=(0, 1)), atol=1e-6)
    assert out.notes == ("special tokens hidden, rows renormalised", "max of heads 0-2", "max of layers 0, 1")


def test_float16_attention_stays_float16() -> None:
    att = synthetic(TOKENS, SPECIAL)
    half = type(att)(**{**att.__dict__, "attn": att.attn.astype(np.float16)})
    assert transform(half, ViewOptions(hide_special=True)).attn.dtype == np.float16


def test_extract_shown_is_extract_then_transform_with_one_checked_options_object(tiny_bert):
    """Issue 28: five callers paired extract(qkv=options.qkv) with transform(); one function now."""
    import numpy as np
    import pytest

    from attnviz.analyses.transform import ExtractOptions, ViewOptions, extract_shown, transform
    from attnviz.errors import InputError
    from attnviz.extraction import extract

    loaded = tiny_bert
    view = ViewOptions(weighting="norm", hide_special=True, aggregate="mean")
    shown = extract_shown("the cat sat", loaded, ExtractOptions(layers=(1,), view=view))
    by_hand = transform(extract("the cat sat", loaded, layers=[1], qkv=True), view, loaded)
    assert shown.notes == by_hand.notes and np.array_equal(shown.attn, by_hand.attn)
    with pytest.raises(InputError, match="store"):
        ExtractOptions(store="float8").check()
    with pytest.raises(InputError, match="works on tokens"):
        ExtractOptions(words=True, view=ViewOptions(weighting="norm")).check()


def test_needs_qkv_is_norm_weighting_on_a_model_with_projections(tiny_bert) -> None:
    """One rule (it was written out in cli/pictures.py, cli/heads.py and extract_shown)."""
    from types import SimpleNamespace

    own_code = SimpleNamespace(capture=SimpleNamespace(interface=None))  # value vectors traced instead
    assert ViewOptions(weighting="norm").needs_qkv(tiny_bert) is True
    assert ViewOptions().needs_qkv(tiny_bert) is False
    assert ViewOptions(hide_special=True, aggregate="max").needs_qkv(tiny_bert) is False
    assert ViewOptions(weighting="norm").needs_qkv(own_code) is False


def test_extract_shown_stream_is_extract_shown_per_text_with_the_unweighted_beside(tiny_bert) -> None:
    from attnviz.analyses.transform import ExtractOptions, extract_shown, extract_shown_stream
    from attnviz.extraction import extract

    texts = ["the cat sat on the mat", "a dog", "attention is a weighted average"]
    view = ViewOptions(weighting="norm", hide_special=True)
    options = ExtractOptions(layers=(1,), heads=(0, 2), view=view)
    pairs = list(extract_shown_stream(texts, tiny_bert, options, chunk=2, plain=True))
    assert len(pairs) == 3
    for text, (shown, plain) in zip(texts, pairs, strict=True):
        one = extract_shown(text, tiny_bert, options)
        assert shown.notes == one.notes and np.allclose(shown.attn, one.attn, atol=1e-6)
        by_hand = transform(
            extract(text, tiny_bert, layers=[1], heads=[0, 2]), ViewOptions(hide_special=True)
        )
        assert plain.weighting == "attention" and np.allclose(plain.attn, by_hand.attn, atol=1e-6)
    alone = list(extract_shown_stream(texts[:1], tiny_bert, options))
    assert np.allclose(alone[0].attn, pairs[0][0].attn, atol=1e-6)  # without plain: the shown only
    with pytest.raises(InputError, match="works on tokens"):  # checked before anything is extracted
        next(extract_shown_stream(texts, tiny_bert, ExtractOptions(words=True, view=view)))
    with pytest.raises(InputError, match="self-attention"):  # not silently ignored
        next(extract_shown_stream(texts, tiny_bert, ExtractOptions(words=True)))


def test_extract_options_check_the_stream(tiny_model_path) -> None:
    """--stream is part of the options: the decoder's square stream is transformed, cross stays raw."""
    from dataclasses import replace

    from attnviz.analyses.transform import ExtractOptions, extract_shown
    from attnviz.extraction import extract
    from attnviz.models.loading import load_model

    with pytest.raises(InputError, match=r"^unknown stream 'both'"):
        ExtractOptions(stream="both").check()
    with pytest.raises(InputError, match="one head"):
        ExtractOptions(stream="cross", layers=(0,)).check()
    with pytest.raises(InputError):  # cross-attention is drawn as it is
        ExtractOptions(stream="cross", layers=(0,), heads=(1,), view=ViewOptions(hide_special=True)).check()
    t5 = replace(load_model(str(tiny_model_path("t5")), device="cpu"), max_length=8)  # so the text is cut
    text = "the cat sat on the mat " * 3
    view = ViewOptions(hide_special=True)
    cut = ExtractOptions(truncate=True, view=view, stream="decoder")
    shown = extract_shown(text, t5, cut)
    raw = extract(text, t5, truncate=True)
    assert np.array_equal(shown.attn, transform(raw.stream("decoder"), view).attn)
    assert shown.truncated == raw.truncated > 0  # the decoder reads the encoder's text: cut says so
    pick = {"layers": (0,), "heads": (1,)}
    cross = extract_shown(text, t5, ExtractOptions(truncate=True, stream="cross", **pick))
    assert cross.cross is not None
    assert np.array_equal(cross.cross, extract(text, t5, layers=[0], heads=[1], truncate=True).cross)
