"""The HTML explorer: data round-trips, escaping, the CSP, size limits, `attnviz view`, notebooks."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import synthetic
from typer.testing import CliRunner

from attnviz.attention import Attention
from attnviz.cli import app
from attnviz.errors import InputError, cli_terms
from attnviz.views.html import (
    QUANT_LEVELS,
    decode_weights,
    encode_weights,
    page_data,
    render_html,
    safe_json,
)

runner = CliRunner()
INJECTIONS = (
    "</script><script>document.title='x'</script>",
    "<img src=x onerror=alert(1)>",
)


def injected() -> Attention:
    """The synthetic attention whose tokens and text are script-injection attempts."""
    att = synthetic(text=" ".join(INJECTIONS))
    from dataclasses import replace

    return replace(att, tokens=("[CLS]", *INJECTIONS, "a&b", "<b>x</b>", "'\"", "[SEP]"), model="<i>m</i>")


def decoded(data: dict) -> np.ndarray:
    """The page's token-level weights, as its script decodes them."""
    shape = [len(data["layers"]), len(data["heads"]), data["n"], data["n"]]
    return decode_weights(data["weights"], shape)


def assert_within_stated_error(data: dict, attn: np.ndarray) -> None:
    """Column 0 as float16; every other weight within half a step (top / 126) of its head's top."""
    back = decoded(data)
    np.testing.assert_allclose(back[..., 0], attn[..., 0], atol=1e-3)
    rest = attn.copy()
    rest[..., 0] = 0
    top = rest.max(axis=(-1, -2), keepdims=True)
    err = np.abs(back[..., 1:] - attn[..., 1:])
    assert (err <= top / (2 * QUANT_LEVELS) + 1e-6).all(), float((err / top).max())


def merged_like_the_page(data: dict, attn: np.ndarray) -> np.ndarray:
    """The word level the page's script builds from the token level: pieces summed over keys,
    averaged over queries (the same rule as Attention.to_words)."""
    unit = np.array(data["words"]["unit"])
    n_units = len(data["words"]["tokens"])
    assign = np.zeros((n_units, len(unit)), dtype=np.float32)
    assign[unit, np.arange(len(unit))] = 1
    return np.einsum("uq,lhqk,vk->lhuv", assign / assign.sum(1, keepdims=True), attn, assign)


def data_of(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


# -- page data --------------------------------------------------------------------------------
def test_weights_round_trip_within_the_stated_error_and_words_merge_in_the_page():
    att = synthetic()
    data = page_data(att)
    assert data["tokens"] == att.labels and data["special"] == list(att.special)
    assert data["weights"]["encoding"] == "q6-deflate"
    assert_within_stated_error(data, att.attn)
    merged = att.to_words()
    assert data["words"]["tokens"] == merged.labels == ["[CLS]", "emily", "went", "to", "paris", "[SEP]"]
    assert data["words"]["special"] == list(merged.special)
    np.testing.assert_allclose(merged_like_the_page(data, att.attn), merged.attn, atol=1e-6)
    np.testing.assert_allclose(merged_like_the_page(data, decoded(data)), merged.attn, atol=0.02)
    assert data["layers"] == [0, 1] and data["heads"] == [0, 1, 2] and data["causal"] is False
    assert data["spans"] == [list(s) for s in att.spans]


def test_the_encoding_can_fail():
    """A wrong step count or a lost sink column is caught by the error check above."""
    att = synthetic(causal=True)
    data = page_data(att)
    data["weights"]["steps"] = QUANT_LEVELS - 1
    with pytest.raises(AssertionError):
        assert_within_stated_error(data, att.attn)
    data = page_data(att)
    data["weights"]["first"] = encode_weights(np.zeros_like(att.attn))["first"]
    with pytest.raises(AssertionError):
        assert_within_stated_error(data, att.attn)


def test_word_level_is_left_out_when_it_equals_the_tokens():
    from dataclasses import replace

    att = synthetic()
    plain = replace(
        att, tokens=("[CLS]", "a", "b", "c", "d", "e", "[SEP]"), word_ids=(None, 0, 1, 2, 3, 4, None)
    )
    plain = replace(plain, words=("a", "b", "c", "d", "e"))
    assert page_data(plain)["words"] is None
    assert page_data(plain, level="word")["level"] == "token"


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match=r"^bad scale 'bright'"):
        page_data(synthetic(), scale="bright")
    with pytest.raises(InputError, match="view"):
        render_html(synthetic(), view="grid")
    assert page_data(synthetic(), scale="0.5")["scale"] == "0.5"


