"""Figures checked by their data: tick labels, image arrays, colour scales, masks, grids, files."""

from __future__ import annotations

import logging
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from attnviz import plots
from attnviz.attention import Attention
from attnviz.errors import InputError, cli_terms

TOKENS = ("[CLS]", "the", "cat", "costs", "$5", "[SEP]")


def fake_attention(
    n: int = 6, layers: int = 2, heads: int = 3, causal: bool = False, level: str = "token"
) -> Attention:
    """Rows that sum to 1 (zero in the future when causal), with a $ token to trip mathtext."""
    rng = np.random.default_rng(0)
    attn = rng.random((layers, heads, n, n)).astype(np.float32)  # [layers, heads, q, k]
    if causal:
        attn = np.where(np.tril(np.ones((n, n), dtype=bool)), attn, 0.0).astype(np.float32)
    attn /= attn.sum(axis=-1, keepdims=True)
    tokens = TOKENS[:n] if n <= len(TOKENS) else tuple(f"tok{i}" for i in range(n))
    return Attention(
        model="fake",
        kind="decoder" if causal else "encoder",
        text=" ".join(tokens),
        tokens=tokens,
        spans=tuple((0, 0) for _ in tokens),
        word_ids=tuple(None for _ in tokens),
        words=(),
        special=tuple(False for _ in tokens),
        layers=tuple(range(layers)),
        heads=tuple(range(heads)),
        attn=attn,
        causal=causal,
        level=level,
    )


def images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def data_axes(fig):
    """Axes that hold a heatmap (not colour bars)."""
    return [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]


# -- one head -----------------------------------------------------------------------------------
def test_heatmap_axes_are_tokens_and_scale_is_the_largest_weight():
    att = fake_attention()
    m = att.head(1, 2)
    fig = plots.heatmap(m, att.labels, title="fake · layer 1 · head 2")
    (ax,) = data_axes(fig)
    assert labels(ax.xaxis) == list(TOKENS)
    assert labels(ax.yaxis) == list(TOKENS)
    (im,) = ax.get_images()
    assert im.get_array().shape == (6, 6)
    np.testing.assert_allclose(im.get_array(), m)
    assert im.get_clim() == pytest.approx((0.0, float(m.max())))
    assert ax.get_title() == "fake · layer 1 · head 2"
    assert "attending from" in ax.get_ylabel() and "attending to" in ax.get_xlabel()
    bar = next(a for a in fig.axes if a is not ax)
    assert bar.get_ylabel() == "attention weight"


def test_fixed_scale_and_colour_map():
    att = fake_attention()
    fig = plots.heatmap(att.head(0, 0), att.labels, vmax=1.0, cmap="magma")
    (im,) = images(fig)
    assert im.get_clim() == (0.0, 1.0)
    assert im.get_cmap().name == "magma"


def test_auto_scale_leaves_out_the_sink_of_a_causal_model_and_says_so():
    att = fake_attention(causal=True)  # row 0 can only attend to itself: weight 1.0 in column 0
    fig = plots.attention_figure(replace(att, layers=(0,), heads=(1,), attn=att.attn[:1, 1:2]))
    (ax,) = data_axes(fig)
    m, visible = att.head(0, 1), att.visible()
    top = float(m[:, 1:][visible[:, 1:]].max())
    assert ax.get_images()[0].get_clim() == pytest.approx((0.0, top)) and top < 1.0
    bar = next(a for a in fig.axes if a is not ax)
    assert "sink '[CLS]' (key 0, up to 1.00) left out" in bar.get_ylabel()
    for scale, clim in (("max", (0.0, 1.0)), (0.5, (0.0, 0.5)), ("log", (1e-3, 1.0))):
        fig = plots.attention_figure(
            replace(att, layers=(0,), heads=(1,), attn=att.attn[:1, 1:2]), vmax=scale
        )
        (ax,) = data_axes(fig)
        assert ax.get_images()[0].get_clim() == pytest.approx(clim)
    assert "log scale" in next(a for a in fig.axes if a is not ax).get_ylabel()


def test_sink_key_rules():
    enc = np.full((4, 4), 0.1, dtype=np.float32)
    enc[:, 0] = 0.7
    labels, special = ["[CLS]", "a", "b", "[SEP]"], [True, False, False, True]
    assert plots.sink_key([enc], labels, special, causal=False) == 0
    assert plots.sink_key([enc], ["x", "a", "b", "y"], [False] * 4, causal=False) is None  # not [CLS]/BOS
    other = np.roll(enc, 2, axis=1)  # the maximum sits in column 2
    assert plots.sink_key([other], labels, special, causal=False) is None  # [CLS] holds no maximum
    assert plots.sink_key([other], labels, special, causal=True) == 0  # causal: always the first key
    scale = plots.resolve_scale("auto", [enc], None, 0, "[CLS]")
    assert scale.vmax == pytest.approx(0.1) and "[CLS]" in scale.note
    assert plots.resolve_scale("auto", [enc], None).vmax == pytest.approx(0.7)  # no sink given: the largest
    for bad in ("x", "0", "-1", "nan"):
        with pytest.raises(InputError, match=f"^bad scale '{bad}'") as info:
            plots.parse_scale(bad)
        assert info.value.render(cli_terms).startswith(f"bad --scale '{bad}'")
    with pytest.raises(InputError, match=r"^bad vmax 'x'"):  # the plots' keyword
        plots.heatmap(enc, labels, vmax="x")


