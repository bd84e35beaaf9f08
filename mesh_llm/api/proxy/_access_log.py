"""The access-log line of every request the proxy's own answering does not log."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh_llm.api.exchange import Exchange, error_code

access_log = logging.getLogger("mesh_llm.access")  # one line per answered request


class AccessLogged:
    """An access-log line for every request `Proxy._forward` does not log itself: the other
    routes, an unknown path (404), a wrong method (405), a missing key (401).

    So a client that calls what this node lacks leaves a trace. Not counted in /metrics, whose
    labels would grow with every path a caller makes up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        exchange = Exchange(scope["method"], path if _printable(path) else repr(path[:200]), time.monotonic())
        error_body = bytearray()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            elif exchange.status >= 400 and len(error_body) < 65536:  # an error body is small
                error_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not scope.get("state", {}).get("access_logged"):
                if not exchange.status:
                    exchange.status, exchange.error = 500, "internal_error"
                elif exchange.status >= 400:
                    exchange.error = error_code(bytes(error_body))
                record = exchange.record(time.monotonic())
                access_log.info(record.line(), extra={"fields": record.fields()})


def _printable(text: str) -> bool:
    """Whether a caller's text can go into a log line as it is (no control characters)."""
    return text.isprintable() and len(text) <= 200
