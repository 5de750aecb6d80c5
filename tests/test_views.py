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
from attnviz.errors import InputError
from attnviz.views.html import estimate_bytes, page_data, render_html, safe_json

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


def decode(b64: str, shape: list[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f2").astype(np.float32).reshape(shape)


def data_of(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


# -- page data --------------------------------------------------------------------------------
def test_weights_round_trip_as_float16_for_both_levels():
    att = synthetic()
    data = page_data(att)
    tok = data["levels"]["token"]
    assert tok["tokens"] == att.labels and tok["special"] == list(att.special)
    np.testing.assert_allclose(decode(tok["weights"], tok["shape"]), att.attn, atol=1e-3)
    word = data["levels"]["word"]
    merged = att.to_words()
    assert word["tokens"] == merged.labels == ["[CLS]", "emily", "went", "to", "paris", "[SEP]"]
    np.testing.assert_allclose(decode(word["weights"], word["shape"]), merged.attn, atol=1e-3)
    assert data["layers"] == [0, 1] and data["heads"] == [0, 1, 2] and data["causal"] is False


def test_word_level_is_left_out_when_it_equals_the_tokens():
    from dataclasses import replace

    att = synthetic()
    plain = replace(
        att, tokens=("[CLS]", "a", "b", "c", "d", "e", "[SEP]"), word_ids=(None, 0, 1, 2, 3, 4, None)
    )
    plain = replace(plain, words=("a", "b", "c", "d", "e"))
    assert set(page_data(plain)["levels"]) == {"token"}


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="colour scale"):
        page_data(synthetic(), scale="2")
    with pytest.raises(InputError, match="view"):
        render_html(synthetic(), view="grid")


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
    assert data["levels"]["token"]["tokens"][1:3] == list(INJECTIONS)
    # the title is escaped text
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert "<" not in title and html.unescape(title) == f"attnviz · {att.model} · {att.text[:60]}"


def test_the_script_never_writes_markup():
    from attnviz.views.html import asset

    for name in ("attnviz.js", "serve.js"):
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
    attn = np.full((n_layers, n_heads, n, n), 1.0 / n, dtype=np.float32)
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


def test_a_512_token_text_is_refused_whole_and_fits_with_one_layer():
    with pytest.raises(InputError, match="--layers") as info:
        render_html(long_attention(512, 6))
    assert "\n" not in str(info.value) and "MB" in str(info.value)
    page = render_html(long_attention(512, 1))
    assert len(page.encode()) < 25e6
    assert abs(len(page.encode()) - estimate_bytes(long_attention(512, 1))) < 0.05 * len(page.encode())


# -- notebooks --------------------------------------------------------------------------------
def test_repr_html_is_the_explorer_in_a_sandboxed_iframe():
    att = injected()
    out = att._repr_html_()
    assert out.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in out
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', out).group(1))
    assert srcdoc == render_html(att)
    assert "<script" not in out.split("srcdoc=")[1].split('" sandbox')[0]  # all markup escaped


def test_a_page_too_large_for_a_notebook_is_one_line():
    out = long_attention(512, 6)._repr_html_()
    assert out.startswith("<p>attnviz: the page would be about") and "<iframe" not in out


def test_show_returns_a_view_outside_jupyter(tmp_path):
    import attnviz

    view = attnviz.show(synthetic())
    assert view is not None and view._repr_html_().startswith("<iframe")
    assert view.save(tmp_path / "v.html").read_text().startswith("<iframe")


def test_find_heads_result_shows_an_escaped_ranking():
    from attnviz.search import find_heads

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
    tok = data["levels"]["token"]
    from attnviz.extraction import extract

    att = extract(seed_text, minilm)
    assert tok["shape"] == [6, 12, att.n_tokens, att.n_tokens] and tok["tokens"] == att.labels
    np.testing.assert_allclose(decode(tok["weights"], tok["shape"]), att.attn, atol=1e-3)


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
    assert data["levels"]["word"]["shape"][:2] == [2, 2]
    again = runner.invoke(app, ["view", seed_text, "--layers", "1"])
    assert Path(again.stdout.strip()) != path  # never overwrites
    (tmp_path / "t.txt").write_text(seed_text)
    from_file = runner.invoke(app, ["view", "--file", str(tmp_path / "t.txt"), "-o", str(tmp_path)])
    assert from_file.exit_code == 0 and Path(from_file.stdout.strip()).parent == tmp_path


@pytest.mark.slow
def test_view_refuses_a_long_text_with_one_line_that_says_how_to_narrow(minilm, tmp_path):
    text = " ".join(["word"] * 600)
    result = runner.invoke(app, ["view", text, "--truncate", "-o", str(tmp_path / "x.html")])
    assert result.exit_code == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "--layers" in lines[0]
    one = runner.invoke(app, ["view", text, "--truncate", "--layers", "0", "-o", str(tmp_path / "y.html")])
    assert one.exit_code == 0, one.output
    assert (tmp_path / "y.html").stat().st_size < 25e6