def test_dollar_tokens_are_not_mathtext():
    att = fake_attention()
    fig = plots.heatmap(att.head(0, 0), att.labels)
    fig.canvas.draw()  # would raise on an unbalanced $ if parsed as mathtext
    assert "$5" in labels(data_axes(fig)[0].xaxis)


def test_causal_future_is_masked_not_zero_and_the_legend_says_so():
    att = fake_attention(causal=True)
    visible = att.visible()
    fig = plots.heatmap(att.head(0, 1), att.labels, visible=visible)
    (ax,) = data_axes(fig)
    (im,) = ax.get_images()
    arr = im.get_array()
    assert np.array_equal(np.ma.getmaskarray(arr), ~visible)
    assert any(p.get_hatch() for p in ax.patches)  # the hatched background shows through
    (legend,) = fig.legends  # outside the axes, so it never hides a cell
    assert "masked" in legend.get_texts()[0].get_text()


def test_encoder_has_no_mask_and_no_legend():
    att = fake_attention()
    fig = plots.heatmap(att.head(0, 0), att.labels, visible=att.visible())
    (ax,) = data_axes(fig)
    assert not np.ma.getmaskarray(ax.get_images()[0].get_array()).any()
    assert not fig.legends


def test_annotate_writes_each_visible_weight():
    att = fake_attention(causal=True)
    m = att.head(0, 0)
    fig = plots.heatmap(m, att.labels, visible=att.visible(), annotate=True)
    (ax,) = data_axes(fig)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(f"{v:.2f}" for v in m[att.visible()])


def test_highlight_outlines_rows_and_columns():
    att = fake_attention()
    fig = plots.heatmap(att.head(0, 0), att.labels, highlight=[2, 3])
    (ax,) = data_axes(fig)
    outlines = [p for p in ax.patches if not p.get_fill()]
    assert len(outlines) == 4  # a row and a column each
    bold = [t.get_text() for t in ax.get_xticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["cat", "costs"]


def test_long_text_grows_then_thins_labels():
    n = 512
    rng = np.random.default_rng(0)
    m = rng.random((n, n)).astype(np.float32)
    m /= m.sum(axis=1, keepdims=True)
    words = [f"w{i}" for i in range(n)]
    fig = plots.heatmap(m, words, dpi=72)
    fig.canvas.draw()
    assert max(fig.get_size_inches()) == plots.MAX_SIDE
    (ax,) = data_axes(fig)
    shown = labels(ax.xaxis)
    assert 20 < len(shown) < n
    step = int(ax.get_xticks()[1] - ax.get_xticks()[0])
    assert shown == words[::step]
    small = plots.heatmap(m[:8, :8], words[:8])
    assert max(small.get_size_inches()) < plots.MAX_SIDE


def test_label_step():
    assert plots.label_step(10, 5.0) == (1, plots.FONT)
    step, font = plots.label_step(512, 12.0)
    assert step > 1 and font == plots.MIN_FONT


# -- several heads, the layer, the model ------------------------------------------------------------
def test_heads_side_by_side_share_one_scale():
    att = fake_attention(layers=1, heads=3)
    fig = plots.attention_figure(att)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["head 0", "head 1", "head 2"]
    clims = {im.get_clim() for im in images(fig)}
    assert len(clims) == 1
    assert clims.pop() == pytest.approx((0.0, float(att.attn.max())))
    assert fig.get_suptitle() == "fake · layer 0 · heads 0-2\n“[CLS] the cat costs $5 [SEP]”"
    assert labels(axes[0].xaxis) == list(TOKENS)


def test_whole_layer_in_a_grid():
    att = fake_attention(layers=1, heads=12)
    fig = plots.attention_figure(att)
    axes = data_axes(fig)
    assert len(axes) == 12
    rows = {round(ax.get_position().y0, 3) for ax in axes}
    assert len(rows) == 3  # 4 columns x 3 rows


def test_average_is_the_mean_over_heads():
    att = fake_attention(layers=1, heads=4)
    fig = plots.attention_figure(att, average=True)
    (im,) = images(data_axes(fig)[0].figure)[:1]
    np.testing.assert_allclose(im.get_array(), att.attn[0].mean(axis=0), rtol=1e-6)
    assert "mean of 4 heads" in data_axes(fig)[0].get_title()


def test_overview_is_a_layers_by_heads_grid_of_titled_panels():
    att = fake_attention(layers=3, heads=4, causal=True)
    fig = plots.attention_figure(att)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == [f"L{layer} H{h}" for layer in range(3) for h in range(4)]
    for ax, (layer, h) in zip(axes, [(a, b) for a in range(3) for b in range(4)], strict=True):
        np.testing.assert_allclose(ax.get_images()[0].get_array().filled(0), att.attn[layer, h])
        assert np.array_equal(np.ma.getmaskarray(ax.get_images()[0].get_array()), ~att.visible())
    # rows of the grid are layers, columns heads
    assert axes[0].get_position().y0 > axes[4].get_position().y0
    assert axes[0].get_position().x0 < axes[1].get_position().x0
    assert "3 layers x 4 heads" in fig.get_suptitle()
    assert any("masked" in t.get_text() for leg in fig.legends for t in leg.get_texts())


def test_word_level_title():
    fig = plots.attention_figure(fake_attention(layers=1, heads=1, level="word"))
    assert data_axes(fig)[0].get_title() == "fake · layer 0 · head 0 (words)"


def test_annotate_limit():
    assert plots.annotate_limit(1, 1) == plots.ANNOTATE_MAX
    assert plots.annotate_limit(1, 12, average=True) == plots.ANNOTATE_MAX
    assert plots.annotate_limit(6, 12) == 0
    assert 0 < plots.annotate_limit(1, 3) < plots.ANNOTATE_MAX


# -- entropy --------------------------------------------------------------------------------
def test_entropy_bars_and_uniform_bound():
    from attnviz.heads.patterns import row_entropy, row_entropy_of

    att = fake_attention(layers=1, heads=1, causal=True)
    ent = row_entropy_of(att)
    fig = plots.entropy_figure(ent)
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, row_entropy(att.attn[0, 0], att.visible()), atol=1e-9)
    bound_line = next(line for line in ax.get_lines() if line.get_label() == plots.BOUND_LABEL)
    np.testing.assert_allclose(bound_line.get_ydata()[1:], np.log2(np.arange(1, 7)))
    assert labels(ax.xaxis) == list(TOKENS)
    assert ax.get_ylabel() == "row entropy (bits)"
    assert "layer 0 · head 0" in ax.get_title()


