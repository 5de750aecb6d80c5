"""HTTP plumbing of `attnviz serve` that knows nothing of models: POST bodies and the request log."""

from __future__ import annotations

import logging
from typing import Any


def body_params(body: bytes, content_type: str) -> dict[str, str]:
    """A POST body as parameters: a JSON object, or a urlencoded form; ValueError if neither."""
    import json
    from urllib.parse import parse_qsl

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8") from None
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the request body must be a JSON object of parameters")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return dict(parse_qsl(text, keep_blank_values=True))


class RequestLog:
    """ASGI middleware: one log line per request (method, path, status, bytes, milliseconds)."""

    def __init__(self, app: Any, log: logging.Logger) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
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

        try:
            await self.app(scope, receive, counting)
        finally:
            ms = (time.perf_counter() - start) * 1000
            self.log.info(
                "%s %s %d %d bytes %.0f ms", scope["method"], scope["path"], seen["status"], seen["bytes"], ms
            )
