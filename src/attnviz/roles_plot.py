"""Moved to `attnviz.plots` (plots/roles.py); this name stays while batch.py still imports it."""

from attnviz.plots.roles import ROLE_COLOURS, role_figure, role_map, score_figure, score_map

__all__ = ["ROLE_COLOURS", "role_figure", "role_map", "score_figure", "score_map"]
