"""HTTP plumbing of `attnviz serve` that knows nothing of models.

What a hostile browser or client meets, each answered in one line:
- `HostGuard`: a `Host` that is not this machine's loopback names or the `--host` given (DNS
  rebinding), an `Origin` that is not the server's own (a form POST from any page), a cross-site
  fetch of the API (`Sec-Fetch-Site`);
- `read_body`: a POST body read as a stream and counted, refused at the limit, never buffered whole;
- `body_params`: a JSON body nested too deeply, or a `text` that is not a string;
- `guarded_protocol`: idle or slow connections that would hold every slot (each must send its
  request within seconds; past a few dozen waiting, the oldest is closed);
- `run_until_gone` and `turn`: work queued for a client that went away (or a server that stops) is
  dropped before it runs.
And `RequestLog`: one log line per request, also for a cancelled one; `bind`, `uvicorn_server` and
`serve` put the app on a socket with all of the above.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from attnviz.errors import AttnvizError, InputError, param

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

T = TypeVar("T")
LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARD = ("", "0.0.0.0", "::")
REQUEST_SECONDS = 10.0  # a connection sends its request's headers this soon after it opens or is answered
BODY_SECONDS = 10.0  # and its body this soon after the headers
MAX_QUERY_BYTES = 200_000  # the whole query string (a long text, percent-encoded)
MAX_WAITING = 32  # connections waiting to send a request; a new one closes the oldest
CLIENT_GONE = 499  # the status logged for a request whose client went away (nginx's)
_cancel: ContextVar[threading.Event | None] = ContextVar("attnviz_serve_cancel", default=None)
log = logging.getLogger("attnviz.serve")


class RequestError(AttnvizError):
    """A bad request, with the HTTP status it gets; `close`: end the connection after the answer
    (a body not read to its end)."""

    def __init__(self, message: str, status: int = 400, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.close = close


class ClientGone(Exception):
    """The client went away before its answer was ready."""


class Abandoned(Exception):
    """Raised in a worker thread whose request was given up: its client went away, or the server stops."""


# -- the body -------------------------------------------------------------------------------------
async def read_body(request: Any, limit: int, seconds: float | None = None) -> bytes:
    """A request's body, read as it streams in and counted: a RequestError (413) as soon as it passes
    `limit` bytes, so a 100 MB body is never held; 408 if it takes over `seconds` (BODY_SECONDS)."""
    import asyncio

    from starlette.requests import ClientDisconnect

    seconds = BODY_SECONDS if seconds is None else seconds
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise RequestError(f"the request body is over {limit} bytes", 413, close=True)
    chunks, total = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise RequestError(f"the request body is over {limit} bytes", 413, close=True)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(f"the request body took over {seconds:g} s to arrive", 408, close=True) from None
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


STRINGS = ("text", "a", "b")  # parameters a JSON body must give as strings
_JSON_KINDS = {type(None): "null", list: "a list", dict: "an object", bool: "a boolean"}


def body_params(body: bytes, content_type: str) -> dict[str, str]:
    """A POST body as parameters: a JSON object, or a urlencoded form; ValueError if neither.

    A JSON value is a string, a number or a boolean (`true` reads as 1); `text`, `a` and `b` only
    strings; null, a list or an object is refused by name.
    """
    import json
    from urllib.parse import parse_qsl

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8") from None
    if "json" in content_type or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("the request body is nested too deeply to be parameters") from None
        except ValueError:
            raise ValueError("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object of parameters")
        return {str(k): _scalar(str(k), v) for k, v in data.items()}
    return dict(parse_qsl(text, keep_blank_values=True))


def _scalar(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if name not in STRINGS and isinstance(value, bool):
        return "1" if value else "0"
    if name not in STRINGS and isinstance(value, int | float):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    kind = _JSON_KINDS.get(type(value), "a number")
    wanted = "a string" if name in STRINGS else "a string, a number or a boolean"
    raise ValueError(f"parameter '{_shown(name)}' must be {wanted}, not {kind}")


# -- who may ask ----------------------------------------------------------------------------------
def allowed_hosts(*hosts: str) -> tuple[frozenset[str], bool]:
    """The host names a request's `Host` may give: loopback and `hosts` (what `--host` said and the
    address bound). A wildcard bind (0.0.0.0, ::) also takes any IP address and this machine's name:
    a page rebinding its own domain to this machine still sends its own domain."""
    import socket

    names = {_bare(h) for h in (*LOOPBACK, *hosts) if _bare(h) not in WILDCARD}
    wildcard = any(_bare(h) in WILDCARD for h in hosts)
    if wildcard:
        names.add(socket.gethostname().lower())
    return frozenset(names), wildcard


def _bare(host: str) -> str:
    """`[::1]:8000` -> `::1`, `LocalHost.:80` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _authority(host_header: str, scheme: str) -> str:
    """`Host` or an origin's host:port, lower case, with the scheme's default port made explicit."""
    host = host_header.strip().lower()
    port = "443" if scheme == "https" else "80"
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return f"{name}]:{rest[1:] or port}"
    name, _, given = host.partition(":")
    return f"{name.rstrip('.')}:{given or port}"