def test_entropy_grid_is_layers_by_heads():
    from attnviz.heads.patterns import row_entropy_of

    att = fake_attention(layers=2, heads=3)
    ent = row_entropy_of(att)
    fig = plots.entropy_figure(ent)
    ax = data_axes(fig)[0]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), ent.mean)
    assert labels(ax.yaxis) == ["L0", "L1"]
    assert labels(ax.xaxis) == ["H0", "H1", "H2"]
    assert ax.get_images()[0].get_clim()[1] == pytest.approx(np.log2(6))


# -- the toy -------------------------------------------------------------------------------------
def test_toy_figure_has_a_heatmap_per_head_and_the_entropy_plot():
    from attnviz.analyses.toy import build_toy

    toy = build_toy(6, dim=8, heads=2, causal=True)
    fig = plots.toy_figure(
        toy.weights, toy.entropy(), toy.bound(), toy.labels, visible=toy.visible(), title=toy.describe()
    )
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["head 0", "head 1"]
    for h, ax in enumerate(axes):
        np.testing.assert_allclose(ax.get_images()[0].get_array().filled(0), toy.weights[h], atol=1e-6)
        assert np.array_equal(np.ma.getmaskarray(ax.get_images()[0].get_array()), ~toy.visible())
    entropy_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "row entropy (bits)")
    assert len(entropy_ax.patches) == 2 * 6


# -- options and files ---------------------------------------------------------------------------
def test_parse_vmax_size_and_cmap():
    assert plots.parse_vmax("auto") is None
    assert plots.parse_vmax("0.5") == 0.5
    for bad in ("x", "0", "-1", "nan"):
        with pytest.raises(InputError, match=f"^bad vmax '{bad}'"):
            plots.parse_vmax(bad)
    assert plots.parse_size("8x6") == (8.0, 6.0)
    assert plots.parse_size("7") == (7.0, 7.0)
    assert plots.parse_size(None) is None
    for bad in ("8x", "axb", "0x5", "1x2x3"):
        with pytest.raises(InputError, match=f"^bad size '{bad}'") as info:
            plots.parse_size(bad)
        assert info.value.render(cli_terms).startswith(f"bad --size '{bad}'")
    with pytest.raises(InputError, match=r"^size is empty"):
        plots.parse_size(" ")
    with pytest.raises(InputError, match="colour map"):
        plots.colormap("no-such-map")


@pytest.mark.parametrize("ext", ["png", "svg", "pdf"])
def test_saved_files_open_with_the_expected_size(tmp_path: Path, ext: str):
    att = fake_attention()
    fig = plots.heatmap(att.head(0, 0), att.labels, size=(6, 4), dpi=50)
    path = plots.save(fig, tmp_path / f"h.{ext}")
    data = path.read_bytes()
    if ext == "png":
        from PIL import Image

        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (300, 200)
    elif ext == "svg":
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
        assert root.get("width") == "432pt" and root.get("height") == "288pt"
    else:
        assert data.startswith(b"%PDF")
        assert len(re.findall(rb"/Type\s*/Page\b(?!s)", data)) == 1
        assert re.search(rb"/MediaBox\s*\[\s*0 0 432 288\s*\]", data)


def test_save_rejects_unknown_format(tmp_path: Path):
    att = fake_attention()
    with pytest.raises(InputError, match="unknown image format"):
        plots.save(plots.heatmap(att.head(0, 0), att.labels), tmp_path / "h.jpg")


