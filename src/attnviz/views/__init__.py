"""The self-contained HTML explorer (`attnviz view`, notebooks) and the local web app (`attnviz serve`).

Views never load a model: they take an `Attention` and give HTML. Starlette and uvicorn are imported
only by `attnviz.views.server`.
"""

from __future__ import annotations

from attnviz.views.html import page_data, render_html
from attnviz.views.notebook import HTMLView, iframe, show

__all__ = ["HTMLView", "iframe", "page_data", "render_html", "show"]
