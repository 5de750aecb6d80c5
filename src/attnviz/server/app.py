"""`attnviz serve`: a Starlette app over models loaded once, for the page and for scripts.

The forward pass runs in a worker thread under one lock per model, so the event loop keeps
answering other requests. Every failure is a 4xx (or 500) `{"error": "one line"}`, never a
traceback. Static files are the package's own assets, by fixed name.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from attnviz.analyses.transform import ExtractOptions, ViewOptions, transform
from attnviz.errors import (
    AttnvizError,
    InputError,
    TextTooLongError,
    TokenNotFoundError,
    api_terms,
    param,
)
from attnviz.selection import parse_indices, resolve_indices
from attnviz.server.attribution import serve_attribute, serve_lens
from attnviz.server.causal import serve_patch
from attnviz.server.generation import serve_generation
from attnviz.server.web import (
    CLIENT_GONE,
    MAX_QUERY_BYTES,
    ClientGone,
    RequestError,
    RequestLog,
    bind,
    read_body,
    run_until_gone,
    serve,
    turn,
    uvicorn_server,
)
from attnviz.views.html import asset, encode_weights, estimate_bytes, least_bytes, page_data, page_meta

__all__ = ["MAX_QUERY_BYTES", "Pool", "RequestError", "bind", "create_app", "serve", "uvicorn_server"]

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from attnviz.attention import Attention
    from attnviz.models.loading import LoadedModel

MAX_TEXT_CHARS = 100_000  # longer texts are refused before tokenising (413)
MAX_BODY_BYTES = 1_000_000  # a POST body (JSON or form): long texts go this way
MAX_PAGE_MB = 25.0
CACHE_BYTES = 256_000_000  # attention arrays kept for the last texts
CACHE_ITEMS = 32
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC = {
    "attnviz.js": "text/javascript",
    "matrix.js": "text/javascript",
    "overview.js": "text/javascript",
    "attnviz.css": "text/css",
    "serve.js": "text/javascript",
}
log = logging.getLogger("attnviz.serve")


@dataclass
class Pool:
    """Models by name, a lock per model that serialises its forward passes, and a small cache.

    The cache keeps the whole attention of the last texts (all layers and heads, up to
    `cache_bytes`), so flipping through the heads of one text runs the model once.
    """

    models: dict[str, LoadedModel]
    cache_bytes: int = CACHE_BYTES
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    plot_lock: threading.Lock = field(default_factory=threading.Lock)
    cache: OrderedDict[tuple[Any, ...], Attention] = field(default_factory=OrderedDict)
    cache_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.models:
            raise InputError("no model to serve")
        self.locks = {name: threading.Lock() for name in self.models}

    def name(self, requested: str | None) -> str:
        if requested in (None, ""):
            return next(iter(self.models))
        if requested in self.models:
            return requested
        for name, loaded in self.models.items():
            if loaded.name == requested:
                return name
        raise RequestError(f"unknown model '{requested}': this server has {', '.join(self.models)}", 404)

    def full(self, model: str, text: str, truncate: bool) -> Attention:
        """Every layer and head of one text, from the cache or one forward pass. Blocking."""
        from attnviz.extraction import extract

        key = (model, text, truncate)
        with self.cache_lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        with self.turn(model):
            with self.cache_lock:  # another request may have run this text while we waited
                if key in self.cache:
                    return self.cache[key]
            att = extract(text, self.models[model], truncate=truncate)
        self._keep(key, att)
        return att

    def _keep(self, key: tuple[Any, ...], att: Attention) -> None:
        if att.attn.nbytes <= self.cache_bytes:
            with self.cache_lock:
                self.cache[key] = att
                while (
                    len(self.cache) > CACHE_ITEMS
                    or sum(a.attn.nbytes for a in self.cache.values()) > self.cache_bytes
                ):
                    self.cache.popitem(last=False)

    def turn(self, model: str) -> Any:
        """The model's lock, held for one forward pass; a request given up stops waiting for it."""
        return turn(self.locks[model])

    def length(self, model: str, text: str, truncate: bool) -> int:
        """How many tokens the model reads for `text` (tokenising only). Blocking."""
        from attnviz.extraction import tokenize

        return tokenize(self.models[model], [text], truncate=truncate).lengths[0]

    def fits(self, model: str, n: int) -> bool:
        """Whether every head of an n-token text fits the cache (else heads are run one at a time)."""
        loaded = self.models[model]
        return n * n * 4 * loaded.num_layers * loaded.capture.num_heads <= self.cache_bytes

    def head(self, model: str, text: str, truncate: bool, layer: int, head: int) -> Attention:
        """One head, [1, 1, q, k]: sliced from the whole text when that fits the cache, else its own
        head-sliced forward pass (kept in the cache), so an 8,192-token text never holds every head."""
        from attnviz.extraction import extract

        loaded = self.models[model]
        if self.fits(model, self.length(model, text, truncate)):
            return self.extract(model, text, layers=[layer], heads=[head], truncate=truncate)
        layer_i = _index(layer, loaded.num_layers, "layer", loaded.name)
        head_i = _index(head, loaded.capture.num_heads, "head", loaded.name)
        key = (model, text, truncate, layer_i, head_i)
        with self.cache_lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        with self.turn(model):
            att = extract(text, loaded, layers=[layer_i], heads=[head_i], truncate=truncate)
        self._keep(key, att)
        return att

    def extract(
        self,
        model: str,
        text: str,
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        words: bool = False,
        truncate: bool = False,
    ) -> Attention:
        """`attnviz.extract` with the same selection rules, served from `full`. Blocking."""
        import numpy as np

        loaded = self.models[model]
        ls = resolve_indices(layers, loaded.num_layers, "layer", loaded.name)
        hs = resolve_indices(heads, loaded.capture.num_heads, "head", loaded.name)
        att = self.full(model, text, truncate)
        if ls is not None or hs is not None:
            ls = ls if ls is not None else list(range(len(att.layers)))
            hs = hs if hs is not None else list(range(len(att.heads)))
            att = replace(
                att,
                layers=tuple(att.layers[i] for i in ls),
                heads=tuple(att.heads[i] for i in hs),
                attn=np.ascontiguousarray(att.attn[ls][:, hs]),  # [layers, heads, q, k]
                decoder=None,
                cross=None,
                qkv=None,
            )
        return att.to_words() if words else att

    def shown(self, model: str, text: str, options: ExtractOptions) -> Attention:
        """`extract_shown` served from `full`: `options`' selection, then their view. Blocking."""
        o = options.check()
        att = self.extract(model, text, layers=o.layers, heads=o.heads, words=o.words, truncate=o.truncate)
        return transform(att, o.view, self.models[model])