def test_default_names_never_overwrite(tmp_path: Path):
    from attnviz.outputs import default_name, output_path, reserve, slug

    assert slug("Émily wanted: Paris!") == "emily-wanted-paris"
    assert slug("日本語") == "text"
    assert len(slug("word " * 40)) <= 40
    name = default_name("heatmap", "emily", "org/model", "L1", None, "H5")
    assert name == "heatmap-emily-org-model-L1-H5.png"
    paths = [reserve(tmp_path / "new", "a.png") for _ in range(3)]
    assert [p.name for p in paths] == ["a.png", "a-2.png", "a-3.png"]
    assert output_path(tmp_path / "deep" / "x.svg", ()) == tmp_path / "deep" / "x.svg"
    assert (tmp_path / "deep").is_dir()
    with pytest.raises(InputError, match="no extension"):
        output_path(tmp_path / "x", ())


# -- layout: nothing overlaps, nothing is cut off, big grids stay legible --------------------------
def _drawn(fig):
    """The figure's renderer after a draw: a new draw only when the figure changed since the last one
    (matplotlib marks a changed figure, or one saved at another dpi, stale), not one per measured box."""
    if fig.stale:
        fig.canvas.draw()
    return fig.canvas.get_renderer()


def text_boxes(fig) -> list[tuple[str, object]]:
    """Every drawn piece of text (titles, axis and tick labels, figure texts) and every legend as
    one box, in pixels; legend entries count as their legend, cell numbers are left out."""
    renderer = _drawn(fig)
    out = []
    seen: set[int] = set()

    def add(name, artist):
        if artist is None or id(artist) in seen or not artist.get_visible():
            return
        seen.add(id(artist))
        if not hasattr(artist, "get_text") or artist.get_text():
            out.append((name, artist.get_window_extent(renderer)))

    def visit(container):
        add("suptitle", getattr(container, "_suptitle", None))
        for t in container.texts:
            add(t.get_text(), t)
        for legend in container.legends:
            add("legend", legend)
        for sub in container.subfigs:
            visit(sub)

    visit(fig)
    for ax in fig.axes:
        for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label):
            add(t.get_text(), t)
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for loc, t in zip(axis.get_majorticklocs(), axis.get_ticklabels(), strict=False):
                if low - 1e-9 <= loc <= high + 1e-9:
                    add(f"tick {t.get_text()}", t)
        add("legend", ax.get_legend())
    return out


def layout_problems(fig, tolerance: float = 1.0) -> list[tuple[str, ...]]:
    """Pairs of text boxes that overlap by more than `tolerance` pixels both ways, and boxes that
    stick out of the picture (cut off when saved); one draw."""
    boxes = text_boxes(fig)
    width, height = fig.canvas.get_width_height()
    found: list[tuple[str, ...]] = []
    for i, (a, ba) in enumerate(boxes):
        if (
            ba.x0 < -tolerance
            or ba.y0 < -tolerance
            or ba.x1 > width + tolerance
            or ba.y1 > height + tolerance
        ):
            found.append(("outside", a))
        for b, bb in boxes[i + 1 :]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > tolerance and h > tolerance:
                found.append((a, b))
    return found


def test_causal_toy_title_and_legend_overlap_nothing():
    from attnviz.analyses.toy import build_toy

    toy = build_toy(12, dim=16, heads=2, causal=True)  # `attnviz toy --causal`
    fig = plots.toy_figure(
        toy.weights, toy.entropy(), toy.bound(), toy.labels, visible=toy.visible(), title=toy.describe()
    )
    assert layout_problems(fig) == []
    assert (
        fig.get_suptitle().startswith(toy.describe())
        and "“t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10 t11”" in fig.get_suptitle()
    )
    names = [
        t.get_text()
        for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
        if leg
        for t in leg.get_texts()
    ]
    assert plots.MASKED_LABEL in names and "head 1" in names


@pytest.mark.parametrize("heads", [1, 2, 4, 6])
def test_toy_layouts_overlap_nothing(heads: int):
    from attnviz.analyses.toy import build_toy

    toy = build_toy("the cat sat on the mat because it was tired", dim=12, heads=heads, causal=heads % 2 == 0)
    fig = plots.toy_figure(
        toy.weights, toy.entropy(), toy.bound(), toy.labels, visible=toy.visible(), title=toy.describe()
    )
    assert layout_problems(fig) == []


@pytest.mark.parametrize(
    ("layers", "heads", "causal"), [(1, 1, False), (1, 3, True), (1, 12, False), (4, 1, True)]
)
def test_heatmap_layouts_overlap_nothing(layers: int, heads: int, causal: bool):
    fig = plots.attention_figure(fake_attention(layers=layers, heads=heads, causal=causal))
    assert layout_problems(fig) == []


def test_entropy_layouts_overlap_nothing_and_quote_the_text():
    from attnviz.heads.patterns import row_entropy_of

    for layers, heads in ((1, 1), (2, 3)):
        att = fake_attention(layers=layers, heads=heads, causal=True)
        fig = plots.entropy_figure(row_entropy_of(att), text=att.text, highlight=[2])
        titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
        assert any("“[CLS] the cat costs $5 [SEP]”" in t for t in titles)
        assert layout_problems(fig) == []


