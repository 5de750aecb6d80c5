"""Jupyter display without a Jupyter dependency: the explorer in a sandboxed iframe `srcdoc`."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError

if TYPE_CHECKING:
    from attnviz.attention import Attention
    from attnviz.generation.run import Generation
    from attnviz.heads.search import HeadSearch


def iframe(page: str, height: int = 640) -> str:
    """A whole page as an iframe: scripts run in the sandbox, apart from the notebook's own."""
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
        f'style="width:100%;height:{int(height)}px;border:0" title="attnviz explorer"></iframe>'
    )


def attention_html(att: Attention, **options: Any) -> str:
    """The explorer; a page too large to embed is one escaped line saying how to narrow it."""
    from attnviz.views.html import render_html

    try:
        return iframe(render_html(att, **options))
    except InputError as exc:
        return f"<p>attnviz: {html.escape(str(exc))} (extract fewer layers or heads)</p>"


def generation_html(gen: Generation) -> str:
    """The explorer's generation mode in an iframe (what `Generation._repr_html_` shows)."""
    from attnviz.views.generation import render_generation_html

    return iframe(render_generation_html(gen))


def ranking_html(result: HeadSearch) -> str:
    """find_heads' ranking as a table (every value escaped)."""
    esc = html.escape
    head = "".join(f"<th>{c}</th>" for c in ("rank", "layer", "head", "score", "a2b", "b2a", "role"))
    rows = "".join(
        f"<tr><td>{h.rank}</td><td>{h.layer}</td><td>{h.head}</td><td>{h.score:.4f}</td>"
        f"<td>{h.a2b:.4f}</td><td>{h.b2a:.4f}</td><td>{esc(h.role)}</td></tr>"
        for h in result.ranking
    )
    title = (
        f"heads linking '{esc(result.a)}' and '{esc(result.b)}' in {esc(result.model)} "
        f"({result.texts_used} of {result.texts_total} texts, direction {esc(result.direction)})"
    )
    return f"<div><p>{title}</p><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"


@dataclass(frozen=True)
class HTMLView:
    """HTML that Jupyter shows (`_repr_html_`) and a script can save."""

    html: str

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        from attnviz.views.html import write_html

        return write_html(self.html, Path(path))  # atomic; never through a symbolic link


def show(obj: Attention | HeadSearch | Generation, **options: Any) -> HTMLView | None:
    """Show the explorer for an Attention, a Generation or a find_heads ranking in Jupyter; elsewhere
    return it."""
    from attnviz.generation.run import Generation
    from attnviz.heads.search import HeadSearch

    if isinstance(obj, Generation):  # the explorer's generation mode
        from attnviz.views.generation import render_generation_html

        view = HTMLView(iframe(render_generation_html(obj, **options)))  # type: ignore[arg-type]
    else:
        view = HTMLView(ranking_html(obj) if isinstance(obj, HeadSearch) else attention_html(obj, **options))
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
        from IPython.display import display  # type: ignore[import-not-found]
    except ImportError:
        return view
    if get_ipython() is None:
        return view
    display(view)
    return None