def refusal(scope: dict[str, Any], names: frozenset[str], wildcard: bool) -> tuple[int, str] | None:
    """Why a request is refused (status, one line), or None: a foreign Host, a foreign Origin, or a
    cross-site request to /api/."""
    from urllib.parse import urlsplit

    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    host = headers.get("host", "")
    bare = _bare(host)
    if not bare or not (bare in names or (wildcard and _is_ip(bare))):
        why = "open it as localhost, or as the host it was started on"
        return 400, f"host '{_shown(host)}' is not this server's name ({why})"
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        own = _authority(host, scope.get("scheme", "http"))
        if parts.scheme not in ("http", "https") or _authority(parts.netloc, parts.scheme) != own:
            return 403, f"requests from another site ('{_shown(origin)}') are refused"
    site = headers.get("sec-fetch-site", "")
    if scope.get("path", "").startswith("/api/") and site in ("cross-site", "same-site"):
        return 403, "requests from another site are refused (open the server's own page)"
    return None


def _shown(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value[:80])


class HostGuard:
    """ASGI middleware: refuses (one JSON line, logged) what `refusal` names; the app as served."""

    def __init__(self, app: Any, *hosts: str) -> None:
        self.app = app
        self.names, self.wildcard = allowed_hosts(*hosts)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        why = refusal(scope, self.names, self.wildcard) if scope["type"] in ("http", "websocket") else None
        if why is None:
            await self.app(scope, receive, send)
            return
        status, message = why
        log.info("%s %s %d refused: %s", scope.get("method", "WS"), scope.get("path", ""), status, message)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(send, status, message, close=True)


async def send_error(send: Any, status: int, message: str, *, close: bool = False) -> None:
    """A `{"error": message}` answer through a raw ASGI `send`."""
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- work given up ----------------------------------------------------------------------------------
async def run_until_gone(receive: Any, fn: Callable[[], T]) -> T:
    """`fn()` in a worker thread; `ClientGone` as soon as the client goes away (the connection closes).

    The thread is abandoned then, and so when this task is cancelled (the server stopping): its
    `turn` raises `Abandoned` instead of waiting for the model, so queued work never runs. A forward
    pass already running finishes, unheard."""
    import asyncio

    import anyio.to_thread

    event = threading.Event()
    token = _cancel.set(event)  # the worker thread's copy of the context holds it
    try:
        work = asyncio.ensure_future(anyio.to_thread.run_sync(fn, abandon_on_cancel=True))
    finally:
        _cancel.reset(token)
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            event.set()
            work.cancel()
        gone.cancel()
    if event.is_set():
        raise ClientGone
    return work.result()


async def _disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@contextlib.contextmanager
def turn(lock: threading.Lock, poll: float = 0.05) -> Iterator[None]:
    """Hold `lock` (a model's); while waiting for it, give up (`Abandoned`) if the request that
    queued this work was (see `run_until_gone`)."""
    event = _cancel.get()
    if event is None:
        with lock:
            yield
        return
    while not lock.acquire(timeout=poll):
        if event.is_set():
            raise Abandoned
    try:
        if event.is_set():
            raise Abandoned
        yield
    finally:
        lock.release()


