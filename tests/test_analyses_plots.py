"""Figures of the analyses, read back by their data: arrays drawn, labels, colour scales."""

from __future__ import annotations

import numpy as np
import pytest
from analyses_helpers import synthetic

from attnviz.analyses.cluster import head_distances
from attnviz.analyses.compare import compare
from attnviz.analyses.rollout import rollout
from attnviz.plots.analyses import cluster_map, embedding_figure, pair_figure, rollout_figure, save_clustermap


def test_rollout_figure_masks_the_future_of_a_decoder() -> None:
    ro = rollout(synthetic(("<s>", "a", "b", "c"), causal=True))
    fig = rollout_figure(ro, token=3)
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (4, 4)
    assert image.mask[0, 1] and not image.mask[1, 0]  # future hatched, never drawn as 0
    np.testing.assert_allclose([p.get_height() for p in fig.axes[1].patches], ro.row(3))


def test_pair_figure_difference_is_a_minus_b() -> None:
    a = synthetic(("[CLS]", "too", "big", "[SEP]"), seed=1)
    b = synthetic(("[CLS]", "too", "small", "[SEP]"), seed=2)
    cmp = compare(a, b)
    fig = pair_figure(cmp, 1, 2)
    diff = next(ax for ax in fig.axes if ax.get_title() == "A - B")
    rows_a, rows_b = cmp.pair(1, 2)
    np.testing.assert_allclose(diff.get_images()[0].get_array(), rows_a - rows_b, atol=1e-7)
    assert [t.get_text() for t in diff.get_yticklabels()][2] == "big/small"


def test_clustermap_and_embedding(tmp_path) -> None:
    atts = [synthetic(("a", "b", "c"), seed=s) for s in (1, 2)]
    dist = head_distances(atts)
    grid = cluster_map(dist)
    order = grid.dendrogram_row.reordered_ind
    shown = [t.get_text() for t in grid.ax_heatmap.get_yticklabels()]
    assert shown == [dist.labels[i] for i in order]
    np.testing.assert_allclose(grid.data2d.to_numpy(), dist.matrix[np.ix_(order, order)])
    path = save_clustermap(grid, tmp_path / "c.png")
    assert path.stat().st_size > 1000
    fig = embedding_figure(dist)
    points = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert len(points) == 6
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert set(legend) <= set(dist.roles) and legend


def test_derived_figure_says_what_was_done() -> None:
    from attnviz.analyses.aggregate import aggregate, without_special
    from attnviz.plots.analyses import derived_figure

    att = synthetic(("[CLS]", "a", "b", "[SEP]"), (True, False, False, True), layers=2, heads=3)
    one = without_special(aggregate(att, "heads", "max", layers=[1]))
    fig = derived_figure(one)
    ax = next(a for a in fig.axes if a.get_images())
    assert (
        ax.get_title() == "synthetic · layer 1 · max of heads 0-2 · special tokens hidden, rows renormalised"
    )
    np.testing.assert_allclose(ax.get_images()[0].get_array(), one.attn[0, 0])
    grid = derived_figure(without_special(att))
    assert grid.get_suptitle().endswith("special tokens hidden, rows renormalised")


def test_weighting_figure_draws_both_arrays() -> None:
    from attnviz.plots.analyses import weighting_figure

    att = synthetic(("a", "b", "c"), layers=1, heads=2)
    fake = synthetic(("a", "b", "c"), layers=1, heads=2, seed=9)
    fig = weighting_figure(att, fake, 0, 1)
    images = [a.get_images()[0].get_array() for a in fig.axes if a.get_images()]
    np.testing.assert_allclose(images[0], att.attn[0, 1])
    np.testing.assert_allclose(images[1], fake.attn[0, 1])


def test_clustermap_legend_and_mds_share_one_colour_per_layer() -> None:
    """Issue 20: the clustermap's layer colours had no legend and differed from the MDS map's."""
    from matplotlib.colors import to_rgba

    atts = [synthetic(("a", "b", "c"), seed=s, layers=3, heads=2) for s in (1, 2)]
    dist = head_distances(atts)
    grid = cluster_map(dist)
    (legend,) = grid.figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["L0", "L1", "L2"]
    legend_colours = {
        t.get_text(): to_rgba(h.get_facecolor())
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }
    fig = embedding_figure(dist)
    points = {}
    for collection in fig.axes[0].collections:
        for xy, colour in zip(collection.get_offsets(), collection.get_facecolors(), strict=True):
            points[tuple(np.round(xy, 9))] = tuple(colour)
    coords = dist.embedding(2)
    for (x, y), layer in zip(coords, dist.head_layers, strict=True):
        assert points[(round(x, 9), round(y, 9))] == legend_colours[f"L{layer}"]
    (mds_legend,) = fig.legends
    assert [t.get_text() for t in mds_legend.get_texts()] == ["L0", "L1", "L2"]