def test_overview_at_a_given_size_fits_it():
    att = fake_attention(layers=3, heads=4)
    fig = plots.attention_figure(att, size=(8, 6))
    assert tuple(fig.get_size_inches()) == (8, 6)
    axes = data_axes(fig)
    assert len(axes) == 12
    assert all(ax.get_position().x0 >= 0 and ax.get_position().x1 <= 1 for ax in axes)
    assert all(ax.get_position().y0 >= 0 and ax.get_position().y1 <= 1 for ax in axes)
    assert layout_problems(fig) == []


def test_every_attention_title_quotes_the_text():
    for layers, heads in ((1, 1), (1, 3), (3, 1), (3, 4)):
        fig = plots.attention_figure(fake_attention(layers=layers, heads=heads))
        titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
        assert any("“[CLS] the cat costs $5 [SEP]”" in t for t in titles), (layers, heads)
    long = fake_attention(layers=1, heads=1)
    long = type(long)(**{**long.__dict__, "text": "word " * 100})
    fig = plots.attention_figure(long)
    assert fig.get_suptitle() == "“" + ("word " * 14)[:69] + "…”"
    assert layout_problems(fig) == []
    small = fake_attention(layers=2, heads=2)
    small = type(small)(**{**small.__dict__, "text": "word " * 100})
    fig = plots.attention_figure(small)  # a 2 x 2 overview under a 70-character quote
    assert layout_problems(fig) == []


def squares(n: int, layers: int, heads: int) -> np.ndarray:
    """[layers, heads, n, n] diagonal attention without the memory (a read-only broadcast view)."""
    return np.broadcast_to(np.eye(n, dtype=np.float32), (layers, heads, n, n))


def test_overview_of_a_long_text_gives_every_token_a_pixel():
    n = 363
    fig = plots.overview(squares(n, 2, 3), range(2), range(3), title="fake · 2 layers x 3 heads")
    fig.canvas.draw()
    axes = data_axes(fig)
    assert len(axes) == 6
    for ax in axes:
        box = ax.get_window_extent()
        assert (
            box.width >= n - 0.5 and box.height >= n - 0.5
        )  # the old 125 px panels showed only the diagonal
    assert layout_problems(fig) == []


def test_overview_too_large_is_refused_with_a_hint():
    with pytest.raises(
        InputError, match=r"draw one layer with layer N \(or pick fewer layers/heads,"
    ) as info:
        plots.overview(squares(200, 6, 12), range(6), range(12), dpi=10)
    assert "draw one layer with --layer N (or pick fewer --layers/--heads," in info.value.render(cli_terms)
    assert max(plots.overview_layout(6, 12, 363, 100).size) <= plots.OVERVIEW_MAX  # MiniLM: drawn
    with pytest.raises(InputError, match="6873x5960 px"):
        plots.overview_layout(30, 9, 363, 100)  # SmolLM2: 270 panels of 363 px is too much


def test_deep_model_layout_is_wrapped_into_blocks():
    layout = plots.overview_layout(30, 9, 6, 100)
    assert layout.blocks == 2 and layout.rows == 15
    assert 0.8 < layout.size[0] / layout.size[1] < 2.5
    assert layout.panel == pytest.approx(1.25)
    x, y = layout.origin(15, 0)  # layer 15 starts the second block, at the top
    assert x > layout.origin(0, 8)[0] and y == pytest.approx(layout.origin(0, 0)[1])


@pytest.mark.slow
def test_deep_model_overview_wraps_into_a_legible_page():
    """SmolLM2's 30 layers x 9 heads: not an 883x3000 strip with 7 px titles and the bar at the top."""
    att = fake_attention(n=6, layers=30, heads=9, causal=True)
    fig = plots.attention_figure(att)
    width, height = fig.canvas.get_width_height()
    assert 0.8 < width / height < 2.5
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == [f"L{la} H{h}" for la in range(30) for h in range(9)]
    assert min(ax.title.get_fontsize() for ax in axes) >= 7
    for ax, (la, h) in zip(axes, [(a, b) for a in range(30) for b in range(9)], strict=True):
        np.testing.assert_allclose(ax.get_images()[0].get_array().filled(0), att.attn[la, h])
    first_block = {round(ax.get_position().x0, 4) for ax in axes[:9]}
    later_block = {round(ax.get_position().x0, 4) for ax in axes[-9:]}
    assert first_block.isdisjoint(later_block)  # layers wrapped into side-by-side blocks
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel().startswith(plots.WEIGHT_LABEL)]
    assert "sink" in bar.get_ylabel()  # a causal model: the first key is left out of the auto scale
    grid_top = max(ax.get_position().y1 for ax in axes)
    grid_bottom = min(ax.get_position().y0 for ax in axes)
    middle = (bar.get_position().y0 + bar.get_position().y1) / 2
    assert abs(middle - (grid_top + grid_bottom) / 2) < 0.05  # centred on the grid, not at its top
    assert bar.get_position().height * fig.get_figheight() >= 4
    assert layout_problems(fig) == []


# -- fonts: CJK and emoji draw as glyphs, silently --------------------------------------------
GLYPHS = ["中", "文", "🤗", "🦀", "ab"]


