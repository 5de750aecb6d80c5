"""Word alignment and word lookup, independent of the tokenizer family."""

from __future__ import annotations

import pytest

from attnviz.errors import TokenNotFoundError
from attnviz.tokens import align_words, display, locate, normalise, words_of


def test_words_of_splits_words_and_punctuation():
    assert [w for w, *_ in words_of("Paris, she's here!")] == ["Paris", ",", "she's", "here", "!"]


def test_align_words_handles_leading_spaces_and_specials():
    text = "the cat"
    spans = [(0, 0), (0, 3), (3, 7), (0, 0)]  # GPT-2 style: " cat" includes the space
    ids, words = align_words(text, spans, [True, False, False, True])
    assert ids == [None, 0, 1, None] and words == ["the", "cat"]


def test_display_and_normalise():
    assert display("Ġcat") == "cat" and display("▁cat") == "cat" and display("##ers") == "##ers"
    assert normalise("ĠParis") == "paris" and normalise("▁Cat") == "cat"


def test_locate_by_word_position_and_occurrence():
    units = ["[CLS]", "the", "cat", "saw", "the", "dog", "[SEP]"]
    assert locate("THE", units).index == 1
    m = locate("the", units, occurrence=2)
    assert m.index == 4 and m.occurrences == (1, 4) and m.occurrence == 2
    assert locate("@5", units).index == 5 and locate("@-1", units).index == 6
    with pytest.raises(TokenNotFoundError, match=r"its tokens are: .*cat"):
        locate("paris", units)
    with pytest.raises(TokenNotFoundError, match="occurrence 3"):
        locate("the", units, occurrence=3)
    with pytest.raises(TokenNotFoundError, match="out of range"):
        locate("@9", units)


def test_readable_decodes_byte_level_pieces():
    from attnviz.tokens import readable

    # "中" is e4 b8 ad, spelt 'ä' '¸' 'Ń'; "😀" is f0 9f 98 80, spelt 'ðŁĺ' 'Ģ'
    pieces = ["<s>", "ĠParis", "Ġ", "ä", "¸", "Ń", "ðŁĺ", "Ģ", "Ċ", "ĉ"]
    assert readable(pieces, ["<s>"]) == [
        "<s>",
        "ĠParis",
        "Ġ",
        "中",
        "\\xb8",
        "\\xad",
        "😀",
        "\\x80",
        "Ċ",
        "\\t",
    ]
    assert readable(["Ġcaf", "Ã©"]) == ["Ġcaf", "é"]  # é = c3 a9: one piece, one character
    assert readable(["ä", "¸"]) == ["\\xe4", "\\xb8"]  # never completed: every byte escaped
    assert readable(["[CLS]", "##ers"]) == ["[CLS]", "##ers"]  # not byte spellings: unchanged


def test_word_units_share_a_unit_per_word():
    from attnviz.tokens import word_units

    labels, unit_of = word_units(
        ["[CLS]", "transform", "##ers", "attend", "[SEP]"], [None, 0, 0, 1, None], ["transformers", "attend"]
    )
    assert labels == ["[CLS]", "transformers", "attend", "[SEP]"] and unit_of == [0, 1, 1, 2, 3]
