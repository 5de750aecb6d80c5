"""Word alignment and word lookup, independent of the tokenizer family."""

from __future__ import annotations

import pytest
import tokenizers_helpers

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
    pieces = ["<s>", "ĠParis", "Ġ", "ä", "¸", "Ń", "ðŁĺ", "Ģ", "Ċ", "ĉ", "ĠĠ", ".ĊĊ"]
    assert readable(pieces, ["<s>"]) == [
        "<s>",
        "Paris",
        "␣",
        "中…",
        "…中…",
        "…中",
        "😀…",
        "…😀",
        "\\n",
        "\\t",
        "␣␣",
        ".\\n\\n",
    ]
    assert readable(["Ġcaf", "Ã©"]) == ["caf", "é"]  # é = c3 a9: one piece, one character
    assert readable(["ä¸", "Ńæĸĩ"]) == ["中…", "…中文"]  # the end of one character, then a whole one
    assert readable(["ä", "¸"]) == ["\\xe4", "\\xb8"]  # never completed: every byte escaped
    assert readable(["[CLS]", "##ers"]) == ["[CLS]", "##ers"]  # not byte spellings: unchanged


def test_readable_decodes_sentencepiece_byte_fallback():
    from attnviz.tokens import readable

    pieces = ["<s>", "▁I", "▁", "<0xE4>", "<0xB8>", "<0xAD>", "文", "▁cat", "<0x0A>", "▁▁"]
    assert readable(pieces, ["<s>"], "sentencepiece") == [
        "<s>", "I", "␣", "中…", "…中…", "…中", "文", "cat", "\\n", "␣␣",
    ]  # fmt: skip
    assert readable(["<0xE4>", "<0xB8>"], kind="sentencepiece") == ["\\xe4", "\\xb8"]
    assert readable(["[CLS]", "trans", "##former", "[UNK]"], ["[CLS]", "[UNK]"], "wordpiece") == [
        "[CLS]", "trans", "##former", "[UNK]",
    ]  # fmt: skip


def rebuild(labels: list[str]) -> str:
    """The text back from labels, each split character counted once and whitespace dropped."""
    from attnviz.tokens import SPLIT

    out = ""
    for label in labels:
        if label.startswith(SPLIT):
            label = label[2:]  # the end of a character the piece before already gave
        out += label.removesuffix(SPLIT).replace("␣", "").replace("\\n", "")
    return out


@pytest.mark.parametrize("name", tokenizers_helpers.FAMILIES)
def test_every_family_labels_its_pieces_as_the_text(name):
    from attnviz.tokens import family, token_labels

    tok = tokenizers_helpers.BUILDERS[name]()
    ids = tok(tokenizers_helpers.TEXT)["input_ids"]
    labels, pieces = token_labels(tok, ids)
    assert pieces == tok.convert_ids_to_tokens(ids)  # raw pieces untouched
    expected_family = {"byte-fallback": "sentencepiece", "unigram": "sentencepiece"}.get(name, name)
    assert family(tok) == expected_family
    special = set(tok.all_special_tokens)
    text_labels = [t for t in labels if t not in special]
    if name == "wordpiece":  # lower-cased, whole characters; the emoji is [UNK]
        assert labels == ["[CLS]", "paris", "北", "京", "[UNK]", "cat", "##s", "o", "##k", "[SEP]"]
        return
    assert any(p.startswith(("Ġ", "▁", "<0x")) for p in pieces)  # the raw pieces do need reading
    assert not any(m in t for t in text_labels for m in ("Ġ", "▁", "<0x", "\\x", "Ċ", "å", "ð")), labels
    assert rebuild(text_labels) == tokenizers_helpers.TEXT.replace(" ", "").replace("\n", "")
    # every piece of 北 and 京 says which character it is part of
    assert labels[labels.index("北…") : labels.index("…京") + 1] == [
        "北…",
        "…北…",
        "…北",
        "京…",
        "…京…",
        "…京",
    ]
    assert "😀…" in labels and "…😀" in labels and "\\n" in labels


@pytest.fixture(scope="session")
def family_paths(tmp_path_factory):
    """A tiny random model folder per tokenizer family."""
    root = tmp_path_factory.mktemp("families")
    return {name: tokenizers_helpers.build_model(name, root / name) for name in tokenizers_helpers.FAMILIES}


@pytest.fixture(scope="session")
def family_models(family_paths):
    from attnviz.models.loading import load_model

    return {name: load_model(str(path), device="cpu") for name, path in family_paths.items()}


@pytest.mark.parametrize("name", tokenizers_helpers.FAMILIES)
def test_extract_and_lookups_use_the_labels(family_models, name):
    from attnviz.extraction import extract
    from attnviz.tokens import positions, token_labels

    loaded = family_models[name]
    att = extract(tokenizers_helpers.TEXT, loaded)
    labels, pieces = token_labels(loaded.tokenizer, att.token_ids)
    assert list(att.tokens) == labels == att.labels and list(att.pieces) == pieces
    words = att.to_words()
    blank = ("␣", "\\n", *loaded.tokenizer.all_special_tokens)  # units of their own
    shown = [t for t in words.tokens if t not in blank]
    assert shown == ["Paris", "北京", "😀", "cats", "ok"]  # words come from the text
    pieces_of = [i for i, w in enumerate(att.word_ids) if w == 1]  # 北京's pieces
    assert positions(att, "北京") == pieces_of
    if name == "wordpiece":
        assert positions(att, "北") == pieces_of[:1]
    else:  # no piece is 北 itself: the pieces covering its characters (issue 31), each also by label
        covering = [i for i in pieces_of if att.spans[i][0] < att.text.index("北") + 1]
        assert positions(att, "北") == covering and len(covering) >= 2
        assert positions(att, "北…") == pieces_of[:1] and positions(att, "…北") == pieces_of[2:3]
        with pytest.raises(TokenNotFoundError, match=r"its tokens are: .*北… …北… …北 京…"):
            positions(att, "东")  # a character the text does not hold: the error lists the pieces


