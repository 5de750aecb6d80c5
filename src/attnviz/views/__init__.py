"""The self-contained HTML explorer (`attnviz view`, notebooks) and the local web app (`attnviz serve`).

Views never load a model: they take an `Attention` and give HTML. Starlette and uvicorn are imported
only by `attnviz.views.server`.
"""

from __future__ import annotations

from attnviz.views.html import decode_weights, encode_weights, page_data, page_meta, render_html
from attnviz.views.notebook import HTMLView, iframe, show

__all__ = [
    "HTMLView",
    "decode_weights",
    "encode_weights",
    "iframe",
    "page_data",
    "page_meta",
    "render_html",
    "show",
]