def _index(value: int, count: int, what: str, model: str) -> int:
    return resolve_indices([value], count, what, model)[0]


def _status(exc: AttnvizError) -> int:
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, TokenNotFoundError):
        return 404
    if isinstance(exc, TextTooLongError):
        return 413
    return 400


class Params:
    """Query parameters (and a POST body's, JSON or form), checked: each problem is one RequestError line."""

    def __init__(self, request: Request, max_bytes: int = MAX_QUERY_BYTES, body: bytes = b"") -> None:
        if len(request.url.query.encode()) > max_bytes:
            raise RequestError(f"the query string is over {max_bytes} bytes", 414)
        self.q: dict[str, str] = dict(request.query_params)
        if body:
            from attnviz.server.web import body_params

            try:
                self.q.update(body_params(body, request.headers.get("content-type", "")))
            except ValueError as exc:
                raise RequestError(str(exc)) from None

    @classmethod
    async def read(cls, request: Request, max_bytes: int = MAX_QUERY_BYTES) -> Params:
        """The parameters of a GET, or of a POST whose body (up to MAX_BODY_BYTES) carries them."""

        body = await read_body(request, MAX_BODY_BYTES) if request.method == "POST" else b""
        return cls(request, max_bytes, body)

    def text(self) -> str:
        text = self.q.get("text")
        if text is None or not text.strip():
            raise RequestError("missing parameter 'text'")
        if len(text) > MAX_TEXT_CHARS:
            raise RequestError(
                f"the text has {len(text)} characters; this server takes at most {MAX_TEXT_CHARS}", 413
            )
        return text

    def word(self, name: str) -> str:
        value = self.q.get(name, "").strip()
        if not value:
            raise RequestError(f"missing parameter '{name}'")
        return value

    def int(self, name: str, default: int | None = None) -> int | None:
        value = self.q.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise RequestError(f"parameter '{name}' must be an integer, not '{value[:40]}'") from None

    def flag(self, name: str) -> bool:
        value = self.q.get(name, "0").lower()
        if value not in ("", "0", "1", "true", "false", "yes", "no"):
            raise RequestError(f"parameter '{name}' must be 0 or 1")
        return value in ("1", "true", "yes")

    def view_options(self) -> Any:
        """`aggregate=mean|max`, `over=heads|layers|both`, `special=0` (hide, rows renormalised)."""

        hide = not self.flag("special") if "special" in self.q else False
        options = ViewOptions(
            hide_special=hide, aggregate=self.q.get("aggregate") or None, over=self.q.get("over") or "heads"
        )
        return options.check()  # an InputError: one 400 line in the API's words, like any other

    def extract_options(
        self, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, words: bool = False
    ) -> ExtractOptions:
        """The `ExtractOptions` the CLI builds, from `truncate` and the view options: checked."""
        sel = {
            "layers": tuple(layers) if layers is not None else None,
            "heads": tuple(heads) if heads is not None else None,
        }
        return ExtractOptions(
            **sel, words=words, truncate=self.flag("truncate"), view=self.view_options()
        ).check()

    def indices(self, name: str) -> list[int] | None:
        return parse_indices(self.q.get(name) or None, name)