def glyph(char: str, prop) -> np.ndarray:
    """`char` drawn alone, large, with the font properties `prop` (RGB pixels)."""
    prop = prop.copy()
    prop.set_size(24)
    prop.set_weight("normal")
    fig = plots.new_figure((0.6, 0.6), 100, constrained=False)
    fig.text(0.5, 0.5, char, fontproperties=prop, ha="center", va="center")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba())[..., :3]


def test_cjk_and_emoji_labels_draw_glyphs_without_a_warning(capfd):
    from matplotlib.font_manager import FontProperties

    m = np.full((5, 5), 0.2, dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plots.heatmap(m, GLYPHS, title=" ".join(GLYPHS), highlight=[0, 2])  # bold CJK and emoji
        fig.canvas.draw()  # outside attnviz's own calls: nothing is hidden, the glyphs are there
    logging.getLogger("matplotlib.font_manager").warning(  # what a bold emoji used to print
        "findfont: Failed to find font weight %s for %s, now using %s.", "bold", "Symbola", 400
    )
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    tofu = FontProperties(family="DejaVu Sans")
    assert np.array_equal(glyph("中", tofu), glyph("文", tofu))  # a missing glyph: the same empty box
    drawn = {t.get_text(): t.get_fontproperties() for t in data_axes(fig)[0].get_yticklabels()}
    for char in ("中", "文", "🤗", "🦀"):
        assert not np.array_equal(glyph(char, drawn[char]), glyph(char, tofu)), char
    assert not np.array_equal(glyph("中", drawn["中"]), glyph("文", drawn["文"]))


def test_missing_fonts_fall_back_silently(monkeypatch, tmp_path, capfd):
    from attnviz.plots import fonts

    monkeypatch.setattr(fonts, "_chain", None)
    monkeypatch.setattr(fonts, "FALLBACKS", (("No Such Font", ("/nonexistent/*.ttf",)),))
    assert fonts.font_chain() == ["DejaVu Sans"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plots.heatmap(np.eye(3, dtype=np.float32), ["中", "🤗", "a"])
        plots.save(fig, tmp_path / "tofu.png")
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""
    assert (tmp_path / "tofu.png").stat().st_size > 0


# -- head roles and scores --------------------------------------------------------------------------
def test_role_figure_colours_each_head_by_its_role(tmp_path):
    from attnviz.heads.patterns import ROLE_NAMES

    roles = np.array([["self", "previous", "mixed"], ["first", "broad", "last_sep"]])
    scores = np.array([[0.9, 0.8, np.nan], [0.7, 0.6, 0.5]])
    fig = plots.role_figure(roles, [0, 1], [0, 1, 2], scores, title="roles")
    (ax,) = [a for a in fig.axes if a.get_images()]
    codes = ax.get_images()[0].get_array()
    np.testing.assert_array_equal(codes, [[ROLE_NAMES.index(r) for r in row] for row in roles])
    assert labels(ax.xaxis) == ["H0", "H1", "H2"] and labels(ax.yaxis) == ["L0", "L1"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        ["self\n0.90", "prev\n0.80", "first\n0.70", "broad\n0.60", "sep\n0.50"]
    )
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"{n} (1)" for n in ROLE_NAMES if n in roles]
    assert layout_problems(fig) == []
    path = plots.role_map(roles, [0, 1], [0, 1, 2], tmp_path / "deep" / "roles.png", scores)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == tuple(round(v * 150) for v in fig.get_size_inches())


def test_score_figure_shows_the_scores(tmp_path):
    values = np.array([[0.1, 0.9], [0.5, 0.0]])
    fig = plots.score_figure(values, [2, 3], [0, 1], title="induction", label="induction score")
    (ax,) = [a for a in fig.axes if a.get_images() and a.get_label() != "<colorbar>"]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), values)
    assert ax.get_images()[0].get_clim() == (0.0, 0.9)
    assert labels(ax.yaxis) == ["L2", "L3"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.10", "0.50", "0.90"]
    path = plots.score_map(values, [2, 3], [0, 1], tmp_path / "s.svg", label="induction score")
    root = ET.fromstring(path.read_bytes())
    assert root.get("width") == f"{fig.get_figwidth() * 72:g}pt"


def test_search_figure_draws_the_best_head_with_both_words_outlined(bert):
    """find-head's --plot as a library function: the winning head's weights, A and B outlined."""
    from helpers import image_values

    from attnviz.extraction import extract
    from attnviz.heads.search import find_heads

    att = extract("the cat sat on the mat", bert, device="cpu")
    found = find_heads(att, "cat", "mat")
    fig = plots.search_figure(found, att)
    best = found.best
    np.testing.assert_allclose(image_values(fig), att.head(best.layer, best.head), atol=1e-6)
    title = fig.axes[0].get_title()
    assert f"layer {best.layer} · head {best.head}: cat ↔ mat (score {best.score:.3f})" in title
    outlined = [p for p in fig.axes[0].patches if p.get_fill() is False]
    assert outlined  # the rows and columns of 'cat' and 'mat'


# -- issue 30: control characters in a text, and figures too large to draw ----------------------
CONTROL_TOKENS = ("[CLS]", "the\x00cat", "\x1b]0;title\x07", "bell\x07", "\ud800", "[SEP]")


@pytest.mark.parametrize("draw", ["heatmap", "entropy"])
def test_control_characters_in_a_text_still_make_a_well_formed_svg(tmp_path, draw):
    """NUL, ESC, BEL and a lone surrogate are not allowed in XML: shown as escapes, never written raw."""
    from helpers import figure_text

    from attnviz.heads.patterns import row_entropy_of

    text = "the\x00cat \x1b]0;title\x07 bell\x07"
    att = replace(fake_attention(), tokens=CONTROL_TOKENS, text=text)
    if draw == "heatmap":
        fig = plots.heatmap(att.head(0, 0), att.labels, title=text)
    else:
        fig = plots.entropy_figure(row_entropy_of(att), text=text)
    path = plots.save(fig, tmp_path / "x.svg")
    ET.parse(path)  # raises on malformed XML
    body = path.read_text(encoding="utf-8")
    assert "\x00" not in body and "\x1b" not in body and "\x07" not in body
    assert "\\x1b]0;title\\x07" in figure_text(fig)


def test_clean_keeps_ordinary_text_and_escapes_the_rest():
    assert plots.clean("café 巴黎 😀\n\tok") == "café 巴黎 😀\n\tok"
    assert plots.clean("a\x00b\x1bc\x07d\ud800") == "a\\x00b\\x1bc\\x07d\\ud800"


@pytest.mark.parametrize(("size", "dpi"), [((100, 100), 1200), ((60, 60), 1200), ((30, 1), 1200)])
def test_a_figure_of_too_many_pixels_is_refused_before_drawing(tmp_path, size, dpi):
    with pytest.raises(InputError) as err:
        plots.check_pixels(size, dpi)
    assert "--dpi" in err.value.render(cli_terms) and "pixels" in str(err.value)
    fig = plots.new_figure(size, 10)
    with pytest.raises(InputError):
        plots.save(fig, tmp_path / "big.png", dpi=dpi)
    assert not (tmp_path / "big.png").exists()


def test_figures_of_sane_size_pass_the_pixel_check():
    plots.check_pixels((16, 16), 1200)  # the largest self-sized heatmap at the largest dpi
    plots.check_pixels((30, 30), 300)
    plots.check_pixels(None, 1200)


@pytest.mark.parametrize("dpi", [5, -1, 5000, float("nan")])
def test_a_resolution_outside_10_to_1200_is_refused_by_the_library(tmp_path, dpi):
    """Issue 28: `save(fig, path, dpi=5)` wrote a 5-dpi file (and NaN reached matplotlib); the
    10-1200 rule was the CLI's `check_style` alone. Now `check_pixels`, which `save` asks, holds it."""
    with pytest.raises(InputError, match=r"^bad dpi .*: use a resolution between 10 and 1200$") as err:
        plots.save(plots.new_figure((2, 2), 50), tmp_path / "f.png", dpi=dpi)
    assert err.value.render(cli_terms).startswith("bad --dpi ")
    assert not (tmp_path / "f.png").exists()
    plots.save(plots.new_figure((2, 2), 50), tmp_path / "ok.png", dpi=10)


# -- issue 31: figures that mislead -------------------------------------------------------------
def _panel_contrast(fig) -> float:
    """Measured on the drawn images: the share of panels where at least half the rows have a cell a
    quarter of the colour range above the row's median colour (a uniformly dark panel has none)."""
    shown = []
    for im in images(fig):
        if im.axes.get_ylabel().startswith(plots.WEIGHT_LABEL):
            continue
        colour = np.clip(np.asarray(im.norm(np.asarray(im.get_array(), dtype=float))), 0, 1)
        spread = colour.max(-1) - np.median(colour, -1)
        shown.append(np.mean(spread >= 0.25) >= 0.5)
    return float(np.mean(shown))


def _thin_long_text(n: int = 300, layers: int = 3, heads: int = 4) -> Attention:
    """A long text's attention: each head puts 0.05 on a band (offset h) and spreads the rest thin;
    one cell holds 1.0, so a linear scale tops at 1 and every panel reads uniformly dark."""
    base = fake_attention(n, layers, heads)
    attn = np.full((layers, heads, n, n), 0.95 / n, dtype=np.float32)
    for li in range(layers):
        for hi in range(heads):
            q = np.arange(n)
            attn[li, hi, q, (q + li * heads + hi) % n] += 0.05
    attn[0, 0, 0] = 0.0
    attn[0, 0, 0, 5] = 1.0
    return replace(base, attn=attn)


def test_overview_of_a_long_text_shows_contrast_in_most_panels():
    """On one shared linear scale 0 of 12 panels show their band; the default must show most."""
    att = _thin_long_text()
    linear = plots.attention_figure(att, vmax="max")
    assert _panel_contrast(linear) == 0.0  # the trouble: uniformly dark
    fig = plots.attention_figure(att)
    assert _panel_contrast(fig) >= 0.9
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel().startswith(plots.WEIGHT_LABEL)]
    assert "auto: log scale" in bar.get_ylabel() and "12 of 12 panels" in bar.get_ylabel()
    short = plots.attention_figure(fake_attention(6, 2, 3))  # a short text keeps its linear scale
    assert type(images(short)[0].norm).__name__ == "Normalize"
    assert _panel_contrast(short) > 0.5


