"""Figures from arrays and labels: attention heatmaps, head grids, row entropy, the toy, head roles,
and the analyses' figures (rollout, minimal pairs, clusters, norm weighting, derived views).

Never loads a model. Every figure function returns a matplotlib `Figure` made without pyplot (so
tests read its axes and nothing global is left behind), drawn with a font chain that covers CJK and
emoji (fonts.py); `save()` is the one way any of them is written to a file.

    from attnviz import plots
    fig = plots.attention_figure(att)
    plots.save(fig, "heatmap.png")
"""

from attnviz.plots._common import (
    ANNOTATE_MAX,
    CELL,
    DEFAULT_CMAP,
    DEFAULT_DPI,
    FONT,
    HIGHLIGHT,
    KEY_LABEL,
    LABEL_CHARS,
    LABEL_EVERY_PANEL,
    MASK_EDGE,
    MASK_HATCH,
    MASKED_LABEL,
    MAX_GRID,
    MAX_SIDE,
    MIN_FONT,
    OVERVIEW_DPI,
    QUERY_LABEL,
    WEIGHT_LABEL,
    colormap,
    draw_matrix,
    label_step,
    new_figure,
    parse_size,
    parse_vmax,
    resolve_vmax,
    save,
)
from attnviz.plots.analyses import (
    change_figure,
    cluster_map,
    derived_figure,
    derived_title,
    embedding_figure,
    pair_figure,
    rollout_figure,
    save_clustermap,
    weighting_figure,
)
from attnviz.plots.entropy import BOUND_LABEL, ENTROPY_LABEL, entropy_bars, entropy_figure, entropy_grid
from attnviz.plots.fonts import font_chain
from attnviz.plots.heatmaps import (
    OVERVIEW_MAX,
    annotate_limit,
    attention_figure,
    cross_figure,
    heatmap,
    heatmap_panels,
    overview,
    overview_layout,
)
from attnviz.plots.roles import ROLE_COLOURS, effect_map, role_figure, role_map, score_figure, score_map
from attnviz.plots.toy import toy_figure

__all__ = [
    "ANNOTATE_MAX",
    "BOUND_LABEL",
    "CELL",
    "DEFAULT_CMAP",
    "DEFAULT_DPI",
    "ENTROPY_LABEL",
    "FONT",
    "HIGHLIGHT",
    "KEY_LABEL",
    "LABEL_CHARS",
    "LABEL_EVERY_PANEL",
    "MASKED_LABEL",
    "MASK_EDGE",
    "MASK_HATCH",
    "MAX_GRID",
    "MAX_SIDE",
    "MIN_FONT",
    "OVERVIEW_DPI",
    "OVERVIEW_MAX",
    "QUERY_LABEL",
    "ROLE_COLOURS",
    "WEIGHT_LABEL",
    "annotate_limit",
    "attention_figure",
    "change_figure",
    "cluster_map",
    "colormap",
    "cross_figure",
    "derived_figure",
    "derived_title",
    "draw_matrix",
    "effect_map",
    "embedding_figure",
    "entropy_bars",
    "entropy_figure",
    "entropy_grid",
    "font_chain",
    "heatmap",
    "heatmap_panels",
    "label_step",
    "new_figure",
    "overview",
    "overview_layout",
    "pair_figure",
    "parse_size",
    "parse_vmax",
    "resolve_vmax",
    "role_figure",
    "role_map",
    "rollout_figure",
    "save",
    "save_clustermap",
    "score_figure",
    "score_map",
    "toy_figure",
    "weighting_figure",
]
