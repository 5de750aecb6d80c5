"""`attnviz heatmap`, `entropy`, `toy` and `explain` through the command line, every option.

Figures are captured on their way to disk, so the pictures are checked by their data too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import bad, ok
from typer.testing import CliRunner

from attnviz.cli import app

SEED = "Emily always wanted to visit Paris so she took some French lessons"
SEED_TOKENS = [
    "[CLS]",
    "emily",
    "always",
    "wanted",
    "to",
    "visit",
    "paris",
    "so",
    "she",
    "took",
    "some",
    "french",
    "lessons",
    "[SEP]",
]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def heat_axes(fig):
    return [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]


def ticks(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


# -- heatmap ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_head_to_png_with_size_and_dpi(minilm, figures, tmp_path):
    out = tmp_path / "one.png"
    result = ok(
        "heatmap", SEED, "--layer", "1", "--head", "5", "-o", str(out), "--size", "6x5", "--dpi", "50"
    )
    assert result.stdout.strip() == str(out)
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (300, 250)
    fig, _ = figures[-1]
    (ax,) = heat_axes(fig)
    assert ticks(ax.xaxis) == SEED_TOKENS and ticks(ax.yaxis) == SEED_TOKENS
    im = ax.get_images()[0]
    assert im.get_array().shape == (14, 14)
    np.testing.assert_allclose(im.get_array(), minilm_head(minilm, 1, 5), atol=1e-6)
    head = minilm_head(minilm, 1, 5)
    assert head[:, 0].max() >= head.max()  # [CLS] holds the maximum: the auto scale leaves it out
    assert im.get_clim() == pytest.approx((0, float(head[:, 1:].max())))
    assert "sink '[CLS]'" in next(a for a in fig.axes if a is not ax).get_ylabel()
    assert ax.get_title() == "minilm · layer 1 · head 5"


def minilm_head(loaded, layer, head):
    from attnviz.extraction import extract

    return extract(SEED, loaded, layers=[layer], heads=[head]).head(layer, head)


@pytest.mark.slow
def test_default_path_is_named_and_never_overwritten(minilm):
    first = Path(ok("heatmap", SEED, "--layer", "1", "--head", "5").stdout.strip())
    second = Path(ok("heatmap", SEED, "--layer", "1", "--head", "5").stdout.strip())
    assert first.parent == second.parent == Path("outputs")
    assert first.name == "heatmap-emily-always-wanted-to-visit-paris-so-minilm-L1-H5.png"
    assert second.name == first.name.replace(".png", "-2.png")
    assert first.stat().st_size > 1000 and second.stat().st_size > 1000


@pytest.mark.slow
def test_several_heads_share_a_scale_and_vmax_fixes_it(minilm, figures):
    ok("heatmap", SEED, "--layer", "1", "--heads", "0,5,10", "--cmap", "magma", "--dpi", "30")
    fig, path = figures[-1]
    axes = heat_axes(fig)
    assert [ax.get_title() for ax in axes] == ["head 0", "head 5", "head 10"]
    assert len({ax.get_images()[0].get_clim() for ax in axes}) == 1
    assert axes[0].get_images()[0].get_cmap().name == "magma"
    assert path.name.endswith("-minilm-L1-H0_5_10.png")
    ok("heatmap", SEED, "--layer", "1", "--heads", "0,5,10", "--vmax", "1.0", "--dpi", "30")
    assert {ax.get_images()[0].get_clim() for ax in heat_axes(figures[-1][0])} == {(0.0, 1.0)}


@pytest.mark.slow
def test_whole_layer_average_and_model_overview(minilm, figures):
    ok("heatmap", SEED, "--layer", "1", "--dpi", "30")
    assert len(heat_axes(figures[-1][0])) == 12
    ok("heatmap", SEED, "--layer", "1", "--aggregate", "mean", "--dpi", "30")
    (ax,) = heat_axes(figures[-1][0])
    assert "mean of heads 0-11" in ax.get_title()
    assert figures[-1][1].name.endswith("-L1-mean.png")
    ok("heatmap", SEED, "--head", "3", "--dpi", "30")
    assert [ax.get_title() for ax in heat_axes(figures[-1][0])] == [f"layer {i}" for i in range(6)]
    ok("heatmap", SEED, "--dpi", "30")
    fig, path = figures[-1]
    axes = heat_axes(fig)
    assert len(axes) == 6 * 12
    assert [ax.get_title() for ax in axes[:13]] == [f"L0 H{h}" for h in range(12)] + ["L1 H0"]
    assert path.name.endswith("-minilm-overview.png")


@pytest.mark.slow
def test_words_annotate_and_highlight(minilm, figures):
    ok(
        "heatmap",
        SEED,
        "--layer",
        "1",
        "--head",
        "5",
        "--words",
        "--annotate",
        "--highlight",
        "paris,french",
        "--dpi",
        "30",
    )
    fig, path = figures[-1]
    (ax,) = heat_axes(fig)
    assert ticks(ax.xaxis)[6] == "Paris"  # words keep the text's own spelling
    assert len(ax.texts) == 14 * 14
    bold = [t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["Paris", "French"]
    assert len([p for p in ax.patches if not p.get_fill()]) == 4
    assert path.name.endswith("-L1-H5-words.png")


@pytest.mark.slow
def test_annotate_is_skipped_with_a_note_when_too_long(minilm):
    result = ok("heatmap", SEED, "--annotate", "--dpi", "20")
    assert "--annotate skipped" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["svg", "pdf"])
def test_svg_and_pdf(minilm, tmp_path, ext):
    out = tmp_path / f"h.{ext}"
    ok("heatmap", SEED, "--layer", "0", "--head", "2", "-o", str(out), "--size", "5x4")
    data = out.read_bytes()
    if ext == "svg":
        assert b"<svg" in data[:500] and b'width="360pt"' in data[:1000]
    else:
        assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b(?!s)", data)) == 1


@pytest.mark.slow
def test_output_folder_gets_a_default_name(minilm, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    path = Path(ok("heatmap", SEED, "--layer", "0", "--head", "2", "-o", str(folder)).stdout.strip())
    assert path.parent == folder and path.suffix == ".png" and path.stat().st_size > 0


def test_causal_model_masks_the_future(tiny_model_path, figures, tmp_path):
    model = str(tiny_model_path("llama"))
    ok("heatmap", "the cat sat on the mat", "--model", model, "--layer", "0", "--head", "1")
    (ax,) = heat_axes(figures[-1][0])
    arr = ax.get_images()[0].get_array()
    n = arr.shape[0]
    assert np.array_equal(np.ma.getmaskarray(arr), np.triu(np.ones((n, n), dtype=bool), k=1))
    assert "masked" in figures[-1][0].legends[0].get_texts()[0].get_text()
    ok("heatmap", "the cat sat on the mat", "--model", model)  # overview of a causal model
    fig = figures[-1][0]
    assert all(np.ma.getmaskarray(a.get_images()[0].get_array())[0, -1] for a in heat_axes(fig))


# -- entropy ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_entropy_bars_for_one_head(minilm, figures):
    result = ok("entropy", SEED, "--layer", "1", "--head", "5", "--highlight", "paris")
    fig, path = figures[-1]
    assert result.stdout.strip() == str(path)
    (ax,) = fig.axes
    assert ticks(ax.xaxis) == SEED_TOKENS
    assert len(ax.patches) == 14
    assert path.name.startswith("entropy-emily")


@pytest.mark.slow
def test_entropy_grid_and_json(minilm, figures, tmp_path):
    ok("entropy", SEED, "--dpi", "30")
    ax = heat_axes(figures[-1][0])[0]
    assert ax.get_images()[0].get_array().shape == (6, 12)
    data = json.loads(ok("entropy", SEED, "--layer", "1", "--head", "5", "--json").stdout)
    assert data["tokens"] == SEED_TOKENS and data["layer"] == 1 and data["head"] == 5
    assert len(data["entropy"]) == 14 and data["output"] is None
    assert all(0 <= e <= b + 1e-6 for e, b in zip(data["entropy"], data["uniform_bound"], strict=True))
    assert data["uniform_bound"][0] == pytest.approx(np.log2(14), abs=1e-4)
    out = tmp_path / "grid.svg"
    data = json.loads(ok("entropy", SEED, "--json", "-o", str(out)).stdout)
    assert len(data["mean_entropy"]) == 6 and len(data["mean_entropy"][0]) == 12
    assert data["output"] == str(out) and out.is_file()


def test_entropy_bound_grows_in_a_causal_model(tiny_model_path):
    model = str(tiny_model_path("gpt2"))
    data = json.loads(
        ok("entropy", "the cat sat", "--model", model, "-l", "0", "--head", "0", "--json").stdout
    )
    n = len(data["tokens"])
    np.testing.assert_allclose(data["uniform_bound"], np.log2(np.arange(1, n + 1)), atol=1e-4)
    assert data["entropy"][0] == 0


# -- toy ----------------------------------------------------------------------------------------
def test_toy_renders_heads_and_entropy(figures):
    result = ok("toy", "--tokens", "6", "--dim", "8", "--num-heads", "2", "--seed", "1", "--dpi", "40")
    fig, path = figures[-1]
    assert result.stdout.strip() == str(path)
    assert path.name == "toy-6tok-d8-2heads-seed1.png"
    assert [ax.get_title() for ax in heat_axes(fig)] == ["head 0", "head 1"]


def test_toy_causal_temperature_and_steps(figures):
    result = ok(
        "toy",
        "--tokens",
        "<BOS> I like transformers <EOS>",
        "--causal",
        "--temperature",
        "2",
        "--steps",
        "--head",
        "1",
        "--decimals",
        "3",
        "--dims",
        "4",
        "--vmax",
        "1",
        "--annotate",
        "--cmap",
        "cividis",
        "--size",
        "9x7",
        "--dpi",
        "40",
    )
    out = result.stdout
    for n in range(1, 6):
        assert f"Step {n} ·" in out
    assert "-inf" in out and "head 1" in out and "head 0" not in out.split("\n")[0]
    assert "(first 4 of 8 dims)" in out
    fig, path = figures[-1]
    assert "causal" in path.name and "T2" in path.name
    assert tuple(fig.get_size_inches()) == (9, 7)
    for ax in heat_axes(fig):
        arr = ax.get_images()[0].get_array()
        assert np.ma.getmaskarray(arr)[0, 1] and not np.ma.getmaskarray(arr)[1, 0]
        assert ax.get_images()[0].get_clim() == (0.0, 1.0)


def test_toy_steps_equal_the_library(figures):
    from attnviz.analyses.steps import format_steps
    from attnviz.analyses.toy import build_toy

    toy = build_toy(4, dim=8, heads=1, seed=7)
    out = ok("toy", "--tokens", "4", "--dim", "8", "--num-heads", "1", "--seed", "7", "--steps").stdout
    assert format_steps(toy.steps[0], toy.labels) in out


# -- explain ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_explain_prints_the_five_steps_of_a_real_head(minilm):
    out = ok("explain", SEED, "--layer", "1", "--head", "5").stdout
    for n in range(1, 6):
        assert f"Step {n} ·" in out
    assert "minilm · layer 1 · head 5" in out
    assert re.search(r"check: step 4 equals minilm's own attention .*difference \d", out)


@pytest.mark.slow
def test_explain_follows_one_query(minilm):
    out = ok("explain", SEED, "--layer", "1", "--head", "5", "--query", "paris", "--key", "visit").stdout
    assert "query 'paris' (token 6)" in out
    assert "Worked by hand for key 'visit' (token 5)" in out
    data = json.loads(ok("explain", SEED, "-l", "1", "--head", "5", "--json", "--query", "paris").stdout)
    weights = np.array(data["weights"])
    np.testing.assert_allclose(weights, minilm_head(minilm, 1, 5), atol=1e-5)
    assert data["query"] == 6 and data["max_difference_from_model"] < 1e-5


# -- bad input: one line, exit code 2 ------------------------------------------------------------
@pytest.mark.slow
def test_layer_and_head_out_of_range(minilm):
    bad("heatmap", SEED, "--layer", "9", "--head", "0", match="layer 9 is out of range")
    bad("heatmap", SEED, "--layer", "0", "--heads", "0,12", match="head 12 is out of range")
    bad("entropy", SEED, "--layer", "-7", match="layer -7 is out of range")
    bad("explain", SEED, "--layer", "1", "--head", "40", match="head 40 is out of range")
    bad("heatmap", SEED, "--highlight", "london", match="'london' is not in the text")
    bad("explain", SEED, "--layer", "1", "--head", "5", "--query", "london", match="not in the text")


def test_bad_options_fail_before_loading(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    bad("heatmap", SEED, "-o", "out.jpg", match="unknown image format '.jpg'")
    bad("heatmap", SEED, "-o", "out", match="no extension")
    bad("heatmap", SEED, "-o", str(blocker / "x.png"), match="cannot write")
    bad("entropy", SEED, "-o", "x.gif", match="unknown image format")
    bad("toy", "-o", "x.bmp", match="unknown image format")
    bad("heatmap", SEED, "--vmax", "big", match="--scale")
    bad("heatmap", SEED, "--scale", "0", match="--scale")
    bad("heatmap", SEED, "--cmap", "rainbowz", match="colour map")
    bad("heatmap", SEED, "--size", "huge", match="--size")
    bad("heatmap", SEED, "--dpi", "0", match="--dpi")
    bad("heatmap", SEED, "--head", "1", "--heads", "2,3", match="not both")
    bad("heatmap", SEED, "--heads", "a,b", match="bad --heads value")
    bad("explain", SEED, "--layer", "1", match="--layer L --head H")
    bad("explain", SEED, "-l", "1", "--head", "1", "--key", "x", match="--key needs --query")
    bad("toy", "--dim", "10", "--num-heads", "3", match="divisible by --num-heads")
    bad("toy", "--tokens", "0", match="--tokens")
    bad("toy", "--temperature", "0", match="--temperature")
    bad("toy", "--head", "5", match="head 5 is out of range")
    assert not Path("outputs").exists() or not any(Path("outputs").iterdir())


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from attnviz.cli import app\n"
        "for cmd in ('heatmap', 'entropy', 'toy', 'explain'):\n"
        "    try:\n"
        "        app([cmd, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for option in (
        "--scale",
        "--vmax",
        "--cmap",
        "--annotate",
        "--highlight",
        "--aggregate",
        "--words",
        "--size",
    ):
        assert option in out


# -- encoder-decoder streams -------------------------------------------------------------------
def test_cross_attention_of_one_head(tiny_model_path, figures, tmp_path):
    from attnviz.extraction import extract
    from attnviz.models.loading import load_model

    model = str(tiny_model_path("t5"))
    out = tmp_path / "cross.png"
    ok(
        "heatmap",
        "the cat sat",
        "-m",
        model,
        "--stream",
        "cross",
        "--layer",
        "1",
        "--head",
        "2",
        "-o",
        str(out),
    )
    att = extract("the cat sat", load_model(model, device="cpu"))
    fig, path = figures[-1]
    (ax,) = heat_axes(fig)
    assert path == out and "cross-attention" in ax.get_title()
    assert ticks(ax.yaxis) == att.decoder.labels and ticks(ax.xaxis) == att.labels
    image = ax.get_images()[0].get_array()
    assert image.shape == (att.decoder.n_tokens, att.n_tokens)
    np.testing.assert_allclose(image, att.cross[1, 2], atol=1e-6)


def test_decoder_stream_is_causal_and_hatched(tiny_model_path, figures, tmp_path):
    model = str(tiny_model_path("t5"))
    ok(
        "heatmap",
        "the cat sat",
        "-m",
        model,
        "--stream",
        "decoder",
        "--layer",
        "0",
        "--head",
        "1",
        "-o",
        str(tmp_path / "dec.png"),
    )
    fig, _ = figures[-1]
    (ax,) = heat_axes(fig)
    image = ax.get_images()[0].get_array()
    assert image.mask[0, 1] and not image.mask[1, 0]  # the future is masked, not drawn as 0
    assert ticks(ax.yaxis)[0] == "<pad>"  # the decoder's start token


def test_stream_errors(tiny_model_path, bert):
    model = str(tiny_model_path("t5"))
    bad("heatmap", "the cat", "-m", model, "--stream", "cross", "--layer", "1", match="one head")
    bad("heatmap", "the cat", "-m", model, "--stream", "sideways", match="unknown --stream")
    bad("heatmap", "the cat", "-m", bert, "--stream", "decoder", match="no decoder")


# -- one meaning per option (issue 12) -----------------------------------------------------------
NO_MODEL = ("-m", "/nonexistent/model")  # loading this fails: an error naming anything else came first


def test_options_checked_before_the_model_loads():
    bad("toy", "--tokens", "-5", match="--tokens -5: give a count of 1 or more")
    bad("heatmap", SEED, "--layer", "1,2", *NO_MODEL, match="--layer takes one layer.*--layers 1,2")
    bad("heatmap", SEED, "--heads", "3-1", *NO_MODEL, match="bad --heads range '3-1'")
    bad("entropy", SEED, "--heads", "", *NO_MODEL, match="--heads is empty")
    bad("explain", SEED, "-l", "1", "--head", "1", "-k", "x", *NO_MODEL, match="No such option: -k")


def test_file_is_one_text_and_a_many_line_file_gets_a_note(tmp_path, figures, tiny_model_path):
    src = tmp_path / "sentences.txt"
    src.write_text("the cat sat\nthe dog ran\n", encoding="utf-8")
    bert = str(tiny_model_path("bert"))
    result = runner.invoke(app, ["heatmap", "--file", str(src), "-l", "0", "--head", "0", "-m", bert])
    assert result.exit_code == 0, result.output
    assert "has 2 lines, drawn as one text" in result.stderr and "--texts" in result.stderr
    labels = ticks(heat_axes(figures[-1][0])[0].xaxis)
    assert labels[0] == "[CLS]" and labels.count("[SEP]") == 1 and "dog" in labels  # one text


@pytest.mark.slow
def test_no_special_drops_the_special_tokens(minilm, figures):
    data = json.loads(ok("entropy", SEED, "-l", "0", "--head", "0", "--json", "--no-special").stdout)
    assert data["tokens"] == SEED_TOKENS[1:-1]
    ok("heatmap", SEED, "-l", "0", "--head", "0", "--no-special", "--dpi", "30")
    assert ticks(heat_axes(figures[-1][0])[0].xaxis) == SEED_TOKENS[1:-1]


def _option_help(command: str, option: str) -> str:
    import typer.main

    cmd = typer.main.get_command(app).commands[command]
    return next(p.help for p in cmd.params if option in p.opts)


def test_option_help_says_what_the_option_does_in_that_command():
    assert "overview" not in _option_help("toy", "--dpi") and "grid" in _option_help("heatmap", "--dpi")
    assert "rows and columns" not in _option_help("entropy", "--highlight")
    assert "bars" in _option_help("entropy", "--highlight")
    assert "rows and columns" in _option_help("heatmap", "--highlight")


def test_norm_weighting_colour_bar_says_what_it_draws(gpt2, figures, tmp_path):
    """--weighting norm draws vector norms (above 1 here and there): never 'attention weight'."""
    from attnviz.plots.heatmaps import NORM_LABEL

    for args in (["-l", "1", "--head", "2"], ["-l", "1"], []):
        ok("heatmap", "the cat sat on the mat", "-m", gpt2, "--weighting", "norm", *args,
           "-o", str(tmp_path / "n.png"))  # fmt: skip
        fig = figures[-1][0]
        bars = [ax.get_ylabel() for ax in fig.axes if not ax.get_images() or ax.get_ylabel()]
        bars = [b for b in bars if "norm" in b or "attention weight" in b]
        assert bars and all(b.startswith(NORM_LABEL) for b in bars), bars
    ok(
        "heatmap",
        "the cat sat on the mat",
        "-m",
        gpt2,
        "-l",
        "1",
        "--head",
        "2",
        "-o",
        str(tmp_path / "a.png"),
    )
    assert any(ax.get_ylabel().startswith("attention weight") for ax in figures[-1][0].axes)