# -- safety -----------------------------------------------------------------------------------
def test_safe_json_never_closes_a_script_and_reads_back_the_same():
    value = {"t": [*INJECTIONS, "a & b", "]]>", "<!--"]}
    text = safe_json(value)
    assert not set("<>&") & set(text)
    assert json.loads(text) == value


def test_injected_text_and_tokens_are_data_not_markup():
    att = injected()
    page = render_html(att)
    # only the two script elements the page itself carries, and nothing else that could run
    assert page.count("<script") == 2 and page.lower().count("</script") == 2
    assert "onerror" not in page.split('id="attnviz-data">')[0]  # not in the head or title as markup
    assert "<img" not in page
    data = data_of(page)
    assert data["text"] == att.text and data["model"] == "<i>m</i>"
    assert data["tokens"][1:3] == list(INJECTIONS)
    # the title is escaped text
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert "<" not in title and html.unescape(title) == f"attnviz · {att.model} · {att.text[:60]}"


def test_the_script_never_writes_markup():
    from attnviz.views.html import SCRIPTS, asset

    for name in (*SCRIPTS, "serve.js"):
        code = asset(name)
        assert "innerHTML" not in code and "outerHTML" not in code and "insertAdjacentHTML" not in code
        assert "document.write" not in code and "eval(" not in code