def _one_head(params: Params) -> tuple[int | None, int | None]:
    layer, head = params.int("layer"), params.int("head")
    if (layer is None) != (head is None):
        raise RequestError("give both 'layer' and 'head', or neither (every head)")
    return layer, head


class Handlers:
    """The API's request handlers over a model pool: each takes Params and returns JSON data or a PNG."""

    def __init__(self, pool: Pool, max_page_mb: float) -> None:
        self.pool = pool
        self.max_page_mb = max_page_mb

    def attention(self, p: Params) -> dict[str, Any]:
        text, name = p.text(), self.pool.name(p.q.get("model"))
        layer, head = _one_head(p)
        sel = {"layers": [layer], "heads": [head]} if layer is not None else {}
        att = self.pool.shown(name, text, p.extract_options(words=p.flag("words"), **sel))
        out: dict[str, Any] = {"model": att.model, "tokens": list(att.tokens), "level": att.level}
        if layer is None:
            out.update(layers=list(att.layers), heads=list(att.heads), attention=att.attn.tolist())
        else:
            out.update(layer=att.layers[0], head=att.heads[0], attention=att.attn[0, 0].tolist())
        out["truncated"] = att.truncated
        out["notes"] = list(att.notes)
        return out

    def view(self, p: Params) -> dict[str, Any]:
        """The explorer's data; with `lazy=1`, a text too long for one page comes without weights
        (`"lazy": true`) and the page fetches its heads one at a time from /api/head."""

        text, name = p.text(), self.pool.name(p.q.get("model"))
        o = p.extract_options(p.indices("layers"), p.indices("heads"))
        if p.flag("lazy") and not o.view.changes:
            loaded = self.pool.models[name]
            n = self.pool.length(name, text, o.truncate)
            least = least_bytes(loaded.num_layers, loaded.capture.num_heads, n)  # the page's own rule
            if not self.pool.fits(name, n) or least > self.max_page_mb * 1e6:
                return self._lazy(name, text, o.truncate)
        att = self.pool.extract(name, text, layers=o.layers, heads=o.heads, truncate=o.truncate)
        if p.flag("lazy") and estimate_bytes(att) > self.max_page_mb * 1e6:
            return self._lazy(name, text, o.truncate)
        lazy = f"or ask for {param('lazy', True)} (the page then fetches one head at a time)"
        return page_data(transform(att, o.view), max_mb=self.max_page_mb, allow=lazy)

    def generate(self, p: Params) -> dict[str, Any]:
        """The generation mode's data: a continuation and what each new token's step read."""

        return serve_generation(self.pool, p, self.max_page_mb)

    def _lazy(self, name: str, text: str, truncate: bool) -> dict[str, Any]:
        loaded = self.pool.models[name]
        att = self.pool.head(name, text, truncate, 0, 0)  # the tokens and spans, and the first head
        data = page_meta(att)
        data.update(
            layers=list(range(loaded.num_layers)),
            heads=list(range(loaded.capture.num_heads)),
            lazy=True,
            head0=encode_weights(att.attn),  # layer 0, head 0: drawn without a second request
        )
        return data

    def head(self, p: Params) -> dict[str, Any]:
        """One head of a text in the page's compact encoding (`views.html.encode_weights`)."""

        text, name = p.text(), self.pool.name(p.q.get("model"))
        layer, head = _one_head(p)
        if layer is None or head is None:
            raise RequestError("missing parameters 'layer' and 'head'")
        att = self.pool.head(name, text, p.flag("truncate"), layer, head)
        return {
            "layer": att.layers[0],
            "head": att.heads[0],
            "n": att.n_tokens,
            "weights": encode_weights(att.attn),
        }

    def find_head(self, p: Params) -> list[dict[str, Any]]:
        from attnviz.heads.search import check_direction, check_top, find_heads

        text, name = p.text(), self.pool.name(p.q.get("model"))
        a, b = p.word("a"), p.word("b")
        top = p.int("top", 5)
        check_top(top)  # the library's rules, before the forward pass
        direction = p.q.get("direction", "both")
        check_direction(direction)
        att = self.pool.shown(name, text, p.extract_options(p.indices("layers")))
        result = find_heads(att, a, b, direction=direction, top=top or None)
        return [h.as_dict() for h in result.ranking]

    def heatmap(self, p: Params) -> Response:
        from starlette.responses import Response

        from attnviz.plots import attention_figure

        text, name = p.text(), self.pool.name(p.q.get("model"))
        layer, head = _one_head(p)
        if layer is None:
            raise RequestError("missing parameters 'layer' and 'head'")
        att = self.pool.shown(name, text, p.extract_options([layer], [head], words=p.flag("words")))
        with self.pool.plot_lock:
            fig = attention_figure(att)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
        return Response(buf.getvalue(), media_type="image/png")

    def models(self, _: Params) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "model": m.name,
                "kind": m.kind,
                "layers": m.num_layers,
                "heads": m.capture.num_heads,
                "max_tokens": m.max_length,
            }
            for name, m in self.pool.models.items()
        ]