def test_groups_recover_planted_clusters() -> None:
    """Heads planted in three tight blocks come back as three groups, whole."""
    from attnviz.analyses.cluster import HeadDistances

    block = np.repeat([0, 0, 0, 1, 1, 2, 2, 2, 2], 1)
    matrix = np.where(block[:, None] == block[None, :], 0.05, 0.8)
    np.fill_diagonal(matrix, 0.0)
    dist = HeadDistances("m", (0, 1, 2), (0, 1, 2), matrix, 4, ("broad",) * 9)
    groups = dist.groups(3)
    assert [len(g.heads) for g in groups] == [4, 3, 2]  # largest first
    assert groups[0].heads == ("L1H2", "L2H0", "L2H1", "L2H2") and groups[0].layers == (1, 2)
    assert groups[0].spread == pytest.approx(0.05) and groups[0].roles == (("broad", 4),)
    assert groups[0].describe() == "4 heads, layers 1, 2, broad 4; mean distance 0.050 bits"
    assert len(dist.groups()) == 2 and len(dist.groups(1)) == 1  # default: round(sqrt(9 / 2))
    with pytest.raises(Exception, match="cannot cut 9 heads into 10 groups"):
        dist.groups(10)


def test_rollout_and_compare_figures_quote_their_texts() -> None:
    from attnviz.plots.analyses import change_figure

    ro = rollout(synthetic(("<s>", "a", "b"), causal=True, text="Emily wanted Paris"))
    assert ro.text == "Emily wanted Paris"
    assert "“Emily wanted Paris”" in rollout_figure(ro).get_suptitle()
    long = "The trophy did not fit in the suitcase because it was too "
    a = synthetic(("[CLS]", "too", "big", "[SEP]"), seed=1, text=long + "big.")
    b = synthetic(("[CLS]", "too", "small", "[SEP]"), seed=2, text=long + "small.")
    cmp = compare(a, b)
    for title in (change_figure(cmp).axes[0].get_title(), pair_figure(cmp, 1, 2).get_suptitle()):
        lines = title.splitlines()
        assert lines[-2].startswith("A “") and lines[-2].endswith("too big.”"), title  # where they differ
        assert lines[-1].startswith("B “") and lines[-1].endswith("too small.”"), title


def _boxes(fig, artists):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _many_heads():
    atts = [synthetic(("a", "b", "c", "d"), seed=s, layers=6, heads=12) for s in (1, 2, 3)]
    return head_distances(atts)


def test_mds_point_labels_never_pile_up() -> None:
    dist = _many_heads()
    fig = embedding_figure(dist)
    ax = fig.axes[0]
    names = [t for t in ax.texts if t.get_text() in set(dist.labels)]
    boxes = _boxes(fig, names)
    assert len(names) >= 8  # the outer points are still named
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
    frame = _boxes(fig, [ax])[0]
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for b in boxes)


def test_clustermap_legend_off_the_dendrograms_and_title_off_the_edge() -> None:
    dist = _many_heads()
    grid = cluster_map(dist)
    fig = grid.figure
    (legend,) = fig.legends
    legend_box, title_box = _boxes(fig, [legend, fig._suptitle])
    parts = [grid.ax_row_dendrogram, grid.ax_col_dendrogram, grid.ax_heatmap, grid.ax_cbar]
    parts += [grid.ax_row_colors, grid.ax_col_colors]
    for box in _boxes(fig, parts):
        assert not legend_box.overlaps(box)
        assert not title_box.overlaps(box)
    tick_boxes = _boxes(fig, grid.ax_heatmap.get_yticklabels())
    assert not any(legend_box.overlaps(b) for b in tick_boxes)
    height = fig.canvas.get_width_height()[1]
    assert title_box.y1 <= height - 4  # a margin above the title
    assert legend_box.x1 <= fig.canvas.get_width_height()[0]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_the_groups_rule_is_the_librarys() -> None:
    """Issue 28: the CLI refused `--groups 0` with its own copy; `check_groups` is the one rule,
    asked by the CLI before the model loads (heads unknown) and by `groups` (heads known)."""
    from attnviz.analyses.cluster import HeadDistances, check_groups
    from attnviz.errors import InputError, cli_terms

    dist = HeadDistances("m", (0,), (0, 1), np.array([[0.0, 0.5], [0.5, 0.0]]), 2, ("broad",) * 2)
    for call in (lambda: dist.groups(0), lambda: check_groups(0), lambda: check_groups(-2, 5)):
        with pytest.raises(InputError, match=r"^bad groups -?\d: use 1 or more$") as caught:
            call()
        assert caught.value.render(cli_terms).startswith("bad --groups ")
    with pytest.raises(InputError, match=r"^cannot cut 2 heads into 3 groups: ask for 1 to 2$"):
        check_groups(3, 2)
    assert check_groups(3) is None and len(dist.groups(2)) == 2
