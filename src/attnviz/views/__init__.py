"""The self-contained HTML explorer (`attnviz view`, notebooks) and the local web app (`attnviz serve`).

No view loads a model. The page and notebook views never run one either: they take an `Attention`
and give HTML (`html.check_page_fits` only tokenises, with a model it is given). `attnviz.server.app`
runs the forward passes of the models it is given (the CLI loads them), in a worker thread; it is
the only module that imports Starlette and uvicorn.
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