def test_word_units_share_a_unit_per_word():
    from attnviz.tokens import word_units

    labels, unit_of = word_units(
        ["[CLS]", "transform", "##ers", "attend", "[SEP]"], [None, 0, 0, 1, None], ["transformers", "attend"]
    )
    assert labels == ["[CLS]", "transformers", "attend", "[SEP]"] and unit_of == [0, 1, 1, 2, 3]


def test_every_surface_shows_the_same_labels(family_paths, family_models, figures, tmp_path, monkeypatch):
    """Figures, JSON of the commands, the server API, the HTML view and batch records: one rule."""
    import json

    from helpers import cli_ok, tick_labels
    from starlette.testclient import TestClient

    from attnviz.batch import run_batch_analysis
    from attnviz.batch.config import make_config
    from attnviz.extraction import extract
    from attnviz.server.app import create_app
    from attnviz.views.html import render_html

    text, model = tokenizers_helpers.TEXT, str(family_paths["byte-level"])
    loaded = family_models["byte-level"]
    monkeypatch.setattr("attnviz.cli._options.load", lambda *args, **kwargs: loaded)  # loaded once
    want = list(extract(text, loaded).tokens)
    assert "北…" in want and "cat" in want and not any("Ġ" in t for t in want)
    # JSON outputs
    assert json.loads(cli_ok(["extract", text, "-m", model, "--json"]).stdout)["tokens"] == want
    found = cli_ok(["find-head", "北京", "cats", text, "-m", model, "-k", "1"])
    assert "A '北京' = tokens 4, 5, 6, 7, 8, 9," in found.output
    # figures
    cli_ok(["heatmap", text, "-m", model, "-l", "0", "--head", "0", "-o", str(tmp_path / "h.png")])
    fig, _ = figures[-1]
    assert tick_labels(fig, "x") == want
    # the HTML view and the server API
    page = render_html(extract(text, loaded))
    data = json.loads(page.split('id="attnviz-data">')[1].split("</script>")[0])
    assert data["tokens"] == want
    with TestClient(create_app({"tiny": loaded})) as client:
        api = client.get("/api/attention", params={"text": text, "layer": 0, "head": 0}).json()
    assert api["tokens"] == want
    # batch records (the raw tensors' shards carry each text's tokens)
    out = tmp_path / "run"
    run_batch_analysis([text], make_config(save_attention=True, plots=False), out, model=loaded)
    from safetensors import safe_open

    (shard,) = (out / "_attention").glob("*.safetensors")
    with safe_open(str(shard), framework="numpy") as f:
        assert json.loads(f.metadata()["tokens"]) == {"0": want}


def test_files_saved_before_the_rule_are_read_with_their_labels(tmp_path):
    """A file whose tokens are raw marks ('ĠParis') is read back as the labels would be now."""
    import json

    import numpy as np
    from analyses_helpers import synthetic

    from attnviz.attention import Attention

    att = synthetic(("<s>", "Paris", "␣", "北…", "…北"), causal=True)
    assert Attention.load(att.save(tmp_path / "new.npz")).tokens == att.tokens  # kept exactly
    meta = att.metadata()
    meta.pop("labels")
    meta["tokens"] = ["<s>", "ĠParis", "Ġ", "Ġå", "\\x8c"]
    np.savez_compressed(tmp_path / "old.npz", self=att.attn, metadata=np.array(json.dumps(meta)))
    assert Attention.load(tmp_path / "old.npz").labels == ["<s>", "Paris", "Ġ", "å", "\\x8c"]


@pytest.mark.slow
def test_smollm2_labels_beijing_and_an_emoji_in_every_surface(smollm2, figures, tmp_path, monkeypatch):
    """SmolLM2 (byte-level BPE from a GGUF file) splits 北 over three pieces and 😀 over two."""
    import json

    from helpers import cli_ok, tick_labels

    from attnviz.extraction import extract

    text = "the cat loves 北京 😀!"
    att = extract(text, smollm2, layers=[0])
    want = ["the", "cat", "loves", "北…", "…北…", "…北", "京…", "…京", "😀…", "…😀", "!"]
    assert list(att.tokens) == want and att.pieces[1] == "Ġcat" and att.pieces[3] == "Ġå"
    for where in ("attnviz.cli._options.load", "attnviz.cli.pictures.load"):  # the session's model
        monkeypatch.setattr(where, lambda *args, **kwargs: smollm2)
    assert (
        json.loads(cli_ok(["extract", text, "-m", "smollm2", "--layers", "0", "--json"]).stdout)["tokens"]
        == want
    )
    cli_ok(["heatmap", text, "-m", "smollm2", "-l", "0", "--head", "0", "-o", str(tmp_path / "h.png")])
    assert tick_labels(figures[-1][0], "x") == want