def _generation(n_new: int, prompt: int, seed: int = 0):
    """A decoder's [new, context] rows (the first key a sink of 0.6) and its labels."""
    from attnviz.plots.generation import step_visible

    width = prompt + n_new
    visible = step_visible(n_new, width, prompt)
    raw = np.random.default_rng(seed).random((n_new, width)) ** 4 * visible
    raw /= raw.sum(-1, keepdims=True)
    raw = raw * 0.4
    raw[:, 0] += 0.6
    new = [f"w{i}" for i in range(n_new)]
    return raw.astype(np.float32), new, [f"p{i}" for i in range(prompt)] + new, visible


def _extent(fig, artist):
    return artist.get_window_extent(_drawn(fig))


def test_generation_plot_leaves_the_sink_out_of_its_colour_scale_as_heatmap_does():
    from attnviz.plots.generation import generation_figure

    matrix, new, ctx, visible = _generation(5, 4)
    fig = generation_figure(matrix, new, ctx, 4, title="m · while generating · layer 0 · head 0")
    (image,) = data_axes(fig)[0].get_images()
    rest = np.where(visible, matrix, 0)[:, 1:].max()
    assert image.norm.vmax == pytest.approx(rest) and image.norm.vmax < matrix[:, 0].max()
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel().startswith(plots.WEIGHT_LABEL)]
    assert "sink p0 (key 0" in bar.get_ylabel()