# -- connections ------------------------------------------------------------------------------------
def guarded_protocol(request_seconds: float = REQUEST_SECONDS, max_waiting: int = MAX_WAITING) -> type:
    """uvicorn's h11 protocol with a deadline: a connection that has not sent its request's headers
    `request_seconds` after it opened (or after its last answer) is closed, however slowly it trickles
    bytes; and when over `max_waiting` connections wait so, a new one closes the oldest. Idle clients
    can then never hold every slot (uvicorn answers 503 past `limit_concurrency` connections)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        since = 0.0
        deadline: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()
            waiting = [
                c for c in self.connections if isinstance(c, GuardedH11) and c.waiting() and c is not self
            ]
            if len(waiting) >= max_waiting:
                min(waiting, key=lambda c: c.since).transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def waiting(self) -> bool:
            """No request in progress: none yet, or the last one answered."""
            closing = self.transport is None or self.transport.is_closing()
            return not closing and (self.cycle is None or self.cycle.response_complete)

        def _arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.since = self.loop.time()
            self.deadline = self.loop.call_later(request_seconds, self._expire)

        def _expire(self) -> None:
            self.deadline = None
            if self.waiting():
                self.transport.close()

    return GuardedH11


class RequestLog:
    """ASGI middleware: one log line per request (method, path, status, bytes, milliseconds).

    A request cancelled (the server stopping) is one line too, and answered 503 if it can be: the
    cancellation goes no further, so uvicorn logs no traceback for it."""

    def __init__(self, app: Any, log: logging.Logger = log) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio
        import time

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, seen = time.perf_counter(), {"status": 0, "bytes": 0}

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        method, path, cancelled = scope["method"], scope["path"], False
        try:
            await self.app(scope, receive, counting)
        except asyncio.CancelledError:
            cancelled = True
        finally:
            ms = (time.perf_counter() - start) * 1000
            if cancelled or seen["status"] == CLIENT_GONE:
                why = "the server is stopping" if cancelled else "the client went away"
                self.log.info("%s %s cancelled after %.0f ms: %s", method, path, ms, why)
            else:
                self.log.info("%s %s %d %d bytes %.0f ms", method, path, seen["status"], seen["bytes"], ms)
        if cancelled and not seen["status"]:
            with contextlib.suppress(Exception):
                await send_error(send, 503, "the server is stopping", close=True)


# -- running ----------------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one InputError line (in use, not this machine's...).

    Bound before the models load, so a taken port fails fast; requests queue on it until uvicorn
    accepts them.
    """
    import socket

    if not 0 <= port < 65536:
        raise InputError(f"bad {param('port')} {port}: use 1-65535 (or 0: any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InputError(f"unknown {param('host')} '{host}'") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another {param('port')}"
        ) from None
    return sock


def uvicorn_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    hosts: Sequence[str] = (),
    request_seconds: float = REQUEST_SECONDS,
    max_waiting: int = MAX_WAITING,
) -> Any:
    """The uvicorn server `serve` runs (tests run it in a thread, on a socket of their own).

    The app is served behind `HostGuard`: a `Host` other than loopback, `host` and `hosts`, or a
    request from another site, is refused. Connections must send their request within
    `request_seconds`; on stopping, requests get a second, then are cancelled (one log line each).
    """
    import uvicorn

    uvicorn_log = logging.getLogger("uvicorn.error")
    if _quiet_cancel not in uvicorn_log.filters:
        uvicorn_log.addFilter(_quiet_cancel)
    config = uvicorn.Config(
        HostGuard(app, host, *hosts),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",  # the app has no start-up or shutdown work (and a forced stop then logs nothing)
        http=guarded_protocol(request_seconds, max_waiting),
        limit_concurrency=100,  # connections; at most `max_waiting` of them idle
        timeout_keep_alive=5,
        timeout_graceful_shutdown=1,  # then in-flight requests are cancelled and queued work dropped
        h11_max_incomplete_event_size=MAX_QUERY_BYTES + 16_384,  # a long text fits in the request line
    )
    return uvicorn.Server(config)


def _quiet_cancel(record: logging.LogRecord) -> bool:
    """uvicorn's "Cancel N running task(s)" line: each of those requests logs its own line."""
    return not str(record.msg).startswith("Cancel %s running task")


def serve(app: Any, sock: socket.socket, host: str | None = None) -> None:
    """Run uvicorn on a socket from `bind` until Ctrl-C or SIGTERM, which both stop it the same way:
    requests in flight get a second, the others are cancelled in one log line each, and this returns.

    `host`: the name the user gave (`--host`), accepted in the `Host` header besides loopback.
    """
    import signal
    import threading

    bound, port = sock.getsockname()[:2]
    server = uvicorn_server(app, bound, port, hosts=[host] if host else [])
    quiet = threading.current_thread() is threading.main_thread()
    # uvicorn catches both signals while it runs, then raises them again once stopped; by then they
    # have been answered: nothing more to do (SIGTERM would otherwise kill the process by the signal)
    saved = (
        {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)} if quiet else {}
    )
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        sock.close()