def _error(message: str, status: int, close: bool = False) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {"error": message}, status_code=status, headers={"Connection": "close"} if close else None
    )


def _api(handler: Callable[[Params], Any], max_query_bytes: int) -> Callable[[Request], Any]:
    """Run a blocking handler in a worker thread; library errors become 4xx JSON, bugs one 500 line.
    When the client goes away first, its work is dropped (499, logged as cancelled)."""
    from starlette.responses import JSONResponse, Response

    async def endpoint(request: Request) -> Response:
        try:
            params = await Params.read(request, max_query_bytes)
            result = await run_until_gone(request.receive, lambda: handler(params))
        except ClientGone:
            return Response(status_code=CLIENT_GONE)  # unheard; the log says "cancelled"
        except AttnvizError as exc:
            close = isinstance(exc, RequestError) and exc.close
            return _error(exc.render(api_terms), _status(exc), close)  # query parameters, not flags
        except Exception as exc:  # a bug: logged here, one line to the client
            log.exception("request failed: %s", request.url.path)
            return _error(f"internal error ({type(exc).__name__})", 500)
        return result if isinstance(result, Response) else JSONResponse(result)

    return endpoint


async def _page(request: Request) -> Response:
    from starlette.responses import Response

    return Response(
        asset("serve.html"), media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP}
    )


async def _static(request: Request) -> Response:
    from starlette.responses import Response

    name = request.path_params["name"]
    if name not in STATIC:
        return _error(f"no such file: {name[:80]}", 404)
    return Response(asset(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


async def _http_error(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(str(detail), status)


def create_app(
    models: Mapping[str, LoadedModel],
    *,
    max_page_mb: float = MAX_PAGE_MB,
    max_query_bytes: int = MAX_QUERY_BYTES,
    cache_bytes: int = CACHE_BYTES,
) -> Starlette:
    """The ASGI app over already loaded models (name -> model), the first one the default."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    pool = Pool(dict(models), cache_bytes=cache_bytes)
    h = Handlers(pool, max_page_mb)
    both = ["GET", "POST"]  # POST: a long text in the body instead of the query string
    api = {
        "models": h.models,
        "attention": h.attention,
        "view": h.view,
        "head": h.head,
        "find-head": h.find_head,
        "generate": h.generate,
        "heatmap.png": h.heatmap,
        "attribute": lambda p: serve_attribute(pool, p),
        "lens": lambda p: serve_lens(pool, p),
        "patch": lambda p: serve_patch(pool, p),
    }
    routes = [
        Route("/", _page),
        Route("/static/{name}", _static),
        *(Route(f"/api/{path}", _api(fn, max_query_bytes), methods=both) for path, fn in api.items()),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _http_error},
        middleware=[Middleware(RequestLog, log=log)],
    )
    app.state.pool = pool
    return app
