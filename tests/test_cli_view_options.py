"""--no-special, --no-add-special, --weighting, --aggregate/--over through every command that has them.

Each test checks data against the library on its own (extract, without_special, aggregate,
norm_weighted) or a loop; bad values are one-line errors raised before any model loads (the model
given is a path that does not exist, so a late check would fail with another message).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import ok
from starlette.testclient import TestClient
from typer.testing import CliRunner

from attnviz.analyses.aggregate import aggregate, without_special
from attnviz.analyses.norms import norm_weighted
from attnviz.attention import Attention
from attnviz.cli import app
from attnviz.extraction import extract
from attnviz.models.loading import load_model

TEXT = "The cat sat on the mat and the cat slept"
HIDDEN = "special tokens hidden, rows renormalised"
runner = CliRunner()


@pytest.fixture(scope="module")
def loaded(bert):
    return load_model(bert, device="cpu")


def heat_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]


def image(ax) -> np.ndarray:
    return np.ma.getdata(ax.get_images()[0].get_array()).astype(np.float64)


def labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


# -- bad values: one line, exit 2, before the model loads ----------------------------------------
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["heatmap", TEXT, "--aggregate", "median"], "unknown --aggregate 'median': use mean or max"),
        (["heatmap", TEXT, "--aggregate", "mean", "--over", "rows"], "unknown --over 'rows'"),
        (["heatmap", TEXT, "--weighting", "value"], "unknown --weighting 'value': use attention or norm"),
        (["heatmap", TEXT, "--weighting", "norm", "--words"], "--weighting norm works on tokens"),
        (["heatmap", TEXT, "--stream", "cross", "--layer", "0", "--head", "0", "--no-special"], "raw"),
        (["extract", TEXT, "--weighting", "norms"], "unknown --weighting"),
        (["view", TEXT, "--aggregate", "sum"], "unknown --aggregate"),
        (["view", TEXT, "--over", "tokens"], "unknown --over"),
        (["find-head", "cat", "mat", TEXT, "--weighting", "x"], "unknown --weighting"),
    ],
)
def test_bad_values_fail_in_one_line_before_loading(tmp_path, args, match) -> None:
    result = runner.invoke(app, [*args, "-m", str(tmp_path / "no-such-model")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(re.escape(match), lines[0]), lines[0]


# -- extract --------------------------------------------------------------------------------------
def test_extract_norm_weighting_saves_the_weighted_array(bert, loaded, tmp_path) -> None:
    out = tmp_path / "norm.safetensors"
    summary = json.loads(
        ok("extract", TEXT, "-m", bert, "--weighting", "norm", "-o", str(out), "--json").stdout
    )
    assert summary["weighting"] == "norm"
    saved = Attention.load(out)
    expected = norm_weighted(extract(TEXT, loaded, qkv=True), loaded)
    assert saved.weighting == "norm" and saved.notes == expected.notes
    np.testing.assert_allclose(saved.attn, expected.attn, atol=1e-6)
    assert not np.allclose(saved.attn.sum(-1), 1.0)  # the value norms are in it


def test_extract_no_special_hides_and_renormalises(bert, loaded, tmp_path) -> None:
    out = tmp_path / "a.npz"
    summary = json.loads(ok("extract", TEXT, "-m", bert, "--no-special", "-o", str(out), "--json").stdout)
    assert "[CLS]" not in summary["tokens"] and "[SEP]" not in summary["tokens"]
    saved = Attention.load(out)
    assert saved.notes == (HIDDEN,)
    np.testing.assert_allclose(saved.attn.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(saved.attn, without_special(extract(TEXT, loaded)).attn, atol=1e-6)


def test_extract_no_add_special_changes_the_input_instead(bert, loaded, tmp_path) -> None:
    out = tmp_path / "b.npz"
    ok("extract", TEXT, "-m", bert, "--no-add-special", "-o", str(out))
    saved = Attention.load(out)
    full = extract(TEXT, loaded)
    assert saved.tokens == full.tokens[1:-1] and saved.notes == ()
    np.testing.assert_allclose(saved.attn.sum(-1), 1.0, atol=1e-5)
    hidden = without_special(full).attn  # same tokens, but the model never saw [CLS]/[SEP]
    assert not np.allclose(saved.attn, hidden, atol=1e-3)


# -- heatmap --------------------------------------------------------------------------------------
def test_heatmap_aggregate_max_draws_the_max_over_heads(bert, loaded, figures) -> None:
    ok("heatmap", TEXT, "-m", bert, "--layer", "1", "--aggregate", "max", "--dpi", "20")
    (ax,) = heat_axes(figures[-1][0])
    att = extract(TEXT, loaded, layers=[1])
    np.testing.assert_allclose(image(ax), att.attn[0].max(axis=0), atol=1e-6)
    assert "max of heads 0-3" in ax.get_title()
    assert figures[-1][1].name.endswith("-L1-max.png")


def test_heatmap_aggregate_mean_over_layers(bert, loaded, figures) -> None:
    ok("heatmap", TEXT, "-m", bert, "--head", "2", "--aggregate", "mean", "--over", "layers", "--dpi", "20")
    (ax,) = heat_axes(figures[-1][0])
    att = extract(TEXT, loaded, heads=[2])
    np.testing.assert_allclose(image(ax), att.attn[:, 0].mean(axis=0), atol=1e-6)
    assert "mean of layers 0, 1" in ax.get_title()
    assert figures[-1][1].name.endswith("-H2-mean.png")


def test_heatmap_no_special_hides_ticks_and_renormalises(bert, loaded, figures) -> None:
    ok("heatmap", TEXT, "-m", bert, "--layer", "0", "--head", "1", "--no-special", "--dpi", "20")
    (ax,) = heat_axes(figures[-1][0])
    assert "[CLS]" not in labels(ax) and "[SEP]" not in labels(ax) and "cat" in labels(ax)
    data = image(ax)
    np.testing.assert_allclose(data.sum(-1), 1.0, atol=1e-5)
    assert HIDDEN in ax.get_title()
    full = extract(TEXT, loaded).head(0, 1)[1:-1, 1:-1]
    np.testing.assert_allclose(data, full / full.sum(-1, keepdims=True), atol=1e-6)


def test_heatmap_norm_weighting_says_so(bert, loaded, figures) -> None:
    ok("heatmap", TEXT, "-m", bert, "--layer", "1", "--head", "3", "--weighting", "norm", "--dpi", "20")
    (ax,) = heat_axes(figures[-1][0])
    assert "norm-weighted" in ax.get_title()
    expected = norm_weighted(extract(TEXT, loaded, qkv=True), loaded).head(1, 3)
    np.testing.assert_allclose(image(ax), expected, atol=1e-6)


def test_heatmap_several_layers_pooled_heads_are_titled_as_pooled(bert, figures) -> None:
    ok("heatmap", TEXT, "-m", bert, "--aggregate", "mean", "--dpi", "20")
    fig = figures[-1][0]
    assert len(heat_axes(fig)) == 2  # one pooled head per layer
    assert "pooled heads in every layer" in fig.get_suptitle() and "mean of heads 0-3" in fig.get_suptitle()


# -- entropy ----------------------------------------------------------------------------------------
def test_entropy_no_special_is_the_entropy_of_renormalised_rows(bert, loaded, figures) -> None:
    body = json.loads(ok("entropy", TEXT, "-m", bert, "--no-special", "--json").stdout)
    hidden = without_special(extract(TEXT, loaded))
    p = hidden.attn.astype(np.float64)
    expected = -(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0)).sum(-1).mean(-1)
    assert "[CLS]" not in body["tokens"]
    np.testing.assert_allclose(np.array(body["mean_entropy"]), expected, atol=1e-3)
    ok("entropy", TEXT, "-m", bert, "--layer", "0", "--head", "0", "--no-special", "--dpi", "20")
    fig = figures[-1][0]
    titles = " ".join([fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)])
    assert HIDDEN in titles


# -- find-head and heads ------------------------------------------------------------------------------
def _brute_pair(attn: np.ndarray, a: int, b: int) -> np.ndarray:
    """A->B and B->A of single-piece words, one head at a time; score = the larger."""
    out = np.zeros(attn.shape[:2])
    for li in range(attn.shape[0]):
        for h in range(attn.shape[1]):
            out[li, h] = max(float(attn[li, h, a, b]), float(attn[li, h, b, a]))
    return out


def test_find_head_no_special_ranks_on_renormalised_rows(bert, loaded) -> None:
    rows = json.loads(
        ok("find-head", "sat", "mat", TEXT, "-m", bert, "--no-special", "--top", "0", "--json").stdout
    )
    hidden = without_special(extract(TEXT, loaded))
    a, b = hidden.tokens.index("sat"), hidden.tokens.index("mat")
    brute = _brute_pair(hidden.attn, a, b)
    assert len(rows) == brute.size
    for row in rows:
        assert row["score"] == pytest.approx(brute[row["layer"], row["head"]], abs=1e-5)
    plain = json.loads(ok("find-head", "sat", "mat", TEXT, "-m", bert, "--top", "0", "--json").stdout)
    full = extract(TEXT, loaded)
    brute_full = _brute_pair(full.attn, full.tokens.index("sat"), full.tokens.index("mat"))
    for row in plain:
        assert row["score"] == pytest.approx(brute_full[row["layer"], row["head"]], abs=1e-5)


def test_find_head_plot_of_hidden_rows_says_so(bert, figures, tmp_path) -> None:
    out = tmp_path / "best.png"
    ok("find-head", "sat", "mat", TEXT, "-m", bert, "--no-special", "--plot", str(out))
    (ax,) = heat_axes(figures[-1][0])
    assert HIDDEN in ax.get_title() and "[CLS]" not in labels(ax)
    np.testing.assert_allclose(image(ax).sum(-1), 1.0, atol=1e-5)


def test_hiding_special_tokens_ranks_a_sep_sink_head_on_the_rest_of_its_weight() -> None:
    """Head 0 puts most weight on [SEP] and, of the rest, most on the->cat; head 1 spreads none on
    [SEP]. Shown, head 1 wins on raw weight; hidden and renormalised, head 0 does (0.88 vs 0.86)."""
    from analyses_helpers import synthetic

    from attnviz.analyses.transform import ViewOptions, transform
    from attnviz.heads.search import find_heads

    tokens = ("[CLS]", "the", "cat", "sat", "[SEP]")
    att = synthetic(tokens, (True, False, False, False, True), layers=1, heads=2)
    arr = np.full((1, 2, 5, 5), 0.02, dtype=np.float32)
    arr[0, 0, :, 4] = 0.6
    arr[0, 0, 1, 2] = 0.3
    arr[0, 1, 1, 2] = 0.25
    arr[0, 1, :, 0] = 0.0
    arr /= arr.sum(-1, keepdims=True)
    att = Attention(**{**att.__dict__, "attn": arr})
    shown = find_heads(att, "the", "cat", direction="a2b", top=None).ranking
    hidden = find_heads(transform(att, ViewOptions(hide_special=True)), "the", "cat", direction="a2b").ranking
    assert [h.head for h in shown] == [1, 0] and [h.head for h in hidden] == [0, 1]
    rest = arr[0, 0, 1, 1:4]  # head 0's row for 'the' over the real tokens
    assert hidden[0].score == pytest.approx(float(rest[1] / rest.sum()), abs=1e-6)


def test_heads_no_special_patterns_equal_head_patterns_of_hidden_rows(bert, loaded) -> None:
    from attnviz.heads.patterns import head_patterns

    rows = json.loads(ok("heads", TEXT, "-m", bert, "--no-special", "--top", "0", "--json").stdout)
    table = head_patterns([without_special(extract(TEXT, loaded))])
    expected = {(r.layer, r.head): r.as_dict() for r in table.rows(None)}
    assert len(rows) == len(expected)
    for row in rows:
        ref = expected[(row["layer"], row["head"])]
        for key, value in row.items():
            if isinstance(value, float):
                assert value == pytest.approx(ref[key], abs=1e-5), key


# -- view and serve --------------------------------------------------------------------------------
def _page_data(path: Path) -> dict:
    html = path.read_text(encoding="utf-8")
    raw = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(raw)


def _weights(data: dict) -> np.ndarray:
    from attnviz.views.html import decode_weights

    return decode_weights(data["weights"], [len(data["layers"]), len(data["heads"]), data["n"], data["n"]])


def test_view_shows_pooled_heads_as_one_head(bert, loaded, tmp_path) -> None:
    out = tmp_path / "v.html"
    ok("view", TEXT, "-m", bert, "--aggregate", "mean", "--no-special", "-o", str(out))
    data = _page_data(out)
    assert data["heads"] == [0] and data["layers"] == [0, 1]
    assert "mean of heads 0-3" in data["note"] and HIDDEN in data["note"]
    assert "[CLS]" not in data["tokens"]
    expected = aggregate(without_special(extract(TEXT, loaded)), "heads", "mean").attn
    np.testing.assert_allclose(_weights(data), expected, atol=1 / 126 + 1e-3)  # quantised on the page


def test_serve_api_aggregates_and_hides(loaded) -> None:
    from attnviz.server.app import create_app

    with TestClient(create_app({"bert": loaded}), raise_server_exceptions=False) as client:
        r = client.get("/api/attention", params={"text": TEXT, "aggregate": "max", "over": "both"})
        assert r.status_code == 200, r.text
        body = r.json()
        att = extract(TEXT, loaded)
        np.testing.assert_allclose(np.array(body["attention"])[0, 0], att.attn.max(axis=(0, 1)), atol=1e-6)
        assert body["notes"] == ["max of heads 0-3", "max of layers 0, 1"]
        r = client.get("/api/attention", params={"text": TEXT, "layer": 1, "head": 0, "special": 0})
        body = r.json()
        assert "[CLS]" not in body["tokens"]
        np.testing.assert_allclose(np.array(body["attention"]), without_special(att).head(1, 0), atol=1e-6)
        r = client.get("/api/attention", params={"text": TEXT, "aggregate": "median"})
        assert r.status_code == 400 and "aggregate" in r.json()["error"]
        view = client.get("/api/view", params={"text": TEXT, "aggregate": "mean"}).json()
        assert view["heads"] == [0]


def test_decoder_stream_can_hide_special_tokens(tiny_model_path, figures) -> None:
    """Stream choice comes first (extraction.square_stream), then the same pipeline."""
    t5 = str(tiny_model_path("t5"))
    ok(
        "heatmap",
        "the cat sat",
        "-m",
        t5,
        "--stream",
        "decoder",
        "--layer",
        "0",
        "--head",
        "1",
        "--no-special",
    )
    (ax,) = heat_axes(figures[-1][0])
    decoder = extract("the cat sat", t5, device="cpu").decoder
    expected = without_special(decoder).head(0, 1)
    np.testing.assert_allclose(image(ax), expected, atol=1e-6)
    assert all(not s for s in without_special(decoder).special) and len(labels(ax)) == expected.shape[1]
    result = runner.invoke(app, ["heatmap", "x", "-m", t5, "--stream", "decoder", "--weighting", "norm"])
    assert result.exit_code == 2 and "drop --stream decoder" in result.stderr


@pytest.mark.parametrize(
    ("extra", "options"),
    [
        ([], {}),
        (["--no-special"], {"hide_special": True}),
        (["--aggregate", "mean", "--layers", "1"], {"aggregate": "mean"}),
    ],
)
def test_view_refuses_a_large_page_before_the_forward_pass(
    bert, loaded, tmp_path, monkeypatch, extra, options
):
    """The early check counts exactly the rows the page would carry (the token level), and
    refuses a page whose least size is over --max-mb (compression varies; page_data checks the rest)."""
    import attnviz.extraction
    from attnviz.analyses.transform import ViewOptions, transform
    from attnviz.views.html import check_page_fits, least_bytes

    att = transform(
        extract(TEXT, loaded, layers=[1] if "--layers" in extra else None), ViewOptions(**options)
    )
    size = least_bytes(*att.attn.shape[:3])  # what the page takes at the least
    layers = [1] if "--layers" in extra else None
    check_page_fits(loaded, TEXT, layers=layers, options=ViewOptions(**options), max_mb=size / 1e6)
    with pytest.raises(Exception, match="the page would be at least about"):
        check_page_fits(loaded, TEXT, layers=layers, options=ViewOptions(**options), max_mb=(size - 1) / 1e6)

    def no_forward(*args, **kwargs):
        raise AssertionError("the forward pass ran before the size check")

    monkeypatch.setattr(attnviz.extraction, "run_batch", no_forward)
    max_mb = str((size - 1) / 1e6)
    result = runner.invoke(
        app, ["view", TEXT, "-m", bert, "-o", str(tmp_path / "v.html"), "--max-mb", max_mb, *extra]
    )
    assert result.exit_code == 2 and result.output.startswith("error: the page would be at least about")
    assert result.output.count("\n") == 1 and not (tmp_path / "v.html").exists()