def test_a_100_token_generation_plot_fills_its_figure_and_its_bar_is_the_plots_height():
    from attnviz.plots.generation import generation_figure

    matrix, new, ctx, _ = _generation(100, 18)
    fig = generation_figure(matrix, new, ctx, 18, title="smollm2 · while generating · layer 18 · head 6")
    ax = data_axes(fig)[0]
    (bar,) = [a for a in fig.axes if a.get_ylabel().startswith(plots.WEIGHT_LABEL)]
    image, colour = _extent(fig, ax.get_images()[0]), _extent(fig, bar)
    assert colour.height <= image.height * 1.02  # not as tall as the figure
    assert image.height >= 0.78 * fig.canvas.get_width_height()[1]  # no band of white above and below
    assert layout_problems(fig) == []


def test_a_short_cross_attention_plot_keeps_title_and_y_label_apart():
    """The T5 case: 3 new tokens, a long title: nothing clipped, the y label clear of the title."""
    from attnviz.plots.generation import generation_figure

    title = "/tmp/pytest-of-root/pytest-0/tiny-models0/t5 · cross-attention · mean of layers 0-1, heads 0-3"
    for rows, cols in ((1, 2), (1, 4), (3, 3), (2, 3), (3, 6)):
        matrix = np.random.default_rng(1).random((rows, cols)).astype(np.float32)
        src = ["▁the", "▁cat", "▁sat", "</s>", "a", "b"][:cols]
        new = [f"w{i}" for i in range(rows)]
        fig = generation_figure(matrix, new, src, 1, cross=True, title=title, text="the cat sat")
        assert layout_problems(fig) == [], (rows, cols)
        ylabel = _extent(fig, data_axes(fig)[0].yaxis.label)
        assert ylabel.y1 <= _extent(fig, fig._suptitle).y0


@pytest.mark.parametrize(("n", "causal"), [(6, False), (6, True), (40, False), (40, True)])
def test_entropy_legend_covers_neither_the_uniform_line_nor_a_bar(n, causal):
    from attnviz.heads.patterns import row_entropy_of

    att = fake_attention(n=n, layers=1, heads=1, causal=causal)
    uniform = replace(
        att, attn=np.where(att.visible(), 1.0, 0.0)[None, None] / att.visible().sum(-1)[..., None]
    )
    for a in (att, uniform):  # uniform rows: the bars reach the line
        fig = plots.entropy_figure(row_entropy_of(a))
        (ax,) = fig.axes
        box = _extent(fig, ax.get_legend())
        line = next(x for x in ax.get_lines() if x.get_label() == plots.BOUND_LABEL)
        points = ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
        inside = [(x, y) for x, y in points if box.x0 - 2 <= x <= box.x1 + 2]
        assert all(y < box.y0 for _, y in inside), "the legend sits on the dashed line"
        renderer = fig.canvas.get_renderer()  # drawn by _extent above: one draw, not one per bar
        assert all(bar.get_window_extent(renderer).y1 < box.y0 for bar in ax.patches), (
            "the legend covers a bar"
        )


def test_every_layers_by_heads_grid_labels_cells_l_and_h():
    """role.png, scores, entropy, compare: rows L0.., columns H0.., as the overview's 'L1 H5'."""
    from attnviz.heads.patterns import row_entropy_of

    roles = np.array([["previous", "mixed", "self"], ["mixed", "broad", "first"]])
    att = fake_attention(layers=2, heads=3)
    figs = [
        plots.role_figure(roles, [0, 1], [0, 1, 2]),
        plots.score_figure(np.random.default_rng(0).random((2, 3)), [0, 1], [0, 1, 2]),
        plots.entropy_figure(row_entropy_of(att)),
    ]
    for fig in figs:
        ax = fig.axes[0]
        assert labels(ax.yaxis) == ["L0", "L1"] and labels(ax.xaxis) == ["H0", "H1", "H2"]