def test_csp_forbids_the_network_and_allows_only_the_inline_script():
    page = render_html(synthetic())
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page).group(1)
    assert "default-src 'none'" in csp
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "http" not in csp and "*" not in csp
    # the only URL in the whole page is the SVG namespace (a name, never fetched)
    assert set(re.findall(r"https?://[^\s\"')]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "@import" not in page and "url(" not in page and " src=" not in page


# -- size -------------------------------------------------------------------------------------
def long_attention(n: int, n_layers: int, n_heads: int = 12) -> Attention:
    from dataclasses import replace

    att = synthetic()
    attn = np.broadcast_to(np.float32(1.0 / n), (n_layers, n_heads, n, n))  # uniform rows, no memory
    tokens = ("[CLS]", *(f"w{i}" for i in range(n - 2)), "[SEP]")
    return replace(
        att,
        tokens=tokens,
        spans=tuple((0, 0) for _ in tokens),
        word_ids=(None, *range(n - 2), None),
        words=tuple(tokens[1:-1]),
        special=(True, *([False] * (n - 2)), True),
        layers=tuple(range(n_layers)),
        heads=tuple(range(n_heads)),
        attn=attn,
    )


def peaked_attention(n: int, n_layers: int, n_heads: int = 12, seed: int = 0) -> Attention:
    """Random attention shaped like a model's: a sink column and a few strong keys per row."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_layers, n_heads, n, n)).astype(np.float32) * 2.5
    logits[..., 0] += 4
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    return replace(long_attention(n, n_layers, n_heads), attn=attn / attn.sum(-1, keepdims=True))


def huge_attention(n: int = 2048, n_layers: int = 6, n_heads: int = 12) -> Attention:
    """A page of about 100 MB without the memory: one diffuse head repeated over every head."""
    from dataclasses import replace

    one = np.random.default_rng(0).random((n, n), dtype=np.float32) ** 2
    one /= one.sum(-1, keepdims=True)
    return replace(long_attention(n, n_layers, n_heads), attn=np.broadcast_to(one, (n_layers, n_heads, n, n)))


def test_a_huge_page_is_refused_before_encoding_and_a_big_one_after(monkeypatch):
    import attnviz.views.html

    def no_encoding(attn):
        raise AssertionError("a page far over the limit was encoded")

    monkeypatch.setattr(attnviz.views.html, "encode_weights", no_encoding)
    with pytest.raises(
        InputError, match=r"narrow it with layers \(e.g. layers=\[0\]\) or heads, allow it with max_mb,"
    ) as info:
        render_html(huge_attention())  # refused on the estimate alone
    cli = "narrow it with --layers (e.g. --layers 0) or --heads, allow it with --max-mb,"
    assert cli in info.value.render(cli_terms)
    assert "\n" not in str(info.value) and "MB" in str(info.value) and "attnviz serve" in str(info.value)
    monkeypatch.undo()
    att = peaked_attention(256, 2)
    page = render_html(att)
    with pytest.raises(InputError, match="MB"):
        render_html(att, max_mb=len(page.encode()) / 2e6)
    assert len(page.encode()) < 0.4 * att.attn.size  # under 0.4 bytes a weight (float16 was 2.7)


# -- notebooks --------------------------------------------------------------------------------
def test_repr_html_is_the_explorer_in_a_sandboxed_iframe():
    att = injected()
    out = att._repr_html_()
    assert out.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in out
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', out).group(1))
    assert srcdoc == render_html(att)
    assert "<script" not in out.split("srcdoc=")[1].split('" sandbox')[0]  # all markup escaped


def test_a_page_too_large_for_a_notebook_is_one_line():
    out = huge_attention()._repr_html_()
    assert out.startswith("<p>attnviz: the page would be about") and "<iframe" not in out


def test_show_returns_a_view_outside_jupyter(tmp_path):
    import attnviz

    view = attnviz.show(synthetic())
    assert view is not None and view._repr_html_().startswith("<iframe")
    assert view.save(tmp_path / "v.html").read_text().startswith("<iframe")


def test_find_heads_result_shows_an_escaped_ranking():
    from attnviz.heads.search import find_heads

    result = find_heads(synthetic(), "emily", "paris", top=3)
    out = result._repr_html_()
    assert out.count("<tr>") == 4  # header + 3 rows
    assert f"<td>{result.best.layer}</td><td>{result.best.head}</td>" in out


# -- CLI --------------------------------------------------------------------------------------
def test_view_rejects_a_bad_output_before_loading_a_model():
    result = runner.invoke(app, ["view", "some text", "-o", "x.png", "--model", "no/such-model"])
    assert result.exit_code == 2 and "should end with .html" in result.stderr
    result = runner.invoke(app, ["view", "some text", "--view", "grid"])
    assert result.exit_code == 2 and "--view" in result.stderr


def test_a_bad_generation_page_path_names_the_keyword_and_the_cli_the_flag():
    from attnviz.views.generation import check_view_output

    with pytest.raises(InputError, match=r"^path x.png should end with .html$") as info:
        check_view_output(Path("x.png"))
    assert info.value.render(cli_terms) == "--view x.png should end with .html"


def test_cli_imports_no_web_stack():
    code = (
        "import sys\nfrom attnviz.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('starlette', 'uvicorn', 'numpy', 'selenium') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout and "view" in out.stdout and "serve" in out.stdout


@pytest.mark.slow
def test_view_of_the_seed_sentence_is_small_and_complete(minilm, seed_text, tmp_path):
    out = tmp_path / "seed.html"
    result = runner.invoke(app, ["view", seed_text, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    size = out.stat().st_size
    assert size < 300_000, size
    data = data_of(out.read_text())
    from attnviz.extraction import extract

    att = extract(seed_text, minilm)
    assert data["n"] == att.n_tokens and data["tokens"] == att.labels
    assert data["layers"] == list(range(6)) and data["heads"] == list(range(12))
    assert_within_stated_error(data, att.attn)


@pytest.mark.slow
def test_view_selection_options_and_default_path(minilm, seed_text, tmp_path):
    result = runner.invoke(
        app, ["view", "--layers", "1-2", "--heads", "0,5", "--words", "--scale", "1"], input=seed_text
    )
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.parent == Path("outputs") and path.suffix == ".html" and path.name.startswith("view-emily")
    data = data_of(path.read_text())
    assert data["layers"] == [1, 2] and data["heads"] == [0, 5]
    assert data["level"] == "word" and data["scale"] == "1"
    assert data["words"] is not None and len(data["weights"]["top"]) == 4
    again = runner.invoke(app, ["view", seed_text, "--layers", "1"])
    assert Path(again.stdout.strip()) != path  # never overwrites
    (tmp_path / "t.txt").write_text(seed_text)
    from_file = runner.invoke(app, ["view", "--file", str(tmp_path / "t.txt"), "-o", str(tmp_path)])
    assert from_file.exit_code == 0 and Path(from_file.stdout.strip()).parent == tmp_path


@pytest.mark.slow
def test_view_writes_a_512_token_page_with_every_layer_under_5_mb(minilm, tmp_path):
    text = " ".join(f"Emily visited Paris on day {i} and wrote about the French lessons." for i in range(60))
    result = runner.invoke(app, ["view", text, "--truncate", "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "x.html").read_text()
    assert len(page.encode()) < 5e6
    data = data_of(page)
    assert data["n"] == 512 and data["layers"] == list(range(6))
    small = runner.invoke(app, ["view", text, "--truncate", "--max-mb", "1", "-o", str(tmp_path / "y.html")])
    assert small.exit_code == 2
    lines = [x for x in small.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "--layers" in lines[0]


# -- the generation page's layout -------------------------------------------------------------
def test_generation_layout_puts_tokens_back_on_their_text():
    from attnviz.views.generation import layout

    labels = [
        "<|im_start|>",
        "user",
        "\\n",
        "Hello",
        "<|im_end|>",
        "world",
        "\\n\\n",
        "巴…",
        "…巴…",
        "…巴",
        "!",
    ]
    special = [True, False, False, False, True, False, False, False, False, False, False]
    pieces, gaps, boxed = layout(labels, special, [("Hello", 5), (" world\n\n巴 !", None)])
    assert boxed == [True, True, True, False, True, False, False, False, False, False, False]
    assert pieces[3] == "Hello" and pieces[5:] == ["world", "\n\n", "巴", "", "", "!"]
    assert gaps == ["", "", "", "", "", " ", "", "", "", "", " ", ""]
    text = "".join(g + ("" if b else p) for g, p, b in zip(gaps, pieces, boxed, strict=False)) + gaps[-1]
    assert text == "Hello world\n\n巴 !"
    # a piece never found keeps the rest of the text in the last gap: nothing of the text is lost
    pieces, gaps, boxed = layout(["a", "zzz", "c"], [False] * 3, [("a b c", None)])
    assert boxed == [False, True, False] and gaps == ["", "", " b ", ""]  # "c" found past the box
    pieces, gaps, boxed = layout(["a", "zzz", "q"], [False] * 3, [("a b c", None)])
    assert boxed == [False, True, True] and gaps[-1] == " b c"


# -- the page's size, estimated before it is encoded --------------------------------------------
def model_like(n: int, n_layers: int, n_heads: int, causal: bool, seed: int = 0) -> Attention:
    """Attention shaped like a model's at every depth: a sink, diffuse early heads, sharp late ones,
    a previous-token head, a head that only looks at the sink; causal or not."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    attn = np.empty((n_layers, n_heads, n, n), np.float32)
    below = np.tril(np.ones((n, n), dtype=bool)) if causal else np.ones((n, n), dtype=bool)
    for layer in range(n_layers):
        for h in range(n_heads):
            sharp = 0.5 + 4.0 * (layer * n_heads + h) / max(1, n_layers * n_heads - 1)
            logits = rng.normal(size=(n, n)).astype(np.float32) * sharp
            logits[:, 0] += 3.0
            if h % 4 == 1:
                logits[np.arange(1, n), np.arange(n - 1)] += 12.0  # previous token
            if h % 4 == 3 and layer % 2:
                logits[:, 0] += 40.0  # all on the sink
            logits = np.where(below, logits, -np.inf)
            e = np.exp(logits - logits.max(-1, keepdims=True))
            attn[layer, h] = e / e.sum(-1, keepdims=True)
    att = long_attention(n, n_layers, n_heads)
    return replace(att, attn=attn, causal=causal, kind="decoder" if causal else "encoder")


@pytest.mark.parametrize(
    ("n", "n_layers", "n_heads", "causal", "options"),
    [
        (14, 6, 12, False, {}),
        (128, 4, 12, False, {"level": "word"}),
        (300, 2, 6, True, {"view": "model"}),
        (700, 1, 8, False, {}),
        (1200, 1, 4, True, {}),
        (2100, 1, 3, True, {"scale": "log"}),
    ],
)
def test_the_size_estimate_is_within_1_5x_of_the_page(n, n_layers, n_heads, causal, options):
    from attnviz.views.html import estimate_bytes

    att = model_like(n, n_layers, n_heads, causal)
    real = len(render_html(att, max_mb=None, **options).encode())
    estimate = estimate_bytes(att)
    assert real / 1.5 <= estimate <= real * 1.5, (estimate, real, estimate / real)


def test_a_page_that_fits_is_written_and_one_that_does_not_is_refused_with_its_size():
    att = model_like(1500, 1, 4, True)
    real = len(render_html(att, max_mb=None).encode())
    assert render_html(att, max_mb=real * 1.01 / 1e6)  # fits: written, whatever the estimate said
    with pytest.raises(InputError, match=r"the page would be about \d") as info:
        render_html(att, max_mb=real * 0.9 / 1e6)
    said = float(re.search(r"about ([\d.]+) MB", str(info.value)).group(1)) * 1e6
    assert real / 1.5 <= said <= real * 1.5


def test_generation_layout_steps_over_an_unknown_token_and_reads_stray_bytes():
    from attnviz.views.generation import layout

    # T5 reads an emoji as <unk> (special): the next token finds its text after it
    pieces, gaps, boxed = layout(
        ["Paris", ".", "<unk>", "The", "cat"],
        [False, False, True, False, False],
        [("Paris. 😀 The cat", None)],
    )
    assert boxed == [False, False, True, False, False] and gaps[3] == " 😀 " and pieces[3:] == ["The", "cat"]
    # bytes a sampled model wrote that spell no character decode as U+FFFD
    pieces, gaps, boxed = layout(["ok", "\\xb9", "\\xb9\\xb9"], [False] * 3, [("ok\ufffd\ufffd\ufffd", None)])
    assert boxed == [False] * 3 and pieces == ["ok", "\ufffd", "\ufffd\ufffd"]


@pytest.mark.parametrize("max_mb", [0.0, -1.0, float("nan")])
def test_a_page_limit_not_above_zero_is_refused_by_the_library(max_mb):
    """Issue 28: `render_html(max_mb=nan)` wrote any page (every comparison with NaN is false) and
    0 refused each page as too big; the rule was `attnviz view`'s alone."""
    from attnviz.views.html import check_page_options, page_data, render_html

    att = synthetic()
    for call in (
        lambda: render_html(att, max_mb=max_mb),
        lambda: page_data(att, max_mb=max_mb),
        lambda: check_page_options("head", max_mb),
    ):
        with pytest.raises(InputError, match=r"^bad max_mb .*: use a size above 0 megabytes$") as caught:
            call()
        assert caught.value.render(cli_terms).startswith("bad --max-mb ")
    with pytest.raises(InputError, match=r"^unknown view 'nope': use head, matrix, model, text$") as caught:
        render_html(att, view="nope")
    assert caught.value.render(cli_terms).startswith("unknown --view 'nope'")
